"""Ledger files: read a JSONL ledger, append durably, and a node's own signed ledger."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.errors import LedgerError
from common.files import read_utf8
from common.ledger.entry import (
    GENESIS,
    LedgerLine,
    entry_hash,
    make_entry,
    shape_problem,
    signature_ok,
    with_receipt,
)
from common.ledger.keys import public_key_hex
from common.ledger.record import PrivacyRecord
from common.ledger.verify import verify_entries


def read_ledger(path: str | Path) -> list[LedgerLine]:
    """Every entry of a JSONL ledger (a node's copy or the server's combined one).

    Blank lines are skipped; anything else that is not an entry raises LedgerError
    naming the file and line, since an auditor cannot reason about a line that
    does not parse.
    """
    path = Path(path)
    return parse_lines(path, read_utf8(path, "ledger", LedgerError))


def parse_lines(path: Path, text: str, first_line: int = 1) -> list[LedgerLine]:
    """The entries of ledger text that starts at line `first_line` of `path`."""
    lines = []
    for number, raw in enumerate(text.splitlines(), start=first_line):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LedgerError(f"{path}:{number}: not a JSON ledger entry ({exc.msg}, column "
                              f"{exc.colno}); a cut-off last line means a write was "
                              "interrupted") from None
        problem = shape_problem(entry)
        if problem:
            raise LedgerError(f"{path}:{number}: ledger entry {problem}")
        lines.append(LedgerLine(str(path), number, entry))
    return lines


def read_entries(path: str | Path) -> list[dict[str, Any]]:
    return [line.entry for line in read_ledger(path)]


def append_line(path: str | Path, obj: Mapping[str, Any]) -> None:
    """Append one JSON line and make it durable (flush + fsync) before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # One write() of one line under O_APPEND: concurrent appenders do not interleave
        # within a line on local filesystems.
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def append_received(path: str | Path, entry: Mapping[str, Any], *, received_from: Any,
                    received_at: float | None = None) -> None:
    """The server's writer: append a node's entry to the combined ledger with a receipt."""
    append_line(path, with_receipt(entry, received_from=received_from,
                                   received_at=time.time() if received_at is None
                                   else received_at))


class NodeLedger:
    """A node's own append-only ledger file, signed with the node's key.

    Opening an existing file verifies this key's chain in it and continues from its
    last entry; a broken local chain is refused rather than extended.

    The entries are kept in memory and the file is read again only where it grew:
    a node answers every message of a long run without re-reading or re-verifying
    its whole history. Another process of the same node (a simulation's other Ray
    worker, a restarted executor) may have appended meanwhile; its lines are taken
    in, and this key's among them must extend the verified chain.
    """

    def __init__(self, path: str | Path, private_key: Ed25519PrivateKey) -> None:
        self.path = Path(path)
        self._key = private_key
        self.node_key = public_key_hex(private_key)
        self._forget()
        self._read_new()

    def _forget(self) -> None:
        self.last_hash = GENESIS
        self._entries: list[dict[str, Any]] = []
        self._own: list[dict[str, Any]] = []       # this key's entries, in order
        self._own_at: dict[str, int] = {}           # entry hash -> index in _own
        self._hashes: set[str] = set()              # of every entry in the file
        self._seen = (0, 0, 0, 0)  # (inode, bytes, lines, mtime) of what was read so far

    def _read_new(self) -> None:
        """Take in what was appended to the file since it was last read."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._forget()
            return
        inode, size, lines, mtime = self._seen
        if stat.st_size == size and (stat.st_ino, stat.st_mtime_ns) == (inode, mtime):
            return
        if stat.st_ino != inode or stat.st_size <= size:
            # Replaced, cut or changed in place: read and verify it from the start.
            self._forget()
            inode, size, lines = stat.st_ino, 0, 0
            if not stat.st_size:
                self._seen = (inode, 0, 0, stat.st_mtime_ns)
                return
        with open(self.path, "rb") as fh:
            fh.seek(size)
            data = fh.read()
        if not data.endswith(b"\n"):
            raise LedgerError(f"ledger {self.path} ends in a cut-off line (an interrupted "
                              "write): move the file aside and check it with `fedpriv audit`")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LedgerError(f"ledger {self.path} cannot be read: {exc}") from None
        new = parse_lines(self.path, text, lines + 1)
        if size == 0:  # the whole file: every check an auditor makes on this key's chain
            own = [line for line in new if line.entry["node_key"] == self.node_key]
            problems = verify_entries(own)
            if problems:
                raise LedgerError(f"ledger {self.path} does not verify ({problems[0]}): "
                                  "refusing to extend it")
        for line in new:
            self._take(line, appended=size > 0)
        self._seen = (inode, stat.st_size, lines + text.count("\n"), stat.st_mtime_ns)

    def _take(self, line: LedgerLine, appended: bool) -> None:
        entry, h = line.entry, entry_hash(line.entry)
        if appended and entry["node_key"] == self.node_key:
            # Lines appended since the first read: each of ours must extend the chain.
            why = ""
            if not signature_ok(entry):
                why = "bad signature: the entry was changed after the node signed it"
            elif entry["prev_hash"] != self.last_hash:
                why = "broken chain: it does not follow this key's last entry"
            if why:
                raise LedgerError(f"ledger {self.path} does not verify ({line.where}: {why}): "
                                  "refusing to extend it")
        self._entries.append(entry)
        self._hashes.add(h)
        if entry["node_key"] == self.node_key:
            self._own_at[h] = len(self._own)
            self._own.append(entry)
            self.last_hash = h

    def sign(self, record: PrivacyRecord, extra: Mapping[str, Any] | None = None) -> dict:
        """The entry for `record` (+ `extra`) chained after the last one; not yet written."""
        self._read_new()
        return make_entry(record, extra, self.last_hash, self._key)

    def commit(self, entry: Mapping[str, Any]) -> None:
        """Write a signed entry durably, unless the ledger holds it already."""
        self._read_new()
        if entry_hash(entry) in self._hashes:
            return
        if entry["prev_hash"] != self.last_hash:
            raise LedgerError(f"ledger {self.path}: the entry does not follow the last one "
                              "(signed before a later entry was written)")
        append_line(self.path, entry)
        self._read_new()

    def append(self, record: PrivacyRecord, extra: Mapping[str, Any] | None = None) -> dict:
        """Sign `record` (+ `extra`) onto the chain, write it durably, return the entry."""
        entry = self.sign(record, extra)
        self.commit(entry)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        self._read_new()
        return list(self._entries)

    def after(self, head: str, run_id: int) -> list[dict[str, Any]]:
        """This key's entries of run `run_id` written after the entry hashed `head`.

        With no head (the server holds nothing from this node yet), all of the run's.
        A head not in this ledger names no entry of ours: nothing is sent.
        """
        self._read_new()
        if head and head not in self._own_at:
            return []
        start = self._own_at[head] + 1 if head else 0
        return [e for e in self._own[start:] if e["record"]["run_id"] == run_id]

    def unsent(self, head: str, run_id: int, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The entries of run `run_id` after `head` and before `entry`: what travels with
        the reply carrying `entry`, so a server that missed a reply still gets them."""
        mine = entry_hash(entry)
        earlier = []
        for other in self.after(head, run_id):
            if entry_hash(other) == mine:
                break
            earlier.append(other)
        return earlier
