"""PNG plots of a finished run: accuracy per round, epsilon per round per client."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from common.errors import FedPrivError  # noqa: E402
from server.ledger import Ledger  # noqa: E402


def read_rounds(run_dir: Path) -> list[dict]:
    """The per-round metrics a run wrote, or a one-line error naming the file."""
    path = run_dir / "metrics.json"
    try:
        rounds = json.loads(path.read_text(encoding="utf-8"))["rounds"]
    except FileNotFoundError:
        raise FedPrivError(f"{path} not found: the run wrote no metrics") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise FedPrivError(f"{path} is unreadable or corrupt ({exc})") from None
    if not isinstance(rounds, list) or not rounds:
        raise FedPrivError(f"{path} holds no rounds")
    return rounds


def plot_run(run_dir: Path) -> list[Path]:
    rounds = read_rounds(run_dir)
    out = [run_dir / "accuracy.png", run_dir / "epsilon.png"]

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["round"] for r in rounds], [r["accuracy"] for r in rounds], marker="o",
            label="global model, held-out set")
    ax.set(xlabel="round", ylabel="accuracy", title="Accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out[0], dpi=120)
    plt.close(fig)

    per_node: dict[int, list[tuple[int, float]]] = defaultdict(list)
    budgets: set[float] = set()
    for rec in Ledger(run_dir / "ledger.jsonl").records():
        if rec.kind == "train":
            per_node[rec.node_id].append((rec.round, rec.epsilon))
            budgets.add(rec.epsilon_budget)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (node, points) in enumerate(sorted(per_node.items())):
        ax.plot(*zip(*sorted(points), strict=True), marker="o", label=f"client {i} ({node})")
    for budget in sorted(budgets):
        ax.axhline(budget, color="red", linestyle="--", linewidth=1)
    ax.set(xlabel="round", ylabel="epsilon spent (cumulative)",
           title="Privacy spent per client (red: budget)")
    ax.grid(alpha=0.3)
    if per_node:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out[1], dpi=120)
    plt.close(fig)
    return out
