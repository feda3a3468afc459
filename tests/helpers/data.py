"""Labelled text files for tests: made-up rows, and real tweets of the embedded set."""

from __future__ import annotations

import csv
import functools
import os
import random
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from common.config import RunConfig
from common.data import EMBEDDED_LABELS, LabelledTexts, load_labelled_texts, subsample

Row = tuple[str, str]


def write_csv(path: Path, rows: list[Row] | tuple[Row, ...],
              header: tuple[str, str] = ("text", "label")) -> Path:
    """A UTF-8 CSV with `header` and one line per (text, label) row."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def numbered_rows(n: int) -> list[Row]:
    """`n` made-up rows, "text number i", labels cycling through the embedded three."""
    return [(f"text number {i}", EMBEDDED_LABELS[i % 3]) for i in range(n)]


@functools.cache
def embedded_data() -> LabelledTexts:
    """All 38k labelled tweets of the embedded set, read once per test process.

    The cache needs no key: the embedded file is fixed by the installed package.
    Callers must not change what it returns (they subsample it into new objects).
    """
    return load_labelled_texts(RunConfig().data)


def embedded_rows(n: int, seed: int = 3) -> list[Row]:
    """`n` real labelled tweets, a seeded subsample of the embedded set."""
    data = subsample(embedded_data(), n, seed=seed)
    return [(t, data.label_names[y]) for t, y in zip(data.texts, data.labels, strict=True)]


def write_partner_csvs(folder: Path, names: list[str], rows_each: int = 200) -> dict[str, Path]:
    """Disjoint files of real labelled tweets from the embedded set, one per partner."""
    rows = embedded_rows(rows_each * len(names))
    random.Random(5).shuffle(rows)
    return {name: write_csv(folder / f"{name}.csv", rows[i * rows_each:(i + 1) * rows_each])
            for i, name in enumerate(names)}


# What `write_bad_data_files` writes, and what the one-line error for each must say.
BAD_DATA = [
    ("missing.csv", "file not found"),
    ("folder.csv", "cannot read"),
    ("cut.csv", "quote left open"),
    ("junk.csv", "not valid utf-8"),
    ("latin1.csv", "line 32: bytes are not valid utf-8"),
    ("empty.csv", "file is empty"),
    ("header.csv", "only 0 rows"),
    ("nocolumn.csv", "no column 'text'"),
    ("nul.csv", "NUL bytes"),
    ("commas.csv", "3 fields but the header has 2"),
    ("data.txt", "unsupported file type"),
    ("cut.jsonl", "line 30: not valid JSON"),
    ("array.jsonl", "line 1: expected a JSON object"),
]


def write_bad_data_files(d: Path) -> None:
    """In `d`: good.csv (30 made-up rows) and each bad file of BAD_DATA but missing.csv."""
    text = write_csv(d / "good.csv", numbered_rows(30)).read_text()
    (d / "cut.csv").write_text(text + '"a quote left open by a cut-off write')
    (d / "junk.csv").write_bytes(os.urandom(2048))
    (d / "latin1.csv").write_bytes(text.encode() + "caf\u00e9,positive\n".encode("latin-1"))
    (d / "empty.csv").write_bytes(b"")
    (d / "header.csv").write_text("text,label\n")
    (d / "nocolumn.csv").write_text(text.replace("text,label", "tweet,label", 1))
    (d / "nul.csv").write_text(text.replace("number 3", "num\x00ber 3"))
    (d / "commas.csv").write_text(text + "hello, world,positive\n")
    (d / "folder.csv").mkdir()
    (d / "data.txt").write_text(text)
    jsonl = "".join(f'{{"text": "row {i}", "label": "{EMBEDDED_LABELS[i % 3]}"}}\n'
                    for i in range(30))
    (d / "cut.jsonl").write_text(jsonl[:-20])
    (d / "array.jsonl").write_text('[{"text": "a", "label": "b"}]\n' + jsonl)


def fixed_length(rows: LabelledTexts, tokenizer, max_length: int) -> TensorDataset:
    """Rows padded to `max_length` (ids, mask, label): the reference dynamic padding must
    match, and a batch shape that never changes."""
    batch = tokenizer(rows.texts, padding="max_length", truncation=True,
                      max_length=max_length, return_tensors="pt")
    return TensorDataset(batch["input_ids"], batch["attention_mask"],
                         torch.tensor(rows.labels, dtype=torch.long))
