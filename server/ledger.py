"""The server's combined privacy ledger: one JSON line per record received from a node."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from common.records import PrivacyRecord


class Ledger:
    """Append-only JSONL; each line is flushed and fsynced before the round goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: PrivacyRecord, received_from: int) -> None:
        # The record's own fields are the node's words; received_* are the server's.
        line = json.dumps({"record": json.loads(record.to_json()),
                           "received_from": received_from, "received_at": time.time()},
                          sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[PrivacyRecord]:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as fh:
            return [PrivacyRecord(**json.loads(line)["record"]) for line in fh if line.strip()]
