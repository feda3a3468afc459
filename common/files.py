"""Durable file writes shared by nodes, the server and the key tooling, and the one way an
input text file is read."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from common.errors import ConfigError


def read_utf8(path: Path, what: str, error: type[Exception]) -> str:
    """The text of `path`; `error` "WHAT PATH not found" or "... cannot be read" if not."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path} cannot be read: {exc}") from None


def blocking_file(folder: Path) -> Path | None:
    """The file that stands where `folder` or one of its parents would have to be, or None.

    Checked before anything is written, so a path that can never become a folder is
    refused up front rather than halfway through.
    """
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, replace: bool = True,
                 durable: bool = True) -> None:
    """Write `data` via a temporary file in the same folder, fsync, then move it into place.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    The temporary file is created 0600 and only then given `mode`, so a private key is
    never readable by others, even briefly. With `replace=False` an existing file is
    never overwritten: FileExistsError, even if it appeared after a caller's check.
    `durable=False` skips the two fsyncs, for a file whose loss to a power cut costs only
    speed (its reader must then take a torn file as absent): the rename stays atomic for
    processes, and the fsyncs are most of a small write's time.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def private_dir(folder: Path) -> Path:
    """`folder`, created if need be, readable by its owner only (0700), also if it existed.

    State folders hold keys, secrets, databases and ledgers: nobody else may list them.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return folder


def ensure_secret(path: Path, nbytes: int = 32) -> bytes:
    """The secret kept in `path`, created (random, 0600) on first use and never replaced.

    An existing file that others can read is refused: anyone who can read it can act as
    the process it authenticates.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} is readable by others: delete it (a new secret is "
                                  "made at the next start) or make it 0600") from None
        return path.read_bytes()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(nbytes))
    return path.read_bytes()
