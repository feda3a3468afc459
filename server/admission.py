"""Which ledger key each admitted node signs its records with.

`fedpriv server` registers each partner's authentication key with the SuperLink, which
gives the node its id, and writes here that id's ledger key (the partner sent both
public keys; `fedpriv certs admit` keeps them). The strategy then accepts a node's
records only under that key: a key the partner never handed over, or another node's,
is rejected with the node named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError, LedgerError
from common.files import write_atomic


@dataclass(frozen=True)
class AdmittedNode:
    name: str
    node_id: int
    ledger_key: str  # hex of the raw Ed25519 public key, as ledger entries name it


def write_admitted(path: Path, nodes: list[AdmittedNode]) -> Path:
    data = {node.name: {"node-id": str(node.node_id), "ledger-key": node.ledger_key}
            for node in nodes}
    write_atomic(path, json.dumps({"nodes": data}, indent=1).encode(), mode=0o600)
    return path


def read_admitted(path: Path) -> list[AdmittedNode]:
    """The nodes in `path`; [] when it does not exist yet."""
    if not path.exists():
        return []
    try:
        nodes = json.loads(path.read_text())["nodes"]
        return [AdmittedNode(name, int(node["node-id"]), str(node["ledger-key"]))
                for name, node in nodes.items()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"admitted nodes file {path} cannot be read ({exc}); it is written "
                          "by `fedpriv server`") from None


def ledger_keys(path: str) -> dict[int, str]:
    """node id -> admitted ledger key, from the run config's `ledger-keys` ({} if unset)."""
    if not path:
        return {}
    found = read_admitted(Path(path))
    if not found:
        raise ConfigError(f"invalid --ledger-keys {path}: no admitted nodes in it")
    return {node.node_id: node.ledger_key for node in found}


def check_admitted(keys: Mapping[int, str], node: int, key: str) -> None:
    """LedgerError unless `key` is the ledger key admitted for `node` (when keys are set).

    `node` is the sender the SuperLink authenticated, not what the record claims.
    """
    if not keys:
        return
    admitted = keys.get(node)
    if admitted is None:
        raise LedgerError(f"node {node} has no admitted ledger key: its records are not "
                          "accepted")
    if key != admitted:
        raise LedgerError(f"records signed by ledger key {key[:16]}..., not the key "
                          f"admitted for node {node} ({admitted[:16]}...)")
