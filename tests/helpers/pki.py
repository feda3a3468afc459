"""Certificate material for tests, made with the project's own tooling."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from certs import issue, node_keys


def make_pki(folder: Path, nodes: list[str], ips: tuple[str, ...] = ("127.0.0.1",),
             **server: Any) -> Path:
    """A CA, a server certificate for `ips` (options `server` go to `issue_server_cert`)
    and a node authentication key pair per name in `nodes`, all in `folder`."""
    issue.create_ca(folder)
    issue.issue_server_cert(folder, ip_addresses=ips, **server)
    for name in nodes:
        node_keys.create_node_auth_key(folder, name)
    return folder


def expired() -> dict[str, Any]:
    """Server certificate options for one that began 30 days ago and lasted 2."""
    return {"not_before": datetime.now(UTC) - timedelta(days=30), "days": 2}


def copy_pki(source: Path, dest: Path, **replace: bytes | None) -> Path:
    """A copy of the PKI folder, files replaced (bytes) or removed (None).

    Keyword names stand for file names with "." written "_" (``ca_key=...`` is ca.key).
    """
    dest.mkdir()
    for path in source.iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
        os.chmod(dest / path.name, path.stat().st_mode)
    for name, data in replace.items():
        name = name.replace("_", ".")
        if data is None:
            (dest / name).unlink()
        else:
            (dest / name).write_bytes(data)
    return dest
