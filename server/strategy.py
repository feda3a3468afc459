"""The federation's strategy: a wrapper around one of Flower's aggregation strategies.

`PrivacyStrategy` holds the Flower strategy it changes, the way Flower's
`DifferentialPrivacyServerSideFixedClipping(FedAvg(...))` does. It addresses each
request (our round number, the node's ledger head), decides which replies may be
aggregated, leaves the aggregation itself to the inner FedAvg, FedMedian or
FedTrimmedAvg, and hands each round's `RoundOutcome` to its observers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Strategy

from common.errors import ConfigError, LedgerError
from common.ledger.entry import record_of_entry
from common.ledger.record import PrivacyRecord
from common.training import max_update_norm
from common.wire import (
    LEDGER_HEAD_KEY,
    LEDGER_RUN_KEY,
    SERVER_ROUND_KEY,
    entries_of_message,
    from_record,
)
from server.admission import check_admitted
from server.outcome import RoundObserver, RoundOutcome

log = logging.getLogger("fedpriv.server")


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


def flower_strategy(aggregation: str, trim_fraction: float, **sampling: Any) -> FedAvg:
    """Flower's strategy for the `aggregation` setting.

    FedMedian and FedTrimmedAvg (without the `trim_fraction` tails of each coordinate)
    resist a minority of poisoned updates that FedAvg's example-weighted mean follows.
    `sampling` are FedAvg's node-sampling arguments (fraction_train, min_train_nodes...).
    """
    if aggregation == "fedavg":
        return FedAvg(**sampling)
    if aggregation == "median":
        return FedMedian(**sampling)
    if aggregation == "trimmed-mean":
        return FedTrimmedAvg(beta=trim_fraction, **sampling)
    raise ConfigError(f"invalid --aggregation {aggregation!r}: use fedavg, median or "
                      "trimmed-mean")


class PrivacyStrategy(Strategy):
    """What the federation adds in front of an inner Flower strategy's aggregation.

    Left out, with the reason logged and kept in the round's outcome: nodes that dropped
    out or timed out, refusals (a node at its budget), replies without a valid signed
    record, and updates that do not fit the global model (names, shapes, dtypes, NaN or
    Inf, a norm beyond what the node's declared steps allow). The inner strategy
    aggregates the rest when at least `min_updates` remain; otherwise the global model
    stays as it was. Every signed entry received, of a used reply or not, goes into the
    outcome, for the ledger observer to keep.

    `heads` (node id -> hash of the newest entry the server holds from it) is read, never
    written: the ledger observer keeps it current. `ledger_keys` (node id -> the ledger
    key admitted for it; empty in simulation) rejects records signed by any other key
    before anything of them is kept. `first_round` numbers the rounds of a
    resumed run on from its checkpoint (Flower's `Strategy.start` counts from 1; every
    method here maps its count to ours with `round_of`).
    """

    def __init__(self, inner: Strategy, *, heads: Mapping[int, str], ledger_run: int,
                 learning_rate: float, first_round: int = 1, min_updates: int = 1,
                 observers: Sequence[RoundObserver] = (),
                 ledger_keys: Mapping[int, str] | None = None) -> None:
        self.inner, self.heads, self.ledger_run = inner, heads, ledger_run
        self.ledger_keys = dict(ledger_keys or {})
        self.learning_rate, self.first_round, self.min_updates = (learning_rate, first_round,
                                                                  min_updates)
        self.observers = tuple(observers)
        self.expect({})
        # The messages sent per (round, kind), until their replies are aggregated: Flower's
        # grid gives each its id when it is pushed, and an error reply made by the
        # SuperLink (node unavailable) names no node, only the message it answers.
        self._asked: dict[tuple[int, str], list[Message]] = {}

    def __repr__(self) -> str:
        return f"PrivacyStrategy({self.inner!r})"

    def summary(self) -> None:
        """Log our settings, then the inner strategy's (Flower calls this at start)."""
        log.info("privacy strategy: ledger run %s, rounds from %d, at least %d update(s) "
                 "per round", self.ledger_run, self.first_round, self.min_updates)
        self.inner.summary()

    def expect(self, arrays: dict[str, np.ndarray]) -> None:
        """The global model every update of this round must fit, and its size and norm."""
        self.global_arrays = arrays
        self.global_size = sum(a.size for a in arrays.values())
        self.global_norm = math.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2))
                                         for a in arrays.values()))

    def round_of(self, count: int) -> int:
        """Our round number for Flower's round count `count` (1 is the run's first)."""
        return count + self.first_round - 1

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The inner strategy's sampled requests, addressed; `arrays` is what updates must fit."""
        server_round = self.round_of(server_round)
        self.expect(from_record(arrays))
        return self._addressed(server_round, "train",
                               self.inner.configure_train(server_round, arrays, config, grid))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """The inner strategy's sampled evaluation requests, addressed as for training."""
        server_round = self.round_of(server_round)
        return self._addressed(server_round, "evaluate",
                               self.inner.configure_evaluate(server_round, arrays, config,
                                                             grid))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The inner strategy's aggregate of the accepted updates (None if too few); then
        the round's outcome goes to the observers, in their order."""
        server_round = self.round_of(server_round)
        outcome = RoundOutcome(server_round, "train")
        accepted = [msg for msg, record in self._usable(server_round, "train", replies, outcome)
                    if self._accepted_update(msg, record, outcome)]
        arrays, metrics = None, None
        if len(accepted) >= self.min_updates:
            arrays, metrics = self.inner.aggregate_train(server_round, accepted)
        else:
            log.warning("round %s: %d update(s) accepted, fewer than min-updates %d: the "
                        "global model stays as it was", server_round, len(accepted),
                        self.min_updates)
        outcome.aggregated = arrays is not None
        outcome.model = self.global_arrays if arrays is None else from_record(arrays)
        outcome.metrics = dict(metrics or {})
        for observer in self.observers:
            observer.train_round_done(outcome)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """The inner strategy's aggregate of the usable replies' metrics; then the outcome
        goes to the observers (the ledger keeps the evaluation replies' entries too)."""
        server_round = self.round_of(server_round)
        outcome = RoundOutcome(server_round, "evaluate")
        usable = [msg for msg, _ in self._usable(server_round, "evaluate", replies, outcome)]
        metrics = self.inner.aggregate_evaluate(server_round, usable)
        outcome.metrics = dict(metrics or {})
        for observer in self.observers:
            observer.evaluate_round_done(outcome)
        return metrics

    def _addressed(self, server_round: int, kind: str, messages: Iterable[Message]
                   ) -> list[Message]:
        """One message per node with its own ledger head, and the round numbered as ours."""
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            config = ConfigRecord({**msg.content["config"], SERVER_ROUND_KEY: server_round,
                                   LEDGER_RUN_KEY: self.ledger_run,
                                   LEDGER_HEAD_KEY: self.heads.get(node, "")})
            content = RecordDict({"arrays": msg.content["arrays"], "config": config})
            out.append(Message(content=content, dst_node_id=node,
                               message_type=msg.metadata.message_type))
        self._asked[(server_round, kind)] = out
        return out

    def _usable(self, server_round: int, kind: str, replies: Iterable[Message],
                outcome: RoundOutcome) -> list[tuple[Message, PrivacyRecord]]:
        """The replies with a valid record for this round; the rest go into `outcome`."""
        replies = list(replies)
        asked = self._asked.pop((server_round, kind), [])
        self._note_silent(server_round, asked, replies, outcome)
        usable = []
        for msg in replies:
            record = self._receive(server_round, asked, msg, outcome)
            if record is not None:
                usable.append((msg, record))
        return usable

    def _note_silent(self, server_round: int, asked: list[Message], replies: list[Message],
                     outcome: RoundOutcome) -> None:
        answered = {msg.metadata.reply_to_message_id for msg in replies}
        for node in sorted(m.metadata.dst_node_id for m in asked
                           if m.metadata.message_id not in answered):
            outcome.failed.append((node, "no reply before the round timeout"))
            log.warning("round %s: node %s did not reply in time", server_round, node)

    def _receive(self, server_round: int, asked: list[Message], msg: Message,
                 outcome: RoundOutcome) -> PrivacyRecord | None:
        """Keep the reply's signed entries; its record, or None if the reply is not usable.

        The entries are kept before the run and round are checked: a valid signature
        means the node spent what they say, whether or not this round can use the reply.
        """
        node = _node_of(asked, msg)
        if msg.has_error():
            outcome.failed.append((node, f"error {msg.error.code}: {msg.error.reason}"))
            log.warning("round %s: node %s failed: %s", server_round, node, msg.error.reason)
            return None
        try:
            entries = entries_of_message(msg)
            check_admitted(self.ledger_keys, msg.metadata.src_node_id,
                           entries[-1]["node_key"])
        except LedgerError as exc:
            outcome.rejected.append((node, str(exc)))
            log.warning("round %s: reply from node %s rejected: %s", server_round, node, exc)
            return None
        outcome.entries.extend((node, entry) for entry in entries)
        record = record_of_entry(entries[-1])
        if (record.run_id, record.round) != (self.ledger_run, server_round):
            why = f"its record is for run {record.run_id} round {record.round}"
            outcome.rejected.append((node, why))
            log.warning("round %s: reply from node %s rejected: %s", server_round, node, why)
            return None
        return record

    def _accepted_update(self, msg: Message, record: PrivacyRecord,
                         outcome: RoundOutcome) -> bool:
        """Sort a usable train reply into refusals, rejected updates or updates to use."""
        if record.kind == "refused":
            outcome.refused.append(record)
            log.warning("round %s: node %s refused: %s", outcome.server_round, record.node_id,
                        record.reason)
            return False
        problem = self._update_problem(msg, record)
        if problem:
            outcome.rejected.append((msg.metadata.src_node_id, problem))
            log.warning("round %s: update from node %s rejected: %s", outcome.server_round,
                        msg.metadata.src_node_id, problem)
            return False
        outcome.trained.append(record)
        return True

    def _update_problem(self, msg: Message, record: PrivacyRecord) -> str:
        if len(msg.content.array_records) != 1 or len(msg.content.metric_records) != 1:
            return "expected one set of weights and one set of metrics"
        update = from_record(next(iter(msg.content.array_records.values())))
        bound = max_update_norm(record.steps, self.learning_rate, self.global_size,
                                self.global_norm)
        return update_problem(update, self.global_arrays, bound)


def _node_of(asked: list[Message], reply: Message) -> int:
    """The node a reply answers for: the SuperLink's error replies name only the message."""
    for sent in asked:
        if sent.metadata.message_id == reply.metadata.reply_to_message_id:
            return sent.metadata.dst_node_id
    return reply.metadata.src_node_id
