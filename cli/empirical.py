"""`fedpriv audit-empirical`: the empirical privacy audit of a simulated run (one run with
canaries, Steinke, Nasr and Jagielski 2023), shown beside the epsilon the ledger claims."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from cli.flags import run_config_from
from cli.simulate import PRESETS, add_simulation_flags
from common.errors import ConfigError, require

# 26 canary nodes x 384 input axes x 2 canaries: about 20,000 canaries, enough for the
# one-run bound to exceed epsilon 8 when every guess is right (fewer cannot, whatever
# the attack: docs/empirical-audit.md).
DEFAULT_CANARY_CLIENTS = 26
# The audited run's length unless flags say otherwise. What is scored is the replies a
# canary node's outbox keeps, its last 3 (client/outbox.py KEEP), and each round costs 30
# ClientApp calls: the default run's 30 rounds would cost ten times as long and be scored
# on the same 3. The mechanism audited is the default's (clipping, noise, Poisson
# sampling, each node's sigma, AdamW with its kept moments); see docs/empirical-audit.md.
AUDITED_RUN = {"num-rounds": 3, "local-epochs": 5}
COLUMNS = ("setting", "eps claimed", "eps lower bound", "confidence", "canaries", "guesses",
           "correct", "seconds")


def add_empirical_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--canary-clients", type=int, default=DEFAULT_CANARY_CLIENTS,
                        help="simulated nodes that train on canaries, beside --num-clients "
                             f"real ones (default {DEFAULT_CANARY_CLIENTS})")
    parser.add_argument("--guess-fraction", type=float, default=1.0,
                        help="share of the canaries the auditor guesses (fixed before the "
                             "run; default 1: all)")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="confidence of the lower bound (default 0.95)")
    parser.add_argument("--out", default="", metavar="DIR",
                        help="folder for the run, the canaries and the reports (new)")
    add_simulation_flags(parser)
    return parser


def run_empirical_command(args: argparse.Namespace) -> int:
    """0 when the bound stays at or below the claimed epsilon, 1 when it refutes it."""
    require(0 < args.confidence < 1, "--confidence", args.confidence, "must be in (0, 1)")
    require(0 < args.guess_fraction <= 1, "--guess-fraction", args.guess_fraction,
            "must be in (0, 1]")
    cfg = run_config_from(args, {**PRESETS[args.preset], **AUDITED_RUN})
    out = Path(args.out or f"runs/audit-empirical-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"invalid --out {out}: it exists and is not an empty folder")
    from rich.table import Table

    from cli.audit_report import render_html, report_console
    from cli.simulate import simulation_resources
    from common.audit import audit
    from common.files import write_atomic
    from simulations.empirical import audit_empirically

    row = audit_empirically(cfg, simulation_resources(args), args.canary_clients, out,
                            guess_fraction=args.guess_fraction, confidence=args.confidence)
    run_dir = Path(row["run_dir"])
    report = audit(run_dir / "ledger.jsonl", run_dir / "node-keys")
    report.empirical = [row]
    write_atomic(out / "audit.html", render_html(report).encode())
    write_atomic(out / "audit.json", report.to_json().encode())
    table = Table(title=f"empirical privacy audit ({out})")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "setting" else "right")
    table.add_row(*empirical_cells(row))
    console = report_console()
    console.print(table)
    refuted = row["epsilon_lower_bound"] > row["claimed_epsilon"]
    console.print(f"{'REFUTED' if refuted else 'consistent'}: with {row['confidence']:.0%} "
                  f"confidence the run is not ({row['epsilon_lower_bound']:.3f}, "
                  f"{row['delta']:g})-DP; it claims epsilon {row['claimed_epsilon']:.4g}. "
                  f"Reports: {out / 'audit.html'}, {out / 'audit.json'}", highlight=False)
    return 1 if refuted else 0


def empirical_cells(row: dict) -> tuple[str, ...]:
    """One row of the empirical audit's table (the terminal's and the benchmark's)."""
    claimed = row["claimed_epsilon"]
    return (row["setting"], f"{claimed:.3f}" if math.isfinite(claimed) else "inf",
            f"{row['epsilon_lower_bound']:.3f}", f"{row['confidence']:.0%}",
            str(row["canaries"]), str(row["guesses"]), str(row["correct"]),
            f"{row['seconds']:.0f}")
