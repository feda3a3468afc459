"""Per-round progress on the console and metrics files in the run directory."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from common.files import write_atomic
from server.outcome import RoundOutcome

COLUMNS = ("round", "trained", "refused", "failed", "loss", "accuracy", "fed_accuracy",
           "epsilon_max", "epsilon_mean", "seconds")

MAX_FAILURES_SHOWN = 5

HEADERS = {"accuracy": "acc", "fed_accuracy": "fed acc", "epsilon_max": "eps max",
           "epsilon_mean": "eps mean", "seconds": "s", "trained": "ok", "refused": "refused",
           "failed": "failed"}


class RoundReporter:
    """Prints one row per round as it ends, appends it to metrics.csv, rewrites metrics.json.

    A RoundObserver: it keeps what the strategy's outcomes say about a round until
    `end_round` (after Flower's central evaluation) writes the round's row. A round's cost
    must not grow with the run: each row is encoded once, metrics.csv is only appended to,
    and metrics.json (one row per line) is joined from the rows already encoded.
    """

    def __init__(self, run_dir: Path, num_rounds: int, config: dict[str, Any],
                 console: Console | None = None, up_to: int | None = None) -> None:
        """`up_to`: a resumed run keeps the rows of rounds up to its checkpoint."""
        self.run_dir, self.num_rounds = run_dir, num_rounds
        self.console = console or Console(stderr=True)
        self.rows: list[dict[str, Any]] = [] if up_to is None else self._earlier_rows(up_to)
        self._encoded = [json.dumps(row) for row in self.rows]
        self._head = f'{{"config": {json.dumps(config)},\n "rounds": [\n'
        self._start_csv()
        self.started = time.monotonic() - (self.rows[-1]["seconds"] if self.rows else 0.0)
        # Per round, until its row is written: the train outcome and federated metrics.
        self._trained: dict[int, RoundOutcome] = {}
        self._federated: dict[int, dict[str, Any]] = {}

    def _earlier_rows(self, up_to: int) -> list[dict[str, Any]]:
        try:
            rows = json.loads((self.run_dir / "metrics.json").read_text())["rounds"]
        except (OSError, ValueError, KeyError, TypeError):
            return []  # metrics are a report, not a record: the ledger has the spend
        return [row for row in rows if isinstance(row, dict) and row.get("round", -1) <= up_to]

    def train_round_done(self, outcome: RoundOutcome) -> None:
        self._trained[outcome.server_round] = outcome

    def evaluate_round_done(self, outcome: RoundOutcome) -> None:
        self._federated[outcome.server_round] = outcome.metrics

    def end_round(self, server_round: int, central: dict[str, float] | None) -> None:
        """Write the round's row: `central` is the held-out evaluation, if there is one."""
        row = _row(server_round, self._trained.pop(server_round, None),
                   self._federated.pop(server_round, {}), central or {},
                   # To the millisecond: benchmarks time short rounds from these rows.
                   seconds=round(time.monotonic() - self.started, 3))
        self.rows.append(row)
        self._print(row)
        self._write(row)

    def _print(self, row: dict[str, Any]) -> None:
        if row["round"] == 0:
            self.console.print(f"[bold]round 0/{self.num_rounds}[/] initial model: "
                               f"loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}")
            return
        self.console.print(
            f"[bold]round {row['round']}/{self.num_rounds}[/] clients {row['trained']} ok "
            f"{row['refused']} refused {row['failed']} failed | loss {row['loss']:.3f} "
            f"acc {row['accuracy']:.3f} | eps max {row['epsilon_max']:.2f} | "
            f"{row['seconds']:.0f} s")
        # Each failure by name and its first line (Ray's run to a page); metrics.json
        # keeps the whole reason. A thousand-client round lists a few, then counts.
        failures = row["failures"]
        for failure in failures[:MAX_FAILURES_SHOWN]:
            first = failure["why"].strip().splitlines()[:1] or ["?"]
            self.console.print(f"  node {failure['node']} failed: {first[0][:200]}",
                               highlight=False, markup=False, soft_wrap=True)
        if len(failures) > MAX_FAILURES_SHOWN:
            self.console.print(f"  and {len(failures) - MAX_FAILURES_SHOWN} more failures "
                               "(metrics.json)", highlight=False)

    def summary_table(self) -> Table:
        table = Table(title=f"Run summary ({self.run_dir})")
        for col in COLUMNS:
            table.add_column(HEADERS.get(col, col), justify="right")
        for row in self.rows:
            table.add_row(*(_fmt(row[c]) for c in COLUMNS))
        return table

    def _start_csv(self) -> None:
        """metrics.csv anew: its header and a resumed run's earlier rows."""
        write_atomic(self.run_dir / "metrics.csv", _csv_rows(self.rows, header=True))

    def _write(self, row: dict[str, Any]) -> None:
        self._encoded.append(json.dumps(row))
        payload = self._head + ",\n".join(self._encoded) + "\n]}\n"
        write_atomic(self.run_dir / "metrics.json", payload.encode())
        with open(self.run_dir / "metrics.csv", "ab") as fh:
            fh.write(_csv_rows([row], header=False))


def _csv_rows(rows: list[dict[str, Any]], header: bool) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def _row(server_round: int, outcome: RoundOutcome | None, federated: dict[str, Any],
         central: dict[str, float], seconds: float) -> dict[str, Any]:
    """A round's metrics row (round 0, the initial model, has no outcome)."""
    trained = outcome.trained if outcome else []
    failures = outcome.failed + outcome.rejected if outcome else []
    eps = [r.epsilon for r in trained]
    return {
        "round": server_round,
        "trained": len(trained),
        "refused": len(outcome.refused) if outcome else 0,
        "failed": len(failures),
        "loss": central.get("loss", math.nan),
        "accuracy": central.get("accuracy", math.nan),
        "fed_accuracy": federated.get("eval-accuracy", math.nan),
        "epsilon_max": max(eps, default=0.0),
        "epsilon_mean": sum(eps) / len(eps) if eps else 0.0,
        "seconds": seconds,
        "aggregated": outcome.aggregated if outcome else False,
        "failures": [{"node": node, "why": why} for node, why in failures],
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)
