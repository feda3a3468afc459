"""Fingerprints for a record's `extra`: which model went in and out, a commitment to the data."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from common.errors import LedgerError


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint_arrays(arrays: Iterable[np.ndarray]) -> str:
    """sha256 over dtype, shape and bytes of each array: names a model's exact weights."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def data_commitment(data_sha256: str, salt: bytes) -> str:
    """A hiding commitment to the node's data: HMAC-SHA256(salt, sha256 of the data).

    A plain hash of the data would break DP: an adversary who knows all records but
    one can test each candidate for the missing one against the hash. With a secret
    random salt (>= 16 bytes, kept on the node) the commitment reveals nothing; the
    node can later open it to an auditor by disclosing the salt.
    """
    if len(salt) < 16:
        raise LedgerError("data commitment salt must be at least 16 random bytes")
    return hmac.new(salt, bytes.fromhex(data_sha256), hashlib.sha256).hexdigest()


def make_extra(*, model_in: str | None = None, model_out: str | None = None,
               data: str | None = None, accountant_settings: Mapping[str, Any] | None = None,
               started_at: float | None = None, finished_at: float | None = None,
               **more: Any) -> dict[str, Any]:
    """The record's `extra` under standard names; only the given items are kept.

    model_in: fingerprint of the global model the node received; model_out: of the
    update it sent; data: `data_commitment` of its training data; accountant_settings:
    e.g. {"opacus": version, "eps_error": 0.01}; started_at/finished_at: the round's
    local wall-clock times.
    """
    items = {"model_in": model_in, "model_out": model_out, "data": data,
             "accountant_settings": dict(accountant_settings) if accountant_settings else None,
             "started_at": started_at, "finished_at": finished_at, **more}
    return {k: v for k, v in items.items() if v is not None}
