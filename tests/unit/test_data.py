import json
from collections import Counter

import pytest

from common.config import DataConfig, RunConfig
from common.data import EMBEDDED_LABELS, MIN_ROWS, LabelledTexts, load_labelled_texts, split
from common.errors import DataError
from common.partition import client_partition, partitioned, pool_and_held_out
from tests.helpers.data import numbered_rows, write_csv

ROWS = numbered_rows(30)


def cfg_for(path, **kw) -> DataConfig:
    return DataConfig(data_path=str(path), **kw)


def test_embedded_default_is_the_real_labelled_tweet_set():
    data = load_labelled_texts(DataConfig())
    assert len(data) == 38158
    assert data.label_names == EMBEDDED_LABELS
    assert Counter(data.labels) == {0: 16186, 1: 15018, 2: 6954}
    assert all(text.strip() for text in data.texts)


def test_partner_csv_loads_with_configured_columns(tmp_path):
    path = write_csv(tmp_path / "d.csv", ROWS, header=("body", "tag"))
    data = load_labelled_texts(cfg_for(path, text_column="body", label_column="tag"))
    assert len(data) == 30 and data.label_names == ("negative", "neutral", "positive")
    assert data.texts[4] == "text number 4" and data.labels[4] == 1


def test_jsonl_loads(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in ROWS) + "\n")
    data = load_labelled_texts(cfg_for(path))
    assert data.label_names == ("negative", "neutral", "positive")
    assert list(zip(data.texts, (data.label_names[y] for y in data.labels), strict=True)) == ROWS


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.write_text(""), "file is empty"),
    (lambda p: write_csv(p, ROWS, header=("text", "sentiment")), "no column 'label'"),
    (lambda p: write_csv(p, ROWS[:MIN_ROWS - 1]), f"only {MIN_ROWS - 1} rows"),
    (lambda p: write_csv(p, ROWS[:5] + [("", "neutral")] + ROWS[5:]),
     "row 7: empty or missing 'text'"),
    (lambda p: p.write_bytes(b"text,label\nfine,positive\ncaf\xe9 bad,neutral\n"
                             + b"ok,negative\n" * 20), "line 3: bytes are not valid utf-8"),
])
def test_bad_csv_fails_with_file_and_place(tmp_path, make, needle):
    path = tmp_path / "bad.csv"
    make(path)
    with pytest.raises(DataError) as err:
        load_labelled_texts(cfg_for(path))
    assert str(path) in str(err.value) and needle in str(err.value)


def test_unknown_label_names_row_and_column(tmp_path):
    path = write_csv(tmp_path / "d.csv", ROWS + [("odd one", "sarcastic")])
    with pytest.raises(DataError, match=r"row 32: unknown label 'sarcastic' in column 'label'"):
        load_labelled_texts(cfg_for(path, labels="negative,neutral,positive"))


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps({"text": "a", "label": "x"})] * 12 + ["{oops"]))
    with pytest.raises(DataError, match="line 13: not valid JSON"):
        load_labelled_texts(cfg_for(path))


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_labelled_texts(cfg_for(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_labelled_texts(cfg_for(tmp_path / "data.txt"))


def test_split_is_seeded_and_disjoint():
    small = LabelledTexts([f"row {i}" for i in range(500)], [i % 3 for i in range(500)],
                          EMBEDDED_LABELS)
    train_a, test_a = split(small, 0.2, seed=1)
    _, test_b = split(small, 0.2, seed=1)
    _, test_c = split(small, 0.2, seed=2)
    assert test_a.texts == test_b.texts and test_a.texts != test_c.texts
    assert len(test_a) == 100 and len(train_a) == 400
    assert not set(test_a.texts) & set(train_a.texts)


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "label"])
def test_partitions_are_disjoint_cover_the_pool_and_reproduce(partitioner):
    cfg = RunConfig().replace(**{"max-examples": 1200, "partitioner": partitioner,
                                 "dirichlet-alpha": 0.3, "classes-per-client": 2}).data
    pool, _ = pool_and_held_out(cfg, seed=5)
    parts = [client_partition(pool, partitioned(pool, cfg, 4, 5), i, 4) for i in range(4)]
    again = client_partition(pool, partitioned(pool, cfg, 4, 5), 2, 4)
    assert again.texts == parts[2].texts
    assert sum(len(p) for p in parts) == len(pool)
    label_sets = [set(p.labels) for p in parts]
    if partitioner == "label":
        assert all(len(s) <= 2 for s in label_sets)
    if partitioner == "dirichlet":
        shares = [Counter(p.labels)[0] / len(p) for p in parts]
        assert max(shares) - min(shares) > 0.2  # non-IID: label mix differs by client
    if partitioner == "iid":
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_iid_clients_hold_every_label_in_proportion():
    """The embedded file is sorted by label and Flower's IidPartitioner takes contiguous
    shards: unshuffled, "iid" clients held one or two labels each."""
    cfg = RunConfig().replace(**{"max-examples": 5000})
    pool, _ = pool_and_held_out(cfg.data, 42)
    share = {y: n / len(pool) for y, n in Counter(pool.labels).items()}
    for k in range(4):
        part = client_partition(pool, partitioned(pool, cfg.data, 4, 42), k, 4)
        counts = Counter(part.labels)
        assert {y: round(counts[y] / len(part) - share[y], 2) for y in share} == pytest.approx(
            dict.fromkeys(share, 0.0), abs=0.05)
