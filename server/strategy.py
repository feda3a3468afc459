"""FedAvg over the trainable weights, with privacy records, refusals and checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.ledger import LedgerError, entry_of_message, record_of_entry
from common.records import PrivacyRecord
from common.weights import from_record
from server.checkpoint import save_checkpoint
from server.ledger import Ledger

log = logging.getLogger("fedpriv.server")


@dataclass
class RoundOutcome:
    trained: list[PrivacyRecord] = field(default_factory=list)
    refused: list[PrivacyRecord] = field(default_factory=list)
    failed: int = 0
    rejected: int = 0


def update_problem(msg: Message, expected: dict[str, np.ndarray]) -> str:
    """Why a trained reply's weights cannot be averaged into the global model, or ''."""
    if len(msg.content.array_records) != 1 or len(msg.content.metric_records) != 1:
        return "expected one set of weights and one set of metrics"
    update = from_record(next(iter(msg.content.array_records.values())))
    if expected and set(update) != set(expected):
        return f"weights named {sorted(set(update) ^ set(expected))[:3]} do not fit the model"
    for name, value in update.items():
        if name in expected and (value.shape != expected[name].shape
                                 or value.dtype != expected[name].dtype):
            return (f"{name} is {value.dtype}{list(value.shape)}, the model has "
                    f"{expected[name].dtype}{list(expected[name].shape)}")
        if not np.isfinite(value).all():
            return f"{name} holds NaN or Inf"
    return ""


class PrivacyFedAvg(FedAvg):
    """Flower's FedAvg, fed only replies that trained and carry a signed privacy record.

    Each signed entry goes to the ledger before aggregation. Refusals (a node at its budget)
    and updates that do not fit the global model (names, shapes, dtypes, NaN or Inf) are
    logged and left out; the round goes on with the others.
    """

    def __init__(self, *, ledger: Ledger, run_dir: Path, **fedavg_args) -> None:
        super().__init__(**fedavg_args)
        self.ledger = ledger
        self.run_dir = run_dir
        self.rounds: dict[int, RoundOutcome] = {}
        self.federated_metrics: dict[int, dict[str, float]] = {}
        self.global_arrays: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_arrays = from_record(arrays)  # what every update must match
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        outcome = self.rounds.setdefault(server_round, RoundOutcome())
        to_aggregate = []
        for msg in replies:
            if msg.has_error():
                outcome.failed += 1
                to_aggregate.append(msg)  # FedAvg logs the failure
                continue
            node = msg.metadata.src_node_id
            try:
                entry = entry_of_message(msg)
            except LedgerError as exc:
                outcome.rejected += 1
                log.warning("round %s: reply from node %s rejected: %s", server_round, node, exc)
                continue
            self.ledger.append(entry, received_from=node)
            record = record_of_entry(entry)
            if record.kind == "refused":
                outcome.refused.append(record)
                log.warning("round %s: node %s refused: %s", server_round, node, record.reason)
                continue
            problem = update_problem(msg, self.global_arrays)
            if problem:
                outcome.rejected += 1
                log.warning("round %s: update from node %s rejected: %s", server_round, node,
                            problem)
                continue
            outcome.trained.append(record)
            to_aggregate.append(msg)
        arrays, metrics = super().aggregate_train(server_round, to_aggregate)
        if arrays is not None:
            save_checkpoint(self.run_dir, server_round, from_record(arrays))
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        replies = list(replies)
        for msg in replies:
            if msg.has_error():
                continue  # FedAvg logs it
            try:
                self.ledger.append(entry_of_message(msg), received_from=msg.metadata.src_node_id)
            except LedgerError as exc:
                log.warning("round %s: evaluation reply from node %s: %s", server_round,
                            msg.metadata.src_node_id, exc)
        metrics = super().aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.federated_metrics[server_round] = dict(metrics)
        return metrics
