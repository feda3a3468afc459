"""The budgets partners declared, as the auditor received them from each partner.

The budget inside a record is the node's own statement; a coordinator that ran a node
with a looser budget than its owner approved would still produce records that pass
against it. Auditors therefore get each partner's (max epsilon, delta) directly and
hold the records to those. The file maps a node (its name in the keys folder, or the
64 hex digits of its ledger key) to its budget, in JSON or TOML::

    {"alice": {"max-epsilon": 4.0, "delta": 1e-5}, "bob": {"max-epsilon": 8.0}}

    [alice]
    max-epsilon = 4.0
    delta = 1e-5

`max-epsilon` and `delta` are the names a partner's node config uses; delta is
optional (then only epsilon is checked).
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.files import read_utf8

EPSILON_KEY, DELTA_KEY = "max-epsilon", "delta"


@dataclass(frozen=True)
class DeclaredBudget:
    epsilon: float
    delta: float | None = None

    def text(self) -> str:
        delta = f", delta {self.delta:g}" if self.delta is not None else ""
        return f"max epsilon {self.epsilon:g}{delta}"


def load_declared_budgets(path: str | Path,
                          names: Mapping[str, str]) -> dict[str, DeclaredBudget]:
    """Node key (hex) -> its declared budget, from `path`; `names` maps trusted keys
    (hex) to their names. ConfigError naming the file and node for anything unusable."""
    path = Path(path)
    raw = _parse(path)
    keys_of = {name: key for key, name in names.items()}
    budgets: dict[str, DeclaredBudget] = {}
    for node, value in raw.items():
        key = keys_of.get(node, node.lower() if node.lower() in names else None)
        if key is None:
            raise ConfigError(f"budgets file {path}: node {node!r} is not among the trusted "
                              "keys (give its name in the keys folder, or its 64-hex key)")
        if key in budgets:
            raise ConfigError(f"budgets file {path}: node {node!r} is given twice")
        budgets[key] = _budget(path, node, value)
    return budgets


def _parse(path: Path) -> dict[str, Any]:
    text = read_utf8(path, "budgets file", ConfigError)
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON (name it .toml for TOML)"
        raise ConfigError(f"budgets file {path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"budgets file {path} must map each node to "
                          f"{{{EPSILON_KEY}, {DELTA_KEY}}}")
    return data


def _budget(path: Path, node: str, value: Any) -> DeclaredBudget:
    where = f"budgets file {path}: node {node!r}"
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table with {EPSILON_KEY} (and {DELTA_KEY})")
    unknown = sorted(set(value) - {EPSILON_KEY, DELTA_KEY})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (known: {EPSILON_KEY}, "
                          f"{DELTA_KEY})")
    epsilon, delta = value.get(EPSILON_KEY), value.get(DELTA_KEY)
    if not _number(epsilon) or not 0 < epsilon < math.inf:
        raise ConfigError(f"{where}: {EPSILON_KEY} {epsilon!r} must be a number > 0")
    if delta is not None and (not _number(delta) or not 0 < delta < 1):
        raise ConfigError(f"{where}: {DELTA_KEY} {delta!r} must be a number in (0, 1)")
    return DeclaredBudget(float(epsilon), None if delta is None else float(delta))


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
