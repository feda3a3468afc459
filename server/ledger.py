"""The server's combined privacy ledger: every signed entry received from a node.

Entries are stored exactly as the nodes signed them (see common/ledger.py), plus the
server's receipt (received_from, received_at) outside the signed part, so an auditor
can verify them without trusting the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.ledger import append_received, read_entries, record_of_entry
from common.records import PrivacyRecord


class Ledger:
    """Append-only JSONL; each line is fsynced before the round goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, entry: Mapping[str, Any], received_from: int) -> None:
        append_received(self.path, entry, received_from=received_from)

    def records(self) -> list[PrivacyRecord]:
        if not self.path.exists():
            return []
        return [record_of_entry(entry) for entry in read_entries(self.path)]
