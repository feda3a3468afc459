"""What the deployment's set-up costs: a 2-round TLS run of `fedpriv server` and N
`fedpriv client`s on 127.0.0.1 (tiny model), timed from the outside.

Figures per run: start-up (launching `fedpriv server` until it says "started run": the
SuperLink, its SuperExec, the gateway, registrations, `flwr run`), round 1 (from then
until round 1 is in metrics.json: the nodes start, connect and train), round 2 (round 1
to round 2: a round with everything warm), and the whole command. With `--baseline DIR`
the same is measured for another checkout of fedpriv (for example the commit before the
trust-boundary work, in a `git worktree`), alternating runs, and the ratios are printed.

With `--simulation`, the same run (same model, clients, rounds and steps) is also timed
in Flower's simulation engine (`fedpriv simulate`), to set a deployed round beside a
simulated one.

    .venv/bin/python benchmarks/bench_deploy.py [--baseline ../fedpriv-before] [--repeats 3]
    .venv/bin/python benchmarks/bench_deploy.py --nodes 10 --repeats 1 --simulation
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
ROWS_EACH = 200
TINY = ["--model", "tiny", "--max-length", "32", "--batch-size", "16", "--local-steps", "2",
        "--num-rounds", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_of(repo: Path) -> Path:
    """The checkout's own environment (as its users run it), else this one."""
    own = repo / ".venv" / "bin" / "python"
    return own if own.exists() else Path(sys.executable)


def fedpriv(repo: Path, *args: str) -> list[str]:
    return [str(python_of(repo)), "-m", "cli.main", *args]


def env_for(repo: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(repo), PYTHONUNBUFFERED="1")
    env["PATH"] = f"{python_of(repo).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def names(nodes: int) -> list[str]:
    return [f"partner{i:02d}" for i in range(nodes)]


def make_pki(repo: Path, work: Path, nodes: int) -> Path:
    """CA, server certificate and admitted nodes, with that checkout's own commands."""
    certs, partner = work / "certs", work / "partner"

    def run(*args: str) -> None:
        subprocess.run(fedpriv(repo, "certs", *args), env=env_for(repo), cwd=repo, check=True,
                       capture_output=True)

    run("ca", "--dir", str(certs))
    run("server", "--dir", str(certs))
    for name in names(nodes):
        run("node", name, "--dir", str(partner))
        ledger = partner / f"node-{name}.ledger.pub"
        keys = [str(partner / f"node-{name}.pub")] + ([str(ledger)] if ledger.exists() else [])
        run("admit", name, *keys, "--dir", str(certs))
    return partner


def partner_csvs(work: Path, nodes: int) -> dict[str, Path]:
    """Disjoint files of real labelled tweets, one per partner."""
    sys.path.insert(0, str(HERE))
    from tests.helpers.data import embedded_rows, write_csv

    rows = embedded_rows(nodes * ROWS_EACH)
    return {name: write_csv(work / f"{name}.csv", rows[i * ROWS_EACH:(i + 1) * ROWS_EACH])
            for i, name in enumerate(names(nodes))}


def rounds_done(run_dir: Path) -> int:
    try:
        return max(row["round"] for row in
                   json.loads((run_dir / "metrics.json").read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return -1


def watch_rounds(proc: subprocess.Popen, run_dir: Path, since: float) -> dict[str, float]:
    """Seconds to round 1 (from `since`) and from round 1 to round 2, as metrics.json shows."""
    marks: dict[int, float] = {}
    while proc.poll() is None:
        done = rounds_done(run_dir)
        for r in (1, 2):
            if done >= r and r not in marks:
                marks[r] = time.monotonic()
        time.sleep(0.1)
    if proc.returncode != 0 or len(marks) < 2:
        raise RuntimeError(f"the run failed (exit {proc.returncode})")
    return {"round 1": marks[1] - since, "round 2": marks[2] - marks[1]}


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def one_run(repo: Path, nodes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        work = Path(tmp)
        partner = make_pki(repo, work, nodes)
        data = partner_csvs(work, nodes)
        port, run_dir = free_port(), work / "run"
        procs: list[subprocess.Popen] = []
        began = time.monotonic()
        log = work / "server.log"
        try:
            with open(log, "w") as server_log:
                procs.append(subprocess.Popen(
                    fedpriv(repo, "server", "--certs-dir", str(work / "certs"), "--port",
                            str(port), "--state-dir", str(work / "coord"), "--run-dir",
                            str(run_dir), "--timeout", "1800", "--min-train-clients",
                            str(nodes), "--min-available-clients", str(nodes),
                            "--max-examples", "400", *TINY),
                    env=env_for(repo), cwd=repo, stdout=server_log, stderr=subprocess.STDOUT,
                    start_new_session=True))
            while not re.search(r"started run \d+", log.read_text()):
                if procs[0].poll() is not None:
                    raise RuntimeError(log.read_text()[-3000:])
                time.sleep(0.1)
            started = time.monotonic()
            for name, path in data.items():
                procs.append(subprocess.Popen(
                    fedpriv(repo, "client", "--coordinator", f"127.0.0.1:{port}", "--root-cert",
                            str(work / "certs" / "ca.pem"), "--node-key",
                            str(partner / f"node-{name}.key"), "--data", str(path),
                            "--max-epsilon", "8", "--state-dir", str(work / f"node-{name}"),
                            "--port", str(free_port())),
                    env=env_for(repo), cwd=repo, stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT, start_new_session=True))
            try:
                rounds = watch_rounds(procs[0], run_dir, started)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}: {log.read_text()[-3000:]}") from None
            return {"start-up": started - began, **rounds,
                    "whole command": time.monotonic() - began}
        finally:
            stop_all(procs)


def simulated_run(nodes: int) -> dict[str, float]:
    """The same run in Flower's simulation engine: start-up, round 1, round 2, whole."""
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        run_dir = Path(tmp) / "run"
        began = time.monotonic()
        proc = subprocess.Popen(
            fedpriv(HERE, "simulate", "--num-clients", str(nodes), "--run-dir", str(run_dir),
                    "--min-train-clients", str(nodes), "--max-examples",
                    str(nodes * ROWS_EACH * 5 // 4), *TINY),
            env=env_for(HERE), cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            while rounds_done(run_dir) < 0 and proc.poll() is None:
                time.sleep(0.1)
            started = time.monotonic()  # round 0: the initial model's evaluation is written
            rounds = watch_rounds(proc, run_dir, started)
            return {"start-up": started - began, **rounds,
                    "whole command": time.monotonic() - began}
        finally:
            stop_all([proc])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another fedpriv checkout to measure the same way")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--simulation", action="store_true",
                        help="also time the same run in Flower's simulation engine")
    args = parser.parse_args()
    runs = {"deployed": lambda: one_run(HERE, args.nodes)}
    if args.baseline is not None:
        baseline = args.baseline.resolve()
        runs["baseline"] = lambda: one_run(baseline, args.nodes)
    if args.simulation:
        runs["simulated"] = lambda: simulated_run(args.nodes)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    for i in range(args.repeats):
        for name, run in runs.items():
            figures = run()
            results[name].append(figures)
            print(f"run {i + 1} {name}: " + ", ".join(f"{k} {v:.1f} s"
                                                      for k, v in figures.items()), flush=True)
    keys = list(next(iter(results.values()))[0])
    medians = {name: {k: statistics.median(r[k] for r in rows) for k in keys}
               for name, rows in results.items()}
    others = [name for name in runs if name != "deployed"]
    print(f"\n{args.nodes} nodes, 2 rounds, tiny model; medians of {args.repeats} run(s) "
          f"(load {os.getloadavg()[0]:.1f} at the end)")
    print(f"{'figure':<15}" + "".join(f"{name:>13}" for name in runs)
          + "".join(f"   deployed/{name}" for name in others))
    for k in keys:
        row = [medians[name][k] for name in runs]
        ratios = "".join(f"   {row[0] / medians[name][k]:>{len(name) + 9}.2f}x" for name in others)
        print(f"{k:<15}" + "".join(f"{v:>11.1f} s" for v in row) + ratios)


if __name__ == "__main__":
    main()
