"""Certificate material for tests, made with the project's own tooling."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from certs import files, issue, node_keys


def ca_key_dir(folder: Path) -> Path:
    """Where a test PKI keeps its CA's private key: a folder of its own beside `folder`."""
    return folder.with_name(f"{folder.name}-ca")


def make_pki(folder: Path, nodes: list[str], ips: tuple[str, ...] = ("127.0.0.1",),
             **server: Any) -> Path:
    """A coordinator's certs folder: CA certificate, a server certificate for `ips` (options
    `server` go to `issue_server_cert`), and per name in `nodes` the partner's key pairs,
    admitted (node-NAME.pub, ledger-keys/NAME.pub). The CA key is in `ca_key_dir(folder)`."""
    issue.create_ca(folder, key_dir=ca_key_dir(folder))
    issue.issue_server_cert(folder, ip_addresses=ips, ca_key_dir=ca_key_dir(folder), **server)
    for name in nodes:
        node_keys.create_node_keys(folder, name)
        _, public = files.node_key_paths(folder, name)
        _, ledger = files.ledger_key_paths(folder, name)
        node_keys.admit_node_key(folder, name, public, ledger, force=True)
    return folder


def expired() -> dict[str, Any]:
    """Server certificate options for one that began 30 days ago and lasted 2."""
    return {"not_before": datetime.now(UTC) - timedelta(days=30), "days": 2}


def copy_pki(source: Path, dest: Path, **replace: bytes | None) -> Path:
    """A copy of the PKI folder and its CA key folder, files replaced (bytes) or removed (None).

    Keyword names stand for file names with "." written "_" (``server_pem=...`` is
    server.pem); ``ca_key`` is the CA key in ``ca_key_dir(dest)``.
    """
    for src, dst in ((source, dest), (ca_key_dir(source), ca_key_dir(dest))):
        shutil.copytree(src, dst, copy_function=shutil.copy2)
    for name, data in replace.items():
        name = name.replace("_", ".")
        path = (ca_key_dir(dest) if name == files.CA_KEY else dest) / name
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)
            os.chmod(path, 0o600)
    return dest
