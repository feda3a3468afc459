"""`fedpriv simulate` and `fedpriv sweep`: the same apps in Flower's simulation engine."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cli.flags import add_resume_flag, add_run_config_flags, run_config_from

# Presets of `fedpriv simulate`. "quick" (the README's main job) finishes in minutes on a
# 2-core CPU; "full" uses all 38k embedded examples and more rounds (a GPU node's job).
PRESETS: dict[str, dict] = {
    "quick": {"max-examples": 5000, "num-rounds": 30},
    "full": {"max-examples": 0, "num-rounds": 30},
}


def run_simulate_command(args: argparse.Namespace) -> int:
    base = dict(PRESETS[args.preset])
    base["run-dir"] = f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = run_config_from(args, base)  # before the heavy imports: a bad flag answers at once
    resources = simulation_resources(args)

    from simulations.plots import plot_run
    from simulations.run import simulate

    run_dir = simulate(cfg, resources, verbose=args.verbose)
    plots = plot_run(run_dir)
    print(f"run directory: {run_dir}  (ledger.jsonl, metrics.csv/json, final_model/, "
          f"{', '.join(p.name for p in plots)})")
    return 0


def simulation_resources(args: argparse.Namespace):
    from simulations.run import SimulationResources

    return SimulationResources(num_clients=args.num_clients, client_cpus=args.client_cpus,
                               client_gpus=args.client_gpus, ray_address=args.ray_address)


def run_sweep_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from simulations.sweep import parse_epsilons, sweep

    epsilons = parse_epsilons(args.epsilons)
    cfg = run_config_from(args, dict(PRESETS[args.preset]))
    out = Path(args.out or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    rows = sweep(cfg, epsilons, simulation_resources(args), out)
    table = Table(title=f"Privacy / utility ({out})")
    for col in ("setting", "finetune", "epsilon spent (max client)", "accuracy"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["setting"], r["finetune"], f"{r['epsilon_spent_max']:.2f}",
                      f"{r['accuracy']:.4f}")
    Console().print(table)
    return 0


def add_simulation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="quick (default): 5,000 examples; full: all data")
    parser.add_argument("--num-clients", type=int, default=4)
    parser.add_argument("--client-cpus", type=float, default=1.0,
                        help="CPU cores Ray reserves per simulated client")
    parser.add_argument("--client-gpus", type=float, default=0.0,
                        help="GPU share per simulated client (e.g. 0.25 puts 4 on one GPU)")
    parser.add_argument("--ray-address", default="",
                        help="join an existing Ray cluster ('auto' or ray://HOST:10001)")
    parser.add_argument("--verbose", action="store_true", help="show Flower's own logs")
    add_run_config_flags(parser)


def add_simulate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_simulation_flags(parser)
    add_resume_flag(parser)
    return parser


def add_sweep_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--epsilons", default="none,8,1",
                        help="comma-separated per-client epsilons; 'none' trains without DP")
    parser.add_argument("--out", default="", help="folder for the runs, sweep.csv and tradeoff.png")
    add_simulation_flags(parser)
    return parser
