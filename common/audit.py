"""The auditor's tool: verify a privacy ledger and recompute every epsilon it claims.

`audit` checks, for a node's own ledger or the server's combined one:

1. integrity: every entry signed by a trusted node key, each node's hash chain
   unbroken (`common.ledger.verify_entries`);
2. accounting: for each node and run, the cumulative epsilon after every record is
   recomputed from the (noise multiplier, sample rate, steps) of all that node's
   train records so far, with both Opacus accountants (PRV and RDP). A claim lower
   than the node's declared accountant gives (beyond a small tolerance) fails; the
   other accountant is reported for information;
3. policy: every node stayed within the epsilon budget its records state and, given
   `budgets`, within the budget its owner declared to the auditor
   (common.declared_budgets); its total_steps agree with the steps of its train records;
4. completeness: every trusted node has entries, and each node's entries of a run end
   in its signed end-of-run attestation, unless the auditor declares it absent
   (common.completeness).

No privacy mathematics is done here: epsilon comes from
`opacus.accountants.create_accountant`, fed the history exactly as Opacus keeps it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import opacus

from common.completeness import Completeness, nodes_present, run_closed
from common.config import ACCOUNTANTS
from common.declared_budgets import DeclaredBudget, load_declared_budgets
from common.errors import ConfigError
from common.ledger.entry import EXTRA_KEY, LedgerLine, entry_hash
from common.ledger.keys import load_trusted_keys
from common.ledger.store import read_ledger
from common.ledger.verify import Problem, key_names, node_name, verify_entries
from common.privacy import MECHANISM, Phase, epsilon

DEFAULT_TOLERANCE = 0.01   # relative: a claim may be at most 1% below the recomputed epsilon
PRV_EPS_ERROR = 0.01       # Opacus PRVAccountant's default eps_error (absolute)
BUDGET_SLACK = 1e-9        # float noise only: a budget is a hard limit


# --- the report ---------------------------------------------------------------------


@dataclass(frozen=True)
class RoundPoint:
    """One record of a node, with what it claims and what the audit recomputes."""

    where: str
    round: int
    kind: str
    steps: int
    total_steps: int
    claimed: float
    prv: float | None
    rdp: float | None
    budget: float
    delta: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class NodeSummary:
    """A node's row in the table: one node key in one run."""

    node: str
    node_key: str
    run_id: int
    node_id: int
    accountant: str
    delta: float
    budget: float
    rounds: int = 0                        # train records
    refused: int = 0
    claimed: float = 0.0                   # the latest cumulative epsilon the node claims
    prv: float | None = 0.0
    rdp: float | None = 0.0
    # The budget the node's owner declared to the auditor (--budgets), if given.
    declared: DeclaredBudget | None = None
    attested: str = ""                     # common.completeness: yes, no or absent
    points: list[RoundPoint] = field(default_factory=list)
    failures: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.failures:
            return f"FAIL ({len(self.failures)})"
        return f"PASS ({len(self.warnings)} warnings)" if self.warnings else "PASS"

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("failures", "warnings")}
        d.update(verdict=self.verdict, failures=[str(p) for p in self.failures],
                 warnings=[str(p) for p in self.warnings])
        return d


@dataclass
class AuditReport:
    ledger: str
    keys_dir: str | None
    tolerance: float
    nodes: list[NodeSummary] = field(default_factory=list)
    failures: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    compared_with: str | None = None
    budgets_file: str | None = None
    absent: list[str] = field(default_factory=list)
    # Rows of an empirical audit of the same run (common.empirical), when one was made.
    empirical: list[dict[str, Any]] = field(default_factory=list)
    entries: int = 0
    generated_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return _finite({
            "ledger": self.ledger, "keys_dir": self.keys_dir, "compared_with": self.compared_with,
            "budgets_file": self.budgets_file, "absent": self.absent,
            "empirical": self.empirical,
            "ok": self.ok, "entries": self.entries, "tolerance": self.tolerance,
            "opacus": opacus.__version__, "generated_at": self.generated_at,
            "nodes": [n.to_dict() for n in self.nodes],
            "failures": [p.to_dict() | {"text": str(p)} for p in self.failures],
            "warnings": [p.to_dict() | {"text": str(p)} for p in self.warnings],
            "notes": self.notes,
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)


def _finite(obj: Any) -> Any:
    """Strict JSON: an infinite or NaN epsilon (a non-private baseline) becomes a string."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# --- the audit ---------------------------------------------------------------------


def audit(ledger_path: str | Path, keys_dir: str | Path | None, *,
          compare: str | Path | None = None, tolerance: float = DEFAULT_TOLERANCE,
          budgets: str | Path | None = None, absent: Collection[str] = ()) -> AuditReport:
    """Verify a ledger (a node's own or the server's combined one) and its accounting.

    `keys_dir` holds the trusted `<node>.pub` keys; None checks signatures against
    the keys the entries name (integrity only, not identity, and no completeness).
    `compare` is another copy to check against (a node's own ledger against the
    server's, or back). `budgets` is the file of budgets the partners declared;
    `absent` names trusted nodes the auditor knows took no part or left early.
    """
    trusted = load_trusted_keys(keys_dir) if keys_dir is not None else None
    names = key_names(trusted)
    for name in absent:
        if name not in names.values():
            raise ConfigError(f"invalid --absent {name!r}: no key of that name in the keys "
                              f"folder {keys_dir}")
    declared = load_declared_budgets(budgets, names) if budgets is not None else None
    lines = read_ledger(ledger_path)
    report = AuditReport(ledger=str(ledger_path), tolerance=tolerance,
                         keys_dir=str(keys_dir) if keys_dir is not None else None,
                         budgets_file=str(budgets) if budgets is not None else None,
                         absent=sorted(absent), entries=len(lines))
    if trusted is None:
        report.notes.append("no trusted keys given: signatures prove integrity, not identity")
    if not lines:
        report.failures.append(Problem(f"{ledger_path}:0", "-", None, "the ledger is empty"))
        return report
    integrity = verify_entries(lines, trusted)
    report.failures.extend(integrity)
    groups = _groups(lines)
    report.nodes = [_audit_node(group, names, tolerance) for group in groups]
    found = Completeness()
    for group, summary in zip(groups, report.nodes, strict=True):
        if trusted is not None:
            completeness = Completeness()
            summary.attested = run_closed(group, names, absent, completeness)
            summary.failures.extend(completeness.failures)
            summary.warnings.extend(completeness.warnings)
        if declared is not None:
            summary.declared = declared.get(summary.node_key)
            summary.failures.extend(_declared_budget_problems(summary, str(budgets)))
        report.failures.extend(summary.failures)
        report.warnings.extend(summary.warnings)
        wheres = {ln.where for ln in group}
        summary.failures[:0] = [p for p in integrity if p.where in wheres]
    report.notes.extend(_composition_notes(report.nodes))
    other = read_ledger(compare) if compare is not None else []
    if trusted is not None:
        nodes_present(_keys(lines) | _keys(other), names, absent, f"{ledger_path}:0", found)
        report.failures.extend(found.failures)
        report.notes.extend(found.notes)
    if compare is not None:
        report.compared_with = str(compare)
        report.failures.extend(verify_entries(other, trusted))
        mine, theirs = (other, lines) if _keys(other) <= _keys(lines) else (lines, other)
        report.failures.extend(_compare(mine, theirs, names))
    return report


def _groups(lines: Sequence[LedgerLine]) -> list[list[LedgerLine]]:
    """Lines per (node key, run), each in ledger order, groups in order of first line."""
    groups: dict[tuple[str, Any], list[LedgerLine]] = {}
    for ln in lines:
        groups.setdefault((ln.entry["node_key"], ln.entry["record"]["run_id"]), []).append(ln)
    return list(groups.values())


def _audit_node(group: Sequence[LedgerLine], names: Mapping[str, str],
                tolerance: float) -> NodeSummary:
    first = group[0].entry
    rec0 = first["record"]
    s = NodeSummary(node=node_name(first["node_key"], names), node_key=first["node_key"],
                    run_id=rec0["run_id"], node_id=rec0["node_id"], accountant=rec0["accountant"],
                    delta=rec0["delta"], budget=rec0["epsilon_budget"])
    phases: list[Phase] = []
    total = 0
    recomputable = True  # until a record's parameters leave nothing to recompute from
    for ln in group:
        rec = ln.entry["record"]

        def fail(what: str, rec: Mapping[str, Any] = rec, ln: LedgerLine = ln) -> None:
            s.failures.append(Problem(ln.where, s.node, rec["round"], what))

        def warn(what: str, rec: Mapping[str, Any] = rec, ln: LedgerLine = ln) -> None:
            s.warnings.append(Problem(ln.where, s.node, rec["round"], what))

        _check_settings(rec, s, fail, warn)
        steps = rec["steps"]
        if rec["kind"] == "train":
            s.rounds += 1
            if rec["mechanism"] != MECHANISM:
                recomputable = False
                fail(f"mechanism {rec['mechanism']!r} is not {MECHANISM}: no differential "
                     "privacy guarantee to recompute")
            elif _phase_ok(rec, fail):
                phases.append((rec["noise_multiplier"], rec["sample_rate"], steps))
            else:
                recomputable = False
        else:
            s.refused += rec["kind"] == "refused"
            if steps != 0:
                fail(f"a {rec['kind']} record with {steps} DP-SGD steps: only train records "
                     "may take steps")
        total += steps
        if rec["total_steps"] != total:
            fail(f"total_steps {rec['total_steps']} but this node's records sum to {total} "
                 "steps in this run: a record is missing, or steps were changed")
            total = rec["total_steps"]  # resynchronise, so one gap is reported once
        prv = rdp = None
        if recomputable:
            prv, rdp = _recompute(phases, rec["delta"], fail)
            _check_claim(rec, prv, rdp, tolerance, fail)
        _check_record_budget(rec, rec["epsilon"], prv if rec["accountant"] == "prv" else rdp,
                             fail)
        s.points.append(RoundPoint(where=ln.where, round=rec["round"], kind=rec["kind"],
                                   steps=steps, total_steps=rec["total_steps"],
                                   claimed=rec["epsilon"], prv=prv, rdp=rdp,
                                   budget=rec["epsilon_budget"], delta=rec["delta"],
                                   extra=dict(rec.get(EXTRA_KEY) or {})))
        s.claimed, s.prv, s.rdp = rec["epsilon"], prv, rdp
        s.budget, s.delta, s.accountant = rec["epsilon_budget"], rec["delta"], rec["accountant"]
    return s


def _check_settings(rec: Mapping[str, Any], s: NodeSummary, fail: Any, warn: Any) -> None:
    if rec["accountant"] not in ACCOUNTANTS:
        fail(f"accountant {rec['accountant']!r} is not one of {', '.join(ACCOUNTANTS)}")
    if not 0.0 < rec["delta"] < 1.0:
        fail(f"delta {rec['delta']} is not in (0, 1)")
    if rec["delta"] != s.delta:
        warn(f"delta changed from {s.delta:g} to {rec['delta']:g} within the run")
    if rec["epsilon_budget"] != s.budget:
        warn(f"epsilon_budget changed from {s.budget:g} to {rec['epsilon_budget']:g} "
             "within the run")
    if rec["accountant"] != s.accountant:
        warn(f"accountant changed from {s.accountant} to {rec['accountant']} within the run")
    n = _example_count(rec.get("disclosed") or {})
    if n and rec["delta"] >= 1.0 / n:
        warn(f"delta {rec['delta']:g} is not below 1/N = {1.0 / n:g} for the {n} examples "
             "disclosed: the guarantee allows releasing a whole record")


def _example_count(disclosed: Mapping[str, Any]) -> int:
    counts = [int(v) for k, v in disclosed.items()
              if "example" in k.lower() and isinstance(v, int | float) and v > 0]
    return max(counts, default=0)


def _phase_ok(rec: Mapping[str, Any], fail: Any) -> bool:
    sigma, q, steps = rec["noise_multiplier"], rec["sample_rate"], rec["steps"]
    if not sigma > 0:
        fail(f"noise_multiplier {sigma!r} must be > 0 for a DP train record")
    elif not 0 < q <= 1:
        fail(f"sample_rate {q!r} must be in (0, 1]")
    elif steps < 0:
        fail(f"steps {steps!r} must be >= 0")
    else:
        return True
    return False


def _recompute(phases: Sequence[Phase], delta: float,
               fail: Any) -> tuple[float | None, float | None]:
    out: list[float | None] = []
    for accountant in ACCOUNTANTS:
        try:
            out.append(epsilon(phases, delta, accountant))
        except Exception as exc:  # a hostile ledger must not crash the audit
            # The numerical code can fail in many ways on extreme parameters; that is a
            # finding about this record, not a reason to stop auditing the others.
            fail(f"Opacus {accountant} accountant cannot evaluate this history: {exc}")
            out.append(None)
    return out[0], out[1]


def _check_claim(rec: Mapping[str, Any], prv: float | None, rdp: float | None,
                 tolerance: float, fail: Any) -> None:
    declared = rec["accountant"]
    recomputed = {"prv": prv, "rdp": rdp}.get(declared)
    if recomputed is None:
        return
    # PRV returns an upper bound within eps_error of the true epsilon; allow that much.
    slack = max(tolerance * recomputed, PRV_EPS_ERROR if declared == "prv" else 0.0)
    if not rec["epsilon"] >= recomputed - slack:  # written so that a NaN claim fails too
        fail(f"claims epsilon {rec['epsilon']:.4f} but Opacus {declared} gives "
             f"{recomputed:.4f} for this node's train records so far (delta {rec['delta']:g})")


def _check_record_budget(rec: Mapping[str, Any], claimed: float, recomputed: float | None,
                  fail: Any) -> None:
    budget = rec["epsilon_budget"]
    limit = budget * (1 + BUDGET_SLACK)
    for spent in (claimed, recomputed):
        if spent is not None and not spent <= limit:  # NaN fails as well
            fail(f"over budget: epsilon {spent:.4f} is not within the node's "
                 f"epsilon_budget {budget:g}")
            return


def _declared_budget_problems(s: NodeSummary, budgets_file: str) -> list[Problem]:
    """The node's records against the budget its owner declared (first breach of each)."""
    if not s.points:
        return []
    if s.declared is None:
        first = s.points[0]
        return [Problem(first.where, s.node, first.round, f"no declared budget for this node "
                        f"in {budgets_file}: its records can only be held to their own")]
    problems: list[Problem] = []
    limit = s.declared.epsilon * (1 + BUDGET_SLACK)
    # The claim, and the recomputed epsilon of the node's declared accountant.
    spent_by = [(p, v) for p in s.points
                for v in (p.claimed, p.prv if s.accountant == "prv" else p.rdp)
                if v is not None and not v <= limit]  # NaN is over, too
    if spent_by:
        over, spent = spent_by[0]
        problems.append(Problem(over.where, s.node, over.round, f"over the declared budget: "
                                f"epsilon {spent:.4f} exceeds the {s.declared.text()} the "
                                f"node's owner declared ({budgets_file}); the record states "
                                f"epsilon_budget {over.budget:g}"))
    if s.declared.delta is not None:
        loose = next((p for p in s.points if p.delta > s.declared.delta), None)
        if loose is not None:
            problems.append(Problem(loose.where, s.node, loose.round, f"delta {loose.delta:g} "
                                    f"is larger than the declared delta {s.declared.delta:g} "
                                    f"({budgets_file})"))
    return problems


def _composition_notes(nodes: Sequence[NodeSummary]) -> list[str]:
    runs: dict[str, list[int]] = {}
    for n in nodes:
        runs.setdefault(n.node, []).append(n.run_id)
    return [f"node {name} appears in {len(ids)} runs ({', '.join(map(str, ids))}): if they "
            "used the same data their epsilons compose; the table shows each run alone"
            for name, ids in runs.items() if len(ids) > 1]


# --- comparing two copies -----------------------------------------------------------


def compare_ledgers(node_ledger: str | Path, server_ledger: str | Path,
                    trusted_keys: Mapping[str, Any] | None = None) -> list[Problem]:
    """Check a node's own entries appear byte-identical in the server's combined ledger.

    Only the runs the server's ledger covers are compared. Flags the node's entries
    the server lacks or holds differently, and entries under the node's key that the
    server holds but the node never wrote. This is what reveals a truncated tail,
    which no hash chain shows by itself.
    """
    return _compare(read_ledger(node_ledger), read_ledger(server_ledger), key_names(trusted_keys))


def _keys(lines: Sequence[LedgerLine]) -> set[str]:
    return {ln.entry["node_key"] for ln in lines}


def _slot(ln: LedgerLine) -> tuple[Any, ...]:
    r = ln.entry["record"]
    return (ln.entry["node_key"], r["run_id"], r["round"], r["kind"])


def _compare(mine: Sequence[LedgerLine], theirs: Sequence[LedgerLine],
             names: Mapping[str, str]) -> list[Problem]:
    keys = _keys(mine)
    runs = {ln.entry["record"]["run_id"] for ln in theirs}
    mine = [ln for ln in mine if ln.entry["record"]["run_id"] in runs]
    theirs = [ln for ln in theirs if ln.entry["node_key"] in keys]
    problems: list[Problem] = []
    if not mine:
        where = f"{theirs[0].path}:0" if theirs else "-"
        return [Problem(where, "-", None, "the two ledgers share no run of this node: nothing "
                        "to compare")]
    their_hash = {entry_hash(ln.entry): ln for ln in theirs}
    their_slot = {_slot(ln): ln for ln in theirs}
    my_hash = {entry_hash(ln.entry) for ln in mine}
    my_slot = {_slot(ln) for ln in mine}
    other_path = theirs[0].path if theirs else "the other ledger"
    for ln in mine:
        name, rnd = node_name(ln.entry["node_key"], names), ln.entry["record"]["round"]
        if entry_hash(ln.entry) in their_hash:
            continue
        other = their_slot.get(_slot(ln))
        what = (f"differs from {other.where} ({_differences(ln.entry, other.entry)})"
                if other is not None else f"missing from {other_path}")
        problems.append(Problem(ln.where, name, rnd, what))
    for ln in theirs:
        if entry_hash(ln.entry) not in my_hash and _slot(ln) not in my_slot:
            problems.append(Problem(ln.where, node_name(ln.entry["node_key"], names),
                                    ln.entry["record"]["round"],
                                    f"not in the node's own ledger {mine[0].path}"))
    return problems


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    ra, rb = a["record"], b["record"]
    fields = sorted(k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k))
    fields += [k for k in ("prev_hash", "signature") if a[k] != b[k]]
    return "fields " + ", ".join(fields) if fields else "same content, different encoding"
