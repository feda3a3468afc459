"""Shared fixtures: a tiny config-built model, small real data files, Flower messages."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from common.environment import offline_and_quiet

offline_and_quiet()  # before the libraries below read their settings

from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from common.config import RunConfig  # noqa: E402
from common.data import EMBEDDED_LABELS, load_labelled_texts, subsample  # noqa: E402
from common.ledger.entry import record_of_entry  # noqa: E402
from common.ledger.record import PrivacyRecord  # noqa: E402
from common.model import build_model, trainable_state  # noqa: E402
from common.wire import entry_of_message, to_record  # noqa: E402


@pytest.fixture(autouse=True)
def _task_identity():
    # Messages read the run/task identity of the process; Flower sets it in real runs.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return RunConfig().replace(**{
        "model": "tiny", "max-length": 32, "batch-size": 8, "local-steps": 2,
        "num-rounds": 2, "learning-rate": 0.01, "max-examples": 400, "epsilon": 8.0,
        "labels": ",".join(EMBEDDED_LABELS)})


def write_csv(path: Path, rows: list[tuple[str, str]], header=("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    """200 real labelled tweets from the embedded set, re-saved as a partner's UTF-8 CSV."""
    data = subsample(load_labelled_texts(RunConfig().data), 200, seed=3)
    rows = [(t, data.label_names[y]) for t, y in zip(data.texts, data.labels, strict=True)]
    return write_csv(tmp_path / "partner.csv", rows)


def train_message(cfg: RunConfig, server_round: int, node_id: int = 7,
                  message_type: str = "train") -> Message:
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
