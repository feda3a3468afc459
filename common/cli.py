"""`fedpriv`: the command line of partners, researchers and auditors.

Run-config flags are generated from common.config, so a setting has one name in the
CLI, the Flower run config and the messages nodes receive.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

from common.config import SECTIONS, RunConfig, key_of
from common.errors import ConfigError, FedPrivError

RESUME_KEY = "resume"

# Presets of `fedpriv simulate`. "quick" (the README's main job) finishes in minutes on a
# 2-core CPU; "full" uses all 38k embedded examples and more rounds (a GPU node's job).
PRESETS: dict[str, dict] = {
    "quick": {"max-examples": 5000, "num-rounds": 3},
    "full": {"max-examples": 0, "num-rounds": 10},
}


def add_run_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = RunConfig().to_flat()
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        hints = get_type_hints(cls)
        for f in fields(cls):
            key, hint = key_of(f.name), hints[f.name]
            if key == RESUME_KEY:
                continue  # --resume RUN_DIR below
            if hint is bool:
                group.add_argument(f"--{key}", action=argparse.BooleanOptionalAction,
                                   default=None, help=f"(default: {defaults[key]})")
            else:
                group.add_argument(f"--{key}", type=str, default=None,
                                   metavar=hint.__name__.upper(),
                                   help=f"(default: {defaults[key]!r})")


def add_resume_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last good checkpoint and "
                        "its ledger, with the settings it was started with")


def run_config_from(args: argparse.Namespace, base: dict | None = None) -> RunConfig:
    given = {key: value for key in RunConfig().to_flat() if key != RESUME_KEY
             and (value := getattr(args, key.replace("-", "_"), None)) is not None}
    if getattr(args, "resume", None) is not None:
        from server.rundir import saved_run

        if given:
            raise ConfigError(f"--resume continues with the settings the run was started with: "
                              f"drop --{next(iter(given))}")
        saved = saved_run(args.resume)["config"]
        return RunConfig.from_flat({**saved, "run-dir": str(args.resume), RESUME_KEY: True})
    return RunConfig.from_flat({**(base or {}), **given})


def _simulate(args: argparse.Namespace) -> int:
    base = dict(PRESETS[args.preset])
    base["run-dir"] = f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = run_config_from(args, base)  # before the heavy imports: a bad flag answers at once
    resources = _resources(args)

    from simulations.plots import plot_run
    from simulations.run import simulate

    run_dir = simulate(cfg, resources, verbose=args.verbose)
    plots = plot_run(run_dir)
    print(f"run directory: {run_dir}  (ledger.jsonl, metrics.csv/json, final_model/, "
          f"{', '.join(p.name for p in plots)})")
    return 0


def _resources(args: argparse.Namespace):
    from simulations.run import SimulationResources

    return SimulationResources(num_clients=args.num_clients, client_cpus=args.client_cpus,
                               client_gpus=args.client_gpus, ray_address=args.ray_address)


def _sweep(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from simulations.sweep import parse_epsilons, sweep

    epsilons = parse_epsilons(args.epsilons)
    cfg = run_config_from(args, dict(PRESETS[args.preset]))
    out = Path(args.out or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    rows = sweep(cfg, epsilons, _resources(args), out)
    table = Table(title=f"Privacy / utility ({out})")
    for col in ("setting", "epsilon spent (max client)", "accuracy"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["setting"], f"{r['epsilon_spent_max']:.2f}", f"{r['accuracy']:.4f}")
    Console().print(table)
    return 0


def _add_simulation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="quick (default): 5,000 examples, 3 rounds; full: all data, "
                        "10 rounds")
    parser.add_argument("--num-clients", type=int, default=4)
    parser.add_argument("--client-cpus", type=float, default=1.0,
                        help="CPU cores Ray reserves per simulated client")
    parser.add_argument("--client-gpus", type=float, default=0.0,
                        help="GPU share per simulated client (e.g. 0.25 puts 4 on one GPU)")
    parser.add_argument("--ray-address", default="",
                        help="join an existing Ray cluster ('auto' or ray://HOST:10001)")
    parser.add_argument("--verbose", action="store_true", help="show Flower's own logs")
    add_run_config_flags(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedpriv", description="Federated fine-tuning of transformers with "
        "differential privacy (Flower + Opacus) over TLS gRPC.")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="run a federated DP fine-tuning in Flower's "
                         "simulation engine (same ServerApp and ClientApp as deployment)")
    _add_simulation_flags(sim)
    add_resume_flag(sim)
    sim.set_defaults(handler=_simulate)

    sw = sub.add_parser("sweep", help="privacy/utility trade-off: one simulation per epsilon "
                        "(and a non-DP baseline), beside the majority-class baseline")
    sw.add_argument("--epsilons", default="none,8,1",
                    help="comma-separated per-client epsilons; 'none' trains without DP")
    sw.add_argument("--out", default="", help="folder for the runs, sweep.csv and tradeoff.png")
    _add_simulation_flags(sw)
    sw.set_defaults(handler=_sweep)

    from certs.cli import add_certs_arguments, run_certs_command

    add_certs_arguments(sub).set_defaults(handler=run_certs_command)

    from common.audit import add_audit_arguments, run_audit_command

    audit = sub.add_parser("audit", help="verify a privacy ledger: signatures, chains, "
                           "recomputed epsilon (PRV and RDP), budgets")
    add_audit_arguments(audit)
    audit.set_defaults(handler=run_audit_command)

    # Deployment commands (`fedpriv server`, `fedpriv client`) register below.
    from client.deploy import add_client_arguments, run_client_command
    from server.deploy import add_server_arguments, run_server_command

    add_server_arguments(sub.add_parser(
        "server", help="coordinator: start a SuperLink (TLS, node authentication), admit "
        "node keys, run the federation, stop")).set_defaults(handler=run_server_command)
    add_client_arguments(sub.add_parser(
        "client", help="partner: check certificates, key, data and the coordinator, then run "
        "this node's SuperNode")).set_defaults(handler=run_client_command)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Inherited by Ray's worker processes, where the filters below do not reach.
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FedPrivError as exc:
        # One line, whatever a library's message embedded in it looked like.
        print(f"fedpriv: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedpriv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
