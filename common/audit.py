"""The auditor's tool: verify a privacy ledger and recompute every epsilon it claims.

`audit` checks, for a node's own ledger or the server's combined one:

1. integrity: every entry signed by a trusted node key, each node's hash chain
   unbroken (`common.ledger.verify_entries`);
2. accounting: for each node and run, the cumulative epsilon after every record is
   recomputed from the (noise multiplier, sample rate, steps) of all that node's
   train records so far, with both Opacus accountants (PRV and RDP). A claim lower
   than the node's declared accountant gives (beyond a small tolerance) fails; the
   other accountant is reported for information;
3. policy: every node stayed within the epsilon budget it declared, and its
   total_steps agree with the steps of its train records.

No privacy mathematics is done here: epsilon comes from
`opacus.accountants.create_accountant`, fed the history exactly as Opacus keeps it.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import opacus
from opacus.accountants import create_accountant

from common.errors import FedPrivError
from common.files import blocking_file, write_atomic
from common.ledger import (
    EXTRA_KEY,
    LedgerLine,
    Problem,
    entry_hash,
    key_names,
    load_trusted_keys,
    node_name,
    read_ledger,
    verify_entries,
)
from common.privacy import MECHANISM

ACCOUNTANTS = ("prv", "rdp")
DEFAULT_TOLERANCE = 0.01   # relative: a claim may be at most 1% below the recomputed epsilon
PRV_EPS_ERROR = 0.01       # Opacus PRVAccountant's default eps_error (absolute)
BUDGET_SLACK = 1e-9        # float noise only: a budget is a hard limit

Phase = tuple[float, float, int]


# --- epsilon, by Opacus -----------------------------------------------------------


def opacus_history(phases: Sequence[Phase]) -> tuple[Phase, ...]:
    """The history an Opacus accountant would hold after these rounds.

    Opacus's accountants merge consecutive steps with the same (sigma, q) into one
    phase, so three rounds of 30 identical steps are one phase of 90 steps.
    """
    merged: list[Phase] = []
    for sigma, q, steps in phases:
        if steps <= 0:
            continue
        if merged and merged[-1][0] == sigma and merged[-1][1] == q:
            merged[-1] = (sigma, q, merged[-1][2] + steps)
        else:
            merged.append((float(sigma), float(q), int(steps)))
    return tuple(merged)


def recompute_epsilon(phases: Sequence[Phase], delta: float, accountant: str) -> float:
    """Epsilon of all `phases` at `delta`, by a fresh Opacus accountant ("prv" or "rdp")."""
    return _epsilon(opacus_history(phases), float(delta), accountant)


@lru_cache(maxsize=4096)  # a pure function of its arguments; PRV is slow enough to memoise
def _epsilon(history: tuple[Phase, ...], delta: float, accountant: str) -> float:
    if not history:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


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
    entries: int = 0
    generated_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return _finite({
            "ledger": self.ledger, "keys_dir": self.keys_dir, "compared_with": self.compared_with,
            "ok": self.ok, "entries": self.entries, "tolerance": self.tolerance,
            "opacus": opacus.__version__, "generated_at": self.generated_at,
            "nodes": [n.to_dict() for n in self.nodes],
            "failures": [p.to_dict() | {"text": str(p)} for p in self.failures],
            "warnings": [p.to_dict() | {"text": str(p)} for p in self.warnings],
            "notes": self.notes,
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    def to_html(self) -> str:
        return render_html(self)


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
          compare: str | Path | None = None,
          tolerance: float = DEFAULT_TOLERANCE) -> AuditReport:
    """Verify a ledger (a node's own or the server's combined one) and its accounting.

    `keys_dir` holds the trusted `<node>.pub` keys; None checks signatures against
    the keys the entries name (integrity only, not identity). `compare` is another
    copy to check against (a node's own ledger against the server's, or back).
    """
    trusted = load_trusted_keys(keys_dir) if keys_dir is not None else None
    lines = read_ledger(ledger_path)
    report = AuditReport(ledger=str(ledger_path), tolerance=tolerance,
                         keys_dir=str(keys_dir) if keys_dir is not None else None,
                         entries=len(lines))
    if trusted is None:
        report.notes.append("no trusted keys given: signatures prove integrity, not identity")
    if not lines:
        report.failures.append(Problem(f"{ledger_path}:0", "-", None, "the ledger is empty"))
        return report
    names = key_names(trusted)
    integrity = verify_entries(lines, trusted)
    report.failures.extend(integrity)
    groups = _groups(lines)
    report.nodes = [_audit_node(group, names, tolerance) for group in groups]
    for group, summary in zip(groups, report.nodes, strict=True):
        report.failures.extend(summary.failures)
        report.warnings.extend(summary.warnings)
        wheres = {ln.where for ln in group}
        summary.failures[:0] = [p for p in integrity if p.where in wheres]
    report.notes.extend(_composition_notes(report.nodes))
    if compare is not None:
        report.compared_with = str(compare)
        other = read_ledger(compare)
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
        _check_budget(rec, rec["epsilon"], prv if rec["accountant"] == "prv" else rdp, fail)
        s.points.append(RoundPoint(where=ln.where, round=rec["round"], kind=rec["kind"],
                                   steps=steps, total_steps=rec["total_steps"],
                                   claimed=rec["epsilon"], prv=prv, rdp=rdp,
                                   budget=rec["epsilon_budget"],
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
            out.append(recompute_epsilon(phases, delta, accountant))
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


def _check_budget(rec: Mapping[str, Any], claimed: float, recomputed: float | None,
                  fail: Any) -> None:
    budget = rec["epsilon_budget"]
    limit = budget * (1 + BUDGET_SLACK)
    for spent in (claimed, recomputed):
        if spent is not None and not spent <= limit:  # NaN fails as well
            fail(f"over budget: epsilon {spent:.4f} is not within the node's "
                 f"epsilon_budget {budget:g}")
            return


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


# --- output -------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}" if math.isfinite(x) else str(x)


TABLE_COLUMNS = ("node", "run", "rounds", "refused", "eps claimed", "eps PRV", "eps RDP",
                 "budget", "delta", "accountant", "verdict")


def table_rows(report: AuditReport) -> list[tuple[str, ...]]:
    """The per-node table, as text cells (shared by the terminal and HTML output)."""
    return [(n.node, str(n.run_id), str(n.rounds), str(n.refused), _fmt(n.claimed),
             _fmt(n.prv), _fmt(n.rdp), _fmt(n.budget), f"{n.delta:g}", n.accountant, n.verdict)
            for n in report.nodes]


def plot_png(summary: NodeSummary) -> bytes:
    """A PNG of one node's cumulative epsilon per round: claimed, PRV, RDP and budget."""
    # imported here: only reports need matplotlib (and no pyplot: no global figure state)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5.5, 3.2), dpi=100)
    ax = fig.add_subplot()
    pts = [p for p in summary.points if p.kind == "train"] or summary.points
    rounds = [p.round for p in pts]
    for label, values, style in (("claimed", [p.claimed for p in pts], "o-"),
                                 ("PRV (recomputed)", [p.prv for p in pts], "s--"),
                                 ("RDP (recomputed)", [p.rdp for p in pts], "^:")):
        if all(v is not None and math.isfinite(v) for v in values):
            ax.plot(rounds, values, style, label=label)
    ax.axhline(summary.budget, color="red", linewidth=1, label="budget")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("round")
    ax.set_ylabel(f"cumulative epsilon (delta {summary.delta:g})")
    ax.set_title(f"{summary.node}, run {summary.run_id}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:70em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.PASS{color:#176f2c;font-weight:bold}.FAIL{color:#b00020;font-weight:bold}
li.fail{color:#b00020}li.warn{color:#8a5a00}figure{display:inline-block;margin:.5em}
code{background:#f6f6f6;padding:0 .2em}
"""


def render_html(report: AuditReport) -> str:
    """A self-contained HTML report: inline CSS, plots embedded as base64 PNG."""
    e = html.escape
    verdict = "PASS" if report.ok else "FAIL"
    head = "".join(f"<th>{e(c)}</th>" for c in TABLE_COLUMNS)
    rows = []
    for cells in table_rows(report):
        tds = [f'<td class="num">{e(c)}</td>' if 1 <= i <= 8 else f"<td>{e(c)}</td>"
               for i, c in enumerate(cells[:-1])]
        v = cells[-1]
        tds.append(f'<td class="{v.split()[0]}">{e(v)}</td>')
        rows.append("<tr>" + "".join(tds) + "</tr>")

    def section(title: str, problems: Sequence[Problem], cls: str) -> str:
        lis = "".join(f'<li class="{cls}"><code>{e(str(p))}</code></li>' for p in problems)
        return f"<h2>{title} ({len(problems)})</h2><ul>{lis or '<li>none</li>'}</ul>"

    notes = "".join(f"<li>{e(n)}</li>" for n in report.notes)

    figures = "".join(
        f'<figure><img alt="epsilon per round of {e(n.node)}" src="data:image/png;base64,'
        f'{base64.b64encode(plot_png(n)).decode()}"></figure>'
        for n in report.nodes if n.points)
    compared = (f"<p>Compared with <code>{e(report.compared_with)}</code>.</p>"
                if report.compared_with else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Privacy audit: {verdict}</title>
<style>{_CSS}</style></head><body>
<h1>Privacy audit: <span class="{verdict}">{verdict}</span></h1>
<p>Ledger <code>{e(report.ledger)}</code> ({report.entries} entries), trusted keys
<code>{e(report.keys_dir or "none")}</code>. Epsilon recomputed with Opacus
{e(opacus.__version__)} (PRV and RDP); a claim may be at most
{report.tolerance:.1%} (PRV: or {PRV_EPS_ERROR}) below the recomputed value.</p>
{compared}
<table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>
{section("Failures", report.failures, "fail")}
{section("Warnings", report.warnings, "warn")}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<h2>Epsilon per round</h2>{figures}
</body></html>
"""


def print_report(report: AuditReport, console: Any = None) -> None:
    """The table and every failure (file:line, node, round) on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"privacy audit of {report.ledger}")
    for i, c in enumerate(TABLE_COLUMNS):
        table.add_column(c, justify="right" if 1 <= i <= 8 else "left")
    for cells in table_rows(report):
        style = "red" if cells[-1].startswith("FAIL") else "green"
        table.add_row(*cells[:-1], f"[{style}]{cells[-1]}[/{style}]")
    console.print(table)
    for p in report.failures:
        console.print(f"[red]FAIL[/red] {p}", markup=True, highlight=False, soft_wrap=True)
    for p in report.warnings:
        console.print(f"[yellow]warn[/yellow] {p}", markup=True, highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    verdict = "[green]PASS[/green]" if report.ok else f"[red]FAIL[/red] ({len(report.failures)})"
    console.print(f"audit: {verdict}")


# --- command line -------------------------------------------------------------------


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """`fedpriv audit LEDGER --keys KEYS_DIR [--html F] [--json F] [--compare OTHER]`."""
    parser.add_argument("ledger", metavar="LEDGER",
                        help="a node's own ledger or the server's combined one (JSONL)")
    parser.add_argument("--keys", required=True, metavar="KEYS_DIR",
                        help="folder of trusted <node>.pub Ed25519 public keys (PEM)")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--compare", metavar="OTHER_LEDGER",
                        help="another copy to check against (a node's own vs the server's)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="relative amount a claimed epsilon may fall below the "
                             f"recomputed one (default {DEFAULT_TOLERANCE})")


def run_audit_command(args: argparse.Namespace) -> int:
    """Run the audit; 0 when everything verifies, 1 on any failure, 2 on unusable input.

    Under ``fedpriv audit`` unusable input raises FedPrivError, which the CLI prints as
    its one ``fedpriv: error:`` line; called on its own, this prints ``error: ...``.
    """
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a pipe or file: do not squeeze the table into 80 columns
        console = Console(width=max(console.width, 132))
    try:
        if not 0 <= args.tolerance < 1:
            raise FedPrivError(f"invalid --tolerance {args.tolerance}: must be in [0, 1)")
        outputs = _check_outputs(args)  # before the audit: a bad path costs nothing
        report = audit(args.ledger, args.keys, compare=args.compare, tolerance=args.tolerance)
        texts = [(path, render(report)) for path, render in outputs]
        print_report(report, console)
        for path, text in texts:
            _write(path, text)
            console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    except FedPrivError as exc:
        if getattr(args, "handler", None) is run_audit_command:
            raise  # `fedpriv audit`: the CLI prints it like every command's errors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if report.ok else 1


def _check_outputs(args: argparse.Namespace) -> list[tuple[Path, Any]]:
    """The report files to write, each checked writable and none an input of the audit."""
    inputs = [Path(p) for p in (args.ledger, args.compare) if p]
    outputs: list[tuple[Path, Any]] = []
    for flag, value, render in (("--html", args.html, AuditReport.to_html),
                                ("--json", args.json, AuditReport.to_json)):
        if not value:
            continue
        path = Path(value)
        if path.is_dir():
            raise FedPrivError(f"invalid {flag} {path}: is a folder; give a file name")
        if (blocker := blocking_file(path.parent)) is not None:
            raise FedPrivError(f"invalid {flag} {path}: {blocker} is a file, not a folder")
        for other in inputs:
            if _same_file(path, other):
                raise FedPrivError(f"invalid {flag} {path}: that is a ledger being audited; "
                                   "write the report to another file")
        if any(_same_file(path, done) for done, _ in outputs):
            raise FedPrivError(f"invalid {flag} {path}: --html and --json name the same file")
        outputs.append((path, render))
    return outputs


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _write(path: Path, text: str) -> None:
    """Replace the report atomically: a failed write leaves an earlier report as it was."""
    try:
        write_atomic(path, text.encode("utf-8"))
    except OSError as exc:
        raise FedPrivError(f"cannot write report {path}: {exc.strerror or exc}") from None
