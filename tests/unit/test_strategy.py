"""The strategies on hand-made replies: known means, refusals, faults, bad updates, ledger."""

import io
import json
from types import MappingProxyType

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedMedian

from common.ledger.entry import GENESIS, entry_hash, make_entry, record_of_entry
from common.ledger.keys import generate_signing_key
from common.ledger.record import PrivacyRecord
from common.training import ADAM_BETAS, max_update_norm
from common.wire import entry_of_message, entry_recorddict, to_record
from server.checkpoint import CheckpointWriter, checkpoint_path, load_checkpoint
from server.ledger import Ledger
from server.outcome import RoundOutcome
from server.strategy import PrivacyStrategy, flower_strategy
from tests.helpers.records import ledger_lines, train_record


def record(node, kind="train", eps=1.0, server_round=1, **kw) -> PrivacyRecord:
    """Node `node`'s record in run 1: 5 local steps (what bounds its update's norm)."""
    return train_record(server_round, node, run_id=1, kind=kind, epsilon=eps, steps=5,
                        total_steps=5, **kw)


KEYS = {node: generate_signing_key() for node in range(1, 6)}


def reply(node, arrays=None, n=1, rec="train", key=None, server_round=1, ins=None,
          earlier=(), prev=GENESIS):
    ins = ins or Message(content=RecordDict(), dst_node_id=node, message_type="train")
    content = RecordDict()
    if rec is not None:
        signed = make_entry(record(node, kind=rec, server_round=server_round,
                                   reason="budget exhausted" if rec == "refused" else ""),
                            None, prev, key or KEYS[node])
        content = entry_recorddict(signed, earlier)
    if arrays is not None:
        content["arrays"] = to_record(arrays)
        content["metrics"] = MetricRecord({"num-examples": n})
    return Message(content=content, reply_to=ins)


ZERO = {"w": np.zeros(2, dtype=np.float32), "b": np.zeros((1, 1), dtype=np.float32)}


class Seen:
    """The last observer of a test's strategy: each train outcome by round, after the
    ledger and checkpoint observers of the real federation have had it."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.rounds: dict[int, RoundOutcome] = {}

    def train_round_done(self, outcome: RoundOutcome) -> None:
        self.rounds[outcome.server_round] = outcome

    def evaluate_round_done(self, outcome: RoundOutcome) -> None:
        """Evaluate outcomes are not what these tests look at."""


def strategy(tmp_path, global_arrays=ZERO, **kw) -> tuple[PrivacyStrategy, Seen]:
    # lr 1 with 5 steps bounds an honest update of these 3 weights at about 27.
    seen = Seen(Ledger(tmp_path / "ledger.jsonl"))
    s = PrivacyStrategy(flower_strategy(kw.pop("aggregation", "fedavg"), 0.2),
                        heads=MappingProxyType(seen.ledger.heads), ledger_run=1,
                        learning_rate=1.0,
                        observers=[seen.ledger, CheckpointWriter(tmp_path), seen], **kw)
    s.expect({k: v.copy() for k, v in global_arrays.items()})
    return s, seen


def test_fedavg_of_known_arrays_is_the_example_weighted_mean(tmp_path):
    s, _ = strategy(tmp_path)
    a = {"w": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([[0.0]], dtype=np.float32)}
    b = {"w": np.array([3.0, 6.0], dtype=np.float32), "b": np.array([[4.0]], dtype=np.float32)}
    arrays, _ = s.aggregate_train(1, [reply(1, a, n=1), reply(2, b, n=3)])
    np.testing.assert_allclose(arrays["w"].numpy(), [2.5, 5.0])
    np.testing.assert_allclose(arrays["b"].numpy(), [[3.0]])
    saved = load_checkpoint(checkpoint_path(tmp_path, 1))
    np.testing.assert_allclose(saved["w"], [2.5, 5.0])


def w(*values, b=0.0):
    return {"w": np.array(values, dtype=np.float32), "b": np.array([[b]], dtype=np.float32)}


def test_refusals_and_recordless_replies_are_left_out_and_the_round_goes_on(tmp_path):
    s, seen = strategy(tmp_path)
    forged = w(1000.0, 0.0)
    tampered = reply(5, forged)
    entry = json.loads(str(tampered.content["privacy"]["entry"]))
    entry["record"]["epsilon"] = 0.1  # changed after signing
    tampered.content["privacy"]["entry"] = json.dumps(entry)
    arrays, _ = s.aggregate_train(1, [reply(1, w(2.0, 0.0)), reply(2, w(4.0, 0.0)),
                                      reply(3, rec="refused"), reply(4, forged, rec=None),
                                      tampered])
    np.testing.assert_allclose(arrays["w"].numpy(), [3.0, 0.0])
    outcome = seen.rounds[1]
    assert len(outcome.trained) == 2 and len(outcome.refused) == 1
    assert {node for node, _ in outcome.rejected} == {4, 5}
    rows = ledger_lines(tmp_path / "ledger.jsonl")
    assert [(x["received_from"], x["record"]["kind"]) for x in rows] == [
        (1, "train"), (2, "train"), (3, "refused")]


def test_all_refusing_leaves_the_model_unchanged_and_checkpoints_it(tmp_path):
    s, seen = strategy(tmp_path, global_arrays=w(1.0, 2.0))
    arrays, metrics = s.aggregate_train(2, [reply(1, rec="refused"), reply(2, rec="refused")])
    assert arrays is None and metrics is None and not seen.rounds[2].aggregated
    # The round is over (a resumed run goes on after it) with the model it began with.
    np.testing.assert_array_equal(load_checkpoint(checkpoint_path(tmp_path, 2))["w"], [1.0, 2.0])


def test_signed_entry_survives_the_wire_format_unchanged():
    signed = make_entry(record(9, disclosed={"num-examples": 12}), None, GENESIS, KEYS[1])
    msg = Message(content=entry_recorddict(signed), dst_node_id=9, message_type="train")
    assert isinstance(msg.content["privacy"], ConfigRecord)
    assert entry_of_message(msg) == signed
    assert record_of_entry(signed) == record(9, disclosed={"num-examples": 12},
                                             created_at=record_of_entry(signed).created_at)


BAD_UPDATES = {
    "NaN": w(np.nan, 1.0),
    "Inf": w(1.0, np.inf),
    "wrong shape": {"w": np.ones(3, dtype=np.float32), "b": np.zeros((1, 1), np.float32)},
    "wrong dtype": {"w": np.ones(2, dtype=np.float64), "b": np.zeros((1, 1), np.float32)},
    "wrong names": {"v": np.ones(2, dtype=np.float32), "b": np.zeros((1, 1), np.float32)},
    "over-norm": w(2000.0, 4000.0),  # 1000x the honest update below
}


def test_nan_wrong_shape_and_over_norm_updates_are_rejected_and_leave_the_model_alone(tmp_path):
    good = w(2.0, 4.0, b=1.0)
    alone, _ = strategy(tmp_path / "alone")
    expected, _ = alone.aggregate_train(1, [reply(1, good)])
    s, seen = strategy(tmp_path / "mixed")
    replies = [reply(1, good), *(reply(2 + i % 4, bad)
                                 for i, bad in enumerate(BAD_UPDATES.values()))]
    arrays, _ = s.aggregate_train(1, replies)
    for name in ("w", "b"):
        np.testing.assert_array_equal(arrays[name].numpy(), expected[name].numpy())
    reasons = [why for _, why in seen.rounds[1].rejected]
    assert len(reasons) == len(BAD_UPDATES) and len(seen.rounds[1].trained) == 1
    assert any("NaN or Inf" in r for r in reasons) and any("exceeds" in r for r in reasons)
    assert any("float64" in r for r in reasons) and any("[3]" in r for r in reasons)
    # With only bad updates the round keeps the global model exactly.
    only_bad, _ = strategy(tmp_path / "bad", global_arrays=good)
    arrays, _ = only_bad.aggregate_train(1, [reply(2, bad) for bad in BAD_UPDATES.values()])
    assert arrays is None
    saved = load_checkpoint(checkpoint_path(tmp_path / "bad", 1))
    np.testing.assert_array_equal(saved["w"], good["w"])


def test_median_resists_a_poisoned_update_within_the_norm_bound(tmp_path):
    honest = [w(1.0, 1.0), w(1.2, 0.8), w(0.9, 1.1), w(1.1, 0.9)]
    poison = w(-15.0, 15.0)  # norm 21: within what 5 steps of lr 1 can reach
    replies = lambda: [reply(i + 1, u) for i, u in enumerate([*honest, poison])]  # noqa: E731
    mean, _ = strategy(tmp_path / "avg")[0].aggregate_train(1, replies())
    median, _ = strategy(tmp_path / "med", aggregation="median")[0].aggregate_train(
        1, replies())
    trimmed, _ = strategy(tmp_path / "trim", aggregation="trimmed-mean")[0].aggregate_train(
        1, replies())
    assert abs(mean["w"].numpy()[0] - 1.0) > 3  # FedAvg is dragged by the poisoned update
    np.testing.assert_allclose(median["w"].numpy(), [1.0, 1.0], atol=1e-6)
    # 20% of 5 updates: the largest and smallest value of each weight are dropped.
    np.testing.assert_allclose(trimmed["w"].numpy(), [1.0, 1.0], atol=1e-6)


def test_too_few_updates_keep_the_global_model(tmp_path):
    s, seen = strategy(tmp_path, min_updates=2)
    arrays, _ = s.aggregate_train(1, [reply(1, w(1.0, 1.0)), reply(2, rec="refused")])
    assert arrays is None and len(seen.rounds[1].trained) == 1 and not seen.rounds[1].aggregated


def test_the_wrapper_leaves_aggregation_to_the_inner_flower_strategy(tmp_path):
    updates = [w(1.0, 5.0, b=0.0), w(2.0, -1.0, b=1.0), w(10.0, 3.0, b=4.0)]
    replies = lambda: [reply(i + 1, u, n=1 + 10 * i) for i, u in enumerate(updates)]  # noqa: E731
    s, _ = strategy(tmp_path, aggregation="median")
    assert isinstance(s.inner, FedMedian)
    arrays, _ = s.aggregate_train(1, replies())
    # The coordinate-wise median, unweighted: not the example-weighted mean FedAvg gives.
    np.testing.assert_array_equal(arrays["w"].numpy(), [2.0, 3.0])
    np.testing.assert_array_equal(arrays["b"].numpy(), [[1.0]])
    direct, _ = FedMedian().aggregate_train(1, replies())
    for name in ("w", "b"):
        np.testing.assert_array_equal(arrays[name].numpy(), direct[name].numpy())


class Spy:
    """An observer that notes its name, the round kind and the outcome it is handed."""

    def __init__(self, name: str, calls: list) -> None:
        self.name, self.calls = name, calls

    def train_round_done(self, outcome: RoundOutcome) -> None:
        self.calls.append((self.name, "train", outcome))

    def evaluate_round_done(self, outcome: RoundOutcome) -> None:
        self.calls.append((self.name, "evaluate", outcome))


def test_observers_are_handed_each_outcome_in_the_order_given(tmp_path):
    calls: list = []
    s = PrivacyStrategy(flower_strategy("fedavg", 0.2), heads={}, ledger_run=1,
                        learning_rate=1.0, observers=[Spy(name, calls) for name in
                                                      ("ledger", "checkpoint", "report")])
    s.expect({k: v.copy() for k, v in ZERO.items()})
    s.aggregate_train(1, [reply(1, w(2.0, 0.0)), reply(2, rec="refused"),
                          reply(3, w(1.0, 1.0), server_round=7)])
    evaluated = reply(1, rec="evaluate",
                      ins=Message(content=RecordDict(), dst_node_id=1, message_type="evaluate"))
    evaluated.content["metrics"] = MetricRecord({"num-examples": 4, "eval-accuracy": 0.75})
    s.aggregate_evaluate(1, [evaluated])
    assert [(name, kind) for name, kind, _ in calls] == [
        ("ledger", "train"), ("checkpoint", "train"), ("report", "train"),
        ("ledger", "evaluate"), ("checkpoint", "evaluate"), ("report", "evaluate")]
    trained, evaluate = calls[0][2], calls[3][2]
    assert all(outcome is trained for _, _, outcome in calls[:3])
    assert (trained.server_round, trained.kind, trained.aggregated) == (1, "train", True)
    assert [r.node_id for r in trained.trained] == [1]
    assert [r.node_id for r in trained.refused] == [2]
    assert [node for node, _ in trained.rejected] == [3]
    # The entry of the rejected (stale) reply is handed on too: its spend is real.
    assert [node for node, _ in trained.entries] == [1, 2, 3]
    np.testing.assert_array_equal(trained.model["w"], [2.0, 0.0])
    assert evaluate.kind == "evaluate" and evaluate.metrics["eval-accuracy"] == 0.75
    assert [node for node, _ in evaluate.entries] == [1]


def test_the_report_is_written_from_outcomes(tmp_path):
    from rich.console import Console

    from server.report import RoundReporter

    reporter = RoundReporter(tmp_path, 1, {}, Console(file=io.StringIO()))
    outcome = RoundOutcome(1, "train", trained=[record(1, eps=2.0), record(2, eps=4.0)],
                           refused=[record(3, kind="refused")], failed=[(4, "no reply")],
                           aggregated=True)
    reporter.train_round_done(outcome)
    reporter.evaluate_round_done(RoundOutcome(1, "evaluate", metrics={"eval-accuracy": 0.5}))
    reporter.end_round(1, {"loss": 0.25, "accuracy": 0.8})
    row = json.loads((tmp_path / "metrics.json").read_text())["rounds"][0]
    assert {k: row[k] for k in ("round", "trained", "refused", "failed", "accuracy",
                                "fed_accuracy", "epsilon_max", "epsilon_mean", "aggregated")} == {
        "round": 1, "trained": 2, "refused": 1, "failed": 1, "accuracy": 0.8,
        "fed_accuracy": 0.5, "epsilon_max": 4.0, "epsilon_mean": 3.0, "aggregated": True}
    assert row["failures"] == [{"node": 4, "why": "no reply"}]


def test_a_resumed_report_keeps_earlier_rows_and_appends_later_ones(tmp_path):
    import csv

    from rich.console import Console

    from server.report import RoundReporter

    def rounds(reporter, numbers):
        for n in numbers:
            reporter.train_round_done(RoundOutcome(n, "train", trained=[record(1, eps=n)]))
            reporter.end_round(n, None)

    rounds(RoundReporter(tmp_path, 5, {"seed": 7}, Console(file=io.StringIO())), [1, 2, 3])
    # The coordinator died after round 3, its checkpoint says round 2: rounds 3 on again.
    rounds(RoundReporter(tmp_path, 5, {"seed": 7}, Console(file=io.StringIO()), up_to=2),
           [3, 4])
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["config"] == {"seed": 7}
    assert [(r["round"], r["epsilon_max"]) for r in written["rounds"]] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    with open(tmp_path / "metrics.csv") as fh:
        assert [int(r["round"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]


def test_the_round_line_names_each_failure_in_one_line_then_counts(tmp_path):
    from rich.console import Console

    from server.report import MAX_FAILURES_SHOWN, RoundReporter

    out = io.StringIO()
    reporter = RoundReporter(tmp_path, 1, {}, Console(file=out, width=300))
    died = "error 0: <class 'ray.exceptions.ActorDiedError'>:<'The actor died.\n\tpid: 9"
    failed = [(node, died) for node in range(1, MAX_FAILURES_SHOWN + 3)]
    reporter.train_round_done(RoundOutcome(1, "train", failed=failed))
    reporter.end_round(1, None)
    lines = out.getvalue().splitlines()
    assert lines[1] == f"  node 1 failed: {died.splitlines()[0]}"
    assert sum("failed: error 0" in line for line in lines) == MAX_FAILURES_SHOWN
    assert lines[-1] == "  and 2 more failures (metrics.json)"
    # The file keeps every failure and its whole reason.
    row = json.loads((tmp_path / "metrics.json").read_text())["rounds"][0]
    assert [f["why"] for f in row["failures"]] == [died] * len(failed)


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes


def test_dropped_and_silent_nodes_are_named_and_the_round_goes_on(tmp_path, monkeypatch):
    import server.strategy as module

    monkeypatch.setattr("flwr.serverapp.strategy.fedavg.sample_nodes",
                        lambda grid, min_available, size: (grid.nodes, grid.nodes))
    s, seen = strategy(tmp_path)
    sent = list(s.configure_train(1, to_record(ZERO), ConfigRecord({"lr": 1.0}),
                                  FakeGrid([1, 2, 3, 4])))
    for i, msg in enumerate(sent):  # what the grid does when it pushes them
        msg.metadata.__dict__["_message_id"] = f"m{i}"
    assert [m.content["config"]["server-round"] for m in sent] == [1] * 4
    # The reply Flower's SuperLink makes for a node that stopped sending heartbeats.
    from flwr.server.superlink.linkstate.utils import (
        NODE_UNAVAILABLE_ERROR_REASON,
        create_message_error_unavailable_res_message,
    )

    unavailable = create_message_error_unavailable_res_message(sent[2].metadata, "node_unavail")
    assert unavailable.metadata.src_node_id != 3  # the reply does not name the node
    replies = [reply(1, w(1.0, 1.0), ins=sent[0]), reply(2, w(3.0, 3.0), ins=sent[1]),
               unavailable]  # node 4 never answers
    arrays, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [2.0, 2.0])
    assert dict(seen.rounds[1].failed) == {3: f"error 5: {NODE_UNAVAILABLE_ERROR_REASON}",
                                        4: "no reply before the round timeout"}
    assert {r["received_from"] for r in ledger_lines(tmp_path / "ledger.jsonl")} == {1, 2}
    assert module.LEDGER_HEAD_KEY in sent[0].content["config"]


def test_resumed_rounds_are_numbered_on_and_repeated_entries_are_written_once(tmp_path):
    first = make_entry(record(1, server_round=3), None, GENESIS, KEYS[1])
    s, seen = strategy(tmp_path, first_round=4)
    # Node 1 re-sends round 3 (never received) before its round-4 entry.
    again = reply(1, w(1.0, 1.0), server_round=4, earlier=[first],
                  prev=entry_hash(first))
    arrays, _ = s.aggregate_train(1, [again])  # Flower's count 1 is our round 4
    assert arrays is not None and checkpoint_path(tmp_path, 4).exists()
    repeated, _ = s.aggregate_train(1, [again])  # the same reply once more: nothing new to write
    assert repeated is not None
    assert [r["record"]["round"] for r in ledger_lines(tmp_path / "ledger.jsonl")] == [3, 4]
    assert seen.ledger.heads[1] == entry_hash(entry_of_message(again))
    stale, stale_seen = strategy(tmp_path / "stale", first_round=4)
    assert stale.aggregate_train(1, [reply(1, w(1.0, 1.0), server_round=2)])[0] is None
    assert "round 2" in stale_seen.rounds[4].rejected[0][1]


def test_a_damaged_checkpoint_is_set_aside_and_the_one_before_is_used(tmp_path, caplog):
    from server.checkpoint import CheckpointError, latest_good_checkpoint, save_checkpoint

    for r in (1, 2):
        save_checkpoint(tmp_path, r, w(float(r), 0.0))
    newest = checkpoint_path(tmp_path, 2)
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0x01  # inside the last weight: safetensors alone would load it silently
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(newest)
    server_round, arrays = latest_good_checkpoint(tmp_path)
    assert server_round == 1 and arrays["w"].tolist() == [1.0, 0.0]
    assert f"checkpoint {newest} is damaged" in caplog.text
    assert not newest.exists() and newest.with_name(newest.name + ".corrupt").exists()
    checkpoint_path(tmp_path, 1).write_bytes(b"not a checkpoint")
    assert latest_good_checkpoint(tmp_path) == (0, None)


def test_records_under_a_ledger_key_not_admitted_for_the_node_are_rejected(tmp_path):
    """Each node id has one admitted ledger key: another node's key, or one the partner
    never handed over, is rejected with the node named, and none of its entries is kept."""
    from common.ledger.keys import public_key_hex

    admitted = {node: public_key_hex(KEYS[node]) for node in (1, 2, 3)}
    s, seen = strategy(tmp_path, ledger_keys=admitted)
    stranger = generate_signing_key()
    arrays, _ = s.aggregate_train(1, [
        reply(1, w(2.0, 0.0)),
        reply(2, w(1000.0, 0.0), key=stranger),   # a key nobody admitted
        reply(3, w(1000.0, 0.0), key=KEYS[1]),    # node 1's key, sent by node 3
        reply(4, w(1000.0, 0.0)),                 # a node with no admitted key at all
    ])
    np.testing.assert_allclose(arrays["w"].numpy(), [2.0, 0.0])
    rejected = dict(seen.rounds[1].rejected)
    assert set(rejected) == {2, 3, 4}
    assert f"not the key admitted for node 2 ({admitted[2][:16]}...)" in rejected[2]
    assert rejected[3].startswith(f"records signed by ledger key {admitted[1][:16]}...")
    assert rejected[4] == "node 4 has no admitted ledger key: its records are not accepted"
    rows = ledger_lines(tmp_path / "ledger.jsonl")
    assert [(x["received_from"], x["node_key"]) for x in rows] == [(1, admitted[1])]


@pytest.mark.parametrize("ratio", [0.9009, 1.0, 1.05])
def test_adam_steps_stay_within_the_update_bound_after_thousands_of_steps(ratio):
    """The bound holds for a node that keeps its moments over many rounds (2,000 steps).

    Gradients growing by 1/ratio a step push Adam's step past Kingma & Ba's 3.16 lr, the
    bound this check used before; they stay under `max_update_norm`'s.
    """
    weight = torch.zeros(1, requires_grad=True)
    adam = torch.optim.AdamW([weight], lr=1.0, betas=ADAM_BETAS, weight_decay=0.0)
    bound = max_update_norm(1, 1.0, 1, 0.0)
    largest = 0.0
    for t in range(2000):
        before = weight.item()
        weight.grad = torch.tensor([ratio ** -t], dtype=torch.float32)
        adam.step()
        largest = max(largest, abs(weight.item() - before))
    assert largest <= bound
    if ratio < 1:
        assert largest > 1.0 * (1 - ADAM_BETAS[0]) / (1 - ADAM_BETAS[1]) ** 0.5
