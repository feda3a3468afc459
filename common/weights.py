"""Trainable weights <-> Flower ArrayRecord (what travels between server and nodes)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def nbytes(record: ArrayRecord) -> int:
    """Payload size of the weights, as serialised for the wire."""
    return sum(len(array.data) for array in record.values())
