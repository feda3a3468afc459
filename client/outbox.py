"""A node's last signed reply per kind, kept so a repeated request gets the same answer.

When the coordinator restarts (or loses a reply), it asks again for a round the node
already answered. Training again would spend budget twice and sign a second record for
the same round; instead the node sends the very reply it signed: same ledger entry,
same weights. One file per kind and round, written atomically; the newest KEEP rounds
are kept (a resumed coordinator goes back at most to its newest good checkpoint).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from common.files import write_atomic
from common.ledger.provenance import fingerprint_arrays

log = logging.getLogger("fedpriv.client")
KEEP = 3


@dataclass(frozen=True)
class Outgoing:
    """A signed reply as it was sent: enough to send it again unchanged."""

    run_id: int
    round: int
    kind: str
    model_in: str                         # fingerprint of the model the request carried
    entry: dict[str, Any]                 # the signed ledger entry
    metrics: dict[str, float]
    arrays: dict[str, np.ndarray] | None  # the update sent (train replies only)


class Outbox:
    """The node's stored replies: one safetensors file per kind and round."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, kind: str, server_round: int) -> Path:
        """Where the reply of `kind` for `server_round` is kept."""
        return self.directory / f"{kind}-{server_round:05d}.safetensors"

    def _rounds(self, kind: str) -> list[Path]:
        return sorted(self.directory.glob(f"{kind}-*.safetensors")) \
            if self.directory.is_dir() else []

    def save(self, reply: Outgoing) -> None:
        """Keep `reply` (readable by the node's user only), dropping older runs' and rounds'."""
        header = {"run_id": reply.run_id, "round": reply.round, "kind": reply.kind,
                  "model_in": reply.model_in, "entry": reply.entry, "metrics": reply.metrics,
                  "names": list(reply.arrays) if reply.arrays is not None else None}
        arrays = {k: np.ascontiguousarray(v) for k, v in (reply.arrays or {}).items()}
        # A new run starts afresh: replies of another run are never asked for again.
        for old in self._rounds(reply.kind):
            if self._header(old).get("run_id") != reply.run_id:
                old.unlink()
        write_atomic(self.path(reply.kind, reply.round),
                     save(arrays, metadata={"reply": json.dumps(header)}), mode=0o600)
        for old in self._rounds(reply.kind)[:-KEEP]:
            old.unlink()

    @staticmethod
    def _header(path: Path) -> dict:
        try:
            with safe_open(str(path), framework="numpy") as fh:
                return json.loads((fh.metadata() or {})["reply"])
        except (SafetensorError, OSError, ValueError, KeyError):
            return {}

    def load(self, kind: str, server_round: int) -> Outgoing | None:
        """The stored reply, or None if there is none or it cannot be trusted."""
        path = self.path(kind, server_round)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="numpy") as fh:
                header = json.loads((fh.metadata() or {})["reply"])
                # In the order they were sent: the fingerprint depends on it.
                names = header["names"]
                sent = None if names is None else {name: fh.get_tensor(name) for name in names}
            model_out = header["entry"]["record"]["extra"].get("model_out")
            if sent is not None and fingerprint_arrays(sent.values()) != model_out:
                raise ValueError("its weights are not those the signed entry names")
            return Outgoing(run_id=int(header["run_id"]), round=int(header["round"]),
                            kind=str(header["kind"]), model_in=str(header["model_in"]),
                            entry=header["entry"], metrics=dict(header["metrics"]), arrays=sent)
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("outbox %s cannot be used (%s): answering afresh", path, exc)
            return None
