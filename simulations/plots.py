"""PNG plots of a finished run: accuracy per round, epsilon per round per client."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from common.errors import FedPrivError  # noqa: E402
from common.ledger.entry import record_of_entry  # noqa: E402
from common.ledger.store import read_ledger  # noqa: E402


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


def spend_per_node(run_dir: Path) -> tuple[dict[int, list[tuple[int, float]]], set[float]]:
    """(node id -> [(round, cumulative epsilon)], the budgets) from the run's ledger.

    Read with the pure ledger readers: drawing a plot never changes the file it reads
    (opening the server's `Ledger` would set a cut-off line aside). A run that wrote no
    ledger has no spend to draw; an unreadable one raises LedgerError naming the line.
    """
    path = run_dir / "ledger.jsonl"
    per_node: dict[int, list[tuple[int, float]]] = defaultdict(list)
    budgets: set[float] = set()
    if not path.exists():
        return per_node, budgets
    for line in read_ledger(path):
        rec = record_of_entry(line.entry)
        if rec.kind == "train":
            per_node[rec.node_id].append((rec.round, rec.epsilon))
            budgets.add(rec.epsilon_budget)
    return per_node, budgets


def plot_run(run_dir: Path) -> list[Path]:
    """Write accuracy.png and epsilon.png into `run_dir`; their paths."""
    out = [run_dir / "accuracy.png", run_dir / "epsilon.png"]
    _plot_accuracy(read_rounds(run_dir), out[0])
    _plot_epsilon(*spend_per_node(run_dir), out[1])
    return out


def _plot_accuracy(rounds: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["round"] for r in rounds], [r["accuracy"] for r in rounds], marker="o",
            label="global model, held-out set")
    ax.set(xlabel="round", ylabel="accuracy", title="Accuracy per round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_epsilon(per_node: dict[int, list[tuple[int, float]]], budgets: set[float],
                  path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (node, points) in enumerate(sorted(per_node.items())):
        ax.plot(*zip(*sorted(points), strict=True), marker="o", label=f"client {i} ({node})")
    for budget in sorted(budgets):
        ax.axhline(budget, color="red", linestyle="--", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="round", ylabel="epsilon spent (cumulative)",
           title="Privacy spent per client (red: budget)")
    ax.grid(alpha=0.3)
    if per_node:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
