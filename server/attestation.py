"""The end of a run: every node's signed attestation, asked for and kept in the ledger.

After the last round (and whenever a resumed run reaches its end) the ServerApp sends
one `query.attest` message to every node connected to the federation. Each answers with
an attestation entry signed and chained like its other entries (client/attestation.py),
plus any of its entries the server does not hold yet. The ledger keeps them like every
other entry, so an auditor can tell a complete ledger from one whose tail was cut or
whose node was dropped (common.completeness).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.errors import LedgerError
from common.ledger.entry import record_of_entry
from common.ledger.record import ATTESTATION
from common.wire import (
    ATTEST_MESSAGE_TYPE,
    LEDGER_HEAD_KEY,
    LEDGER_RUN_KEY,
    SERVER_ROUND_KEY,
    entries_of_message,
)
from server.admission import check_admitted, ledger_keys
from server.ledger import Ledger

log = logging.getLogger("fedpriv.server")


@dataclass
class Attestations:
    """Who attested the end of the run, and why the others did not."""

    attested: list[int] = field(default_factory=list)
    missing: list[tuple[int, str]] = field(default_factory=list)  # (node id, why)

    def summary(self) -> str:
        line = f"end-of-run attestations: {len(self.attested)} of " \
               f"{len(self.attested) + len(self.missing)} nodes"
        return line + "".join(f"; node {node}: {why}" for node, why in self.missing)


def collect_attestations(grid: Grid, cfg: RunConfig, ledger: Ledger, ledger_run: int,
                         last_round: int) -> Attestations:
    """Ask every connected node to attest run `ledger_run`; keep what they sign."""
    nodes = sorted(grid.get_node_ids())
    admitted = ledger_keys(cfg.federation.ledger_keys)
    config = {**cfg.to_flat(), SERVER_ROUND_KEY: last_round, LEDGER_RUN_KEY: ledger_run}
    asked = [Message(content=RecordDict({"config": ConfigRecord(
                         {**config, LEDGER_HEAD_KEY: ledger.heads.get(node, "")})}),
                     dst_node_id=node, message_type=ATTEST_MESSAGE_TYPE) for node in nodes]
    replies = grid.send_and_receive(asked, timeout=cfg.federation.round_timeout)
    by_message = {m.metadata.message_id: m.metadata.dst_node_id for m in asked}
    outcome = Attestations()
    answered = set()
    for reply in replies:
        node = by_message.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        answered.add(node)
        why = _keep(reply, ledger, node, ledger_run, admitted)
        if why:
            outcome.missing.append((node, why))
            log.warning("node %s did not attest the end of run %s: %s", node, ledger_run, why)
        else:
            outcome.attested.append(node)
    outcome.missing += [(node, "no reply before the round timeout") for node in nodes
                        if node not in answered]
    return outcome


def _keep(reply: Message, ledger: Ledger, node: int, ledger_run: int,
          admitted: Mapping[int, str]) -> str:
    """Write the reply's signed entries to the ledger; why it is no attestation, or ''."""
    try:
        entries = entries_of_message(reply)
        check_admitted(admitted, reply.metadata.src_node_id, entries[-1]["node_key"])
    except LedgerError as exc:
        return str(exc)
    for entry in entries:  # signed by the node: its spend, whatever the last one is
        ledger.append(entry, received_from=node)
    record = record_of_entry(entries[-1])
    if (record.kind, record.run_id) != (ATTESTATION, ledger_run):
        return f"it sent a {record.kind} record of run {record.run_id} instead"
    return ""

