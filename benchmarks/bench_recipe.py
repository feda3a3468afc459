"""The DP recipe's figures, all measured in this one run, through the `fedpriv` CLI.

Prints
  1. the main job exactly as the quick start runs it (embedded data, 4 clients, epsilon 8
     per client): wall time of the simulation and its final accuracy;
  2. the privacy/utility table on the same setting, IID and Dirichlet(0.5): no DP, epsilon
     8 and 1 with the default recipe, beside the majority class (and, for a mode other
     than `head`, the frozen-encoder probe at the same budget), with the gaps;
  3. with --full: a fine-tuning mode (default lora) against the frozen probe at epsilon 8
     on all 38,158 embedded tweets;
  4. with --data FILE: the same defaults on another labelled set.
Every run's ledger is checked with `fedpriv audit`.

Run: .venv/bin/python benchmarks/bench_recipe.py [--skip-table] [--full] [--data FILE ...]
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FEDPRIV = [sys.executable, "-m", "cli.main"]
print = functools.partial(print, flush=True)  # noqa: A001  (progress, even into a file)
ROOT = Path(__file__).resolve().parents[1]


def fedpriv(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*FEDPRIV, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"fedpriv {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done


def audited(run_dir: Path) -> str:
    """PASS or FAIL of `fedpriv audit` on a simulated run's ledger and node keys."""
    done = subprocess.run([*FEDPRIV, "audit", str(run_dir / "ledger.jsonl"), "--keys",
                           str(run_dir / "node-keys")], cwd=ROOT, capture_output=True, text=True)
    return "PASS" if done.returncode == 0 else f"FAIL ({done.returncode})"


def final_accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["rounds"][-1]["accuracy"]


def main_job(out: Path) -> None:
    run_dir = out / "main"
    started = time.monotonic()
    fedpriv("simulate", "--run-dir", str(run_dir))
    wall = time.monotonic() - started
    print(f"1. main job (fedpriv simulate: quick preset, 4 IID clients, epsilon 8): "
          f"{wall:.1f} s wall, accuracy {final_accuracy(run_dir):.3f}, audit "
          f"{audited(run_dir)}")


def table(out: Path, extra: list[str], label: str) -> None:
    print(f"{label}")
    for partitioner in ("iid", "dirichlet"):
        folder = out / f"sweep-{partitioner}-{len(extra)}"
        started = time.monotonic()
        fedpriv("sweep", "--epsilons", "none,8,1", "--partitioner", partitioner,
                "--dirichlet-alpha", "0.5", "--out", str(folder), *extra)
        rows = {r["setting"]: r for r in json.loads((folder / "sweep.json").read_text())}
        print(f"   {partitioner} ({time.monotonic() - started:.0f} s for the sweep)")
        for name, row in rows.items():
            run_dir = folder / name.replace("probe ", "probe-")
            check = audited(run_dir) if (run_dir / "ledger.jsonl").exists() else "-"
            if row["epsilon_target"] == float("inf"):
                check += " (no DP: no guarantee to certify)"
            print(f"     {name:28} {row['finetune']:5} accuracy {row['accuracy']:.3f}  "
                  f"epsilon spent {row['epsilon_spent_max']:.2f}  audit {check}")
        gap = rows["no-dp"]["accuracy"] - rows["eps-8"]["accuracy"]
        print(f"     no DP - epsilon 8: {100 * gap:+.1f} points; epsilon 1: "
              f"{rows['eps-1']['accuracy']:.3f}")


def full_preset(out: Path, mode: str, extra: list[str]) -> None:
    results = {}
    for finetune in ("head", mode):
        run_dir = out / f"full-{finetune}"
        flags = extra if finetune != "head" else []  # the probe keeps the preset's defaults
        started = time.monotonic()
        fedpriv("simulate", "--preset", "full", "--finetune", finetune, "--run-dir",
                str(run_dir), *flags)
        results[finetune] = final_accuracy(run_dir)
        print(f"3. full preset, epsilon 8, --finetune {finetune} {' '.join(flags)}: accuracy "
              f"{results[finetune]:.3f} in {time.monotonic() - started:.0f} s, audit "
              f"{audited(run_dir)}")
    print(f"   {mode} - frozen probe: {100 * (results[mode] - results['head']):+.1f} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-main", action="store_true")
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--full-mode", default="lora")
    parser.add_argument("--full-flags", default="", help="extra flags for the fine-tuning run")
    parser.add_argument("--data", default="", help="a second labelled CSV/JSONL")
    parser.add_argument("--data-flags", default="", help="e.g. '--text-column t'")
    parser.add_argument("--out", default="", help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        if not args.skip_main:
            main_job(out)
        if not args.skip_table:
            table(out, [], "2. privacy/utility, embedded tweets, 4 clients, quick preset")
        if args.full:
            full_preset(out, args.full_mode, args.full_flags.split())
        if args.data:
            table(out, ["--data-path", args.data, "--max-examples", "0",
                        *args.data_flags.split()], f"4. the same defaults on {args.data}")


if __name__ == "__main__":
    main()
