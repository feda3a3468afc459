"""Verification of a ledger's integrity: signatures, trusted keys, each node's hash chain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.ledger.entry import (
    GENESIS,
    LedgerLine,
    entry_hash,
    shape_problem,
    signature_ok,
)
from common.ledger.keys import public_key_hex


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a ledger, located so that an auditor can find it."""

    where: str            # file:line (or #index for entries not read from a file)
    node: str             # trusted name, or the key's first 16 hex digits
    round: int | None
    what: str

    def __str__(self) -> str:
        rnd = f" round {self.round}" if self.round is not None else ""
        return f"{self.where}: node {self.node}{rnd}: {self.what}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def key_names(trusted_keys: Mapping[str, Ed25519PublicKey] | None) -> dict[str, str]:
    """node_key hex -> trusted name."""
    return {public_key_hex(k): name for name, k in (trusted_keys or {}).items()}


def node_name(node_key: str, names: Mapping[str, str]) -> str:
    return names.get(node_key, node_key[:16])


def as_lines(entries: Sequence[Mapping[str, Any] | LedgerLine]) -> list[LedgerLine]:
    return [e if isinstance(e, LedgerLine) else LedgerLine("#", i, dict(e))
            for i, e in enumerate(entries, start=1)]


def verify_entries(entries: Sequence[Mapping[str, Any] | LedgerLine],
                   trusted_keys: Mapping[str, Ed25519PublicKey] | None = None) -> list[Problem]:
    """Every integrity problem in a ledger (a node's copy or the server's combined one).

    Checks each entry's signature, that its key is trusted (when `trusted_keys` is
    given), each node key's hash chain (an entry must name the hash of that key's
    previous entry: a changed, removed, reordered or inserted entry breaks it),
    duplicates, that no node_id of a run is claimed by two keys, and that a node's
    rounds go forward. An empty list means the ledger is intact.
    """
    lines = as_lines(entries)
    walk = _ChainWalk(key_names(trusted_keys), trusted_keys is not None, lines)
    for ln in lines:
        walk.check(ln)
    return walk.problems


class _ChainWalk:
    """The state of one pass over a ledger, in file order: what each check remembers."""

    def __init__(self, names: Mapping[str, str], keys_given: bool,
                 lines: Sequence[LedgerLine]) -> None:
        self.names, self.keys_given = names, keys_given
        self.problems: list[Problem] = []
        self.last: dict[str, str] = {}              # node_key -> hash of its latest entry
        self.where_of: dict[str, LedgerLine] = {}   # entry hash -> first line holding it
        self.seen_round: dict[tuple, LedgerLine] = {}
        self.owner: dict[tuple[Any, Any], str] = {}
        self.last_round: dict[tuple[str, Any], int] = {}
        self.anywhere: dict[str, LedgerLine] = {}   # entry hash -> first line, whole ledger
        for ln in lines:
            if not shape_problem(ln.entry):
                self.anywhere.setdefault(entry_hash(ln.entry), ln)

    def check(self, ln: LedgerLine) -> None:
        shape = shape_problem(ln.entry)
        if shape:
            self.problems.append(Problem(ln.where, "?", None, f"malformed entry: {shape}"))
            return
        key = ln.entry["node_key"]
        if self.keys_given and key not in self.names:
            self._report(ln, f"signed by key {key[:16]}..., which is not among the trusted keys")
        if not signature_ok(ln.entry):
            self._report(ln, "bad signature: the entry was changed after the node signed it")
        h = entry_hash(ln.entry)
        if h in self.where_of:
            self._report(ln, f"duplicate of {self.where_of[h].where}")
            return
        self.where_of[h] = ln
        self._check_chain(ln, h)
        self._check_rounds(ln)

    def _report(self, ln: LedgerLine, what: str) -> None:
        name = node_name(ln.entry["node_key"], self.names)
        self.problems.append(Problem(ln.where, name, ln.entry["record"].get("round"), what))

    def _check_chain(self, ln: LedgerLine, h: str) -> None:
        e, key = ln.entry, ln.entry["node_key"]
        rec = e["record"]
        # A node's first entry here may follow entries of its earlier runs, kept in other
        # ledgers: allowed only where the record itself says its run begins (it counts no
        # steps before its own), so entries cut from the start of a run still show.
        continues_elsewhere = (key not in self.last and e["prev_hash"] not in self.anywhere
                               and rec["total_steps"] == rec["steps"])
        if e["prev_hash"] != self.last.get(key, GENESIS) and not continues_elsewhere:
            self._report(ln, _chain_problem(e["prev_hash"], self.where_of, self.anywhere,
                                            self.last.get(key)))
        self.last[key] = h

    def _check_rounds(self, ln: LedgerLine) -> None:
        key, rec = ln.entry["node_key"], ln.entry["record"]
        run = rec["run_id"]
        slot = (key, run, rec["round"], rec["kind"])
        if slot in self.seen_round:
            self._report(ln, f"second {rec['kind']} record for this round (first at "
                         f"{self.seen_round[slot].where})")
        self.seen_round.setdefault(slot, ln)
        latest = self.last_round.get((key, run), rec["round"])
        if latest > rec["round"]:
            self._report(ln, f"round goes back from {latest} to {rec['round']}")
        self.last_round[(key, run)] = max(rec["round"], latest)
        other = self.owner.setdefault((run, rec["node_id"]), key)
        if other != key:
            self._report(ln, f"node_id {rec['node_id']} of run {run} is also claimed by key "
                         f"{node_name(other, self.names)}: a record signed by another node's key")


def _chain_problem(prev: str, where_of: Mapping[str, LedgerLine],
                   anywhere: Mapping[str, LedgerLine], last_hash: str | None) -> str:
    """Why an entry's prev_hash is not its node's previous entry, as precisely as we can."""
    after = f" (the node's previous entry is at {where_of[last_hash].where})" if last_hash else ""
    if prev == GENESIS:
        return ("broken chain: the entry starts a new chain although the node has earlier "
                f"entries{after}: it was inserted or re-signed")
    if prev in where_of:
        return (f"broken chain: the entry follows {where_of[prev].where}{after}: entries "
                "reordered or inserted")
    if prev in anywhere:
        return (f"broken chain: the entry follows {anywhere[prev].where}, which comes later "
                f"in the file{after}: entries reordered")
    return ("broken chain: the entry it follows is not in the ledger (removed, or changed "
            f"after signing){after}")
