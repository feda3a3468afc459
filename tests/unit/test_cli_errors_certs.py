"""Bad input to `fedpriv certs`: one `fedpriv: error:` line, exit 2, nothing written or
replaced. Every case goes through `cli.main.main`, as a user's command line does."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from tests.helpers.cli import digest, one_line_error, run
from tests.helpers.pki import ca_key_dir, copy_pki

pytestmark = pytest.mark.usefixtures("no_simulation")


@pytest.mark.parametrize("extra, needle", [
    (["--days", "0"], "--days 0"),
    (["--days", "999999999"], "--days 999999999"),
    (["--common-name", ""], "--common-name ''"),
    (["--common-name", "x" * 65], "--common-name"),
])
def test_certs_ca_refuses_bad_values(capsys, tmp_path, extra, needle):
    one_line_error(capsys, ["certs", "ca", "--dir", tmp_path / "ca", *extra], needle)
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize("command", [["ca"], ["server"], ["node", "bob"],
                                     ["admit", "bob", "PUB", "LEDGER"]])
@pytest.mark.parametrize("where", ["note.txt", "note.txt/certs"])
def test_certs_refuse_a_dir_that_is_or_is_inside_a_file(capsys, cli_files, command, where):
    given = {"PUB": "node-alice.pub", "LEDGER": "node-alice.ledger.pub"}
    command = [str(cli_files / "pki" / given[c]) if c in given else c for c in command]
    before = digest(cli_files)
    one_line_error(capsys, ["certs", *command, "--dir", cli_files / where], "--dir",
                   f"{cli_files / 'note.txt'} is a file")
    assert digest(cli_files) == before


def test_certs_server_refuses_a_ca_that_is_not_a_ca(capsys, cli_files, tmp_path):
    pki = cli_files / "pki"
    d = copy_pki(pki, tmp_path / "pki", ca_pem=(pki / "server.pem").read_bytes(),
                 ca_key=(pki / "server.key").read_bytes(), server_pem=None, server_key=None)
    before = digest(d)
    one_line_error(capsys, ["certs", "server", "--dir", d, "--ca-key-dir", ca_key_dir(d)],
                   f"{d / 'ca.pem'} is not a CA")
    assert digest(d) == before


def public_half(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("ca_key, needle", [
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a PEM private key"),
    ("public", "is not a PEM private key: it holds a public key"),
])
def test_certs_server_refuses_a_bad_ca_key(capsys, cli_files, tmp_path, ca_key, needle):
    pki = cli_files / "pki"
    if ca_key == "public":
        ca_key = public_half((ca_key_dir(pki) / "ca.key").read_bytes())
    d = copy_pki(pki, tmp_path / "pki", ca_key=ca_key, server_pem=None, server_key=None)
    before = digest(d)
    one_line_error(capsys, ["certs", "server", "--dir", d, "--ca-key-dir", ca_key_dir(d)],
                   f"{ca_key_dir(d) / 'ca.key'}", needle)
    assert digest(d) == before


def test_certs_refuse_to_replace_existing_files(capsys, cli_files):
    pki = cli_files / "pki"
    before = digest(pki)
    for argv in (["ca"], ["server", "--ca-key-dir", ca_key_dir(pki)], ["node", "alice"],
                 ["admit", "alice", pki / "node-alice.pub", pki / "node-alice.ledger.pub"]):
        one_line_error(capsys, ["certs", *argv, "--dir", pki], "already exists", "--force")
    assert digest(pki) == before


@pytest.mark.parametrize("public_key, needle", [
    ("missing.pub", "does not exist"),
    ("folder.csv", "is not a regular file"),
    ("pki/node-alice.key", "is not an OpenSSH public key"),
    ("ed25519.pub", "is not a NIST EC key"),
    ("empty.csv", "is not an OpenSSH public key"),
])
def test_certs_admit_refuses_a_bad_public_key(capsys, cli_files, tmp_path, public_key, needle):
    one_line_error(capsys, ["certs", "admit", "bob", cli_files / public_key,
                            cli_files / "pki" / "node-alice.ledger.pub", "--dir",
                            tmp_path / "coordinator"], cli_files / public_key, needle)
    assert not (tmp_path / "coordinator").exists()


@pytest.mark.parametrize("where, needle", [("missing", "does not exist"),
                                           ("note.txt", "is not a folder")])
def test_certs_list_refuses_a_bad_dir(capsys, cli_files, where, needle):
    one_line_error(capsys, ["certs", "list", "--dir", cli_files / where],
                   f"--dir {cli_files / where}", needle)


def test_certs_list_shows_a_corrupt_certificate(capsys, cli_files, tmp_path):
    d = copy_pki(cli_files / "pki", tmp_path / "pki",
                 ca_pem=b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    assert run(["certs", "list", "--dir", d]) == 0
    assert f"{d / 'ca.pem'}  [unreadable]  not a PEM certificate" in capsys.readouterr().out
