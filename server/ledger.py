"""The server's combined privacy ledger: every signed entry received from a node.

Entries are stored exactly as the nodes signed them (see common.ledger), plus the
server's receipt (received_from, received_at) outside the signed part, so an auditor
can verify them without trusting the server.

An entry is written once: a node that answers again (a round repeated after the
coordinator restarted) or re-sends entries the server may have missed is recognised
by the entry's hash, so nothing is lost and nothing is counted twice.

The ledger is the first of the strategy's round observers: a round's entries are on
disk before its checkpoint says the round is over.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.files import write_atomic
from common.ledger.entry import entry_hash, record_of_entry
from common.ledger.record import PrivacyRecord
from common.ledger.store import append_received, read_ledger
from server.outcome import RoundOutcome

log = logging.getLogger("fedpriv.server")


class Ledger:
    """Append-only JSONL; each line is fsynced before the round goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.hashes: set[str] = set()
        self.heads: dict[int, str] = {}  # node id -> hash of the newest entry it sent
        if path.exists():
            self._set_aside_cut_off_line()
            for line in read_ledger(path):
                self._note(line.entry, line.entry.get("received_from"))

    def _set_aside_cut_off_line(self) -> None:
        """A kill in the middle of an append leaves a partial last line: keep its bytes
        beside the ledger and cut it off, so the ledger reads again. The node still
        holds the full entry and sends it again (see `heads`)."""
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        end = data.rfind(b"\n") + 1
        aside = self.path.with_name(f"{self.path.name}.cut-off-{end}")
        write_atomic(aside, data[end:], replace=False)
        with open(self.path, "r+b") as fh:
            fh.truncate(end)
            os.fsync(fh.fileno())
        log.warning("ledger %s ended in a cut-off line (an interrupted write): its %d bytes "
                    "are kept in %s", self.path, len(data) - end, aside.name)

    def _note(self, entry: Mapping[str, Any], received_from: Any) -> None:
        h = entry_hash(entry)
        self.hashes.add(h)
        if isinstance(received_from, int):
            self.heads[received_from] = h

    def append(self, entry: Mapping[str, Any], received_from: int) -> bool:
        """Write `entry` unless the ledger holds it already; True if it was written."""
        if entry_hash(entry) in self.hashes:
            self.heads[received_from] = entry_hash(entry)
            return False
        append_received(self.path, entry, received_from=received_from)
        self._note(entry, received_from)
        return True

    def train_round_done(self, outcome: RoundOutcome) -> None:
        """Write every signed entry the train round received (a RoundObserver)."""
        self._append_all(outcome)

    def evaluate_round_done(self, outcome: RoundOutcome) -> None:
        """Write every signed entry the evaluate round received (a RoundObserver)."""
        self._append_all(outcome)

    def _append_all(self, outcome: RoundOutcome) -> None:
        for node, entry in outcome.entries:
            self.append(entry, received_from=node)

    def records(self) -> list[PrivacyRecord]:
        if not self.path.exists():
            return []
        return [record_of_entry(line.entry) for line in read_ledger(self.path)]
