"""The audit report for people: a terminal table, and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

import opacus

from common.audit import PRV_EPS_ERROR, AuditReport, NodeSummary
from common.ledger.verify import Problem


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}" if math.isfinite(x) else str(x)


TABLE_COLUMNS = ("node", "run", "rounds", "refused", "eps claimed", "eps PRV", "eps RDP",
                 "budget", "declared", "delta", "accountant", "attested", "verdict")
NUMERIC = range(1, 10)  # the columns right-aligned and sorted as numbers


def table_rows(report: AuditReport) -> list[tuple[str, ...]]:
    """The per-node table, as text cells (shared by the terminal and HTML output)."""
    return [(n.node, str(n.run_id), str(n.rounds), str(n.refused), _fmt(n.claimed),
             _fmt(n.prv), _fmt(n.rdp), _fmt(n.budget),
             _fmt(n.declared.epsilon) if n.declared else "-", f"{n.delta:g}", n.accountant,
             n.attested or "-", n.verdict)
            for n in report.nodes]


def epsilon_plot_png(report: AuditReport) -> bytes:
    """One PNG for every node: cumulative claimed epsilon per round, failing nodes in red,
    each distinct budget as a dashed line. Readable at 100 nodes, where one plot per node
    is not."""
    # imported here: only reports need matplotlib (and no pyplot: no global figure state)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4), dpi=100)
    ax = fig.add_subplot()
    failing = 0
    for n in report.nodes:
        pts = [p for p in n.points if math.isfinite(p.claimed)]
        if not pts:
            continue
        failing += bool(n.failures)
        style = dict(color="#b00020", alpha=0.9, linewidth=1.6, zorder=3) if n.failures \
            else dict(color="#1f5fa8", alpha=0.35 if len(report.nodes) > 10 else 0.9,
                      linewidth=1.0)
        ax.plot([p.round for p in pts], [p.claimed for p in pts], marker=".", **style)
    for budget in sorted({n.budget for n in report.nodes if math.isfinite(n.budget)}):
        ax.axhline(budget, color="#555", linestyle="--", linewidth=0.8)
        ax.annotate(f"budget {budget:g}", (0, budget), xycoords=("axes fraction", "data"),
                    xytext=(4, 2), textcoords="offset points", fontsize=8, color="#555")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative epsilon claimed")
    if not any(math.isfinite(p.claimed) for n in report.nodes for p in n.points):
        ax.text(0.5, 0.5, "no finite epsilon to plot (no DP guarantee claimed)",
                ha="center", transform=ax.transAxes)
    ax.set_title(f"{len(report.nodes)} node(s), {failing} failing (red)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:80em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}td{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \\2195";
color:#999}.PASS{color:#176f2c;font-weight:bold}.FAIL{color:#b00020;font-weight:bold}
li.fail{color:#b00020}li.warn{color:#8a5a00}code{background:#f6f6f6;padding:0 .2em}
details{margin:.2em 0}summary{cursor:pointer}details table{font-size:.9em}
"""

# Click a column header to sort the table by it (numbers as numbers), again to reverse.
_SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function(th, col) {
  th.addEventListener("click", function() {
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var dir = th.dataset.dir === "asc" ? -1 : 1;
    th.dataset.dir = dir === 1 ? "asc" : "desc";
    function key(row) { var t = row.cells[col].textContent, n = parseFloat(t);
                        return isNaN(n) ? t : n; }
    rows.sort(function(a, b) { var x = key(a), y = key(b);
      return (typeof x === typeof y ? (x > y) - (x < y) : typeof x === "number" ? -1 : 1) * dir; });
    rows.forEach(function(r) { body.appendChild(r); });
  });
});
"""


def _problems(title: str, problems: Sequence[Problem], cls: str) -> str:
    lis = "".join(f'<li class="{cls}"><code>{html.escape(str(p))}</code></li>'
                  for p in problems)
    return f"<h2>{title} ({len(problems)})</h2><ul>{lis or '<li>none</li>'}</ul>"


def _node_details(n: NodeSummary) -> str:
    """One node's records and findings, folded away until asked for."""
    e = html.escape
    head = "".join(f"<th>{c}</th>" for c in ("where", "round", "kind", "steps", "total steps",
                                             "claimed", "PRV", "RDP", "budget", "delta"))
    rows = "".join(
        "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in (p.where, p.round, p.kind)) +
        "".join(f'<td class="num">{e(c)}</td>' for c in (
            str(p.steps), str(p.total_steps), _fmt(p.claimed), _fmt(p.prv), _fmt(p.rdp),
            _fmt(p.budget), f"{p.delta:g}")) + "</tr>" for p in n.points)
    findings = "".join(f'<li class="fail"><code>{e(str(p))}</code></li>' for p in n.failures)
    findings += "".join(f'<li class="warn"><code>{e(str(p))}</code></li>' for p in n.warnings)
    verdict = n.verdict.split()[0]
    return (f'<details id="node-{e(n.node)}-{n.run_id}"><summary>{e(n.node)}, run {n.run_id}: '
            f'<span class="{verdict}">{e(n.verdict)}</span>, key <code>{e(n.node_key)}</code>'
            f'</summary><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
            f'{f"<ul>{findings}</ul>" if findings else ""}</details>')


def render_html(report: AuditReport) -> str:
    """A self-contained HTML report: inline CSS and script, the plot embedded as PNG.

    Built to stay readable for 100 nodes: one combined epsilon plot, one sortable table,
    and each node's records on demand (<details>).
    """
    e = html.escape
    verdict = "PASS" if report.ok else "FAIL"
    head = "".join(f"<th>{e(c)}</th>" for c in TABLE_COLUMNS)
    rows = []
    for cells in table_rows(report):
        tds = [f'<td class="num">{e(c)}</td>' if i in NUMERIC else f"<td>{e(c)}</td>"
               for i, c in enumerate(cells[:-1])]
        v = cells[-1]
        tds.append(f'<td class="{v.split()[0]}">{e(v)}</td>')
        rows.append("<tr>" + "".join(tds) + "</tr>")
    notes = "".join(f"<li>{e(n)}</li>" for n in report.notes)
    plot = base64.b64encode(epsilon_plot_png(report)).decode()
    sources = [f"Compared with <code>{e(report.compared_with)}</code>."
               if report.compared_with else "",
               f"Declared budgets from <code>{e(report.budgets_file)}</code>."
               if report.budgets_file else "",
               f"Declared absent: {e(', '.join(report.absent))}." if report.absent else ""]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Privacy audit: {verdict}</title>
<style>{_CSS}</style></head><body>
<h1>Privacy audit: <span class="{verdict}">{verdict}</span></h1>
<p>Ledger <code>{e(report.ledger)}</code> ({report.entries} entries, {len(report.nodes)}
node(s)), trusted keys <code>{e(report.keys_dir or "none")}</code>. Epsilon recomputed with
Opacus {e(opacus.__version__)} (PRV and RDP); a claim may be at most
{report.tolerance:.1%} (PRV: or {PRV_EPS_ERROR}) below the recomputed value.
{" ".join(s for s in sources if s)}</p>
{_empirical_html(report.empirical)}
<h2>Epsilon per round, all nodes</h2>
<img id="epsilon-plot" alt="cumulative epsilon per round of all {len(report.nodes)} nodes"
src="data:image/png;base64,{plot}">
{_problems("Failures", report.failures, "fail")}
{_problems("Warnings", report.warnings, "warn")}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<h2>Nodes</h2><p>Click a column to sort.</p>
<table id="nodes" class="sortable"><thead><tr>{head}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<h2>Each node's records</h2>
{"".join(_node_details(n) for n in report.nodes)}
<script>{_SORT_JS}</script>
</body></html>
"""


def _empirical_html(runs: Sequence[dict[str, Any]]) -> str:
    """The empirical audit's rows (fedpriv audit-empirical), beside the claimed epsilon."""
    if not runs:
        return ""
    e = html.escape
    cols = ("setting", "claimed epsilon", "empirical lower bound", "confidence", "canaries",
            "guesses", "correct", "seconds")
    rows = "".join(
        "<tr>" + "".join(f'<td class="num">{e(str(c))}</td>' for c in (
            r["setting"], _fmt(r["claimed_epsilon"]), f"{r['epsilon_lower_bound']:.3f}",
            f"{r['confidence']:.0%}", r["canaries"], r["guesses"], r["correct"],
            f"{r['seconds']:.0f}")) + "</tr>" for r in runs)
    head = "".join(f"<th>{c}</th>" for c in cols)
    return (f'<h2>Empirical privacy audit</h2><p>One-run audit (Steinke, Nasr and Jagielski '
            f'2023): the epsilon that the canaries\' guessing accuracy proves, at the stated '
            f'confidence, against the epsilon the ledger claims.</p><table id="empirical">'
            f'<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')


def report_console() -> Any:
    """A rich console for the audit's tables; a pipe or file gets 132 columns, not 80."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 132))


def print_report(report: AuditReport, console: Any = None) -> None:
    """The table and every failure (file:line, node, round) on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"privacy audit of {report.ledger}")
    for i, c in enumerate(TABLE_COLUMNS):
        table.add_column(c, justify="right" if i in NUMERIC else "left")
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


