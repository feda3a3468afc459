"""PrivacyFedAvg on hand-made replies: known means, refusals, records to the ledger."""

import json

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from common.ledger import (
    GENESIS,
    entry_of_message,
    entry_recorddict,
    generate_signing_key,
    make_entry,
    record_of_entry,
)
from common.records import PrivacyRecord
from common.weights import to_record
from server.checkpoint import checkpoint_path, load_checkpoint
from server.ledger import Ledger
from server.strategy import PrivacyFedAvg


def record(node, kind="train", eps=1.0, **kw) -> PrivacyRecord:
    return PrivacyRecord(run_id=1, round=1, node_id=node, kind=kind, mechanism="m",
                         accountant="prv", noise_multiplier=1.0, sample_rate=0.1, steps=5,
                         total_steps=5, max_grad_norm=1.0, delta=1e-5, epsilon=eps,
                         epsilon_budget=8.0, **kw)


KEYS = {node: generate_signing_key() for node in range(1, 6)}


def reply(node, arrays=None, n=1, rec="train", key=None):
    ins = Message(content=RecordDict(), dst_node_id=node, message_type="train")
    content = RecordDict()
    if rec is not None:
        signed = make_entry(record(node, kind=rec,
                                   reason="budget exhausted" if rec == "refused" else ""),
                            None, GENESIS, key or KEYS[node])
        content = entry_recorddict(signed)
    if arrays is not None:
        content["arrays"] = to_record(arrays)
        content["metrics"] = MetricRecord({"num-examples": n})
    return Message(content=content, reply_to=ins)


def strategy(tmp_path) -> PrivacyFedAvg:
    return PrivacyFedAvg(ledger=Ledger(tmp_path / "ledger.jsonl"), run_dir=tmp_path)


def test_fedavg_of_known_arrays_is_the_example_weighted_mean(tmp_path):
    s = strategy(tmp_path)
    a = {"w": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([[0.0]], dtype=np.float32)}
    b = {"w": np.array([3.0, 6.0], dtype=np.float32), "b": np.array([[4.0]], dtype=np.float32)}
    arrays, _ = s.aggregate_train(1, [reply(1, a, n=1), reply(2, b, n=3)])
    np.testing.assert_allclose(arrays["w"].numpy(), [2.5, 5.0])
    np.testing.assert_allclose(arrays["b"].numpy(), [[3.0]])
    saved = load_checkpoint(checkpoint_path(tmp_path, 1))
    np.testing.assert_allclose(saved["w"], [2.5, 5.0])


def test_refusals_and_recordless_replies_are_left_out_and_the_round_goes_on(tmp_path):
    s = strategy(tmp_path)
    a = {"w": np.array([2.0], dtype=np.float32)}
    b = {"w": np.array([4.0], dtype=np.float32)}
    forged = {"w": np.array([1000.0], dtype=np.float32)}
    tampered = reply(5, forged)
    entry = json.loads(str(tampered.content["privacy"]["entry"]))
    entry["record"]["epsilon"] = 0.1  # changed after signing
    tampered.content["privacy"]["entry"] = json.dumps(entry)
    arrays, _ = s.aggregate_train(1, [reply(1, a), reply(2, b), reply(3, rec="refused"),
                                      reply(4, forged, rec=None), tampered])
    np.testing.assert_allclose(arrays["w"].numpy(), [3.0])
    outcome = s.rounds[1]
    assert len(outcome.trained) == 2 and len(outcome.refused) == 1 and outcome.rejected == 2
    lines = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [(x["received_from"], x["record"]["kind"]) for x in lines] == [
        (1, "train"), (2, "train"), (3, "refused")]


def test_all_refusing_leaves_the_model_unchanged(tmp_path):
    s = strategy(tmp_path)
    arrays, metrics = s.aggregate_train(2, [reply(1, rec="refused"), reply(2, rec="refused")])
    assert arrays is None and metrics is None
    assert not checkpoint_path(tmp_path, 2).exists()


def test_signed_entry_survives_the_wire_format_unchanged():
    signed = make_entry(record(9, disclosed={"num-examples": 12}), None, GENESIS, KEYS[1])
    msg = Message(content=entry_recorddict(signed), dst_node_id=9, message_type="train")
    assert isinstance(msg.content["privacy"], ConfigRecord)
    assert entry_of_message(msg) == signed
    assert record_of_entry(signed) == record(9, disclosed={"num-examples": 12},
                                             created_at=record_of_entry(signed).created_at)


def test_malformed_updates_are_rejected_and_do_not_move_the_model(tmp_path):
    s = strategy(tmp_path)
    good = {"w": np.array([2.0, 4.0], dtype=np.float32)}
    s.global_arrays = {"w": np.zeros(2, dtype=np.float32)}
    bad = [{"w": np.array([np.nan, 1.0], dtype=np.float32)},
           {"w": np.array([1.0, np.inf], dtype=np.float32)},
           {"w": np.ones(3, dtype=np.float32)},
           {"w": np.ones(2, dtype=np.float64)},
           {"v": np.ones(2, dtype=np.float32)}]
    replies = [reply(1, good)] + [reply(2 + i % 4, arrays) for i, arrays in enumerate(bad)]
    arrays, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [2.0, 4.0])
    assert s.rounds[1].rejected == 5 and len(s.rounds[1].trained) == 1
