"""What the coordinator asks in a message: the round, the ledger run and head, the plan.

Every request a node answers (train, evaluate, the end-of-run attestation) carries the
run config plus the keys the server adds (common.wire); this reads them in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Context, Message

from common.config import RunConfig
from common.wire import LEDGER_HEAD_KEY, LEDGER_RUN_KEY, SERVER_ROUND_KEY


@dataclass(frozen=True)
class Request:
    server_round: int
    # The run this node's records belong to: Flower's run, or for a resumed federation
    # the first run's id, so plan and spend carry on under one key.
    run_id: int
    ledger_head: str  # the newest entry of this node the server holds ("" for none)
    cfg: RunConfig

    @classmethod
    def of(cls, msg: Message, context: Context) -> Request:
        config = dict(msg.content["config"])
        return cls(server_round=int(config.pop(SERVER_ROUND_KEY)),
                   run_id=int(config.pop(LEDGER_RUN_KEY, context.run_id)),
                   ledger_head=str(config.pop(LEDGER_HEAD_KEY, "")),
                   cfg=RunConfig.from_flat(config))
