"""Durable file writes shared by nodes, the server and the key tooling."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def blocking_file(folder: Path) -> Path | None:
    """The file that stands where `folder` or one of its parents would have to be, or None.

    Checked before anything is written, so a path that can never become a folder is
    refused up front rather than halfway through.
    """
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, replace: bool = True) -> None:
    """Write `data` via a temporary file in the same folder, fsync, then move it into place.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    The temporary file is created 0600 and only then given `mode`, so a private key is
    never readable by others, even briefly. With `replace=False` an existing file is
    never overwritten: FileExistsError, even if it appeared after a caller's check.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
