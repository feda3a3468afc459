"""The node's end-of-run attestation: a signed statement that closes its part in a run.

When a run ends (and again whenever a resumed run ends) the server asks every node to
attest. The node signs one more ledger entry, chained like every other, of kind
`attestation`: its `prev_hash` is the node's chain head, and the record states the
node's total steps and cumulative epsilon in the run, and (in `extra`) how many of the
run's entries it has written before. The server must store it for the run to audit: a
coordinator that cut the node's newest entries, or all of them, can no longer show a
ledger that ends in the node's matching attestation (common.completeness).

An attestation closes the run on the node: it trains no more rounds of that run, so a
coordinator cannot collect an attestation early, go on training, and then cut
everything after it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from flwr.app import Context, Message

from client import cache
from client.node import NodeFiles, PrivacyState, budget_of
from client.request import Request
from common.ledger.record import ATTESTATION, ATTESTS_KEY, PrivacyRecord
from common.ledger.store import NodeLedger
from common.wire import entry_recorddict


def attest(msg: Message, context: Context) -> Message:
    """Answer the server's attestation request with the signed attestation of the run.

    A node whose newest entry of the run is already its attestation sends that same
    entry again (a resumed coordinator asks again): one run, one closing statement.
    """
    request = Request.of(msg, context)
    files = NodeFiles.of(request.cfg, context)
    ledger = cache.node_ledger(files.ledger, files.signing_key())
    state = PrivacyState.load(files.state)
    budget = budget_of(request.cfg, context.node_config)
    record = state.record(request.run_id, request.server_round, context.node_id, ATTESTATION,
                          budget, **_without_plan(state, ledger, request))
    entry = attestation_entry(ledger, record)
    return Message(content=entry_recorddict(
        entry, ledger.unsent(request.ledger_head, request.run_id, entry)), reply_to=msg)


def _without_plan(state: PrivacyState, ledger: NodeLedger, request: Request) -> dict:
    """What a node with no DP plan in the run attests: the accountant it would have used,
    and an infinite epsilon if it trained all the same (a non-private baseline)."""
    if state.plan(request.run_id) is not None:
        return {}
    trained = any(e["record"]["kind"] == "train" for e in
                  run_entries(ledger.entries(), ledger.node_key, request.run_id))
    return {"accountant": request.cfg.privacy.accountant,
            "epsilon": math.inf if trained else 0.0}


def attestation_entry(ledger: NodeLedger, record: PrivacyRecord) -> dict[str, Any]:
    """The node's attestation of `record.run_id`: signed now from `record` (the run's
    totals), or the one already signed if nothing was written after it."""
    run = run_entries(ledger.entries(), ledger.node_key, record.run_id)
    if run and run[-1]["record"]["kind"] == ATTESTATION:
        return run[-1]
    return ledger.append(record, {ATTESTS_KEY: {
        "entries": len(run), "train_rounds": sum(e["record"]["kind"] == "train" for e in run)}})


def run_entries(entries: Sequence[dict[str, Any]], node_key: str,
                run_id: int) -> list[dict[str, Any]]:
    """The entries of `node_key` in run `run_id`, in ledger order."""
    return [e for e in entries if e["node_key"] == node_key
            and e["record"]["run_id"] == run_id]


def closed_run(ledger: NodeLedger, run_id: int) -> str | None:
    """Why this node trains no more in run `run_id` (it attested its end), or None."""
    if any(e["record"]["kind"] == ATTESTATION
           for e in run_entries(ledger.entries(), ledger.node_key, run_id)):
        return (f"run {run_id} is over for this node: it signed its end-of-run attestation "
                "and trains no more rounds of it")
    return None
