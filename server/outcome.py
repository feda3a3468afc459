"""What one round produced, and the interface of what reacts to it.

The strategy decides which replies count; everything that keeps a record of a round
(the ledger, checkpoints, the progress report) is a `RoundObserver` handed the round's
`RoundOutcome` once the round is decided, so none of them lives inside aggregation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from common.ledger.record import PrivacyRecord


@dataclass
class RoundOutcome:
    """One train or evaluate round as the server saw it.

    `entries` are the signed entries received, with the node that sent them, in the
    order received: those of replies rejected afterwards too (a node's spend is real
    whether or not its update was used). `model` (train rounds) is the global model
    after the round: the aggregate, or the model the round began with.
    """

    server_round: int
    kind: str  # "train" or "evaluate"
    trained: list[PrivacyRecord] = field(default_factory=list)
    refused: list[PrivacyRecord] = field(default_factory=list)
    # (node id, why) of nodes that did not answer, or whose reply was not used.
    failed: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    entries: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    aggregated: bool = False
    model: dict[str, np.ndarray] | None = None
    # Flower's aggregate of the replies' metrics (federated accuracy for evaluate rounds).
    metrics: dict[str, Any] = field(default_factory=dict)


class RoundObserver(Protocol):
    """Reacts to a decided round; observers are called in the order they were given."""

    def train_round_done(self, outcome: RoundOutcome) -> None: ...

    def evaluate_round_done(self, outcome: RoundOutcome) -> None: ...
