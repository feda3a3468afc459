"""What travels between server and nodes, in Flower's record types.

Weights go as an ArrayRecord; a node's signed ledger entries go as canonical JSON in a
ConfigRecord under RECORD_KEY, so the bytes the server stores are the bytes the node
signed. The only module of the core that imports Flower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from common.errors import LedgerError
from common.ledger.entry import entry_from_json, entry_to_json, signature_ok

RECORD_KEY = "privacy"
# Config keys the server adds to each request: the run a node's records belong to (for a
# resumed federation, its first Flower run) and the newest entry the server holds from it.
LEDGER_RUN_KEY, LEDGER_HEAD_KEY = "ledger-run", "ledger-head"
SERVER_ROUND_KEY = "server-round"  # the round as the server numbers it (resumed runs go on)
# The message type of the end-of-run attestation request (a ClientApp query action).
ATTEST_MESSAGE_TYPE = "query.attest"


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def nbytes(record: ArrayRecord) -> int:
    """Payload size of the weights, as serialised for the wire."""
    return sum(len(array.data) for array in record.values())


def entry_recorddict(entry: Mapping[str, Any],
                     earlier: Sequence[Mapping[str, Any]] = ()) -> RecordDict:
    """The reply content that carries a signed entry (the node adds arrays and metrics).

    `earlier` are this node's entries the server may not have (see NodeLedger.after):
    a reply lost with a coordinator that restarted, or a node killed between signing
    and sending. The server keeps those it lacks, so the chain it holds has no gap.
    """
    config = ConfigRecord({"entry": entry_to_json(entry)})
    if earlier:
        config["earlier"] = [entry_to_json(e) for e in earlier]
    return RecordDict({RECORD_KEY: config})


def entries_of_message(message: Message) -> list[dict[str, Any]]:
    """The signed entries a reply carries, oldest first, the reply's own one last.

    LedgerError if there is none, or any is malformed, badly signed or from another key.
    """
    if message.has_error():
        raise LedgerError(f"error reply: {message.error.reason}")
    records = message.content.config_records
    if RECORD_KEY not in records or "entry" not in records[RECORD_KEY]:
        raise LedgerError("reply carries no privacy record")
    carried = records[RECORD_KEY]
    texts = [*carried.get("earlier", []), carried["entry"]]
    entries = [entry_from_json(str(text)) for text in texts]
    for entry in entries:
        if not signature_ok(entry):
            raise LedgerError("privacy record signature does not verify")
        if entry["node_key"] != entries[-1]["node_key"]:
            raise LedgerError("a reply carries entries signed by another node's key")
    return entries


def entry_of_message(message: Message) -> dict[str, Any]:
    """The signed entry of a reply itself (LedgerError as for `entries_of_message`)."""
    return entries_of_message(message)[-1]
