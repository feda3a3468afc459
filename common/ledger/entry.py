"""One ledger entry: the signed record, its hash, its shape, and where it was read from."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from common.errors import LedgerError
from common.ledger.keys import public_key_hex
from common.ledger.record import KINDS, PrivacyRecord

GENESIS = "0" * 64
SIGNED_FIELDS = ("record", "prev_hash", "node_key")
ENTRY_FIELDS = (*SIGNED_FIELDS, "signature")
EXTRA_KEY = "extra"


@dataclass(frozen=True)
class LedgerLine:
    """One entry and where it was read from (for messages an auditor can act on)."""

    path: str
    line: int
    entry: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def canonical(obj: Any) -> bytes:
    """The one byte form that is signed and hashed: sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def signed_part(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in SIGNED_FIELDS}


def entry_hash(entry: Mapping[str, Any]) -> str:
    """sha256 of the entry's canonical JSON (signature included, server fields excluded)."""
    return hashlib.sha256(canonical({k: entry[k] for k in ENTRY_FIELDS})).hexdigest()


def record_dict(record: PrivacyRecord, extra: Mapping[str, Any] | None = None) -> dict:
    """The record as signed: its fields, with `extra` merged into the record's own.

    Round-tripped through canonical JSON so the signed dict is exactly what a reader
    of the file will parse (tuples become lists, and so on).
    """
    fields = asdict(record)
    fields[EXTRA_KEY] = {**fields.get(EXTRA_KEY, {}), **(extra or {})}
    return json.loads(canonical(fields))


def make_entry(record: PrivacyRecord, extra: Mapping[str, Any] | None, prev_hash: str,
               key: Ed25519PrivateKey) -> dict[str, Any]:
    body = {"record": record_dict(record, extra), "prev_hash": prev_hash,
            "node_key": public_key_hex(key)}
    return {**body, "signature": key.sign(canonical(body)).hex()}


def signature_ok(entry: Mapping[str, Any]) -> bool:
    """Whether the entry's signature verifies under the key the entry names."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry["node_key"]))
        key.verify(bytes.fromhex(entry["signature"]), canonical(signed_part(entry)))
    except (InvalidSignature, ValueError, TypeError, KeyError):
        return False
    return True


def record_of_entry(entry: Mapping[str, Any]) -> PrivacyRecord:
    """The PrivacyRecord an entry carries."""
    return PrivacyRecord(**entry["record"])


def entry_to_json(entry: Mapping[str, Any]) -> str:
    return canonical(entry).decode()


def entry_from_json(text: str) -> dict[str, Any]:
    """Parse one entry (e.g. as received from a node); LedgerError if it is not one."""
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LedgerError(f"ledger entry is not JSON: {exc.msg} at column {exc.colno}") from None
    problem = shape_problem(entry)
    if problem:
        raise LedgerError(f"ledger entry {problem}")
    return entry


def with_receipt(entry: Mapping[str, Any], **server_fields: Any) -> dict[str, Any]:
    """The entry plus fields the server adds (received_from, received_at...), unsigned."""
    clash = set(server_fields) & set(ENTRY_FIELDS)
    if clash:
        raise LedgerError(f"server fields may not replace signed fields: {sorted(clash)}")
    return {**{k: entry[k] for k in ENTRY_FIELDS}, **server_fields}


def shape_problem(entry: Any) -> str:
    """What is structurally wrong with an entry, or '' when it has the right form."""
    if not isinstance(entry, dict):
        return "is not a JSON object"
    missing = [k for k in ENTRY_FIELDS if k not in entry]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not isinstance(entry["record"], dict):
        return "record is not an object"
    for name, size in (("prev_hash", 64), ("node_key", 64), ("signature", 128)):
        value = entry[name]
        if not (isinstance(value, str) and len(value) == size and _is_hex(value)):
            return f"{name} is not {size} hex digits"
    try:
        record_of_entry(entry)
    except TypeError as exc:
        return f"record does not have the PrivacyRecord fields ({exc})"
    rec = entry["record"]
    for name, kinds in _RECORD_TYPES.items():
        if name not in rec:  # a field with a default
            continue
        if not isinstance(rec[name], kinds) or isinstance(rec[name], bool):
            return f"record field {name} is {rec[name]!r}: expected {kinds[0].__name__}"
    if rec["kind"] not in KINDS:
        return f"record kind {rec['kind']!r} is not one of {', '.join(KINDS)}"
    return ""


# JSON types of the record fields the audit computes with.
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("run_id", "round", "node_id", "steps", "total_steps"), (int,)),
    **dict.fromkeys(("noise_multiplier", "sample_rate", "max_grad_norm", "delta", "epsilon",
                     "epsilon_budget"), (float, int)),
    **dict.fromkeys(("kind", "mechanism", "accountant"), (str,)),
    "disclosed": (dict,),
    EXTRA_KEY: (dict,),
}


def _is_hex(s: str) -> bool:
    try:
        bytes.fromhex(s)
    except ValueError:
        return False
    return True
