"""Flower's strategies over the trainable weights, with privacy records, faults and checkpoints.

`make_strategy` puts `PrivacyRounds` in front of Flower's FedAvg, FedMedian or
FedTrimmedAvg: the aggregation itself is Flower's, fed only updates that passed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg

from common.errors import LedgerError
from common.ledger.entry import record_of_entry
from common.ledger.record import PrivacyRecord
from common.training import max_update_norm
from common.wire import LEDGER_HEAD_KEY, LEDGER_RUN_KEY, entries_of_message, from_record
from server.checkpoint import save_checkpoint
from server.ledger import Ledger

log = logging.getLogger("fedpriv.server")



@dataclass
class RoundOutcome:
    trained: list[PrivacyRecord] = field(default_factory=list)
    refused: list[PrivacyRecord] = field(default_factory=list)
    # (node id, why) of nodes that did not answer, or whose reply was not used.
    failed: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    aggregated: bool = False


def update_problem(update: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                   max_norm: float) -> str:
    """Why an update cannot be aggregated into the global model `expected`, or ''.

    `max_norm` bounds the L2 distance from the global model that honest local training
    can reach (common.training.max_update_norm).
    """
    if set(update) != set(expected):
        return f"weights named {sorted(set(update) ^ set(expected))[:3]} do not fit the model"
    squared = 0.0
    for name, value in update.items():
        if value.shape != expected[name].shape or value.dtype != expected[name].dtype:
            return (f"{name} is {value.dtype}{list(value.shape)}, the model has "
                    f"{expected[name].dtype}{list(expected[name].shape)}")
        if not np.isfinite(value).all():
            return f"{name} holds NaN or Inf"
        squared += float(np.sum((value.astype(np.float64) - expected[name]) ** 2))
    if math.sqrt(squared) > max_norm:
        return (f"update norm {math.sqrt(squared):.4g} exceeds {max_norm:.4g}, the most the "
                "declared local training can move the model")
    return ""


class PrivacyRounds:
    """What the federation adds in front of a Flower strategy's own aggregation.

    Each signed entry goes to the ledger before aggregation (once: repeats are recognised).
    Left out, with the reason logged and kept in `rounds`: nodes that dropped out or timed
    out, refusals (a node at its budget), replies without a valid signed record, and
    updates that do not fit the global model (names, shapes, dtypes, NaN or Inf, a norm
    beyond what the node's declared steps allow). The round is aggregated from the rest
    when at least `min_updates` remain; otherwise the global model stays as it was.
    A checkpoint is written after every round, so a restarted coordinator resumes after it.

    `first_round` numbers the rounds of a resumed run on from the checkpoint (Flower's
    `Strategy.start` counts from 1; every method here maps its count to ours).
    """

    def __init__(self, *, ledger: Ledger, run_dir: Path, ledger_run: int, learning_rate: float,
                 first_round: int = 1, min_updates: int = 1, **strategy_args) -> None:
        super().__init__(**strategy_args)
        self.ledger, self.run_dir, self.ledger_run = ledger, run_dir, ledger_run
        self.learning_rate, self.first_round, self.min_updates = (learning_rate, first_round,
                                                                  min_updates)
        self.rounds: dict[int, RoundOutcome] = {}
        self.federated_metrics: dict[int, dict[str, float]] = {}
        self.expect({})
        # The messages sent per (round, kind): Flower's grid gives each its id when it is
        # pushed, and an error reply made by the SuperLink (node unavailable) names no
        # node, only the message it answers.
        self.asked: dict[tuple[int, str], list[Message]] = {}

    def expect(self, arrays: dict[str, np.ndarray]) -> None:
        """The global model every update of this round must fit, and its size and norm."""
        self.global_arrays = arrays
        self.global_size = sum(a.size for a in arrays.values())
        self.global_norm = math.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2))
                                         for a in arrays.values()))

    def round_of(self, count: int) -> int:
        return count + self.first_round - 1

    def _addressed(self, server_round: int, kind: str, messages: Iterable[Message]
                   ) -> list[Message]:
        """One message per node with its own ledger head, and the round numbered as ours."""
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            config = ConfigRecord({**msg.content["config"], "server-round": server_round,
                                   LEDGER_RUN_KEY: self.ledger_run,
                                   LEDGER_HEAD_KEY: self.ledger.heads.get(node, "")})
            content = RecordDict({"arrays": msg.content["arrays"], "config": config})
            out.append(Message(content=content, dst_node_id=node,
                               message_type=msg.metadata.message_type))
        self.asked[(server_round, kind)] = out
        return out

    def _node_of(self, server_round: int, kind: str, reply: Message) -> int:
        for sent in self.asked.get((server_round, kind), []):
            if sent.metadata.message_id == reply.metadata.reply_to_message_id:
                return sent.metadata.dst_node_id
        return reply.metadata.src_node_id

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round = self.round_of(server_round)
        self.expect(from_record(arrays))
        return self._addressed(server_round, "train",
                               super().configure_train(server_round, arrays, config, grid))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round = self.round_of(server_round)
        return self._addressed(server_round, "evaluate",
                               super().configure_evaluate(server_round, arrays, config, grid))

    def _receive(self, server_round: int, kind: str, msg: Message,
                 outcome: RoundOutcome) -> PrivacyRecord | None:
        """Ledger the reply's entries; its record, or None if the reply is not usable."""
        node = self._node_of(server_round, kind, msg)
        if msg.has_error():
            outcome.failed.append((node, f"error {msg.error.code}: {msg.error.reason}"))
            log.warning("round %s: node %s failed: %s", server_round, node, msg.error.reason)
            return None
        try:
            entries = entries_of_message(msg)
        except LedgerError as exc:
            outcome.rejected.append((node, str(exc)))
            log.warning("round %s: reply from node %s rejected: %s", server_round, node, exc)
            return None
        for entry in entries:
            self.ledger.append(entry, received_from=node)
        record = record_of_entry(entries[-1])
        if (record.run_id, record.round) != (self.ledger_run, server_round):
            why = f"its record is for run {record.run_id} round {record.round}"
            outcome.rejected.append((node, why))
            log.warning("round %s: reply from node %s rejected: %s", server_round, node, why)
            return None
        return record

    def _silent(self, server_round: int, kind: str, replies: list[Message],
                outcome: RoundOutcome) -> None:
        answered = {msg.metadata.reply_to_message_id for msg in replies}
        for node in sorted(m.metadata.dst_node_id for m in self.asked.get((server_round, kind), [])
                           if m.metadata.message_id not in answered):
            outcome.failed.append((node, "no reply before the round timeout"))
            log.warning("round %s: node %s did not reply in time", server_round, node)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round = self.round_of(server_round)
        outcome = self.rounds.setdefault(server_round, RoundOutcome())
        replies = list(replies)
        self._silent(server_round, "train", replies, outcome)
        accepted = []
        for msg in replies:
            record = self._receive(server_round, "train", msg, outcome)
            if record is None:
                continue
            if record.kind == "refused":
                outcome.refused.append(record)
                log.warning("round %s: node %s refused: %s", server_round, record.node_id,
                            record.reason)
                continue
            problem = self._update_problem(msg, record)
            if problem:
                outcome.rejected.append((msg.metadata.src_node_id, problem))
                log.warning("round %s: update from node %s rejected: %s", server_round,
                            msg.metadata.src_node_id, problem)
                continue
            outcome.trained.append(record)
            accepted.append(msg)
        arrays, metrics = None, None
        if len(accepted) >= self.min_updates:
            arrays, metrics = super().aggregate_train(server_round, accepted)
        else:
            log.warning("round %s: %d update(s) accepted, fewer than min-updates %d: the "
                        "global model stays as it was", server_round, len(accepted),
                        self.min_updates)
        outcome.aggregated = arrays is not None
        save_checkpoint(self.run_dir, server_round,
                        from_record(arrays) if arrays is not None else self.global_arrays)
        return arrays, metrics

    def _update_problem(self, msg: Message, record: PrivacyRecord) -> str:
        if len(msg.content.array_records) != 1 or len(msg.content.metric_records) != 1:
            return "expected one set of weights and one set of metrics"
        update = from_record(next(iter(msg.content.array_records.values())))
        bound = max_update_norm(record.steps, self.learning_rate, self.global_size,
                                self.global_norm)
        return update_problem(update, self.global_arrays, bound)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        server_round = self.round_of(server_round)
        outcome = RoundOutcome()
        replies = list(replies)
        self._silent(server_round, "evaluate", replies, outcome)
        usable = [msg for msg in replies
                  if self._receive(server_round, "evaluate", msg, outcome) is not None]
        metrics = super().aggregate_evaluate(server_round, usable)
        if metrics is not None:
            self.federated_metrics[server_round] = dict(metrics)
        return metrics


class PrivacyFedAvg(PrivacyRounds, FedAvg):
    """Flower's FedAvg (example-weighted mean) over the updates that passed."""


class PrivacyFedMedian(PrivacyRounds, FedMedian):
    """Flower's FedMedian: the coordinate-wise median resists a minority of poisoned updates."""


class PrivacyFedTrimmedAvg(PrivacyRounds, FedTrimmedAvg):
    """Flower's FedTrimmedAvg: per coordinate, the mean without the `beta` tails."""


def make_strategy(aggregation: str, trim_fraction: float, **args) -> PrivacyRounds:
    if aggregation == "median":
        return PrivacyFedMedian(**args)
    if aggregation == "trimmed-mean":
        return PrivacyFedTrimmedAvg(beta=trim_fraction, **args)
    return PrivacyFedAvg(**args)
