"""Per-round checkpoints of the global trainable weights, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from common.files import write_atomic


def checkpoint_path(run_dir: Path, server_round: int) -> Path:
    return run_dir / "checkpoints" / f"round-{server_round:03d}.safetensors"


def save_checkpoint(run_dir: Path, server_round: int, arrays: dict[str, np.ndarray]) -> Path:
    path = checkpoint_path(run_dir, server_round)
    contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    write_atomic(path, save(contiguous))
    return path


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(path))
