"""Per-round checkpoints of the global trainable weights, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def checkpoint_path(run_dir: Path, server_round: int) -> Path:
    return run_dir / "checkpoints" / f"round-{server_round:03d}.safetensors"


def save_checkpoint(run_dir: Path, server_round: int, arrays: dict[str, np.ndarray]) -> Path:
    path = checkpoint_path(run_dir, server_round)
    contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, str(tmp)))
    return path


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(path))
