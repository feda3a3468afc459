"""Per-round checkpoints of the global trainable weights, written atomically.

Each file carries the sha256 of its weights in the safetensors header: the format
itself would load a flipped byte in the tensor data without complaint, and a resumed
run must never continue from a silently damaged model.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from common.errors import FedPrivError
from common.files import write_atomic
from common.ledger.provenance import fingerprint_arrays
from server.outcome import RoundOutcome

log = logging.getLogger("fedpriv.server")
CHECKSUM_KEY = "fedpriv-sha256"
_NAME = re.compile(r"round-(\d{3,})\.safetensors")


class CheckpointError(FedPrivError):
    """A checkpoint file cannot be used; the message names it."""


def checkpoint_path(run_dir: Path, server_round: int) -> Path:
    return run_dir / "checkpoints" / f"round-{server_round:03d}.safetensors"


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    return fingerprint_arrays(arrays[name] for name in sorted(arrays))


def save_checkpoint(run_dir: Path, server_round: int, arrays: dict[str, np.ndarray]) -> Path:
    path = checkpoint_path(run_dir, server_round)
    contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    write_atomic(path, save(contiguous, metadata={CHECKSUM_KEY: _checksum(contiguous)}))
    return path


class CheckpointWriter:
    """Checkpoints the global model after every train round (a RoundObserver).

    Also after a round that aggregated nothing (its model is the one it began with): the
    round is over, and a restarted coordinator goes on after it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def train_round_done(self, outcome: RoundOutcome) -> None:
        assert outcome.model is not None, "a train round's outcome carries the global model"
        save_checkpoint(self.run_dir, outcome.server_round, outcome.model)

    def evaluate_round_done(self, outcome: RoundOutcome) -> None:
        """Nothing to save: evaluation leaves the model as it was."""


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """The weights in `path`; CheckpointError if the file is unreadable or damaged."""
    try:
        with safe_open(str(path), framework="numpy") as fh:
            expected = (fh.metadata() or {}).get(CHECKSUM_KEY)
            arrays = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from None
    if expected is None:
        raise CheckpointError(f"checkpoint {path} has no {CHECKSUM_KEY} checksum: not written "
                              "by fedpriv, or its header was changed")
    if _checksum(arrays) != expected:
        raise CheckpointError(f"checkpoint {path} is damaged: its weights do not match the "
                              "checksum written with them")
    return arrays


def saved_rounds(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name)))


def latest_good_checkpoint(run_dir: Path) -> tuple[int, dict[str, np.ndarray] | None]:
    """(round, weights) of the newest checkpoint that verifies, or (0, None) if none does.

    A damaged one is renamed to ``*.corrupt`` (kept for inspection, never loaded again)
    and the one before it is used.
    """
    for server_round in reversed(saved_rounds(run_dir)):
        path = checkpoint_path(run_dir, server_round)
        try:
            return server_round, load_checkpoint(path)
        except CheckpointError as exc:
            aside = path.with_name(path.name + ".corrupt")
            path.rename(aside)
            log.error("%s; moved to %s, using the checkpoint before it", exc, aside.name)
    return 0, None
