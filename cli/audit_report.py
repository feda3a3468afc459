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


