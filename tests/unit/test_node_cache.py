"""What a node keeps per process (client.cache): reused across messages, never stale."""

import os
import shutil

import pytest

import common.data
import common.ledger.store
import common.privacy
from client import cache
from client.app import evaluate_global, train
from common.config import RunConfig
from common.errors import ConfigError, LedgerError
from common.ledger.keys import create_signing_key
from common.ledger.store import NodeLedger
from common.wire import entry_of_message
from tests.helpers.data import embedded_rows, write_csv
from tests.helpers.messages import node_context, record_of, train_message


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


def counting(monkeypatch, module, name):
    """Count the calls of `module.name` (still calling it)."""
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_node_reads_its_data_file_once_and_again_when_it_changes(tiny_cfg, small_csv,
                                                                   tmp_path, monkeypatch):
    data = shutil.copy(small_csv, tmp_path / "rows.csv")
    reads = counting(monkeypatch, common.data, "read_rows")
    context = node_context({"data-path": str(data), "max-epsilon": 8.0}, tmp_path / "n")
    for server_round in (1, 2):
        train(train_message(tiny_cfg, server_round), context)
    evaluate_global(train_message(tiny_cfg, 2, message_type="evaluate"), context)
    assert len(reads) == 1  # three messages, one read
    # Another config that shapes the rows (the seed picks the local eval split): read again.
    train(train_message(tiny_cfg.replace(seed=7), 1), node_context(
        {"data-path": str(data)}, tmp_path / "other"))
    assert len(reads) == 2
    # The partner rewrites its file: the next message reads the new rows.
    write_csv(data, embedded_rows(300))
    os.utime(data, ns=(1, 1))  # a rewrite within the same clock tick still differs
    reply = evaluate_global(train_message(tiny_cfg, 3, message_type="evaluate"), context)
    assert len(reads) == 3
    assert reply.content["metrics"]["num-examples"] == 30  # 10% of 300 rows (was 20)


def test_simulated_nodes_share_one_read_and_one_partitioning(tiny_cfg, small_csv, tmp_path,
                                                             monkeypatch):
    cfg = tiny_cfg.replace(**{"data-path": str(small_csv), "run-dir": str(tmp_path)})
    reads = counting(monkeypatch, common.data, "read_rows")
    splits = counting(monkeypatch, cache, "partitioned")
    kinds = []
    for node in range(3):
        context = node_context({"partition-id": node, "num-partitions": 3}, tmp_path / "x")
        context.node_config.pop("state-dir")  # a simulated node's files go in the run dir
        kinds.append(record_of(train(train_message(cfg, 1, node_id=node), context)).kind)
    assert kinds == ["train"] * 3
    assert (len(reads), len(splits)) == (1, 1)


def test_the_model_is_built_once_per_config_and_each_message_gets_fresh_weights(
        tiny_cfg, monkeypatch):
    builds = counting(monkeypatch, cache, "build_model")
    labels = tiny_cfg.data.label_names
    one, two = (cache.fresh_model(tiny_cfg.model, labels, 42) for _ in range(2))
    assert len(builds) == 1
    # head mode: the frozen encoder is shared, the trained head is each message's own.
    assert one.encoder is two.encoder and one.head is not two.head
    lora = tiny_cfg.replace(finetune="lora").model
    a, b = (cache.fresh_model(lora, labels, 42) for _ in range(2))
    assert len(builds) == 2 and a.encoder is not b.encoder
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert p.data_ptr() != q.data_ptr() and bool((p == q).all()), name


def test_a_replayed_request_is_answered_before_any_data_or_model(tiny_cfg, small_csv, tmp_path,
                                                                 monkeypatch):
    context = node_context({"data-path": str(small_csv), "max-epsilon": 8.0}, tmp_path / "n")
    first = train(train_message(tiny_cfg, 1), context)

    def not_needed(*args, **kwargs):
        raise AssertionError("a replay loaded data or built a model")

    for name in ("node_rows", "fresh_model", "tokenizer"):
        monkeypatch.setattr(cache, name, not_needed)
    again = train(train_message(tiny_cfg, 1), context)
    assert entry_of_message(again) == entry_of_message(first)


def test_the_ledger_is_read_once_then_only_where_it_grew(tiny_cfg, tmp_path, monkeypatch):
    key = create_signing_key(tmp_path / "k", tmp_path / "k.pub")
    path = tmp_path / "ledger.jsonl"
    mine = NodeLedger(path, key)
    record = record_of(train(train_message(tiny_cfg, 1), node_context(
        {"data-path": str(write_csv(tmp_path / "d.csv", embedded_rows(60)))}, tmp_path / "n")))
    first = mine.append(record)
    parsed = counting(monkeypatch, common.ledger.store, "parse_lines")
    for _ in range(3):
        assert mine.entries() == [first]
    assert parsed == []  # nothing appended: nothing read
    # Another process of the same node (a simulation's other worker) appends an entry.
    other = NodeLedger(path, key)
    second = other.append(record)
    # It read the file from line 1, then its own line 2 back; ours has read nothing yet.
    assert [args[2] for args in parsed] == [1, 2]
    assert mine.entries() == [first, second]
    assert mine.sign(record)["prev_hash"] == other.sign(record)["prev_hash"]
    # An entry changed in place (same size) is noticed, and the chain is refused.
    text, stamp = path.read_text(), path.stat().st_mtime_ns
    path.write_text(text.replace('"round":1', '"round":9', 1))
    os.utime(path, ns=(stamp + 1, stamp + 1))  # later, even within one clock tick
    with pytest.raises(LedgerError, match="does not verify"):
        mine.entries()


def test_a_budget_the_prv_accountant_cannot_plan_cheaply_is_refused_up_front():
    with pytest.raises(ConfigError, match=r"invalid --epsilon 200.0: .*--accountant rdp"):
        RunConfig().replace(epsilon=200.0)
    assert RunConfig().replace(epsilon=200.0, accountant="rdp").privacy.epsilon == 200.0
    assert RunConfig().replace(epsilon=200.0, dp=False).privacy.dp is False


def test_nodes_with_the_same_schedule_plan_their_noise_once(monkeypatch):
    common.privacy._noise_multiplier.cache_clear()
    calls = counting(monkeypatch, common.privacy, "get_noise_multiplier")
    cfg = RunConfig().privacy
    plans = [common.privacy.plan(cfg, budget=8.0, delta=1e-5, sample_rate=1 / 8,
                                 steps_per_round=40, planned_rounds=3) for _ in range(5)]
    assert len(calls) == 1 and len(set(plans)) == 1
