"""Bad input to `fedpriv client` and `fedpriv server`: one `fedpriv: error:` line, exit 2,
before Flower starts. The coordinator a node dials is a stand-in on 127.0.0.1 (nothing,
a bare TLS server, a plain-text one): what a node's handshake runs into, without Flower."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.processes import key_values
from tests.helpers.cli import digest, one_line_error
from tests.helpers.data import BAD_DATA
from tests.helpers.listeners import plain_listener, tls_listener
from tests.helpers.pki import expired, make_pki
from tests.helpers.processes import free_port

pytestmark = pytest.mark.usefixtures("no_simulation")


@pytest.fixture
def pki(cli_files) -> Path:
    """CA, server certificate for 127.0.0.1 and node alice's key pair: shared, read only."""
    return cli_files / "pki"


def client_argv(pki: Path, data: Path, state: Path, *extra: object,
                coordinator: str = "127.0.0.1:9", **over: object) -> list:
    """`fedpriv client` as partner alice of `pki`; `over` replaces flags by name."""
    flags = {"--coordinator": coordinator, "--root-cert": pki / "ca.pem",
             "--node-key": pki / "node-alice.key", "--data": data, "--max-epsilon": "3",
             "--port": free_port(), "--state-dir": state}
    flags.update(over)
    return ["client", *[x for pair in flags.items() for x in pair], *extra]


def server_argv(certs: Path, tmp_path: Path, *extra: object) -> list:
    return ["server", "--certs-dir", certs, "--state-dir", tmp_path / "coord",
            "--port", free_port(), "--run-dir", tmp_path / "run", *extra]


# --------------------------------------------------------------------------- client: its input


@pytest.mark.parametrize("extra, needle", [
    (["--max-wait-time", "-1"], "--max-wait-time -1"),
    (["--max-wait-time", "nan"], "--max-wait-time nan"),
    (["--max-wait-time", "inf"], "--max-wait-time inf"),
    (["--node-key", "{pki}/node-alice.pub"], "is not an OpenSSH private key: it holds a public"),
    (["--state-dir", "{files}/note.txt"], "--state-dir"),
    (["--state-dir", "{files}/note.txt/state"], "--state-dir"),
])
def test_client_refuses_before_connecting(capsys, cli_files, pki, tmp_path, extra, needle):
    extra = [e.format(pki=pki, files=cli_files) for e in extra]
    line = one_line_error(capsys, client_argv(pki, cli_files / "good.csv", tmp_path / "state",
                                              *extra), needle)
    assert "coordinator" not in line


@pytest.mark.parametrize("name, why", BAD_DATA)
def test_client_refuses_bad_data_before_connecting(capsys, cli_files, pki, tmp_path, name, why):
    line = one_line_error(capsys, client_argv(pki, cli_files / name, tmp_path / "state"),
                          cli_files / name, why)
    assert "coordinator" not in line
    assert not (tmp_path / "state").exists()


def test_client_refuses_an_empty_text_before_connecting(capsys, pki, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,positive\n,negative\n")
    line = one_line_error(capsys, client_argv(pki, bad, tmp_path / "state"))
    assert str(bad) in line and "cannot reach" not in line


def test_client_missing_root_cert(capsys, cli_files, pki, tmp_path):
    line = one_line_error(capsys, client_argv(pki, cli_files / "good.csv", tmp_path / "state",
                                              **{"--root-cert": tmp_path / "ca.pem"}))
    assert f"{tmp_path / 'ca.pem'} does not exist" in line


def test_client_node_key_in_wrong_format(capsys, cli_files, pki, tmp_path):
    line = one_line_error(capsys, client_argv(pki, cli_files / "good.csv", tmp_path / "state",
                                              **{"--node-key": pki / "server.key"}))
    assert "is not an OpenSSH private key" in line


def test_client_bad_address_and_budget(capsys, cli_files, pki, tmp_path):
    good, state = cli_files / "good.csv", tmp_path / "state"
    line = one_line_error(capsys, client_argv(pki, good, state, coordinator="nohost"))
    assert "expected HOST:PORT" in line
    line = one_line_error(capsys, client_argv(pki, good, state, **{"--max-epsilon": "-1"}))
    assert "invalid --max-epsilon -1.0" in line


def test_insecure_cannot_authenticate_nodes(capsys, cli_files, pki, tmp_path):
    line = one_line_error(capsys, server_argv(pki, tmp_path, "--insecure", "--admit",
                                              pki / "node-alice.pub"))
    assert "--insecure cannot be combined with --admit" in line
    line = one_line_error(capsys, client_argv(pki, cli_files / "good.csv", tmp_path / "state",
                                              "--insecure"))
    assert "--insecure cannot be combined with --node-key" in line


# ------------------------------------------------------------------- client: the coordinator


def test_client_unreachable_coordinator(capsys, cli_files, pki, tmp_path):
    port = free_port()  # nothing listens there
    line = one_line_error(capsys, client_argv(pki, cli_files / "good.csv", tmp_path / "state",
                                              coordinator=f"127.0.0.1:{port}"))
    assert f"cannot reach coordinator 127.0.0.1:{port}: Connection refused" in line


def test_client_refuses_a_certificate_for_another_host(capsys, cli_files, tmp_path):
    other = make_pki(tmp_path / "pki", ["alice"], ips=(), dns_names=["coord.example.org"],
                     include_loopback=False)
    with tls_listener(other) as port:
        line = one_line_error(capsys, client_argv(other, cli_files / "good.csv",
                                                  tmp_path / "state",
                                                  coordinator=f"127.0.0.1:{port}"))
    assert "IP address mismatch" in line and "dial a name listed in the certificate" in line


def test_client_refuses_a_certificate_from_another_ca(capsys, cli_files, pki, tmp_path):
    other = make_pki(tmp_path / "other", [])
    with tls_listener(pki) as port:
        line = one_line_error(capsys, client_argv(pki, cli_files / "good.csv", tmp_path / "state",
                                                  coordinator=f"127.0.0.1:{port}",
                                                  **{"--root-cert": other / "ca.pem"}))
    assert "unable to get local issuer certificate" in line


def test_client_refuses_a_plain_server(capsys, cli_files, pki, tmp_path):
    with plain_listener() as port:
        line = one_line_error(capsys, client_argv(pki, cli_files / "good.csv", tmp_path / "state",
                                                  coordinator=f"127.0.0.1:{port}"))
    assert "TLS handshake with coordinator" in line and "running with TLS?" in line


def test_good_client_input_gets_as_far_as_dialling(capsys, cli_files, pki, tmp_path):
    """The same command with good input passes every check: the refusals above are real."""
    one_line_error(capsys, client_argv(pki, cli_files / "good.csv", tmp_path / "state"),
                   "cannot reach coordinator 127.0.0.1:9")


# --------------------------------------------------------------------------- server


def test_server_missing_certificates(capsys, tmp_path):
    line = one_line_error(capsys, server_argv(tmp_path / "nowhere", tmp_path))
    assert "ca.pem not found" in line and "fedpriv certs" in line


def test_server_certificate_for_another_host(capsys, pki, tmp_path):
    line = one_line_error(capsys, server_argv(pki, tmp_path, "--host", "10.1.2.3"))
    assert "is not valid for host '10.1.2.3'" in line


def test_server_expired_certificate(capsys, tmp_path):
    make_pki(tmp_path / "pki", ["alice"], **expired())
    assert "expired on" in one_line_error(capsys, server_argv(tmp_path / "pki", tmp_path))


def test_server_needs_node_keys(capsys, tmp_path):
    make_pki(tmp_path / "pki", [])
    line = one_line_error(capsys, server_argv(tmp_path / "pki", tmp_path))
    assert "no node public keys to admit" in line


def test_server_refuses_a_private_key_as_node_key(capsys, pki, tmp_path):
    line = one_line_error(capsys, server_argv(pki, tmp_path, "--admit", pki / "node-alice.key"))
    assert "is not an OpenSSH public key" in line


def test_server_keeps_an_existing_run(capsys, pki, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ledger.jsonl").write_text('{"kept": true}\n')
    before = digest(run)
    one_line_error(capsys, server_argv(pki, tmp_path, "--keys-dir", pki),
                   f"--run-dir {run}", "already holds a run")
    assert digest(run) == before
    assert not (tmp_path / "coord").exists()


def test_node_config_values_survive_flowers_parser(tmp_path):
    from flwr.common.config import parse_config_args

    config = {"data-path": str(tmp_path / "my data" / "o'brien.csv"), "text-column": "tweet text",
              "label-column": "label", "max-epsilon": 3.0, "delta": 1e-06, "state-dir": "C:\\n"}
    assert parse_config_args([key_values(config)]) == config
    with pytest.raises(Exception, match="both ' and"):
        key_values({"data-path": "it's a \"file\""})


# ------------------------------------------------------------------ the trust boundary's input


def test_server_refuses_a_certs_folder_holding_the_ca_key(capsys, pki, tmp_path):
    from tests.helpers.pki import ca_key_dir, copy_pki

    leaky = copy_pki(pki, tmp_path / "leaky")
    (leaky / "ca.key").write_bytes((ca_key_dir(leaky) / "ca.key").read_bytes())
    line = one_line_error(capsys, server_argv(leaky, tmp_path))
    assert "holds the CA's private key ca.key" in line
    assert not (tmp_path / "coord").exists()


def test_server_refuses_plain_text_on_a_public_address(capsys, pki, tmp_path):
    line = one_line_error(capsys, server_argv(pki, tmp_path, "--insecure", "--host", "0.0.0.0"))
    assert "--insecure cannot listen on 0.0.0.0" in line and "gateway" in line
    assert not (tmp_path / "coord").exists()


def test_server_refuses_a_node_without_its_ledger_key(capsys, pki, tmp_path):
    from tests.helpers.pki import copy_pki

    keys = copy_pki(pki, tmp_path / "keys")
    (keys / "ledger-keys" / "alice.pub").unlink()
    line = one_line_error(capsys, server_argv(pki, tmp_path, "--keys-dir", keys))
    assert "no ledger key for" in line and "node-alice.pub" in line


@pytest.mark.parametrize("over, needle", [
    ({"--approve-app": "abc123"}, "invalid --approve-app 'abc123': must be an app's sha256"),
    ({"--ledger-key": "{pki}/node-alice.ledger.pub"}, "--ledger-key: signing key"),
    ({"--ledger-key": "{tmp}/missing.key"}, "missing.key not found"),
])
def test_client_refuses_bad_approval_and_ledger_key(capsys, cli_files, pki, tmp_path, over,
                                                     needle):
    over = {k: v.format(pki=pki, tmp=tmp_path) for k, v in over.items()}
    line = one_line_error(capsys, client_argv(pki, cli_files / "good.csv", tmp_path / "state",
                                              **over), needle)
    assert "cannot reach" not in line  # refused before dialling
    assert not (tmp_path / "state").exists()
