"""What a node keeps per process, so that a message costs its training and not its set-up.

A simulation's Ray worker answers the messages of many simulated nodes, round after
round; a deployed node's executor answers every task of its runs in one long-lived
process (client/executor.py). Without this, each message re-read and re-split the data
file, reloaded the tokenizer and the encoder and re-hashed the encoder's weights.

Each entry is keyed by everything it depends on: the config fields that shape it and,
for data, the file's identity (inode, size, modification time), so a changed config or
a rewritten file is loaded anew. Sizes are bounded, so memory follows the number of
processes, never the number of nodes. Nothing here is a node's state: spend, plans
and ledgers live in the node's files (client/node.py), read every message.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr_datasets.partitioner import Partitioner

from common.config import DataConfig, ModelConfig
from common.data import LabelledTexts, embedded_data_path, load_labelled_texts, split
from common.features import EmbeddingCache
from common.ledger.keys import public_key_hex
from common.ledger.store import NodeLedger
from common.model import TextClassifier, build_model, load_tokenizer
from common.partition import client_partition, partitioned, pool_and_held_out

# Node ledgers kept open per process: a simulation worker serves many nodes.
MAX_LEDGERS = 256
_LEDGERS: OrderedDict[tuple[str, str], NodeLedger] = OrderedDict()


@dataclass(frozen=True)
class FileStamp:
    """A file's identity as the OS sees it: any rewrite changes its mtime (or inode)."""

    path: str
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, cfg: DataConfig) -> FileStamp:
        path = Path(cfg.data_path) if cfg.data_path else embedded_data_path()
        try:
            st = os.stat(path)
        except OSError:
            return cls(str(path), 0, 0, 0)  # the loader names what is wrong with it
        return cls(str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def node_rows(data: DataConfig, seed: int, test_fraction: float, partition: tuple[int, int]
              | None) -> tuple[LabelledTexts, LabelledTexts]:
    """(train, eval) rows of a node: its own file, or `partition` (id, count) of the
    researcher's pool in simulation; split `test_fraction` for local evaluation."""
    return _node_rows(data, seed, test_fraction, partition, FileStamp.of(data))


# Row subsets of one pool: a simulation worker keeps every node's it serves (a
# cross-device node holds a few dozen rows), a deployed node its one file.
@lru_cache(maxsize=1024)
def _node_rows(data: DataConfig, seed: int, test_fraction: float,
               partition: tuple[int, int] | None, stamp: FileStamp
               ) -> tuple[LabelledTexts, LabelledTexts]:
    if partition is None:
        rows = load_labelled_texts(data)
    else:
        partition_id, count = partition
        pool, partitioner = _partitions(data, seed, count, stamp)
        rows = client_partition(pool, partitioner, partition_id, count)
    return split(rows, test_fraction, seed)


@lru_cache(maxsize=2)
def _partitions(data: DataConfig, seed: int, count: int, stamp: FileStamp
                ) -> tuple[LabelledTexts, Partitioner]:
    """The simulation's pool and its partitioner, shared by every node of the process."""
    pool, _ = pool_and_held_out(data, seed)
    return pool, partitioned(pool, data, count, seed)


@lru_cache(maxsize=2)
def tokenizer(cfg: ModelConfig):
    return load_tokenizer(cfg)


@lru_cache(maxsize=2)
def _pristine(cfg: ModelConfig, label_names: tuple[str, ...], seed: int
              ) -> tuple[TextClassifier, str]:
    """The model as built, never trained, and its frozen encoder's fingerprint."""
    model = build_model(cfg, label_names, seed)
    return model, EmbeddingCache.of(Path(), model, cfg.max_length).encoder


def fresh_model(cfg: ModelConfig, label_names: tuple[str, ...], seed: int) -> TextClassifier:
    """A model as `build_model` gives it, without loading the encoder again.

    With `--finetune head` the encoder is frozen and Opacus wraps only the head, so every
    message shares the one encoder and gets a head of its own; otherwise training changes
    encoder weights, and each message trains a copy.
    """
    pristine, _ = _pristine(cfg, label_names, seed)
    if cfg.finetune == "head":
        return TextClassifier(pristine.encoder, len(label_names), pristine.pooling)
    return copy.deepcopy(pristine)


def embedding_cache(directory: Path, cfg: ModelConfig, label_names: tuple[str, ...],
                    seed: int) -> EmbeddingCache:
    """The node's embedding folder, keyed by the shared frozen encoder (hashed once)."""
    _, encoder = _pristine(cfg, label_names, seed)
    return EmbeddingCache(directory, encoder)


def node_ledger(path: Path, key: Ed25519PrivateKey) -> NodeLedger:
    """The node's ledger, read in full once per process and then only where it grew
    (NodeLedger takes in lines another process appended)."""
    slot = (str(path.resolve()), public_key_hex(key))
    ledger = _LEDGERS.pop(slot, None) or NodeLedger(path, key)
    _LEDGERS[slot] = ledger  # the newest last: the oldest goes first
    while len(_LEDGERS) > MAX_LEDGERS:
        _LEDGERS.popitem(last=False)
    return ledger


def clear() -> None:
    """Forget everything (tests, and a process that must see the files afresh)."""
    for cached in (_node_rows, _partitions, tokenizer, _pristine):
        cached.cache_clear()
    _LEDGERS.clear()
