"""Run the deployment's own ServerApp and ClientApp in Flower's simulation engine (Ray)."""

from __future__ import annotations

import logging
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, RecordDict

# Flower's public `run_simulation` gives the ServerApp an empty run config; its internal
# `_run_simulation` (what `flwr run` uses for simulations) accepts the server context.
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.telemetry import EventType

from client.app import app as client_app
from common.config import RunConfig
from common.errors import ConfigError, require
from common.files import blocking_file
from common.net import split_host_port, unreachable
from server.app import app as server_app
from server.rundir import check_run_dir


@dataclass(frozen=True)
class SimulationResources:
    num_clients: int = 4
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    # "" starts a local Ray instance; "auto" or "ray://host:10001" joins a Ray cluster.
    ray_address: str = ""

    def __post_init__(self) -> None:
        """Refuse what Ray could never schedule (it would wait forever) before it starts."""
        require(self.num_clients >= 1, "--num-clients", self.num_clients, "must be >= 1")
        require(math.isfinite(self.client_cpus) and self.client_cpus > 0, "--client-cpus",
                self.client_cpus, "must be a finite number > 0")
        require(math.isfinite(self.client_gpus) and self.client_gpus >= 0, "--client-gpus",
                self.client_gpus, "must be a finite number >= 0")
        if self.ray_address not in ("", "local"):
            return  # a cluster's resources are Ray's to judge
        cpus = os.cpu_count() or 1
        require(self.client_cpus <= cpus, "--client-cpus", self.client_cpus,
                f"this machine has {cpus} CPU cores, so no client could ever start")
        if self.client_gpus > 0:
            import torch

            gpus = torch.cuda.device_count()
            require(self.client_gpus <= gpus, "--client-gpus", self.client_gpus,
                    f"this machine has {gpus} CUDA GPUs, so no client could ever start")

    def backend_config(self) -> dict:
        init_args: dict = {"ignore_reinit_error": True}
        if self.ray_address:
            init_args["address"] = self.ray_address
        # Flower hands `client_resources` to Ray's actor options. Flower's pool puts an
        # actor whose process died (OOM killer, signal) back in its queue, so without
        # restarts every later message sent to it fails too: Ray restarts it instead.
        # The task it was running is not retried; its client is reported failed.
        return {"client_resources": {"num_cpus": self.client_cpus, "num_gpus": self.client_gpus,
                                     "max_restarts": -1},
                "init_args": init_args}


def simulate(cfg: RunConfig, resources: SimulationResources, verbose: bool = False) -> Path:
    """Run a whole federated simulation; returns the run directory."""
    fed = cfg.federation
    for key, wanted in (("min-train-clients", fed.min_train_clients),
                        ("min-updates", fed.min_updates)):
        if wanted > resources.num_clients:
            raise ConfigError(f"invalid --{key} {wanted}: only {resources.num_clients} "
                              "simulated clients (--num-clients)")
    check_run_dir(cfg)
    preflight(cfg, resources)
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


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """A Ray cluster to join answers (Flower waits forever on one that does not)."""
    if address in ("", "local"):
        return
    given = address
    if address == "auto":
        try:  # how ray.init finds "auto" (RAY_ADDRESS, or a cluster this machine started)
            from ray._private.services import get_ray_address_from_environment
        except ImportError:
            return  # Ray moved its helper: let Ray judge
        try:
            address = get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise ConfigError("invalid --ray-address 'auto': no running Ray cluster found "
                              "(start one with `ray start --head`, or give its address)") from None
    parsed = split_host_port(address.removeprefix("ray://"))
    if parsed is None:
        raise ConfigError(f"invalid --ray-address {given!r}: expected auto, HOST:PORT or "
                          "ray://HOST:PORT")
    host, port = parsed
    reason = unreachable(host, port, timeout)
    if reason is not None:
        raise ConfigError(f"invalid --ray-address {given!r}: cannot reach the Ray cluster at "
                          f"{host}:{port} ({reason})")


def preflight(cfg: RunConfig, resources: SimulationResources) -> None:
    """What the ServerApp or a ClientApp would only refuse once Ray runs, refused now.

    Inside the simulation such a mistake surfaces late, wrapped in Flower's and Ray's
    logs, or as rounds in which every client fails; here it is one line, and nothing
    has been started or written.
    """
    from common.model import load_tokenizer, pick_device
    from common.partition import partitioned, pool_and_held_out

    check_ray_address(resources.ray_address)
    run_dir = Path(cfg.federation.run_dir)
    if (blocker := blocking_file(run_dir)) is not None:
        raise ConfigError(f"invalid --run-dir {run_dir}: {blocker} is a file, not a folder")
    pick_device(cfg.train.device)
    load_tokenizer(cfg.model)
    pool, _ = pool_and_held_out(cfg.data, cfg.train.seed)  # reads and checks the data file
    if len(pool) < resources.num_clients:
        raise ConfigError(f"invalid --num-clients {resources.num_clients}: only {len(pool)} "
                          "training examples to share among them (raise --max-examples)")
    # Partition as every client will (seeded, so identically): none may be left empty.
    partitioner = partitioned(pool, cfg.data, resources.num_clients, cfg.train.seed)
    try:
        with warnings.catch_warnings():  # Dirichlet's retries warn; the outcome is what counts
            warnings.simplefilter("ignore")
            sizes = [len(partitioner.load_partition(i)) for i in range(resources.num_clients)]
    except ValueError as exc:  # flwr-datasets: the partitioner cannot split this data
        raise ConfigError(f"invalid --partitioner {cfg.data.partitioner}: cannot split "
                          f"{len(pool)} examples among {resources.num_clients} clients "
                          f"({exc})") from None
    if min(sizes) == 0:
        raise ConfigError(f"invalid --partitioner {cfg.data.partitioner}: client "
                          f"{sizes.index(0)} of {resources.num_clients} gets no data; use "
                          "fewer --num-clients or more --max-examples")
    check_epsilon_reachable(cfg, sizes)


def check_epsilon_reachable(cfg: RunConfig, partition_sizes: list[int]) -> None:
    """Each client's planned training can be noised down to --epsilon.

    A client derives its noise multiplier with Opacus's `get_noise_multiplier`, which
    doubles sigma from 20 and gives up ("The privacy budget is too low") once it passes
    MAX_SIGMA; the accountants' epsilon stops falling there (about 0.01 for PRV, 0.1 for
    RDP). Such a client fails every round; here the plan is checked at that largest sigma.
    """
    priv = cfg.privacy
    if not priv.dp or priv.noise_multiplier:
        return  # no noise to derive
    from opacus.accountants.utils import MAX_SIGMA

    from client.node import LOCAL_EVAL_FRACTION
    from common.data import LabelledTexts, split
    from common.privacy import epsilon
    from common.training import local_schedule

    sigma = 20.0
    while sigma <= MAX_SIGMA:
        sigma *= 2
    plans = set()
    for size in partition_sizes:  # the client's own split and schedule, as client/app.py
        rows = LabelledTexts([""] * size, [0] * size, ())
        train, _ = split(rows, LOCAL_EVAL_FRACTION, cfg.train.seed)
        schedule = local_schedule(len(train), cfg.train)
        plans.add((schedule.sample_rate, schedule.steps_per_round * cfg.federation.num_rounds))
    with warnings.catch_warnings():  # PRV's numerics warn at such a sigma; the value holds
        warnings.simplefilter("ignore")
        floor = max(epsilon([(sigma, q, steps)], priv.delta, priv.accountant)
                    for q, steps in plans)
    if floor > priv.epsilon:
        raise ConfigError(f"invalid --epsilon {priv.epsilon:g}: below what the {priv.accountant} "
                          f"accountant can reach for this training (at least {floor:.3g}, even "
                          "with the most noise Opacus tries); raise --epsilon or set "
                          "--noise-multiplier")


def collect_node_keys(run_dir: Path) -> Path:
    """Gather the simulated nodes' public keys where `fedpriv audit --keys` expects them."""
    keys_dir = run_dir / "node-keys"
    keys_dir.mkdir(exist_ok=True)
    for public in sorted(run_dir.glob("nodes/*/signing.pub")):
        shutil.copyfile(public, keys_dir / f"{public.parent.name}.pub")
    return keys_dir
