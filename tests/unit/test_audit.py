"""The auditor's tool: a clean run passes, every false claim and tampering fails, and the
recomputed epsilon is Opacus's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from opacus import PrivacyEngine

from cli.main import main
from common import privacy
from common.audit import audit, compare_ledgers
from common.ledger.entry import GENESIS, entry_hash, make_entry
from common.ledger.keys import (
    generate_signing_key,
    load_private_key,
    load_trusted_keys,
)
from common.ledger.provenance import make_extra
from common.ledger.record import PrivacyRecord
from common.ledger.store import append_received, read_entries
from tests.helpers.records import SIGMA, STEPS, Q, node_ledgers, rewrite_lines, train_record

ROUNDS, DELTA = 3, 1e-5
NODES = ("alice", "bob", "carol")

# Our own PrivacyEngine below only counts steps; it never trains.
pytestmark = pytest.mark.filterwarnings("ignore:Secure RNG turned off")


def opacus_epsilon(phases, delta: float, accountant: str) -> float:
    """Epsilon the way a training node gets it: a PrivacyEngine's accountant, one step
    per optimiser step, then `get_epsilon`."""
    engine = PrivacyEngine(accountant=accountant)
    for sigma, q, steps in phases:
        for _ in range(steps):
            engine.accountant.step(noise_multiplier=sigma, sample_rate=q)
    return float(engine.get_epsilon(delta))


def claim(node_id: int, round_: int, claimed: float, *, budget: float = 8.0,
          total: int | None = None) -> PrivacyRecord:
    """Node `node_id`'s train record for `round_` (STEPS steps at SIGMA, Q), claiming
    epsilon `claimed` against `budget`; `total` overrides its total_steps."""
    changes = {} if total is None else {"total_steps": total}
    return train_record(round_, node_id, epsilon=claimed, epsilon_budget=budget,
                        delta=DELTA, disclosed={"num_examples": 1200}, **changes)


def run_federation(tmp: Path, *, budget: float = 8.0, lie_at: tuple[str, int] | None = None):
    """Three nodes train three rounds, each claiming the epsilon Opacus gives it.

    `lie_at=(node, round)` makes that node claim half its epsilon in that round.
    Returns the keys folder, each node's ledger path and the server's combined ledger.
    """
    server = tmp / "server.jsonl"
    ledgers = node_ledgers(tmp, NODES)
    for r in range(1, ROUNDS + 1):
        claimed = opacus_epsilon([(SIGMA, Q, STEPS)] * r, DELTA, "prv")
        for node_id, name in enumerate(NODES, start=1):
            eps = claimed / 2 if lie_at == (name, r) else claimed
            entry = ledgers[name].append(claim(node_id, r, eps, budget=budget),
                                         make_extra(model_in=f"{r:064x}"))
            append_received(server, entry, received_from=node_id)
    return tmp / "keys", {n: led.path for n, led in ledgers.items()}, server


@pytest.fixture
def fed(tmp_path: Path):
    return run_federation(tmp_path)


def cli(*argv: str) -> int:
    return main(["audit", *argv])


def failures(report) -> str:
    return "\n".join(str(p) for p in report.failures)


# --- a clean run ------------------------------------------------------------------------


def test_fedpriv_audit_runs_without_importing_flower(fed) -> None:
    """An auditor's machine needs no Flower: the wire format lives apart (common.wire)."""
    keys, _, server = fed
    probe = ("import sys; from cli.main import main; code = main(sys.argv[1:]); "
             "print('flwr loaded' if 'flwr' in sys.modules else 'flwr absent'); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, "audit", str(server), "--keys", str(keys)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "audit: PASS" in done.stdout and done.stdout.strip().endswith("flwr absent")




def test_clean_federation_passes_with_reports(fed, tmp_path: Path, capsys) -> None:
    keys, ledgers, server = fed
    html, js = tmp_path / "out" / "report.html", tmp_path / "out" / "report.json"
    assert cli(str(server), "--keys", str(keys), "--html", str(html), "--json", str(js),
               "--compare", str(ledgers["bob"])) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out
    page = html.read_text()
    assert page.count("data:image/png;base64,") == len(NODES)
    report = json.loads(js.read_text())
    assert report["ok"] and report["failures"] == []
    assert [n["node"] for n in report["nodes"]] == list(NODES)
    expected = opacus_epsilon([(SIGMA, Q, STEPS * ROUNDS)], DELTA, "prv")
    for name in NODES:
        assert name in page
    for node in report["nodes"]:
        assert node["rounds"] == ROUNDS and node["verdict"] == "PASS"
        assert node["prv"] == pytest.approx(expected, rel=1e-9)
        assert node["rdp"] > node["prv"]  # RDP's bound is looser: information only


def test_node_own_ledger_passes(fed) -> None:
    keys, ledgers, _ = fed
    assert cli(str(ledgers["alice"]), "--keys", str(keys)) == 0


# --- false claims and policy --------------------------------------------------------------


def test_claimed_epsilon_lower_than_recomputed_fails(tmp_path: Path, capsys) -> None:
    keys, _, server = run_federation(tmp_path, lie_at=("bob", 2))
    assert cli(str(server), "--keys", str(keys)) == 1
    out = capsys.readouterr().out
    assert f"{server}:5: node bob round 2: claims epsilon" in out
    report = audit(server, keys)
    assert [(p.node, p.round) for p in report.failures] == [("bob", 2)]


def test_node_over_its_budget_fails(tmp_path: Path) -> None:
    keys, _, server = run_federation(tmp_path, budget=3.3)  # round 2 spends ~3.16, round 3 ~3.55
    report = audit(server, keys)
    assert not report.ok
    assert {(p.node, p.round) for p in report.failures} == {(n, 3) for n in NODES}
    assert all("over budget" in p.what for p in report.failures)


def test_total_steps_inconsistent_with_train_records_fails(tmp_path: Path) -> None:
    ledger = node_ledgers(tmp_path, ["alice"])["alice"]
    for r in (1, 2):
        eps = opacus_epsilon([(SIGMA, Q, STEPS)] * r, DELTA, "prv")
        ledger.append(claim(1, r, eps, total=STEPS * r + (5 if r == 2 else 0)))
    report = audit(ledger.path, tmp_path / "keys")
    assert "round 2: total_steps 65 but" in failures(report)


def test_refused_round_is_accounted_without_steps(tmp_path: Path) -> None:
    ledger = node_ledgers(tmp_path, ["alice"])["alice"]
    eps = opacus_epsilon([(SIGMA, Q, STEPS)], DELTA, "prv")
    ledger.append(claim(1, 1, eps))
    refused = claim(1, 2, eps)
    ledger.append(PrivacyRecord(**{**refused.__dict__, "kind": "refused", "steps": 0,
                                   "total_steps": STEPS, "reason": "budget exhausted"}))
    report = audit(ledger.path, tmp_path / "keys")
    assert report.ok, failures(report)
    assert report.nodes[0].rounds == 1 and report.nodes[0].refused == 1


# --- tampering, through the audit ---------------------------------------------------------


def test_changed_number_fails_naming_the_record(fed, capsys) -> None:
    keys, _, server = fed

    def edit(es):
        es[4]["record"]["noise_multiplier"] = 1.6  # bob, round 2: a "stronger" noise claim
        return es
    rewrite_lines(server, edit)
    assert cli(str(server), "--keys", str(keys)) == 1
    assert f"{server}:5: node bob round 2: bad signature" in capsys.readouterr().out


@pytest.mark.parametrize("edit, node, round_, what", [
    (lambda es: es[:3] + es[6:], "alice", 3, "broken chain"),
    (lambda es: [es[0], es[4], es[2], es[3], es[1], *es[5:]], "bob", 2, "broken chain"),
], ids=["round-2-deleted", "bob-rounds-1-2-swapped"])
def test_deleted_or_swapped_records_fail(fed, edit, node, round_, what) -> None:
    keys, _, server = fed
    rewrite_lines(server, edit)
    report = audit(server, keys)
    assert any(p.node == node and p.round == round_ and what in p.what
               for p in report.failures), failures(report)


def test_record_signed_by_another_key_fails(fed, tmp_path: Path) -> None:
    keys, ledgers, server = fed
    mallory = generate_signing_key()  # not in the keys folder
    entry = make_entry(claim(1, 4, 0.1), None, last_hash(ledgers["alice"]), mallory)
    append_received(server, entry, received_from=1)
    report = audit(server, keys)
    assert "not among the trusted keys" in failures(report)


def last_hash(path: Path) -> str:
    return entry_hash(read_entries(path)[-1])


def test_record_appended_after_the_fact_fails(fed, tmp_path: Path) -> None:
    keys, ledgers, server = fed
    alice = load_private_key(tmp_path / "private" / "alice.pem")
    late = make_entry(claim(1, 4, 9.9), None, GENESIS, alice)
    append_received(server, late, received_from=1)
    report = audit(server, keys)
    assert any(p.node == "alice" and p.round == 4 and "broken chain" in p.what
               for p in report.failures)


def test_truncated_tail_is_caught_by_comparing_copies(fed, capsys) -> None:
    keys, ledgers, server = fed
    rewrite_lines(server, lambda es: es[:-1])  # carol's round 3 removed: the chain cannot tell
    assert audit(server, keys).ok
    problems = compare_ledgers(ledgers["carol"], server, load_trusted_keys(keys))
    assert [(p.node, p.round) for p in problems] == [("carol", 3)]
    assert "missing from" in problems[0].what
    assert cli(str(server), "--keys", str(keys), "--compare", str(ledgers["carol"])) == 1
    assert f"{ledgers['carol']}:3: node carol round 3: missing" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "keys").mkdir()
    assert cli(str(tmp_path / "none.jsonl"), "--keys", str(tmp_path / "keys")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedpriv: error: ") and "\n" not in err


# --- the recomputed epsilon is Opacus's ------------------------------------------------------


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("sigma, q, steps, rounds", [
    (0.5, 0.01, 10, 1),
    (0.5, 0.02, 200, 4),
    (0.8, 0.03, 90, 3),
    (1.0, 0.05, 300, 5),
    (1.0, 0.1, 100, 2),
    (1.5, 0.1, 1000, 10),
    (2.0, 0.01, 1000, 4),
    (2.0, 0.1, 500, 5),
])
def test_recomputed_epsilon_matches_opacus(sigma, q, steps, rounds, accountant) -> None:
    per_round = [(sigma, q, steps // rounds)] * rounds  # as the ledger holds them
    ours = privacy.epsilon(per_round, 1e-5, accountant)
    theirs = opacus_epsilon([(sigma, q, steps // rounds * rounds)], 1e-5, accountant)
    assert ours == pytest.approx(theirs, rel=0.01)


def test_changing_noise_between_rounds_matches_opacus() -> None:
    phases = [(1.0, 0.05, 40), (1.0, 0.05, 40), (0.7, 0.05, 40), (1.0, 0.05, 40)]
    for accountant in ("prv", "rdp"):
        assert privacy.epsilon(phases, 1e-5, accountant) == pytest.approx(
            opacus_epsilon(phases, 1e-5, accountant), rel=0.01)
