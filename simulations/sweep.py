"""Privacy/utility trade-off: the same simulation at several epsilons, plus baselines."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.config import RunConfig  # noqa: E402
from common.errors import ConfigError  # noqa: E402
from common.files import blocking_file  # noqa: E402
from common.partition import pool_and_held_out  # noqa: E402
from simulations.plots import read_rounds  # noqa: E402
from simulations.run import SimulationResources, preflight, simulate  # noqa: E402


def parse_epsilons(text: str) -> list[float | None]:
    """'none,8,1' -> [None, 8.0, 1.0]; None is the non-private baseline."""
    out: list[float | None] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        try:
            value = None if part in ("none", "inf", "nodp") else float(part)
        except ValueError:
            raise ConfigError(f"invalid --epsilons {text!r}: {part!r} is not a number "
                              "or 'none'") from None
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"invalid --epsilons {text!r}: {part!r} is not a finite "
                              "number > 0 (or 'none' for no DP)")
        if setting_name(value) in map(setting_name, out):  # one run folder per setting
            raise ConfigError(f"invalid --epsilons {text!r}: {part!r} repeats the setting "
                              f"{setting_name(value)}")
        out.append(value)
    if not out:
        raise ConfigError(f"invalid --epsilons {text!r}: give at least one value, e.g. none,8,1")
    return out


def setting_name(eps: float | None) -> str:
    """The run folder (and table row) of one epsilon of a sweep."""
    return "no-dp" if eps is None else f"eps-{eps:g}"


def check_out_dir(out_dir: Path) -> None:
    """--out is a new or empty folder: a sweep never mixes its runs with earlier files."""
    if (blocker := blocking_file(out_dir)) is not None:
        raise ConfigError(f"invalid --out {out_dir}: {blocker} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError(f"invalid --out {out_dir}: folder is not empty; choose another")


def majority_baseline(cfg: RunConfig) -> tuple[str, float]:
    """Accuracy on the held-out set of always predicting the pool's most common label."""
    pool, test = pool_and_held_out(cfg.data, cfg.train.seed)
    label = Counter(pool.labels).most_common(1)[0][0]
    return pool.label_names[label], sum(y == label for y in test.labels) / len(test)


def sweep(cfg: RunConfig, epsilons: list[float | None], resources: SimulationResources,
          out_dir: Path) -> list[dict]:
    """One simulation per epsilon, then the baselines a private model must beat.

    Beside the majority class, every fine-tuning mode other than `head` is shown next to
    the frozen-encoder probe (`--finetune head`) at the same budget: fine-tuning the
    encoder spends the same privacy on far more weights, and earns it only if it wins.
    """
    check_out_dir(out_dir)
    runs = [(setting_name(eps), eps, _setting(cfg, eps, out_dir / setting_name(eps)))
            for eps in epsilons]
    if cfg.model.finetune != "head":
        probe = cfg.replace(finetune="head")
        runs += [(f"probe {setting_name(eps)}", eps,
                  _setting(probe, eps, out_dir / f"probe-{setting_name(eps)}"))
                 for eps in epsilons]
    for *_, run_cfg in runs:  # every setting checked before the first one trains
        preflight(run_cfg, resources)
    rows = []
    for name, eps, run_cfg in runs:
        final = read_rounds(simulate(run_cfg, resources))[-1]
        rows.append({"setting": name, "finetune": run_cfg.model.finetune,
                     "epsilon_target": eps if eps else float("inf"),
                     "epsilon_spent_max": final["epsilon_max"] if eps else float("inf"),
                     "accuracy": final["accuracy"], "loss": final["loss"]})
    label, acc = majority_baseline(cfg)
    rows.append({"setting": f"majority class ({label})", "finetune": "-", "epsilon_target": 0.0,
                 "epsilon_spent_max": 0.0, "accuracy": acc, "loss": float("nan")})
    _write(rows, out_dir)
    return rows


def _setting(cfg: RunConfig, eps: float | None, run_dir: Path) -> RunConfig:
    """`cfg` at one epsilon (None: without DP), writing to `run_dir`."""
    return cfg.replace(**{"run-dir": str(run_dir), "dp": eps is not None,
                          "epsilon": eps or cfg.privacy.epsilon})


def _write(rows: list[dict], out_dir: Path) -> None:
    with open(out_dir / "sweep.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "sweep.json").write_text(json.dumps(rows, indent=2))
    fig, ax = plt.subplots(figsize=(6, 4))
    names = [r["setting"] for r in rows]
    ax.bar(names, [r["accuracy"] for r in rows], color="tab:blue")
    ax.set(ylabel="accuracy (held-out)", title="Privacy / utility trade-off")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(out_dir / "tradeoff.png", dpi=120)
    plt.close(fig)
