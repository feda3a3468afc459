"""Run the deployment's own ServerApp and ClientApp in Flower's simulation engine (Ray)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, RecordDict

# Flower's public `run_simulation` gives the ServerApp an empty run config; its internal
# `_run_simulation` (what `flwr run` uses for simulations) accepts the server context.
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.telemetry import EventType

from client.app import app as client_app
from common.config import RunConfig
from common.errors import ConfigError
from server.app import app as server_app
from server.rundir import check_run_dir


@dataclass(frozen=True)
class SimulationResources:
    num_clients: int = 4
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    # "" starts a local Ray instance; "auto" or "ray://host:10001" joins a Ray cluster.
    ray_address: str = ""

    def backend_config(self) -> dict:
        init_args: dict = {"ignore_reinit_error": True}
        if self.ray_address:
            init_args["address"] = self.ray_address
        return {"client_resources": {"num_cpus": self.client_cpus, "num_gpus": self.client_gpus},
                "init_args": init_args}


def simulate(cfg: RunConfig, resources: SimulationResources, verbose: bool = False) -> Path:
    """Run a whole federated simulation; returns the run directory."""
    fed = cfg.federation
    if resources.num_clients < 1:
        raise ConfigError(f"invalid --num-clients {resources.num_clients}: must be >= 1")
    if fed.min_train_clients > resources.num_clients:
        raise ConfigError(f"invalid --min-train-clients {fed.min_train_clients}: only "
                          f"{resources.num_clients} simulated clients (--num-clients)")
    check_run_dir(cfg)
    # Ray workers need not share this process's working directory.
    cfg = cfg.replace(**{"run-dir": str(Path(fed.run_dir).resolve())})
    if fed.min_available_clients > resources.num_clients:
        cfg = cfg.replace(**{"min-available-clients": resources.num_clients})
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                      run_config=cfg.to_flat())
    _run_simulation(server_app=server_app, client_app=client_app,
                    num_supernodes=resources.num_clients,
                    backend_config=resources.backend_config(), server_app_context=context,
                    verbose_logging=verbose,
                    exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE)
    run_dir = Path(cfg.federation.run_dir)
    collect_node_keys(run_dir)
    return run_dir


def collect_node_keys(run_dir: Path) -> Path:
    """Gather the simulated nodes' public keys where `fedpriv audit --keys` expects them."""
    keys_dir = run_dir / "node-keys"
    keys_dir.mkdir(exist_ok=True)
    for public in sorted(run_dir.glob("nodes/*/signing.pub")):
        shutil.copyfile(public, keys_dir / f"{public.parent.name}.pub")
    return keys_dir
