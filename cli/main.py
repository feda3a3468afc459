"""`fedpriv`: the command line of partners, researchers and auditors.

The only layer with argparse, terminal output, process launching and exit codes: each
command's module parses its flags and calls down into simulations/, server/, client/
and common/. A user's mistake (FedPrivError) becomes one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from cli import audit, certs, coordinator, empirical, partner, simulate
from common.environment import offline_and_quiet
from common.errors import FedPrivError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedpriv", description="Federated fine-tuning of transformers with "
        "differential privacy (Flower + Opacus) over TLS.")
    sub = parser.add_subparsers(dest="command", required=True)
    simulate.add_simulate_arguments(sub.add_parser(
        "simulate", help="run a federated DP fine-tuning in Flower's simulation engine (same "
        "ServerApp and ClientApp as deployment)")).set_defaults(
        handler=simulate.run_simulate_command)
    simulate.add_sweep_arguments(sub.add_parser(
        "sweep", help="privacy/utility trade-off: one simulation per epsilon (and a non-DP "
        "baseline), beside the majority-class baseline")).set_defaults(
        handler=simulate.run_sweep_command)
    certs.add_certs_arguments(sub).set_defaults(handler=certs.run_certs_command)
    audit.add_audit_arguments(sub.add_parser(
        "audit", help="verify a privacy ledger: signatures, chains, recomputed epsilon (PRV "
        "and RDP), budgets")).set_defaults(handler=audit.run_audit_command)
    empirical.add_empirical_arguments(sub.add_parser(
        "audit-empirical", help="empirical privacy audit: a simulated run with canaries, and "
        "the epsilon lower bound their guessing proves, beside the claimed epsilon"
        )).set_defaults(handler=empirical.run_empirical_command)
    coordinator.add_server_arguments(sub.add_parser(
        "server", help="coordinator: start a SuperLink (TLS, node authentication), admit "
        "node keys, run the federation, stop")).set_defaults(
        handler=coordinator.run_server_command)
    partner.add_client_arguments(sub.add_parser(
        "client", help="partner: check certificates, key, data and the coordinator, then run "
        "this node's SuperNode")).set_defaults(handler=partner.run_client_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    offline_and_quiet()
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
