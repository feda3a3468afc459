"""Flower messages and contexts as a deployed node sees them, for in-process ClientApp tests."""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict

from common.config import RunConfig
from common.ledger.entry import record_of_entry
from common.ledger.record import PrivacyRecord
from common.model import build_model, trainable_state
from common.wire import entry_of_message, to_record


def train_message(cfg: RunConfig, server_round: int, node_id: int = 7,
                  message_type: str = "train") -> Message:
    """The server's request for `server_round`: the initial model of `cfg` and its config."""
    model = build_model(cfg.model, cfg.data.label_names, cfg.train.seed)
    content = RecordDict({"arrays": to_record(trainable_state(model)),
                          "config": ConfigRecord({**cfg.to_flat(), "server-round": server_round})})
    return Message(content=content, dst_node_id=node_id, message_type=message_type)


def node_context(node_config: dict, state_dir: Path, node_id: int = 7) -> Context:
    """A deployed node's context; its files (key, ledger, spend) live in `state_dir`."""
    return Context(run_id=1, node_id=node_id,
                   node_config={"state-dir": str(state_dir), **node_config},
                   state=RecordDict(), run_config={})


def record_of(reply: Message) -> PrivacyRecord:
    """The privacy record a reply carries, after checking its signature."""
    return record_of_entry(entry_of_message(reply))
