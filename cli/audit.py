"""`fedpriv audit`: verify a ledger (common.audit) and show or write the report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.audit_report import print_report, render_html, report_console
from common.audit import DEFAULT_TOLERANCE, AuditReport, audit
from common.errors import FedPrivError
from common.files import blocking_file, write_atomic


def add_audit_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`fedpriv audit LEDGER --keys KEYS_DIR [--html F] [--json F] [--compare OTHER]
    [--budgets FILE] [--absent NODE]...`."""
    parser.add_argument("ledger", metavar="LEDGER",
                        help="a node's own ledger or the server's combined one (JSONL)")
    parser.add_argument("--keys", required=True, metavar="KEYS_DIR",
                        help="folder of trusted <node>.pub Ed25519 public keys (PEM)")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--compare", metavar="OTHER_LEDGER",
                        help="another copy to check against (a node's own vs the server's)")
    parser.add_argument("--budgets", metavar="FILE",
                        help="the budgets each partner declared to you (JSON or TOML: node "
                             "name or key -> max-epsilon, delta): records are held to them")
    parser.add_argument("--absent", action="append", default=[], metavar="NODE",
                        help="a trusted node that took no part or left before the end: no "
                             "records or end-of-run attestation are required of it "
                             "(repeatable)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="relative amount a claimed epsilon may fall below the "
                             f"recomputed one (default {DEFAULT_TOLERANCE})")
    return parser


def run_audit_command(args: argparse.Namespace) -> int:
    """Run the audit; 0 when everything verifies, 1 on any failure.

    Unusable input raises FedPrivError, which `fedpriv` prints as one line (exit 2).
    """
    console = report_console()
    if not 0 <= args.tolerance < 1:
        raise FedPrivError(f"invalid --tolerance {args.tolerance}: must be in [0, 1)")
    outputs = _check_outputs(args)  # before the audit: a bad path costs nothing
    report = audit(args.ledger, args.keys, compare=args.compare, tolerance=args.tolerance,
                   budgets=args.budgets, absent=args.absent)
    texts = [(path, render(report)) for path, render in outputs]
    print_report(report, console)
    for path, text in texts:
        _write(path, text)
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    return 0 if report.ok else 1


def _check_outputs(args: argparse.Namespace) -> list[tuple[Path, Any]]:
    """The report files to write, each checked writable and none an input of the audit."""
    inputs = [Path(p) for p in (args.ledger, args.compare) if p]
    outputs: list[tuple[Path, Any]] = []
    for flag, value, render in (("--html", args.html, render_html),
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
