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
  ``flwr supernode register``. With it, the node's ledger signing pair (Ed25519,
  ``node-NAME.ledger.key``/``.pub``); the coordinator keeps the public half admitted as
  ``ledger-keys/NAME.pub``. Made by ``certs.node_keys``.

The CA's private key lives in a folder of its own (``ca-private/`` beside ``--dir`` by
default): the coordinator's running server needs only ``ca.pem``, ``server.pem`` and
``server.key``, and ``fedpriv server`` refuses a folder that also holds ``ca.key``.

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
CA_KEY_DIR_NAME = "ca-private"
LEDGER_KEYS_DIR = "ledger-keys"
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
    ledger_key: str | None = None  # hex of a node's Ed25519 ledger public key


def node_key_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """The private and public key files of node ``name`` in ``directory``."""
    if not _NODE_NAME.fullmatch(name):
        raise CertError(
            f"invalid node name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return directory / f"node-{name}.key", directory / f"node-{name}.pub"


def node_names(directory: Path, suffixes: tuple[str, ...] = (".key", ".pub")) -> list[str]:
    """The names of the nodes whose authentication key files (of these suffixes) are here."""
    if not directory.is_dir():
        return []
    found = {p.stem[len("node-"):] for suffix in suffixes
             for p in directory.glob(f"node-*{suffix}")}
    return sorted(name for name in found if not name.endswith(".ledger"))


def ledger_key_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """A partner's ledger signing key and its public half, beside its node key."""
    key_path, _ = node_key_paths(directory, name)
    return key_path.with_suffix(".ledger.key"), key_path.with_suffix(".ledger.pub")


def admitted_ledger_key_path(directory: Path, name: str) -> Path:
    """Where the coordinator keeps node ``name``'s admitted ledger key (auditors' --keys)."""
    node_key_paths(directory, name)  # checks the name
    return directory / LEDGER_KEYS_DIR / f"{name}.pub"


def ca_private_dir(directory: Path, explicit: Path | None = None) -> Path:
    """The CA private key's own folder: ``explicit``, else ``ca-private`` beside ``directory``.

    Never ``directory`` itself or a folder inside it: that folder is what the running
    coordinator reads.
    """
    folder = Path(explicit) if explicit is not None else (
        Path(directory).resolve().parent / CA_KEY_DIR_NAME)
    if folder.resolve().is_relative_to(Path(directory).resolve()):
        raise CertError(f"invalid --ca-key-dir {folder}: it must not be {directory} or inside "
                        "it (that folder is what the coordinator's server reads)")
    return folder


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
