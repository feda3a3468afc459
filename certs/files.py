"""The files of a deployment's certificates and keys: their names, and how they are read
and written.

Two kinds of material, because Flower 1.42 uses two mechanisms:

* TLS (Fleet, Control and runtime APIs): a CA (``ca.pem``/``ca.key``) signs the
  coordinator's server certificate (``server.pem``/``server.key``). Partners get
  ``ca.pem`` and pass it to ``flower-supernode --root-certificates``. The SuperLink
  never asks clients for a certificate, so there is no mutual TLS and no client
  certificates. Made by ``certs.issue``.
* SuperNode authentication: each partner makes an EC P-384 key pair in OpenSSH format
  (``node-NAME.key``/``node-NAME.pub``); the SuperNode signs its requests with the
  private key and the coordinator registers the public key with
  ``flwr supernode register``. Made by ``certs.node_keys``.

Every file is written atomically (temporary file, fsync, rename) and never replaces an
existing one unless ``force`` is set; private keys are created with mode 0600.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common.errors import FedPrivError
from common.files import blocking_file, write_atomic

DEFAULT_DIR = Path("certs/generated")
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Write failures a user fixes by choosing another --dir (or fixing its permissions).
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EROFS,
                errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG}


class CertError(FedPrivError):
    """A certificate or key file is missing, malformed, expired or does not fit."""


@dataclass(frozen=True)
class Issued:
    """The files one command wrote, and until when the certificate is valid (if any)."""

    files: tuple[Path, ...]
    not_after: datetime | None = None
    fingerprint: str | None = None


def node_key_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """The private and public key files of node ``name`` in ``directory``."""
    if not _NODE_NAME.fullmatch(name):
        raise CertError(
            f"invalid node name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return directory / f"node-{name}.key", directory / f"node-{name}.pub"


def check_dir(directory: Path) -> None:
    """``--dir`` is a folder or can become one: checked before any key is made."""
    directory = Path(directory)
    if (blocker := blocking_file(directory)) is not None:
        raise CertError(f"invalid --dir {directory}: {blocker} is a file, not a folder")


def refuse_existing(paths: Iterable[Path], force: bool) -> None:
    """Fail before writing anything if any target exists, so a refusal changes nothing."""
    if force:
        return
    for path in paths:
        if path.exists() or path.is_symlink():
            raise CertError(f"{path} already exists; pass --force to replace it")


def read_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``, or a one-line ``CertError`` naming the ``what`` file."""
    path = Path(path)
    if not path.exists():
        raise CertError(f"{what} file {path} does not exist")
    if not path.is_file():
        raise CertError(f"{what} file {path} is not a regular file")
    try:
        return path.read_bytes()
    except OSError as err:
        raise CertError(f"cannot read {what} file {path}: {err.strerror}") from None


def write_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """All or nothing, private from the first byte, never a silent overwrite.

    ``common.files.write_atomic`` does the writing; this adds a private (0700) folder
    when one is made, and turns a mistake in ``--dir`` into a one-line ``CertError``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, data, mode=mode, replace=force)
    except FileExistsError:
        if not path.parent.is_dir():
            raise CertError(f"cannot write {path}: {path.parent} is not a folder") from None
        raise CertError(f"{path} already exists; pass --force to replace it") from None
    except OSError as err:
        if err.errno not in _PATH_ERRNOS:
            raise  # the disk failing is not a mistake in the command line
        raise CertError(f"cannot write {path}: {err.strerror}") from None
