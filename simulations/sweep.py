"""Privacy/utility trade-off: the same simulation at several epsilons, plus baselines."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.config import RunConfig  # noqa: E402
from common.errors import ConfigError  # noqa: E402
from common.partition import simulation_split  # noqa: E402
from simulations.run import SimulationResources, simulate  # noqa: E402


def parse_epsilons(text: str) -> list[float | None]:
    """'none,8,1' -> [None, 8.0, 1.0]; None is the non-private baseline."""
    out: list[float | None] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        try:
            value = None if part in ("none", "inf", "nodp") else float(part)
        except ValueError:
            raise ConfigError(f"invalid --epsilons {text!r}: {part!r} is not a number "
                              "or 'none'") from None
        if value is not None and value <= 0:
            raise ConfigError(f"invalid --epsilons {text!r}: epsilons must be > 0")
        out.append(value)
    if not out:
        raise ConfigError("invalid --epsilons: give at least one value, e.g. none,8,1")
    return out


def majority_baseline(cfg: RunConfig) -> tuple[str, float]:
    """Accuracy on the held-out set of always predicting the pool's most common label."""
    pool, test = simulation_split(cfg.data, cfg.train.seed)
    label = Counter(pool.labels).most_common(1)[0][0]
    return pool.label_names[label], sum(y == label for y in test.labels) / len(test)


def sweep(cfg: RunConfig, epsilons: list[float | None], resources: SimulationResources,
          out_dir: Path) -> list[dict]:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"invalid --out {out_dir}: folder is not empty; choose another")
    rows = []
    for eps in epsilons:
        name = "no-dp" if eps is None else f"eps-{eps:g}"
        run_cfg = cfg.replace(**{"run-dir": str(out_dir / name), "dp": eps is not None,
                                 "epsilon": eps or cfg.privacy.epsilon})
        run_dir = simulate(run_cfg, resources)
        final = json.loads((run_dir / "metrics.json").read_text())["rounds"][-1]
        rows.append({"setting": name, "epsilon_target": eps if eps else float("inf"),
                     "epsilon_spent_max": final["epsilon_max"] if eps else float("inf"),
                     "accuracy": final["accuracy"], "loss": final["loss"]})
    label, acc = majority_baseline(cfg)
    rows.append({"setting": f"majority class ({label})", "epsilon_target": 0.0,
                 "epsilon_spent_max": 0.0, "accuracy": acc, "loss": float("nan")})
    _write(rows, out_dir)
    return rows


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
