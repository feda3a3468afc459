"""Bad input to any `fedpriv` command: one `fedpriv: error:` line, exit 2, nothing touched.

Every case goes through `cli.main.main`, as a user's command line does. Nothing here
trains: the simulation engine is replaced by a function that fails the test, so a check
that regressed to "only inside the simulation" fails fast instead of starting Ray.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from certs import tool
from cli.main import main
from common.ledger.keys import create_signing_key
from common.ledger.record import PrivacyRecord
from common.ledger.store import NodeLedger

LABELS = ("negative", "neutral", "positive")


# --------------------------------------------------------------------------- helpers


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """Run `fedpriv ARGV`: exit 2, exactly one `fedpriv: error:` line naming each needle."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err)
    assert len(lines) == 1 and lines[0].startswith("fedpriv: error: "), lines
    assert "Traceback" not in captured.err + captured.out
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def digest(*roots: Path) -> dict[str, str]:
    """Every file (by content) and folder under `roots`: equal before and after = untouched."""
    out: dict[str, str] = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            out[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                              else "folder" if path.is_dir() else "missing")
    return out


@pytest.fixture(autouse=True)
def no_simulation(monkeypatch):
    """Fail at once if a command gets as far as starting Flower's simulation engine."""
    import simulations.run

    def started(*args, **kwargs):
        raise AssertionError("the simulation started: the bad input was not refused up front")

    monkeypatch.setattr(simulations.run, "_run_simulation", started)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def write_rows(path: Path, n: int = 30) -> Path:
    rows = [f"example text number {i},{LABELS[i % 3]}" for i in range(n)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A good data file and every kind of bad one, a file, a folder, PKI material."""
    d = tmp_path_factory.mktemp("files")
    good = write_rows(d / "good.csv")
    text = good.read_text()
    (d / "cut.csv").write_text(text + '"a quote left open by a cut-off write')
    (d / "junk.csv").write_bytes(os.urandom(2048))
    (d / "latin1.csv").write_bytes(text.encode() + "caf\u00e9,positive\n".encode("latin-1"))
    (d / "empty.csv").write_bytes(b"")
    (d / "header.csv").write_text("text,label\n")
    (d / "nocolumn.csv").write_text(text.replace("text,label", "tweet,label", 1))
    (d / "nul.csv").write_text(text.replace("number 3", "num\x00ber 3"))
    (d / "commas.csv").write_text(text + "hello, world,positive\n")
    (d / "folder.csv").mkdir()
    (d / "data.txt").write_text(text)
    jsonl = "".join(f'{{"text": "row {i}", "label": "{LABELS[i % 3]}"}}\n' for i in range(30))
    (d / "cut.jsonl").write_text(jsonl[:-20])
    (d / "array.jsonl").write_text('[{"text": "a", "label": "b"}]\n' + jsonl)
    (d / "note.txt").write_text("a file, not a folder")
    pki = d / "pki"
    tool.create_ca(pki)
    tool.issue_server_cert(pki)
    tool.create_node_auth_key(pki, "alice")
    return d


BAD_DATA = [
    ("missing.csv", "file not found"),
    ("folder.csv", "cannot read"),
    ("cut.csv", "quote left open"),
    ("junk.csv", "not valid utf-8"),
    ("latin1.csv", "line 32: bytes are not valid utf-8"),
    ("empty.csv", "file is empty"),
    ("header.csv", "only 0 rows"),
    ("nocolumn.csv", "no column 'text'"),
    ("nul.csv", "NUL bytes"),
    ("commas.csv", "3 fields but the header has 2"),
    ("data.txt", "unsupported file type"),
    ("cut.jsonl", "line 30: not valid JSON"),
    ("array.jsonl", "line 1: expected a JSON object"),
]


# --------------------------------------------------------------------------- simulate, sweep


def simulate_argv(run_dir: Path, *extra: str) -> list[str]:
    return ["simulate", "--model", "tiny", "--max-examples", "200", "--num-rounds", "1",
            "--local-steps", "1", "--num-clients", "2", "--client-cpus", "0.5",
            "--run-dir", str(run_dir), *extra]


@pytest.mark.parametrize("flag, value", [
    ("--epsilon", "nan"), ("--num-rounds", "0"), ("--max-examples", "-3"),
    ("--dirichlet-alpha", "0"), ("--dirichlet-alpha", "inf"), ("--batch-size", "abc"),
    ("--learning-rate", "inf"), ("--max-grad-norm", "inf"), ("--noise-multiplier", "inf"),
    ("--round-timeout", "inf"), ("--device", "cuda:x"), ("--num-clients", "0"),
    ("--client-cpus", "-1"), ("--client-cpus", "0"), ("--client-cpus", "nan"),
    ("--client-cpus", "inf"), ("--client-cpus", "100000"), ("--client-gpus", "-1"),
    ("--client-gpus", "nan"), ("--client-gpus", "100000"), ("--seed", "-1"),
    ("--seed", "99999999999999999999999"), ("--min-train-clients", "3"), ("--min-updates", "3"),
    ("--ray-address", "ray://127.0.0.1:9"), ("--ray-address", "nonsense"),
])
def test_simulate_refuses_a_bad_flag_value(capsys, tmp_path, flag, value):
    one_line_error(capsys, simulate_argv(tmp_path / "run", flag, value), flag)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, why", BAD_DATA)
def test_simulate_refuses_bad_data_before_starting(capsys, files, tmp_path, name, why):
    one_line_error(capsys, simulate_argv(tmp_path / "run", "--data-path", files / name),
                   files / name, why)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--labels", "yes,no"], "unknown label 'negative'"),
    (["--partitioner", "label", "--classes-per-client", "5"], "--classes-per-client 5"),
    (["--max-examples", "5", "--num-clients", "8"], "--num-clients 8"),
    (["--model", "/nonexistent/model"], "--model /nonexistent/model"),
    (["--epsilon", "0.005"], "--epsilon 0.005: below what the prv accountant can reach"),
    (["--epsilon", "0.05", "--accountant", "rdp"], "--epsilon 0.05: below what the rdp"),
])
def test_simulate_refuses_what_the_apps_would_only_find_inside_ray(capsys, files, tmp_path,
                                                                   extra, needle):
    one_line_error(capsys, simulate_argv(tmp_path / "run", "--data-path", files / "good.csv",
                                         *extra), needle)
    assert not (tmp_path / "run").exists()


def test_simulate_folds_a_library_message_into_one_line(capsys, files, tmp_path):
    # transformers explains a folder without a tokenizer over several lines
    one_line_error(capsys, simulate_argv(tmp_path / "run", "--model", files / "pki"),
                   f"--model {files / 'pki'}")


def test_simulate_keeps_an_existing_run(capsys, files, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ledger.jsonl").write_text('{"kept": true}\n')
    (run / "metrics.json").write_text('{"rounds": []}')
    before = digest(run)
    one_line_error(capsys, simulate_argv(run), f"--run-dir {run}", "already holds a run")
    assert digest(run) == before


def test_simulate_refuses_a_run_dir_inside_a_file(capsys, files):
    one_line_error(capsys, simulate_argv(files / "note.txt" / "run"), "--run-dir",
                   f"{files / 'note.txt'} is a file")


def sweep_argv(out: Path, *extra: str) -> list[str]:
    return ["sweep", *simulate_argv(Path("unused"))[1:-2], "--out", str(out), *extra]


@pytest.mark.parametrize("epsilons", ["8,x", ",", "0", "-1", "nan", "none,none", "8,8.0"])
def test_sweep_refuses_bad_epsilons(capsys, tmp_path, epsilons):
    one_line_error(capsys, sweep_argv(tmp_path / "out", "--epsilons", epsilons), "--epsilons")
    assert not (tmp_path / "out").exists()


def test_sweep_refuses_an_epsilon_no_noise_reaches(capsys, tmp_path):
    one_line_error(capsys, sweep_argv(tmp_path / "out", "--epsilons", "8,1e-300"),
                   "--epsilon 1e-300: below what")


def test_sweep_keeps_a_folder_that_is_not_empty(capsys, tmp_path):
    out = tmp_path / "out"
    (out / "no-dp").mkdir(parents=True)
    (out / "sweep.csv").write_text("setting,accuracy\nno-dp,0.5\n")
    before = digest(out)
    one_line_error(capsys, sweep_argv(out, "--epsilons", "8"), f"--out {out}", "not empty")
    assert digest(out) == before


@pytest.mark.parametrize("where", ["note.txt", "note.txt/out"])
def test_sweep_refuses_an_out_that_is_or_is_inside_a_file(capsys, files, where):
    before = digest(files / "note.txt")
    one_line_error(capsys, sweep_argv(files / where, "--epsilons", "8"), "--out",
                   f"{files / 'note.txt'} is a file")
    assert digest(files / "note.txt") == before


# --------------------------------------------------------------------------- certs


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
                                     ["admit", "bob", "PUB"]])
@pytest.mark.parametrize("where", ["note.txt", "note.txt/certs"])
def test_certs_refuse_a_dir_that_is_or_is_inside_a_file(capsys, files, command, where):
    command = [str(files / "pki" / "node-alice.pub") if c == "PUB" else c for c in command]
    before = digest(files)
    one_line_error(capsys, ["certs", *command, "--dir", files / where], "--dir",
                   f"{files / 'note.txt'} is a file")
    assert digest(files) == before


def pki_copy(files: Path, dest: Path, **replace: bytes | None) -> Path:
    """A copy of the test PKI, files replaced (bytes) or removed (None)."""
    dest.mkdir()
    for path in (files / "pki").iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
        os.chmod(dest / path.name, path.stat().st_mode)
    for name, data in replace.items():
        name = name.replace("_", ".")
        if data is None:
            (dest / name).unlink()
        else:
            (dest / name).write_bytes(data)
    return dest


def test_certs_server_refuses_a_ca_that_is_not_a_ca(capsys, files, tmp_path):
    pki = files / "pki"
    d = pki_copy(files, tmp_path / "pki", ca_pem=(pki / "server.pem").read_bytes(),
                 ca_key=(pki / "server.key").read_bytes(), server_pem=None, server_key=None)
    before = digest(d)
    one_line_error(capsys, ["certs", "server", "--dir", d], f"{d / 'ca.pem'} is not a CA")
    assert digest(d) == before


@pytest.mark.parametrize("ca_key, needle", [
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a PEM private key"),
    ("public", "is not a PEM private key: it holds a public key"),
])
def test_certs_server_refuses_a_bad_ca_key(capsys, files, tmp_path, ca_key, needle):
    from cryptography.hazmat.primitives import serialization

    if ca_key == "public":
        key = tool.check_private_key(files / "pki" / "ca.key")
        ca_key = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    d = pki_copy(files, tmp_path / "pki", ca_key=ca_key, server_pem=None, server_key=None)
    before = digest(d)
    one_line_error(capsys, ["certs", "server", "--dir", d], f"{d / 'ca.key'}", needle)
    assert digest(d) == before


def test_certs_refuse_to_replace_existing_files(capsys, files):
    pki = files / "pki"
    before = digest(pki)
    for argv in (["ca"], ["server"], ["node", "alice"], ["admit", "alice",
                                                         pki / "node-alice.pub"]):
        one_line_error(capsys, ["certs", *argv, "--dir", pki], "already exists", "--force")
    assert digest(pki) == before


@pytest.mark.parametrize("public_key, needle", [
    ("missing.pub", "does not exist"),
    ("folder.csv", "is not a regular file"),
    ("pki/node-alice.key", "is not an OpenSSH public key"),
    ("ed25519.pub", "is not a NIST EC key"),
    ("empty.csv", "is not an OpenSSH public key"),
])
def test_certs_admit_refuses_a_bad_public_key(capsys, files, tmp_path, public_key, needle):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    (files / "ed25519.pub").write_bytes(ed25519.Ed25519PrivateKey.generate().public_key()
                                        .public_bytes(serialization.Encoding.OpenSSH,
                                                      serialization.PublicFormat.OpenSSH))
    one_line_error(capsys, ["certs", "admit", "bob", files / public_key, "--dir",
                            tmp_path / "coordinator"], files / public_key, needle)
    assert not (tmp_path / "coordinator").exists()


@pytest.mark.parametrize("where, needle", [("missing", "does not exist"),
                                           ("note.txt", "is not a folder")])
def test_certs_list_refuses_a_bad_dir(capsys, files, where, needle):
    one_line_error(capsys, ["certs", "list", "--dir", files / where],
                   f"--dir {files / where}", needle)


def test_certs_list_shows_a_corrupt_certificate(capsys, files, tmp_path):
    d = pki_copy(files, tmp_path / "pki", ca_pem=b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    assert main(["certs", "list", "--dir", str(d)]) == 0
    assert f"{d / 'ca.pem'}  [unreadable]  not a PEM certificate" in capsys.readouterr().out


# --------------------------------------------------------------------------- audit


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> Path:
    """A node's real two-entry ledger, its trusted key, and an earlier report beside them."""
    d = tmp_path_factory.mktemp("audit")
    key = create_signing_key(d / "private" / "alice.pem", d / "keys" / "alice.pub")
    node = NodeLedger(d / "ledger.jsonl", key)
    for r in (1, 2):
        node.append(PrivacyRecord(run_id=1, round=r, node_id=1, kind="refused",
                                  mechanism="none", accountant="prv", noise_multiplier=0.0,
                                  sample_rate=0.0, steps=0, total_steps=0, max_grad_norm=0.0,
                                  delta=1e-5, epsilon=0.0, epsilon_budget=8.0))
    (d / "report.json").write_text('{"earlier": "report"}')
    return d


def audit_argv(d: Path, ledger_file: Path | None = None, *extra: str) -> list[str]:
    return ["audit", ledger_file or d / "ledger.jsonl", "--keys", d / "keys", *extra]


def corrupt(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d / name


BAD_LEDGERS = {
    "missing": (lambda d, text: d / "missing.jsonl", "not found"),
    "folder": (lambda d, text: d / "keys", "cannot be read"),
    "binary": (lambda d, text: corrupt(d, "binary.jsonl", os.urandom(512) + b"\xff"),
               "cannot be read"),
    "latin1": (lambda d, text: corrupt(d, "latin1.jsonl", text + "caf\u00e9\n".encode("latin-1")),
               "cannot be read"),
    "garbage line": (lambda d, text: corrupt(d, "garbage.jsonl", text + b"garbage\n"),
                     ":3: not a JSON"),
    "cut-off last line": (lambda d, text: corrupt(d, "cut.jsonl", text[:-40]), ":2: not a JSON"),
    "array": (lambda d, text: corrupt(d, "array.jsonl", b"[1, 2]\n" + text),
              ":1: ledger entry is not"),
}


@pytest.mark.parametrize("case", BAD_LEDGERS)
def test_audit_refuses_an_unreadable_ledger(capsys, ledger, case):
    make, needle = BAD_LEDGERS[case]
    bad = make(ledger, (ledger / "ledger.jsonl").read_bytes())
    before = digest(ledger)
    one_line_error(capsys, audit_argv(ledger, bad), bad, needle)
    assert digest(ledger) == before


@pytest.mark.parametrize("setup, needle", [
    ("missing", "not found"),
    ("file", "not found"),
    ("empty", "holds no *.pub"),
    ("corrupt", "is not a PEM public key"),
    ("private", "holds a PRIVATE key"),
])
def test_audit_refuses_bad_trusted_keys(capsys, ledger, tmp_path, setup, needle):
    keys = tmp_path / "keys"
    if setup == "file":
        keys.write_text("not a folder")
    elif setup != "missing":
        keys.mkdir()
    if setup == "corrupt":
        (keys / "alice.pub").write_bytes(b"-----BEGIN PUBLIC KEY-----\nxx\n")
    if setup == "private":
        (keys / "alice.pub").write_bytes((ledger / "private" / "alice.pem").read_bytes())
    argv = ["audit", ledger / "ledger.jsonl", "--keys", keys]
    one_line_error(capsys, argv, keys, needle)


@pytest.mark.parametrize("tolerance", ["nan", "-1", "1"])
def test_audit_refuses_a_bad_tolerance(capsys, ledger, tolerance):
    one_line_error(capsys, audit_argv(ledger, None, "--tolerance", tolerance), "--tolerance")


@pytest.mark.parametrize("flags, needle", [
    (["--json", "{d}/ledger.jsonl"], "is a ledger being audited"),
    (["--html", "{d}/other.jsonl", "--compare", "{d}/other.jsonl"], "is a ledger being audited"),
    (["--html", "{d}/keys"], "is a folder"),
    (["--json", "{d}/report.json/inner.json"], "is a file, not a folder"),
    (["--html", "{d}/report.json", "--json", "{d}/report.json"], "name the same file"),
])
def test_audit_never_writes_a_report_over_its_input(capsys, ledger, flags, needle):
    (ledger / "other.jsonl").write_bytes((ledger / "ledger.jsonl").read_bytes())
    before = digest(ledger)
    flags = [f.format(d=ledger) for f in flags]
    one_line_error(capsys, audit_argv(ledger, None, *flags), flags[1], needle)
    assert digest(ledger) == before


# --------------------------------------------------------------------------- client, server


def client_argv(files: Path, tmp_path: Path, *extra: str, **over: str) -> list[str]:
    flags = {"--coordinator": "127.0.0.1:9", "--root-cert": str(files / "pki" / "ca.pem"),
             "--node-key": str(files / "pki" / "node-alice.key"),
             "--data": str(files / "good.csv"), "--max-epsilon": "3", "--port": free_port(),
             "--state-dir": str(tmp_path / "state")}
    flags.update(over)
    return ["client", *[x for pair in flags.items() for x in pair], *extra]


@pytest.mark.parametrize("extra, needle", [
    (["--max-wait-time", "-1"], "--max-wait-time -1"),
    (["--max-wait-time", "nan"], "--max-wait-time nan"),
    (["--max-wait-time", "inf"], "--max-wait-time inf"),
    (["--node-key", "{pki}/node-alice.pub"], "is not an OpenSSH private key: it holds a public"),
    (["--state-dir", "{files}/note.txt"], "--state-dir"),
    (["--state-dir", "{files}/note.txt/state"], "--state-dir"),
])
def test_client_refuses_before_connecting(capsys, files, tmp_path, extra, needle):
    extra = [e.format(pki=files / "pki", files=files) for e in extra]
    line = one_line_error(capsys, client_argv(files, tmp_path, *extra), needle)
    assert "coordinator" not in line


@pytest.mark.parametrize("name, why", BAD_DATA)
def test_client_refuses_bad_data_before_connecting(capsys, files, tmp_path, name, why):
    line = one_line_error(capsys, client_argv(files, tmp_path, **{"--data": str(files / name)}),
                          files / name, why)
    assert "coordinator" not in line
    assert not (tmp_path / "state").exists()


def test_server_keeps_an_existing_run(capsys, files, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ledger.jsonl").write_text('{"kept": true}\n')
    before = digest(run)
    one_line_error(capsys, ["server", "--certs-dir", files / "pki", "--keys-dir", files / "pki",
                            "--state-dir", tmp_path / "coord", "--run-dir", run],
                   f"--run-dir {run}", "already holds a run")
    assert digest(run) == before
    assert not (tmp_path / "coord").exists()


# --------------------------------------------------------------------------- controls


def test_good_input_passes_every_check(capsys, files, ledger, tmp_path):
    """The same commands with good input get past the checks: the refusals above are real."""
    for argv in (simulate_argv(tmp_path / "run", "--data-path", files / "good.csv"),
                 sweep_argv(tmp_path / "out", "--data-path", files / "good.csv")):
        with pytest.raises(AssertionError, match="the simulation started"):
            main([str(a) for a in argv])
    one_line_error(capsys, client_argv(files, tmp_path), "cannot reach coordinator 127.0.0.1:9")
    assert main([str(a) for a in audit_argv(ledger, None, "--json", tmp_path / "r.json")]) == 0
    assert (tmp_path / "r.json").exists() and "Traceback" not in capsys.readouterr().err
