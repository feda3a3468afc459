"""Scale: fedpriv's overhead per simulated client-round, side by side with plain Flower.

For each client count (default 4, 100 and 1,000), in this one run:
  1. `fedpriv simulate` (tiny model, about 30 training rows per client, one DP step per
     round, IID), as a subprocess; round times from its metrics.json;
  2. the same local work in plain Flower's simulation engine (benchmarks/
     plain_flower_app.py, in the style of Flower's Opacus example), same Ray resources;
  3. the local training compute of one client-round (the DP steps on a client's rows,
     timed here in-process, median of many).
Overhead per client-round = (median round wall time - client-rounds per round x local
training) / client-rounds per round, over the rounds after the first (the first pays
one-time costs: imports in each worker, embedding, noise planning). Peak memory is the
largest sum of RSS over the run's process tree (driver, Ray, workers).

`--soak N` instead runs one fedpriv simulation of N rounds (tiny model, 4 clients) and
compares the first and last tenth of its rounds: round time and memory, and the time one
epsilon of the run's accountant takes at the first and the last tenth's step count, the
one cost that grows with the run by design; once per accountant in `--accountant` (PRV,
the default, then RDP).
`--demo` runs the README's main job (MiniLM, quick preset) and prints the share of its
rounds' wall time spent outside local training, then the same for the same work (the
quick preset's partitions, DP steps and noise) in plain Flower.

Run: .venv/bin/python benchmarks/bench_scale.py [--clients 4,100,1000] [--rounds 5]
     .venv/bin/python benchmarks/bench_scale.py --soak 500 [--accountant prv,rdp]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.environment import offline_and_quiet  # noqa: E402

offline_and_quiet()
# A loader over 30 rows at q = 1/7 draws an empty first batch about once in a hundred:
# Opacus warns each time, hundreds of lines in between the table's rows.
logging.getLogger("opacus.data_loader").setLevel(logging.ERROR)

import torch  # noqa: E402

from cli.simulate import PRESETS  # noqa: E402
from common import privacy  # noqa: E402
from common.config import RunConfig  # noqa: E402
from common.data import LabelledTexts, embedded_data_path  # noqa: E402
from common.features import Features  # noqa: E402
from common.training import local_schedule, make_optimizer, train_steps  # noqa: E402

ROWS_PER_CLIENT = 30      # training rows, as in a cross-device setting
EMBEDDED_ROWS = 38_158
# The pool is (1 - test-fraction) of the examples and a client holds out 10% of its share.
ROWS_KEPT = 0.8 * 0.9


def run_config(num_clients: int, rounds: int, fraction: float) -> dict:
    examples = min(EMBEDDED_ROWS, math.ceil(num_clients * ROWS_PER_CLIENT / ROWS_KEPT))
    return {"model": "tiny", "max-length": 32, "max-examples": examples,
            "num-rounds": rounds, "local-steps": 1, "fraction-train": fraction,
            "min-train-clients": 1, "min-available-clients": num_clients,
            "central-eval": False, "learning-rate": 0.01, "epsilon": 8.0}


class PeakMemory(threading.Thread):
    """The largest total RSS of a process and all its descendants, sampled."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.last, self.done = pid, 0, 0, False

    def run(self) -> None:
        while not self.done:
            try:
                root = psutil.Process(self.pid)
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                rss = 0
            self.last = rss or self.last
            self.peak = max(self.peak, rss)
            time.sleep(0.5)


def run_measured(argv: list[str], env: dict | None = None, timeout: float = 3600
                 ) -> tuple[float, int]:
    """Run a command; (wall seconds, peak RSS bytes of its process tree)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    memory = PeakMemory(proc.pid)
    memory.start()
    _, err = proc.communicate(timeout=timeout)
    memory.done = True
    if proc.returncode:
        raise SystemExit(f"{argv[:4]} failed ({proc.returncode}):\n{err[-3000:]}")
    return time.monotonic() - start, memory.peak


def fedpriv_rounds(run_dir: Path) -> tuple[list[float], list[int]]:
    """Per-round wall seconds and trained clients, from the run's metrics.json."""
    rows = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    seconds = [row["seconds"] for row in rows]
    return ([b - a for a, b in zip(seconds, seconds[1:], strict=False)],
            [row["trained"] for row in rows[1:]])


def simulate_fedpriv(num_clients: int, rounds: int, fraction: float, work: Path,
                     extra: tuple[str, ...] = ()) -> dict:
    run_dir = work / f"fedpriv-{num_clients}"
    flags = [f"--{k}={v}" if not isinstance(v, bool) else f"--{k}={str(v).lower()}"
             for k, v in run_config(num_clients, rounds, fraction).items()]
    flags = [f for f in flags if not f.startswith("--central-eval")] + ["--no-central-eval"]
    wall, peak = run_measured([sys.executable, "-m", "cli.main", "simulate",
                               "--num-clients", str(num_clients), "--run-dir", str(run_dir),
                               *flags, *extra])
    per_round, trained = fedpriv_rounds(run_dir)
    return {"wall": wall, "peak": peak, "rounds": per_round, "clients": trained}


def simulate_plain(cfg: dict, num_clients: int, sigma: float, work: Path) -> dict:
    """`cfg`: fedpriv settings (as flags, without dashes) that the baseline's work follows."""
    out = work / f"plain-{num_clients}.json"
    cfg = {k: v for k, v in cfg.items() if k != "central-eval"}
    settings = {"config": cfg, "sigma": sigma, "out": str(out), "num_clients": num_clients}
    code = ("from common.environment import "
            "offline_and_quiet; offline_and_quiet(); import logging; "
            "from flwr.simulation import run_simulation; "
            "from plain_flower_app import client_app, server_app; "
            f"run_simulation(server_app=server_app, client_app=client_app, "
            f"num_supernodes={num_clients}, backend_config={{'client_resources': "
            "{'num_cpus': 1.0, 'num_gpus': 0.0}, 'init_args': {'ignore_reinit_error': True}})")
    wall, peak = run_measured([sys.executable, "-c", code],
                              # Ray's workers import the app by name: they inherit the path.
                              env={"BENCH_SETTINGS": json.dumps(settings),
                                   "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}"})
    result = json.loads(out.read_text())
    ends = result["round_ends"]
    expected = max(1, int(num_clients * cfg.get("fraction-train", 1.0)))
    if result["good_replies"] != [expected] * cfg["num-rounds"]:
        raise SystemExit(f"plain Flower: good replies per round {result['good_replies']}, "
                         f"expected {expected}: its clients failed")
    return {"wall": wall, "peak": peak, "clients": result["good_replies"],
            "rounds": [b - a for a, b in zip(ends, ends[1:], strict=False)]}


def local_training_seconds(num_clients: int, reps: int = 200) -> tuple[float, float]:
    """(median seconds of one client-round's DP steps, the plan's sigma), in-process."""
    cfg = RunConfig().replace(**run_config(num_clients, 5, 1.0))
    rows = LabelledTexts([""] * ROWS_PER_CLIENT, [i % 3 for i in range(ROWS_PER_CLIENT)],
                         ("a", "b", "c"))
    schedule = local_schedule(len(rows), cfg.train)
    plan = privacy.plan(cfg.privacy, budget=cfg.privacy.epsilon, delta=cfg.privacy.delta,
                        sample_rate=schedule.sample_rate,
                        steps_per_round=schedule.steps_per_round,
                        planned_rounds=cfg.federation.num_rounds)
    dataset = torch.utils.data.TensorDataset(torch.randn(len(rows), 32),
                                             torch.tensor(rows.labels))
    times = []
    for _ in range(reps):
        head = torch.nn.Linear(32, 3)
        train_set = Features(head, dataset)
        _, module, optimizer, loader = privacy.make_private(
            head, make_optimizer(head, 0.01), train_set.loader(schedule.batch_size), plan, [])
        start = time.perf_counter()
        train_steps(module, optimizer, loader, schedule.steps_per_round, torch.device("cpu"))
        times.append(time.perf_counter() - start)
    return statistics.median(times), plan.noise_multiplier


def overhead_ms(result: dict, train_s: float) -> float:
    """Median over rounds after the first of (wall - training) / client-rounds, in ms."""
    per_client = [(wall - n * train_s) / n * 1000
                  for wall, n in zip(result["rounds"][1:], result["clients"][1:], strict=True)
                  if n]
    return statistics.median(per_client)


def scale(args: argparse.Namespace) -> None:
    embedded_data_path()  # fails early if the data is not installed
    print(f"machine: {os.cpu_count()} CPU cores; 1 CPU per simulated client; "
          f"tiny model, {ROWS_PER_CLIENT} rows and 1 DP step per client-round")
    header = (f"{'clients':>8} {'per round':>9} {'train ms':>8} {'fedpriv ms':>10} "
              f"{'flower ms':>9} {'ratio':>6} {'cl-rnd/min':>10} {'fedpriv GB':>10} "
              f"{'flower GB':>9}")
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.clients.split(",")):
            fraction = 1.0 if n <= 100 else args.large_fraction
            train_s, sigma = local_training_seconds(n)
            ours = simulate_fedpriv(n, args.rounds, fraction, Path(tmp))
            plain = simulate_plain(run_config(n, args.rounds, fraction), n, sigma, Path(tmp))
            a, b = overhead_ms(ours, train_s), overhead_ms(plain, train_s)
            steady = [(w, c) for w, c in zip(ours["rounds"][1:], ours["clients"][1:],
                                             strict=True)]
            per_minute = 60 * sum(c for _, c in steady) / sum(w for w, _ in steady)
            print(f"{n:>8} {ours['clients'][-1]:>9} {train_s * 1000:>8.2f} {a:>10.1f} "
                  f"{b:>9.1f} {a / b:>6.2f} {per_minute:>10.0f} {ours['peak'] / 2**30:>10.2f} "
                  f"{plain['peak'] / 2**30:>9.2f}", flush=True)


def soak(args: argparse.Namespace) -> None:
    for accountant in args.accountant.split(","):
        soak_one(args.soak, accountant)


def soak_one(rounds: int, accountant: str) -> None:
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "soak.log", "w+") as log:
        run_dir = Path(tmp) / "soak"
        flags = [f"--{k}={v}" for k, v in run_config(4, rounds, 1.0).items()
                 if k != "central-eval"] + [f"--accountant={accountant}"]
        # Its output goes to a file: a pipe nobody reads fills up and blocks the run.
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "simulate",
                                 "--num-clients", "4", "--run-dir", str(run_dir), *flags,
                                 "--no-central-eval"], cwd=ROOT, stdout=log, stderr=log)
        memory, samples = PeakMemory(proc.pid), []
        memory.start()
        while proc.poll() is None:
            time.sleep(2)
            try:
                done = len(json.loads((run_dir / "metrics.json").read_text())["rounds"]) - 1
            except (OSError, ValueError, KeyError):
                continue
            samples.append((done, memory.last))
        memory.done = True
        if proc.returncode:
            log.seek(0)
            raise SystemExit(f"soak failed:\n{log.read()[-3000:]}")
        per_round, _ = fedpriv_rounds(run_dir)
        entry = json.loads((run_dir / "ledger.jsonl").read_text().splitlines()[0])["record"]
    tenth = max(1, rounds // 10)
    sigma, q, delta = entry["noise_multiplier"], entry["sample_rate"], entry["delta"]
    first, last = per_round[1:tenth + 1], per_round[-tenth:]
    mem_first = [m for r, m in samples if 1 <= r <= tenth]
    mem_last = [m for r, m in samples if r > rounds - tenth]
    print(f"soak, {accountant}: {rounds} rounds, 4 clients; round time first tenth "
          f"{statistics.median(first):.3f} s, last tenth {statistics.median(last):.3f} s "
          f"(ratio {statistics.median(last) / statistics.median(first):.3f}); total RSS "
          f"{statistics.median(mem_first) / 2**30:.2f} GB -> "
          f"{statistics.median(mem_last) / 2**30:.2f} GB (ratio "
          f"{statistics.median(mem_last) / statistics.median(mem_first):.3f})")
    first_ms, last_ms = (epsilon_ms(sigma, q, delta, steps, accountant)
                         for steps in (1 + tenth // 2, rounds - tenth // 2))
    print(f"one {accountant} epsilon (sigma {sigma:.4f}, q {q:g}) at the first tenth's "
          f"step count: {first_ms:.1f} ms; at the last tenth's: {last_ms:.1f} ms")


def epsilon_ms(sigma: float, q: float, delta: float, steps: int, accountant: str) -> float:
    """Median ms of one epsilon of `steps` DP steps, not memoised (a node computes one per
    message); Opacus's per-step RDP memo stays warm after the first, as in a node's process."""
    times = []
    for _ in range(5):
        privacy._epsilon.cache_clear()  # noqa: SLF001 - time the computation, not the memo
        start = time.perf_counter()
        privacy.epsilon([(sigma, q, steps)], delta, accountant)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def demo(args: argparse.Namespace) -> None:
    """The README's main job: each round's wall time against its clients' DP steps, and
    the same work in plain Flower (its engine hands messages to the workers every 0.1 s,
    a floor on a round's time that no app removes)."""
    quick = PRESETS["quick"]
    clients = 4  # `fedpriv simulate --num-clients`'s default
    cfg = RunConfig().replace(**quick)
    workers = max(1, os.cpu_count() or 1)  # 1 CPU per client: this many train at once
    # A client of the quick preset holds 5000 x 0.8 / 4 = 1000 rows, 900 of them training.
    rows = round(quick["max-examples"] * ROWS_KEPT / clients)
    schedule = local_schedule(rows, cfg.train)
    plan = privacy.plan(cfg.privacy, budget=cfg.privacy.epsilon, delta=cfg.privacy.delta,
                        sample_rate=schedule.sample_rate,
                        steps_per_round=schedule.steps_per_round,
                        planned_rounds=cfg.federation.num_rounds)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "demo"
        wall, peak = run_measured([sys.executable, "-m", "cli.main", "simulate",
                                   "--run-dir", str(run_dir)])
        per_round, trained = fedpriv_rounds(run_dir)
        plain = simulate_plain(quick, clients, plan.noise_multiplier, Path(tmp))
    dataset = torch.utils.data.TensorDataset(torch.randn(rows, 384),
                                             torch.randint(0, 3, (rows,)))
    times = []
    for _ in range(20):
        head = torch.nn.Linear(384, 3)
        _, module, optimizer, loader = privacy.make_private(
            head, make_optimizer(head, cfg.learning_rate),
            Features(head, dataset).loader(schedule.batch_size), plan, [])
        start = time.perf_counter()
        train_steps(module, optimizer, loader, schedule.steps_per_round, torch.device("cpu"))
        times.append(time.perf_counter() - start)
    train_s = statistics.median(times)
    print(f"main job: {wall:.1f} s, peak {peak / 2**30:.2f} GB; a client-round's "
          f"{schedule.steps_per_round} DP steps take {train_s:.3f} s ({workers} at a time)")
    for name, result in (("fedpriv", {"rounds": per_round, "clients": trained}),
                         ("plain Flower", plain)):
        shares = [(seconds, clients * train_s / workers) for seconds, clients
                  in zip(result["rounds"], result["clients"], strict=True)]
        first, later = shares[0], sorted(shares[1:], key=lambda share: share[1] / share[0])
        print(f"{name}, round 1 (embeds): {first[0]:.2f} s wall, {first[1]:.2f} s of it "
              f"local training")
        for what, (seconds, training) in (("least", later[-1]),
                                          ("median", later[len(later) // 2]),
                                          ("most", later[0])):
            print(f"{name}, rounds 2-{len(shares)}, {what} outside training: {seconds:.2f} s "
                  f"wall, {training:.2f} s training ({100 * (1 - training / seconds):.0f}% "
                  "outside)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="4,100,1000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--large-fraction", type=float, default=0.1,
                        help="share of clients per round above 100 clients")
    parser.add_argument("--soak", type=int, default=0, help="run a soak of N rounds instead")
    parser.add_argument("--accountant", default="prv,rdp",
                        help="the soak's accountants, comma-separated (prv, rdp)")
    parser.add_argument("--demo", action="store_true", help="time the README's main job")
    args = parser.parse_args()
    (soak if args.soak else demo if args.demo else scale)(args)


if __name__ == "__main__":
    main()
