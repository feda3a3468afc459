"""The empirical privacy audit's table, all rows measured in this one run.

For epsilon 1, 4 and 8 and with the noise switched off (`--no-dp`: the same training
without clipping or noise), runs `fedpriv audit-empirical` on the default task (the
embedded tweets, the frozen encoder and its DP-trained head, `fedpriv simulate`'s quick
preset: 4 real clients, 3 rounds of 5 local epochs) with the canary nodes beside them,
and prints, per row: the claimed epsilon (the largest any canary node's ledger claims),
the one-run lower bound at 95% confidence, the canaries, guesses and correct guesses,
the run time, and the command that reproduces it. Then it checks what the audit must
show: every noised row's bound at or below its claim, and the noise-off bound above 8.

Run: .venv/bin/python benchmarks/bench_empirical_audit.py [--canary-clients N] [--out DIR]
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
SETTINGS = {"epsilon 1": ["--epsilon", "1"], "epsilon 4": ["--epsilon", "4"],
            "epsilon 8": ["--epsilon", "8"], "noise off": ["--no-dp"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canary-clients", default="26")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-empirical-"))
    rows = []
    for name, flags in SETTINGS.items():
        command = ["audit-empirical", *flags, "--canary-clients", args.canary_clients,
                   "--out", str(out / name.replace(" ", "-"))]
        started = time.monotonic()
        done = subprocess.run([*FEDPRIV, *command], cwd=ROOT, capture_output=True, text=True)
        if done.returncode not in (0, 1):
            sys.exit(f"fedpriv {' '.join(command)} failed:\n{done.stderr[-2000:]}")
        row = json.loads((out / name.replace(" ", "-") / "empirical.json").read_text())
        row.update(wall=time.monotonic() - started, command="fedpriv " + " ".join(command))
        rows.append(row)
        print(f"{name}: claimed {row['claimed_epsilon']}, bound "
              f"{row['epsilon_lower_bound']:.3f}, {row['correct']}/{row['guesses']} correct, "
              f"{row['wall']:.0f} s")
    print("\n| setting | claimed epsilon | lower bound (95%) | canaries | guesses | correct "
          "| run time |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        claimed = r["claimed_epsilon"]
        print(f"| {r['setting']} | {claimed if isinstance(claimed, str) else f'{claimed:.3f}'}"
              f" | **{r['epsilon_lower_bound']:.3f}** | {r['canaries']} | {r['guesses']} | "
              f"{r['correct']} | {r['wall']:.0f} s |")
    print("\ncommands:")
    for r in rows:
        print(f"  {r['command']}")
    noised = [r for r in rows if r["setting"] != "noise off (no DP)"]
    within = all(r["epsilon_lower_bound"] <= r["claimed_epsilon"] for r in noised)
    teeth = rows[-1]["epsilon_lower_bound"] > 8
    print(f"\nevery noised bound at or below its claim: {within}; noise-off bound above "
          f"epsilon 8: {teeth} ({rows[-1]['epsilon_lower_bound']:.3f})")
    return 0 if within and teeth else 1


if __name__ == "__main__":
    sys.exit(main())
