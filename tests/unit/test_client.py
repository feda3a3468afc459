"""The ClientApp's train handler, called in-process: budget enforcement on the node."""

import pytest
import torch
from flwr.app import ConfigRecord
from opacus.accountants import create_accountant

from client import moments
from client.app import train
from client.node import NodeFiles, PrivacyState
from common.errors import ConfigError
from common.ledger.entry import entry_hash, record_of_entry
from common.ledger.store import NodeLedger, read_entries
from common.training import make_optimizer
from common.wire import LEDGER_HEAD_KEY, LEDGER_RUN_KEY, entries_of_message, entry_of_message
from tests.helpers.messages import node_context, record_of, train_message


def run_rounds(cfg, context, rounds):
    replies = [train(train_message(cfg, r), context) for r in rounds]
    return replies, [record_of(reply) for reply in replies]


def test_node_budget_caps_what_the_coordinator_asks(tiny_cfg, small_csv, tmp_path):
    coordinator_asks = tiny_cfg.replace(epsilon=50.0)
    context = node_context({"data-path": str(small_csv), "max-epsilon": 2.0}, tmp_path / "n")
    replies, records = run_rounds(coordinator_asks, context, [1, 2])
    assert [r.kind for r in records] == ["train", "train"]
    assert all(r.epsilon_budget == 2.0 for r in records)
    assert records[0].epsilon < records[1].epsilon <= 2.0
    # A third round was never planned: it would exceed the node's budget, so it is refused.
    refusal = train(train_message(coordinator_asks, 3), context)
    rec = record_of(refusal)
    assert rec.kind == "refused" and "budget exhausted" in rec.reason
    assert "arrays" not in refusal.content.array_records
    state = PrivacyState.load(NodeFiles(tmp_path / "n").state)
    assert state.history() == [(records[1].noise_multiplier, records[1].sample_rate, 4)]
    # The node's own signed ledger holds exactly what it sent, refusal included.
    own = [record_of_entry(e) for e in read_entries(tmp_path / "n" / "ledger.jsonl")]
    assert own == [*records, rec]


def test_spend_persists_on_disk_and_spans_runs(tiny_cfg, small_csv, tmp_path):
    """A restarted node, or a new run, cannot reset what the node has spent."""
    node = {"data-path": str(small_csv), "max-epsilon": 2.0}
    _, first = run_rounds(tiny_cfg, node_context(node, tmp_path / "n"), [1, 2])
    new_run = node_context(node, tmp_path / "n")
    new_run.run_id = 2
    rec = record_of(train(train_message(tiny_cfg, 1), new_run))
    assert rec.kind == "refused" and rec.epsilon == pytest.approx(first[-1].epsilon)


def test_reported_epsilon_is_opacus_accountant_over_all_rounds(tiny_cfg, small_csv, tmp_path):
    cfg = tiny_cfg.replace(accountant="rdp", **{"num-rounds": 3})
    context = node_context({"data-path": str(small_csv)}, tmp_path)
    _, records = run_rounds(cfg, context, [1, 2, 3])
    last = records[-1]
    assert last.total_steps == 6 == sum(r.steps for r in records)
    acc = create_accountant("rdp")
    acc.history = [(last.noise_multiplier, last.sample_rate, last.total_steps)]
    assert last.epsilon == pytest.approx(acc.get_epsilon(delta=last.delta), rel=1e-12)
    assert [r.epsilon for r in records] == sorted(r.epsilon for r in records)


def test_reply_names_everything_it_discloses(tiny_cfg, small_csv, tmp_path):
    context = node_context({"data-path": str(small_csv)}, tmp_path)
    reply = train(train_message(tiny_cfg, 1), context)
    metrics = dict(reply.content["metrics"])
    assert record_of(reply).disclosed == metrics == {"num-examples": 180}
    with_loss = train(train_message(tiny_cfg.replace(**{"report-train-loss": True}), 2), context)
    assert set(record_of(with_loss).disclosed) == {"num-examples", "train-loss"}


def test_node_with_a_budget_refuses_non_private_training(tiny_cfg, small_csv, tmp_path):
    context = node_context({"data-path": str(small_csv), "max-epsilon": 5.0}, tmp_path)
    rec = record_of(train(train_message(tiny_cfg.replace(dp=False), 1), context))
    assert rec.kind == "refused" and "DP-SGD only" in rec.reason


def test_non_private_baseline_records_no_mechanism_and_infinite_epsilon(
        tiny_cfg, small_csv, tmp_path):
    """Without a declared budget the baseline trains, and its record claims no guarantee."""
    context = node_context({"data-path": str(small_csv)}, tmp_path / "n")
    reply = train(train_message(tiny_cfg.replace(dp=False), 1), context)
    rec = record_of(reply)
    assert (rec.kind, rec.mechanism, rec.noise_multiplier) == ("train", "none", 0.0)
    assert rec.epsilon == float("inf") and rec.steps == rec.total_steps == 2
    assert "arrays" in reply.content.array_records
    # Nothing was spent against a DP budget: the node's accountant history stays empty.
    assert PrivacyState.load(NodeFiles(tmp_path / "n").state).history() == []


def test_coordinator_cannot_point_a_deployed_node_at_data(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(**{"data-path": str(tmp_path / "elsewhere.csv")})
    with pytest.raises(ConfigError, match="this node has no data"):
        train(train_message(cfg, 1), node_context({}, tmp_path))


def test_bad_node_budget_is_named(tiny_cfg, small_csv, tmp_path):
    context = node_context({"data-path": str(small_csv), "max-epsilon": "lots"}, tmp_path)
    with pytest.raises(ConfigError, match="node-config max-epsilon='lots'"):
        train(train_message(tiny_cfg, 1), context)


def with_config(msg, **extra):
    """The message as the server addresses it to one node (strategy._addressed)."""
    msg.content["config"] = ConfigRecord({**msg.content["config"], **extra})
    return msg


def test_a_repeated_request_gets_the_same_signed_reply_and_spends_nothing(
        tiny_cfg, small_csv, tmp_path):
    """A coordinator that restarted asks again for a round: no second record, no new spend."""
    context = node_context({"data-path": str(small_csv), "max-epsilon": 5.0}, tmp_path / "n")
    first = train(train_message(tiny_cfg, 1), context)
    spent = PrivacyState.load(NodeFiles(tmp_path / "n").state).history()
    again = train(train_message(tiny_cfg, 1), context)
    assert entry_of_message(again) == entry_of_message(first)
    for name, array in first.content["arrays"].items():
        assert again.content["arrays"][name].numpy().tobytes() == array.numpy().tobytes()
    assert PrivacyState.load(NodeFiles(tmp_path / "n").state).history() == spent
    assert len(read_entries(tmp_path / "n" / "ledger.jsonl")) == 1
    # The same round with another model: the node will not train a round twice.
    other = record_of(train(train_message(tiny_cfg.replace(seed=7), 1), context))
    assert other.kind == "refused" and "not training it twice" in other.reason
    assert PrivacyState.load(NodeFiles(tmp_path / "n").state).history() == spent


def test_a_reply_signed_but_never_written_is_sent_not_signed_twice(tiny_cfg, small_csv, tmp_path,
                                                                   monkeypatch):
    """Killed between the outbox and the ledger write: the next attempt completes it."""
    context = node_context({"data-path": str(small_csv), "max-epsilon": 5.0}, tmp_path / "n")
    monkeypatch.setattr(NodeLedger, "commit", lambda self, entry: None)  # the kill
    lost = train(train_message(tiny_cfg, 1), context)
    assert not (tmp_path / "n" / "ledger.jsonl").exists()
    monkeypatch.undo()
    again = train(train_message(tiny_cfg, 1), context)
    assert entry_of_message(again) == entry_of_message(lost)
    assert read_entries(tmp_path / "n" / "ledger.jsonl") == [entry_of_message(lost)]


def test_entries_the_server_lacks_travel_with_the_next_reply(tiny_cfg, small_csv, tmp_path):
    context = node_context({"data-path": str(small_csv), "max-epsilon": 8.0}, tmp_path / "n")
    r1, r2 = (train(with_config(train_message(tiny_cfg, r), **{LEDGER_RUN_KEY: 1}), context)
              for r in (1, 2))
    head = entry_hash(entry_of_message(r1))
    # The server holds round 1 but never got round 2 (it restarted): round 3 carries it.
    r3 = train(with_config(train_message(tiny_cfg, 3), **{LEDGER_RUN_KEY: 1,
                                                           LEDGER_HEAD_KEY: head}), context)
    assert entries_of_message(r3) == [entry_of_message(r2), entry_of_message(r3)]
    # A server holding everything up to round 3 gets only the new entry.
    r4 = train(with_config(train_message(tiny_cfg, 4), **{
        LEDGER_RUN_KEY: 1, LEDGER_HEAD_KEY: entry_hash(entry_of_message(r3))}), context)
    assert len(entries_of_message(r4)) == 1
    assert [r.round for r in map(record_of, (r1, r2, r3, r4))] == [1, 2, 3, 4]


def test_the_attestation_states_the_run_and_closes_it(tiny_cfg, small_csv, tmp_path):
    """The end-of-run request gets a signed attestation of the node's chain head, total
    steps and epsilon; asked again, the same entry; asked to train on, a refusal."""
    from client.app import attest_end_of_run
    from common.wire import ATTEST_MESSAGE_TYPE

    context = node_context({"data-path": str(small_csv)}, tmp_path / "n")
    _, records = run_rounds(tiny_cfg, context, [1, 2])
    ask = train_message(tiny_cfg, 2, message_type=ATTEST_MESSAGE_TYPE)
    del ask.content["arrays"]  # the request carries the run config only
    reply = attest_end_of_run(ask, context)
    entries = read_entries(tmp_path / "n" / "ledger.jsonl")
    attestation = entry_of_message(reply)
    assert attestation == entries[-1] and attestation["prev_hash"] == entry_hash(entries[-2])
    rec = record_of_entry(attestation)
    assert (rec.kind, rec.round, rec.steps) == ("attestation", 2, 0)
    assert (rec.total_steps, rec.epsilon) == (records[-1].total_steps, records[-1].epsilon)
    assert attestation["record"]["extra"]["attests"] == {"entries": 2, "train_rounds": 2}
    assert entry_of_message(attest_end_of_run(ask, context)) == attestation  # no second one
    refused = record_of(train(train_message(tiny_cfg, 3), context))
    assert refused.kind == "refused" and "end-of-run attestation" in refused.reason


def _adam_steps(path):
    saved = torch.load(path, weights_only=True)
    return [int(s["step"]) for s in saved["optimizer"]["state"].values()]


def test_the_node_keeps_its_adam_moments_across_a_runs_rounds_and_only_that_run(
        tiny_cfg, small_csv, tmp_path):
    """Round 2 goes on from round 1's moments (2 + 2 steps); a new run starts afresh.

    They stay on the node (0600) and are not in the reply: only the update and entries.
    """
    context = node_context({"data-path": str(small_csv)}, tmp_path)
    moments = NodeFiles(tmp_path).moments
    replies, _ = run_rounds(tiny_cfg, context, [1])
    assert _adam_steps(moments) == [2, 2]  # the head's weight and bias, 2 steps each
    assert moments.stat().st_mode & 0o777 == 0o600
    replies += run_rounds(tiny_cfg, context, [2])[0]
    assert _adam_steps(moments) == [4, 4]
    for reply in replies:
        assert set(reply.content.array_records) == {"arrays"}
        assert not any("moment" in key or "adam" in key for key in reply.content)
    new_run = node_context({"data-path": str(small_csv)}, tmp_path)
    new_run.run_id = 2  # without DP: run 1 spent this node's budget
    assert record_of(train(train_message(tiny_cfg.replace(dp=False), 1), new_run)).kind == "train"
    assert _adam_steps(moments) == [2, 2]


def test_moments_from_another_run_other_weights_or_a_torn_file_are_not_loaded(tmp_path):
    head = torch.nn.Linear(4, 3)
    adam = make_optimizer(head, 0.1)
    head(torch.ones(2, 4)).sum().backward()
    adam.step()
    path = tmp_path / "adamw-moments.pt"
    moments.save(path, 1, head, adam)
    fresh = lambda module: make_optimizer(module, 0.1)  # noqa: E731
    assert not moments.restore(path, 2, head, fresh(head))
    assert not moments.restore(path, 1, torch.nn.Linear(5, 3), fresh(torch.nn.Linear(5, 3)))
    loaded = fresh(head)
    assert moments.restore(path, 1, head, loaded)
    assert torch.equal(loaded.state_dict()["state"][0]["exp_avg"],
                       adam.state_dict()["state"][0]["exp_avg"])
    path.write_bytes(path.read_bytes()[:40])  # what a power cut can leave of it
    assert not moments.restore(path, 1, head, fresh(head))
