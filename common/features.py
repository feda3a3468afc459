"""What a model trains and evaluates on: token rows padded per batch, or cached embeddings.

With a frozen encoder (`--finetune head`) a row's embedding never changes, so a node
computes it once and keeps it on its own disk, next to its ledger: every later round
costs milliseconds. The cache is keyed by everything the embedding depends on (the
encoder's exact weights, the pooling, the token limit and the rows themselves), so a
changed model or data file is embedded anew. Embeddings are derived from private rows:
they stay in the node's state folder like the rows do, and never travel.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from common.config import ModelConfig
from common.data import LabelledTexts
from common.files import write_atomic
from common.ledger.provenance import fingerprint_arrays
from common.model import TextClassifier

EMBED_BATCH = 128
KEEP_CACHED = 4  # embedding files a node keeps (train and eval rows of its latest runs)

Batch = tuple[torch.Tensor, ...]


class TokenRows(Dataset):
    """Tokenised rows, unpadded: each item is (input ids, attention mask, label)."""

    def __init__(self, rows: LabelledTexts, tokenizer, max_length: int) -> None:
        encoded = tokenizer(rows.texts, truncation=True, max_length=max_length)
        self.ids = [torch.tensor(ids, dtype=torch.long) for ids in encoded["input_ids"]]
        self.labels = torch.tensor(rows.labels, dtype=torch.long)
        self.pad_id = int(tokenizer.pad_token_id or 0)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Batch:
        return self.ids[i], torch.ones_like(self.ids[i]), self.labels[i]

    def collate(self, items: Sequence[Batch]) -> Batch:
        """Pad a batch to its own longest row (tweets average 31 tokens, not 64)."""
        longest = max((len(ids) for ids, _, _ in items), default=1)
        ids = torch.full((len(items), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, (item_ids, _, _) in enumerate(items):
            ids[row, :len(item_ids)] = item_ids
            mask[row, :len(item_ids)] = 1
        labels = torch.stack([label for _, _, label in items]) if items else torch.zeros(
            0, dtype=torch.long)
        return ids, mask, labels


@dataclass(frozen=True)
class Features:
    """A data set and the module that maps its inputs to logits: the head alone on
    embeddings, or the whole model on token rows."""

    module: torch.nn.Module
    dataset: Dataset
    collate: Callable[[Sequence[Batch]], Batch] | None = None

    def loader(self, batch_size: int, shuffle: bool = False) -> DataLoader:
        return DataLoader(self.dataset, batch_size=batch_size, shuffle=shuffle,
                          collate_fn=self.collate)


@dataclass(frozen=True)
class EmbeddingCache:
    """A node's folder of embeddings, and the fingerprint of the frozen encoder (with its
    pooling and token limit) they come from: computed once per encoder, since hashing
    22M weights costs more than reading a node's cached embeddings."""

    directory: Path
    encoder: str

    @classmethod
    def of(cls, directory: Path, model: TextClassifier, max_length: int) -> EmbeddingCache:
        h = hashlib.sha256()
        h.update(fingerprint_arrays(p.detach().cpu().numpy()
                                    for p in model.encoder.state_dict().values()).encode())
        h.update(json.dumps([model.pooling.mode, model.pooling.normalize, max_length]).encode())
        return cls(directory, h.hexdigest())

    def path(self, rows: LabelledTexts) -> Path:
        """The file of `rows`' embeddings: keyed by the encoder and the rows themselves."""
        key = hashlib.sha256(f"{self.encoder}:{rows.digest}".encode()).hexdigest()
        return self.directory / f"embeddings-{key[:32]}.npy"


def features(model: TextClassifier, rows: LabelledTexts, tokenizer, cfg: ModelConfig,
             device: torch.device, cache: EmbeddingCache | None = None) -> Features:
    """What `model` trains on for `rows` under `cfg.finetune`."""
    if cfg.finetune == "head":
        vectors = embeddings(model, rows, tokenizer, cfg.max_length, device, cache)
        return Features(model.head, TensorDataset(vectors, torch.tensor(rows.labels)))
    tokens = TokenRows(rows, tokenizer, cfg.max_length)
    return Features(model, tokens, tokens.collate)


def embeddings(model: TextClassifier, rows: LabelledTexts, tokenizer, max_length: int,
               device: torch.device, cache: EmbeddingCache | None) -> torch.Tensor:
    """The pooled embedding of every row, from `cache` when it holds them."""
    if cache is None:  # the server's held-out rows: embedded once per run, in memory
        return _embed(model, TokenRows(rows, tokenizer, max_length), device)
    path = cache.path(rows)
    if path.exists():
        return torch.from_numpy(np.load(path))
    vectors = _embed(model, TokenRows(rows, tokenizer, max_length), device)
    write_atomic(path, _npy_bytes(vectors.numpy()), mode=0o600)
    _prune(cache.directory)
    return vectors


@torch.no_grad()
def _embed(model: TextClassifier, tokens: TokenRows, device: torch.device) -> torch.Tensor:
    """Embed in batches of similar length, so padding costs little; original order kept."""
    model.eval().to(device)
    order = sorted(range(len(tokens)), key=lambda i: len(tokens.ids[i]))
    out = torch.zeros((len(tokens), model.head.in_features))
    for start in range(0, len(order), EMBED_BATCH):
        chosen = order[start:start + EMBED_BATCH]
        ids, mask, _ = tokens.collate([tokens[i] for i in chosen])
        out[chosen] = model.embed(ids.to(device), mask.to(device)).float().cpu()
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _prune(cache_dir: Path) -> None:
    """Keep the newest KEEP_CACHED embedding files: the cache does not grow with runs."""
    files = sorted(cache_dir.glob("embeddings-*.npy"), key=lambda p: p.stat().st_mtime)
    for old in files[:-KEEP_CACHED]:
        old.unlink(missing_ok=True)
