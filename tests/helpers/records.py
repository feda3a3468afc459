"""Privacy records, signed node ledgers and ledger files for tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.attestation import attestation_entry
from common.ledger.keys import create_signing_key
from common.ledger.record import ATTESTATION, PrivacyRecord
from common.ledger.store import NodeLedger, append_received
from common.privacy import MECHANISM

# A DP-SGD round as the records below describe it: noise, sample rate, steps per round.
SIGMA, Q, STEPS = 0.8, 0.03, 30


def train_record(round_: int, node_id: int = 1, run_id: int = 7, **changes: Any
                 ) -> PrivacyRecord:
    """A node's train record for `round_`: STEPS DP-SGD steps a round at (SIGMA, Q).

    `changes` replace any field; the default epsilon (1 + round) is a placeholder, not
    what an accountant would give: pass `epsilon` where the value matters.
    """
    fields = dict(run_id=run_id, round=round_, node_id=node_id, kind="train",
                  mechanism=MECHANISM, accountant="prv", noise_multiplier=SIGMA,
                  sample_rate=Q, steps=STEPS, total_steps=STEPS * round_, max_grad_norm=1.0,
                  delta=1e-5, epsilon=1.0 + round_, epsilon_budget=8.0,
                  disclosed={"num_examples": 1000}, created_at=1000.0 + round_)
    return PrivacyRecord(**{**fields, **changes})


def refused_record(round_: int, node_id: int = 1, run_id: int = 7, **changes: Any
                   ) -> PrivacyRecord:
    """A round the node refused before training: nothing spent, nothing disclosed."""
    fields = dict(kind="refused", mechanism="none", noise_multiplier=0.0, sample_rate=0.0,
                  steps=0, total_steps=0, max_grad_norm=0.0, epsilon=0.0, disclosed={},
                  reason="budget exhausted")
    return train_record(round_, node_id, run_id, **{**fields, **changes})


def attest(ledger: NodeLedger, last: PrivacyRecord) -> dict:
    """Close `last`'s run in `ledger` with the node's end-of-run attestation, restating
    the totals of `last` (the node's newest record), as client/attestation.py signs it."""
    return attestation_entry(ledger, PrivacyRecord(**{
        **last.__dict__, "kind": ATTESTATION, "steps": 0, "extra": {}}))


def node_ledgers(folder: Path, names: tuple[str, ...] | list[str]) -> dict[str, NodeLedger]:
    """A signed ledger per node: key in folder/private/NAME.pem, its public half in
    folder/keys/NAME.pub (the auditor's trusted keys), entries in folder/NAME.jsonl."""
    ledgers = {}
    for name in names:
        key = create_signing_key(folder / "private" / f"{name}.pem",
                                 folder / "keys" / f"{name}.pub")
        ledgers[name] = NodeLedger(folder / f"{name}.jsonl", key)
    return ledgers


def federation(folder: Path, names: list[str] | tuple[str, ...], rounds: int,
               claim: Callable[[str, int, int], PrivacyRecord], attested: bool = True
               ) -> tuple[Path, dict[str, NodeLedger], Path]:
    """Nodes `names` sign `claim(name, node_id, round)` for every round, the server
    receives each entry, and (if `attested`) each node closes the run with its signed
    attestation. Returns the trusted keys folder, each node's ledger and the server's."""
    server = folder / "server.jsonl"
    ledgers = node_ledgers(folder, names)
    for r in range(1, rounds + 1):
        for node_id, name in enumerate(names, start=1):
            record = claim(name, node_id, r)
            entry = ledgers[name].append(record, {"model_in": f"{r:064x}"})
            append_received(server, entry, received_from=node_id)
            if attested and r == rounds:
                append_received(server, attest(ledgers[name], record), received_from=node_id)
    return folder / "keys", ledgers, server


def ledger_lines(path: Path) -> list[dict]:
    """The JSON lines of a ledger: the server's combined one or a node's own."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def rewrite_lines(path: Path, edit: Callable[[list[dict]], list[dict]]) -> None:
    """Apply `edit` to the file's list of parsed lines and write them back (tampering)."""
    path.write_text("".join(json.dumps(e) + "\n" for e in edit(ledger_lines(path))))


def signed_part(line: dict) -> dict:
    """What the node wrote (and signed): the server's receipt fields left out."""
    return {k: v for k, v in line.items() if k not in ("received_from", "received_at")}
