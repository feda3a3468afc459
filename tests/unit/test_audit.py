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
from common.ledger.record import PrivacyRecord
from common.ledger.store import append_received, read_entries
from tests.helpers.records import (
    SIGMA,
    STEPS,
    Q,
    attest,
    federation,
    node_ledgers,
    rewrite_lines,
    train_record,
)

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


def run_federation(tmp: Path, *, budget: float = 8.0, lie_at: tuple[str, int] | None = None,
                   attested: bool = True):
    """Three nodes train three rounds, each claiming the epsilon Opacus gives it, then
    (if `attested`) each signs its end-of-run attestation and the server records it.

    `lie_at=(node, round)` makes that node claim half its epsilon in that round.
    Returns the keys folder, each node's ledger path and the server's combined ledger.
    """
    claims = {r: opacus_epsilon([(SIGMA, Q, STEPS)] * r, DELTA, "prv")
              for r in range(1, ROUNDS + 1)}

    def record(name: str, node_id: int, r: int) -> PrivacyRecord:
        return claim(node_id, r, claims[r] / 2 if lie_at == (name, r) else claims[r],
                     budget=budget)

    keys, ledgers, server = federation(tmp, NODES, ROUNDS, record, attested)
    return keys, {n: led.path for n, led in ledgers.items()}, server


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
    assert page.count("data:image/png;base64,") == 1  # one plot of all nodes
    assert 'id="epsilon-plot"' in page and 'class="sortable"' in page
    assert page.count("<details") == len(NODES)
    report = json.loads(js.read_text())
    assert report["ok"] and report["failures"] == []
    assert [n["node"] for n in report["nodes"]] == list(NODES)
    expected = opacus_epsilon([(SIGMA, Q, STEPS * ROUNDS)], DELTA, "prv")
    for name in NODES:
        assert name in page
    for node in report["nodes"]:
        assert node["rounds"] == ROUNDS and node["verdict"] == "PASS"
        assert node["attested"] == "yes" and len(node["points"]) == ROUNDS + 1
        assert node["prv"] == pytest.approx(expected, rel=1e-9)
        assert node["rdp"] > node["prv"]  # RDP's bound is looser: information only


def test_node_own_ledger_passes(fed) -> None:
    """Alice's own ledger holds only her entries: the others are declared absent from it."""
    keys, ledgers, _ = fed
    assert cli(str(ledgers["alice"]), "--keys", str(keys), "--absent", "bob",
               "--absent", "carol") == 0


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
    refused = PrivacyRecord(**{**claim(1, 2, eps).__dict__, "kind": "refused", "steps": 0,
                               "total_steps": STEPS, "reason": "budget exhausted"})
    ledger.append(refused)
    attest(ledger, refused)
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


# --- completeness: a cut tail, a dropped node, a missing attestation ------------------------


@pytest.mark.parametrize("cut, what", [
    (lambda es: es[:-2] + es[-1:], "the attestation covers 3 entries of run 7 before it, the "
                                   "ledger holds 2: entries were cut"),
    (lambda es: es[:-2], "no end-of-run attestation after this entry"),
], ids=["last-record-cut", "last-record-and-attestation-cut"])
def test_a_cut_tail_fails(fed, capsys, cut, what) -> None:
    """The coordinator cuts carol's round-3 record: with her attestation kept, it points at
    an entry that is gone; without it, her entries end unattested."""
    keys, ledgers, server = fed
    rewrite_lines(server, cut)
    report = audit(server, keys)
    assert {p.node for p in report.failures} == {"carol"}
    assert any(what in p.what for p in report.failures), failures(report)
    assert [n.attested for n in report.nodes] == ["yes", "yes", "no"]
    assert cli(str(server), "--keys", str(keys)) == 1
    assert "node carol round" in capsys.readouterr().out


def test_a_dropped_node_fails_unless_declared_absent(fed) -> None:
    keys, _, server = fed
    rewrite_lines(server, lambda es: [e for e in es if e["received_from"] != 2])  # bob
    report = audit(server, keys)
    assert [(p.node, p.where) for p in report.failures] == [("bob", f"{server}:0")]
    assert "trusted key with no entries" in report.failures[0].what
    assert "--absent bob" in report.failures[0].what
    declared = audit(server, keys, absent=["bob"])
    assert declared.ok, failures(declared)
    assert "node bob: no entries, as declared (--absent)" in declared.notes


def test_a_missing_attestation_fails(tmp_path: Path, capsys) -> None:
    """A run whose nodes never attested (or a ledger from before attestations) fails for
    every node, and the message names the flag that audits it all the same."""
    keys, _, server = run_federation(tmp_path, attested=False)
    report = audit(server, keys)
    assert sorted(p.node for p in report.failures) == list(NODES)
    assert all("no end-of-run attestation" in p.what for p in report.failures)
    assert cli(str(server), "--keys", str(keys)) == 1
    assert "declare it with --absent alice" in capsys.readouterr().out
    declared = audit(server, keys, absent=list(NODES))
    assert declared.ok and len(declared.warnings) == len(NODES)


def test_a_truncated_tail_is_named_by_comparing_copies(fed, capsys) -> None:
    keys, ledgers, server = fed
    rewrite_lines(server, lambda es: es[:-2])  # carol's round 3 and her attestation removed
    problems = compare_ledgers(ledgers["carol"], server, load_trusted_keys(keys))
    assert [(p.node, p.round) for p in problems] == [("carol", 3), ("carol", 3)]
    assert all("missing from" in p.what for p in problems)
    assert cli(str(server), "--keys", str(keys), "--compare", str(ledgers["carol"])) == 1
    assert f"{ledgers['carol']}:3: node carol round 3: missing" in capsys.readouterr().out


def test_the_attestation_closes_the_run_on_the_node(fed) -> None:
    """Asked again, a node sends the attestation it signed; after it, it trains no more."""
    from client.attestation import closed_run

    keys, ledgers, _ = fed
    ledger = node_ledgers(keys.parent / "again", ["dave"])["dave"]
    assert closed_run(ledger, 7) is None
    record = claim(4, 1, 1.0)
    ledger.append(record)
    first = attest(ledger, record)
    assert attest(ledger, record) == first and len(ledger.entries()) == 2
    assert "signed its end-of-run attestation" in closed_run(ledger, 7)
    assert closed_run(ledger, 8) is None


# --- budgets declared by the partners -------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_record_over_the_declared_budget_fails(fed, tmp_path: Path, suffix) -> None:
    """Alice told the auditor she accepts epsilon 3.3; her records state budget 8 and stay
    within it, but round 3 reaches 3.55: that is caught, bob and carol pass."""
    keys, _, server = fed
    budgets = tmp_path / f"budgets{suffix}"
    budgets.write_text(json.dumps({"alice": {"max-epsilon": 3.3, "delta": 1e-5},
                                   "bob": {"max-epsilon": 8}, "carol": {"max-epsilon": 4}})
                       if suffix == ".json" else
                       '[alice]\nmax-epsilon = 3.3\ndelta = 1e-5\n[bob]\nmax-epsilon = 8\n'
                       '[carol]\nmax-epsilon = 4.0\n')
    assert audit(server, keys).ok
    report = audit(server, keys, budgets=budgets)
    assert [(p.node, p.round) for p in report.failures] == [("alice", 3)]
    assert "over the declared budget: epsilon 3.5" in report.failures[0].what
    assert "epsilon_budget 8" in report.failures[0].what
    assert report.nodes[0].declared.epsilon == 3.3
    assert cli(str(server), "--keys", str(keys), "--budgets", str(budgets)) == 1


def test_a_node_missing_from_the_budgets_file_and_a_looser_delta_fail(fed, tmp_path) -> None:
    keys, _, server = fed
    budgets = tmp_path / "budgets.json"
    budgets.write_text(json.dumps({"alice": {"max-epsilon": 8, "delta": 1e-6},
                                   "bob": {"max-epsilon": 8}}))
    report = audit(server, keys, budgets=budgets)
    found = {(p.node, p.round): p.what for p in report.failures}
    assert set(found) == {("alice", 1), ("carol", 1)}
    assert "delta 1e-05 is larger than the declared delta 1e-06" in found[("alice", 1)]
    assert "no declared budget for this node" in found[("carol", 1)]


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
