"""Bad input to `fedpriv audit`: one `fedpriv: error:` line, exit 2, and the ledger, keys
and earlier reports untouched. Every case goes through `cli.main.main`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers.cli import digest, one_line_error, run
from tests.helpers.records import attest, node_ledgers, refused_record

pytestmark = pytest.mark.usefixtures("no_simulation")


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> Path:
    """A node's real ledger (alice.jsonl: two refused rounds and her attestation), its
    trusted key (keys/alice.pub), and an earlier report beside them."""
    d = tmp_path_factory.mktemp("audit")
    alice = node_ledgers(d, ["alice"])["alice"]
    for r in (1, 2):
        alice.append(refused_record(r, run_id=1))
    attest(alice, refused_record(2, run_id=1))
    (d / "report.json").write_text('{"earlier": "report"}')
    return d


def audit_argv(d: Path, ledger_file: Path | None = None, *extra: object) -> list:
    return ["audit", ledger_file or d / "alice.jsonl", "--keys", d / "keys", *extra]


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
                     ":4: not a JSON"),
    "cut-off last line": (lambda d, text: corrupt(d, "cut.jsonl", text[:-40]), ":3: not a JSON"),
    "array": (lambda d, text: corrupt(d, "array.jsonl", b"[1, 2]\n" + text),
              ":1: ledger entry is not"),
}


@pytest.mark.parametrize("case", BAD_LEDGERS)
def test_audit_refuses_an_unreadable_ledger(capsys, ledger, case):
    make, needle = BAD_LEDGERS[case]
    bad = make(ledger, (ledger / "alice.jsonl").read_bytes())
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
    one_line_error(capsys, ["audit", ledger / "alice.jsonl", "--keys", keys], keys, needle)


@pytest.mark.parametrize("tolerance", ["nan", "-1", "1"])
def test_audit_refuses_a_bad_tolerance(capsys, ledger, tolerance):
    one_line_error(capsys, audit_argv(ledger, None, "--tolerance", tolerance), "--tolerance")


@pytest.mark.parametrize("flags, needle", [
    (["--json", "{d}/alice.jsonl"], "is a ledger being audited"),
    (["--html", "{d}/other.jsonl", "--compare", "{d}/other.jsonl"], "is a ledger being audited"),
    (["--html", "{d}/keys"], "is a folder"),
    (["--json", "{d}/report.json/inner.json"], "is a file, not a folder"),
    (["--html", "{d}/report.json", "--json", "{d}/report.json"], "name the same file"),
])
def test_audit_never_writes_a_report_over_its_input(capsys, ledger, flags, needle):
    (ledger / "other.jsonl").write_bytes((ledger / "alice.jsonl").read_bytes())
    before = digest(ledger)
    flags = [f.format(d=ledger) for f in flags]
    one_line_error(capsys, audit_argv(ledger, None, *flags), flags[1], needle)
    assert digest(ledger) == before


BAD_BUDGETS = {
    "missing": (None, "not found"),
    "not JSON": ("{alice: 4", "is not valid JSON"),
    "not TOML": ("[alice\nmax-epsilon = 4", "is not valid TOML"),
    "unknown node": ('{"mallory": {"max-epsilon": 4}}', "node 'mallory' is not among"),
    "not a table": ('{"alice": 4}', "must be a table"),
    "unknown field": ('{"alice": {"epsilon": 4}}', "unknown field 'epsilon'"),
    "negative epsilon": ('{"alice": {"max-epsilon": -1}}', "max-epsilon -1 must be"),
    "delta above 1": ('{"alice": {"max-epsilon": 4, "delta": 2}}', "delta 2 must be"),
    "empty": ("{}", "must map each node"),
}


@pytest.mark.parametrize("case", BAD_BUDGETS)
def test_audit_refuses_a_bad_budgets_file(capsys, ledger, tmp_path, case):
    text, needle = BAD_BUDGETS[case]
    budgets = tmp_path / ("budgets.toml" if "TOML" in case else "budgets.json")
    if text is not None:
        budgets.write_text(text)
    before = digest(ledger)
    one_line_error(capsys, audit_argv(ledger, None, "--budgets", budgets,
                                      "--json", ledger / "report.json"), budgets, needle)
    assert digest(ledger) == before


def test_audit_refuses_an_unknown_absent_node(capsys, ledger):
    one_line_error(capsys, audit_argv(ledger, None, "--absent", "mallory"),
                   "--absent 'mallory'", "no key of that name")


def test_good_input_passes_every_check(capsys, ledger, tmp_path):
    """The same ledger and keys audit cleanly: the refusals above are real."""
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[alice]\nmax-epsilon = 8.0\ndelta = 1e-5\n')
    assert run(audit_argv(ledger, None, "--json", tmp_path / "r.json", "--budgets",
                          budgets)) == 0
    assert "Traceback" not in capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is True and report["failures"] == []
    assert [node["node"] for node in report["nodes"]] == ["alice"]
