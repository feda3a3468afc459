"""The certificate and key tooling: what it writes must be what TLS and Flower accept."""

from __future__ import annotations

import argparse
import ipaddress
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from certs import issue, listing, node_keys, verify
from certs.files import CertError
from cli import certs as certs_cli
from cli.main import main


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def coordinator(tmp_path: Path) -> Path:
    """A folder with a CA and a server certificate for two names and two addresses."""
    directory = tmp_path / "coordinator"
    issue.create_ca(directory)
    issue.issue_server_cert(directory, dns_names=["localhost", "coord.example.org"],
                            ip_addresses=["127.0.0.1", "::1"])
    return directory


def test_server_cert_is_signed_by_the_ca_and_names_the_hosts(coordinator: Path) -> None:
    server = x509.load_pem_x509_certificate((coordinator / "server.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((coordinator / "ca.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "coord.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    verify.check_chain(coordinator / "server.pem", coordinator / "ca.pem")
    verify.check_key_pair(coordinator / "server.pem", coordinator / "server.key")
    # Independent check: RFC 5280 / web PKI path validation by cryptography's verifier.
    for name in (x509.DNSName("coord.example.org"), x509.IPAddress(ipaddress.ip_address("::1"))):
        verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(name)
        chain = verifier.verify(server, [])
        assert chain[-1] == ca


def test_loopback_names_are_added_unless_refused(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    issue.create_ca(d)
    args = ["server", "--dir", str(d), "--dns", "coord.example.org", "--ip", "203.0.113.5"]
    assert main(["certs", *args]) == 0
    cert = verify.check_certificate(d / "server.pem", expect_host="coord.example.org")
    assert verify.certificate_names(cert) == ("coord.example.org", "localhost", "203.0.113.5",
                                              "127.0.0.1")
    assert main(["certs", *args, "--no-loopback", "--force"]) == 0
    cert = verify.check_certificate(d / "server.pem")
    assert verify.certificate_names(cert) == ("coord.example.org", "203.0.113.5")


def test_rsa_server_cert_also_verifies(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    issue.create_ca(d, key_type="rsa")
    issue.issue_server_cert(d, key_type="rsa")
    verify.check_chain(d / "server.pem", d / "ca.pem")
    verify.check_key_pair(d / "server.pem", d / "server.key")
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    assert ca.public_key().key_size == 3072


def test_private_keys_are_0600_even_with_an_open_umask(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    old = os.umask(0)
    try:
        issue.create_ca(d)
        issue.issue_server_cert(d)
        node_keys.create_node_keys(d, "alice")
    finally:
        os.umask(old)
    for name in ("server.key", "node-alice.key", "node-alice.ledger.key"):
        assert _mode(d / name) == 0o600, name
    assert _mode(tmp_path / "ca-private" / "ca.key") == 0o600
    assert _mode(tmp_path / "ca-private") == 0o700
    for name in ("ca.pem", "server.pem", "node-alice.pub", "node-alice.ledger.pub"):
        assert _mode(d / name) == 0o644, name
    # The CA key is kept apart from what the coordinator's server reads.
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["ca.pem", "server.key", "server.pem", "node-alice.key", "node-alice.pub",
         "node-alice.ledger.key", "node-alice.ledger.pub"])
    assert [p.name for p in (tmp_path / "ca-private").iterdir()] == ["ca.key"]


@pytest.mark.parametrize("command", [["ca"], ["server"], ["node", "alice"]])
def test_rerun_without_force_refuses_and_keeps_the_bytes(
    coordinator: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    node_keys.create_node_keys(coordinator, "alice")
    before = {p.name: p.read_bytes() for p in coordinator.iterdir()}
    assert main(["certs", *command, "--dir", str(coordinator)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert str(coordinator) in err
    assert {p.name: p.read_bytes() for p in coordinator.iterdir()} == before


def test_a_refusal_writes_nothing_at_all(coordinator: Path) -> None:
    (coordinator / "server.key").unlink()  # the certificate is still there
    with pytest.raises(CertError, match="server.pem already exists"):
        issue.issue_server_cert(coordinator)
    assert not (coordinator / "server.key").exists()


def test_force_replaces(coordinator: Path) -> None:
    old_key = (coordinator / "server.key").read_bytes()
    old_cert = (coordinator / "server.pem").read_bytes()
    assert main(["certs", "server", "--dir", str(coordinator), "--dns", "other.example",
                 "--force"]) == 0
    assert (coordinator / "server.key").read_bytes() != old_key
    assert (coordinator / "server.pem").read_bytes() != old_cert
    assert _mode(coordinator / "server.key") == 0o600
    verify.check_certificate(coordinator / "server.pem", expect_host="other.example")
    verify.check_key_pair(coordinator / "server.pem", coordinator / "server.key")


def test_a_crash_mid_write_leaves_no_partial_file(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(fd: int) -> None:
        raise OSError(5, "simulated crash")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        issue.create_ca(tmp_path / "certs")
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []


def test_check_certificate_rejects_an_expired_cert(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    issue.create_ca(d, not_before=datetime.now(UTC) - timedelta(days=30), days=1)
    with pytest.raises(CertError, match="expired") as caught:
        verify.check_certificate(d / "ca.pem")
    assert str(d / "ca.pem") in str(caught.value)
    assert "\n" not in str(caught.value)


def test_check_certificate_rejects_a_cert_not_yet_valid(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    issue.create_ca(d, not_before=datetime.now(UTC) + timedelta(days=2), days=10)
    with pytest.raises(CertError, match="not valid before"):
        verify.check_certificate(d / "ca.pem")


def test_check_certificate_host(coordinator: Path) -> None:
    server = coordinator / "server.pem"
    for host in ("localhost", "COORD.example.org", "127.0.0.1", "::1", "[::1]"):
        verify.check_certificate(server, expect_host=host)
    for host in ("evil.example.org", "example.org", "127.0.0.2", "10.0.0.1"):
        with pytest.raises(CertError, match="not valid for host") as caught:
            verify.check_certificate(server, expect_host=host)
        assert str(server) in str(caught.value)


def test_wildcard_names_cover_one_label(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    issue.create_ca(d)
    issue.issue_server_cert(d, dns_names=["*.fed.example"], ip_addresses=[])
    verify.check_certificate(d / "server.pem", expect_host="link.fed.example")
    for host in ("fed.example", "a.b.fed.example"):
        with pytest.raises(CertError, match="not valid for host"):
            verify.check_certificate(d / "server.pem", expect_host=host)


def test_check_certificate_rejects_garbage_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertError, match="is not a PEM certificate") as caught:
        verify.check_certificate(garbage)
    assert str(garbage) in str(caught.value)
    missing = tmp_path / "missing.pem"
    with pytest.raises(CertError, match="does not exist") as caught:
        verify.check_certificate(missing)
    assert str(missing) in str(caught.value)
    with pytest.raises(CertError, match="is not a regular file"):
        verify.check_certificate(tmp_path)


def test_check_chain_rejects_a_cert_from_another_ca_with_the_same_name(
    coordinator: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    # same subject name as the coordinator's CA, another key
    issue.create_ca(other, key_dir=tmp_path / "other-ca")
    issue.issue_server_cert(other, ca_key_dir=tmp_path / "other-ca")
    with pytest.raises(CertError, match="not signed by the CA") as caught:
        verify.check_chain(other / "server.pem", coordinator / "ca.pem")
    assert str(other / "server.pem") in str(caught.value)
    with pytest.raises(CertError, match="not a CA certificate"):
        verify.check_chain(coordinator / "server.pem", coordinator / "server.pem")


def test_check_private_key(coordinator: Path, tmp_path: Path) -> None:
    key = coordinator / "server.key"
    verify.check_private_key(key)
    os.chmod(key, 0o644)
    with pytest.raises(CertError, match="chmod 600"):
        verify.check_private_key(key)
    verify.check_private_key(key, require_private_mode=False)
    with pytest.raises(CertError, match="is not a PEM private key"):
        verify.check_private_key(coordinator / "ca.pem", require_private_mode=False)
    with pytest.raises(CertError, match="does not exist"):
        verify.check_private_key(tmp_path / "nope.key")
    with pytest.raises(CertError, match="does not belong"):
        verify.check_key_pair(coordinator / "server.pem",
                              coordinator.parent / "ca-private" / "ca.key")


def test_server_needs_a_ca_and_valid_names(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    with pytest.raises(CertError, match="create the CA first"):
        issue.issue_server_cert(d)
    issue.create_ca(d)
    with pytest.raises(CertError, match="--ip"):
        issue.issue_server_cert(d, ip_addresses=["localhost"])
    with pytest.raises(CertError, match="--dns"):
        issue.issue_server_cert(d, dns_names=["bad name"])
    with pytest.raises(CertError, match="--days"):
        issue.issue_server_cert(d, days=0)
    assert not (d / "server.pem").exists()


def test_the_ca_key_is_never_kept_where_the_server_reads(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    for inside in (d, d / "private"):
        with pytest.raises(CertError, match="--ca-key-dir"):
            issue.create_ca(d, key_dir=inside)
    assert not d.exists()
    issue.create_ca(d, key_dir=tmp_path / "offline")
    issue.issue_server_cert(d, ca_key_dir=tmp_path / "offline")
    verify.check_chain(d / "server.pem", d / "ca.pem")
    with pytest.raises(CertError, match="ca.key not found"):
        issue.issue_server_cert(d, force=True)  # the default folder holds no CA key


def test_node_keys_load_with_flowers_own_loaders(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    issued = node_keys.create_node_keys(tmp_path, "alice")
    key_path, pub_path = tmp_path / "node-alice.key", tmp_path / "node-alice.pub"
    assert issued.files == (key_path, pub_path, tmp_path / "node-alice.ledger.key",
                            tmp_path / "node-alice.ledger.pub")
    # What `flower-supernode --auth-supernode-private-key` runs.
    loaded = _try_setup_client_authentication(argparse.Namespace(
        auth_supernode_private_key=str(key_path), auth_supernode_public_key=None))
    assert loaded is not None
    private, public = loaded
    assert private.curve.name == "secp384r1"
    # What `flwr supernode register node-alice.pub` runs: the same key reaches the SuperLink.
    assert try_load_public_key(pub_path) == public_key_to_bytes(public)
    assert issued.fingerprint == node_keys.ssh_fingerprint(public)


def test_admit_copies_valid_public_keys_and_refuses_others(tmp_path: Path) -> None:
    from common.ledger.keys import load_private_key, load_trusted_keys, public_key_hex

    partner, coordinator = tmp_path / "partner", tmp_path / "coordinator"
    made = node_keys.create_node_keys(partner, "alice")
    pub, ledger_pub = partner / "node-alice.pub", partner / "node-alice.ledger.pub"
    admitted = node_keys.admit_node_key(coordinator, "alice", pub, ledger_pub)
    assert admitted.fingerprint == made.fingerprint
    assert admitted.ledger_key == made.ledger_key == public_key_hex(
        load_private_key(partner / "node-alice.ledger.key"))
    assert admitted.files == (coordinator / "node-alice.pub",
                              coordinator / "ledger-keys" / "alice.pub")
    assert not (coordinator / "node-alice.key").exists()
    # The admitted ledger keys are what an auditor passes to `fedpriv audit --keys`.
    assert public_key_hex(load_trusted_keys(coordinator / "ledger-keys")["alice"]) == \
        made.ledger_key
    with pytest.raises(CertError, match="not an OpenSSH public key"):
        node_keys.admit_node_key(coordinator, "bob", partner / "node-alice.key", ledger_pub)
    with pytest.raises(CertError, match="ledger key: .* holds a PRIVATE key"):
        node_keys.admit_node_key(coordinator, "bob", pub, partner / "node-alice.ledger.key")
    with pytest.raises(CertError, match="ledger key: .* not a PEM public key"):
        node_keys.admit_node_key(coordinator, "bob", pub, pub)
    with pytest.raises(CertError, match="invalid node name"):
        node_keys.admit_node_key(coordinator, "../bob", pub, ledger_pub)
    with pytest.raises(CertError, match="already exists"):
        node_keys.admit_node_key(coordinator, "alice", pub, ledger_pub)
    assert not (coordinator / "node-bob.pub").exists()


def test_list_flags_expired_certificates(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    d = tmp_path / "certs"
    issue.create_ca(d, not_before=datetime.now(UTC) - timedelta(days=30), days=10)
    node_keys.create_node_keys(d, "alice")
    assert main(["certs", "list", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert "ca.pem  [CA]  EXPIRED" in out and "days left" in out
    assert "node alice  [node-alice.key + node-alice.pub]  ok" in out
    assert "alice.ledger" not in out  # the ledger pair is not a second node
    assert "SHA256:" in out


def test_add_certs_arguments_on_a_subparsers_object(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="fedpriv")
    certs_cli.add_certs_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["certs", "ca", "--dir", str(tmp_path / "c"), "--days", "30"])
    assert certs_cli.run_certs_command(args) == 0
    info = listing.list_certificates(tmp_path / "c")[0]
    assert (info.not_after - info.not_before).days == 30


def test_grpc_tls_handshake_trusts_only_our_ca(coordinator: Path, tmp_path: Path) -> None:
    """The files work where they are used: a gRPC TLS server and client, as in Flower."""
    import grpc

    server = grpc.server(thread_pool=None, options=[("grpc.so_reuseport", 0)])
    creds = grpc.ssl_server_credentials(
        [((coordinator / "server.key").read_bytes(), (coordinator / "server.pem").read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    issue.create_ca(tmp_path / "other", key_dir=tmp_path / "other-ca")
    try:
        for root, ok in ((coordinator / "ca.pem", True), (tmp_path / "other" / "ca.pem", False)):
            channel = grpc.secure_channel(
                f"localhost:{port}", grpc.ssl_channel_credentials(root.read_bytes()))
            try:
                grpc.channel_ready_future(channel).result(timeout=3 if not ok else 10)
                connected = True
            except grpc.FutureTimeoutError:
                connected = False
            finally:
                channel.close()
            assert connected is ok, root
    finally:
        server.stop(grace=None)
