"""What the model trains on: cached embeddings for a frozen encoder, rows padded per batch,
the weights each fine-tuning mode trains, and the exported model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.config import RunConfig
from common.data import EMBEDDED_LABELS, subsample
from common.export import export_model
from common.features import EmbeddingCache, TokenRows, features
from common.model import TextClassifier, build_model, load_tokenizer, trainable_state
from tests.helpers.data import embedded_data, fixed_length

CPU = torch.device("cpu")


def tiny(finetune: str = "head", seed: int = 0, max_length: int = 32
         ) -> tuple[RunConfig, TextClassifier]:
    cfg = RunConfig().replace(model="tiny", finetune=finetune, **{"max-length": max_length})
    return cfg, build_model(cfg.model, EMBEDDED_LABELS, seed)


@pytest.fixture(scope="module")
def rows():
    return subsample(embedded_data(), 40, seed=1)


def count_embeds(model: TextClassifier, monkeypatch) -> list[int]:
    """A list that grows by the batch size each time the encoder runs."""
    calls: list[int] = []
    real = model.embed

    def embed(ids, mask):
        calls.append(len(ids))
        return real(ids, mask)

    monkeypatch.setattr(model, "embed", embed)
    return calls


def test_a_second_round_reads_embeddings_from_the_cache(rows, tmp_path, monkeypatch):
    cfg, model = tiny()
    calls = count_embeds(model, monkeypatch)
    tokenizer = load_tokenizer(cfg.model)
    first = features(model, rows, tokenizer, cfg.model, CPU, EmbeddingCache.of(tmp_path, model, 32))
    assert sum(calls) == len(rows)
    again = features(model, rows, tokenizer, cfg.model, CPU, EmbeddingCache.of(tmp_path, model, 32))
    assert sum(calls) == len(rows)  # the encoder did not run again
    assert torch.equal(first.dataset.tensors[0], again.dataset.tensors[0])
    assert again.module is model.head
    assert [p.stat().st_mode & 0o777 for p in tmp_path.iterdir()] == [0o600]


def test_the_cache_is_invalidated_when_data_or_model_change(rows, tmp_path, monkeypatch):
    cfg, model = tiny()
    tokenizer = load_tokenizer(cfg.model)
    features(model, rows, tokenizer, cfg.model, CPU, EmbeddingCache.of(tmp_path, model, 32))
    calls = count_embeds(model, monkeypatch)
    fewer = rows.subset(list(range(len(rows) - 1)))
    features(model, fewer, tokenizer, cfg.model, CPU, EmbeddingCache.of(tmp_path, model, 32))
    assert sum(calls) == len(fewer)  # other rows: embedded anew
    _, other = tiny(seed=1)  # other encoder weights
    other_calls = count_embeds(other, monkeypatch)
    changed = features(other, rows, tokenizer, cfg.model, CPU,
                       EmbeddingCache.of(tmp_path, other, 32))
    assert sum(other_calls) == len(rows)
    with torch.no_grad():
        ids, mask, _ = TokenRows(rows, tokenizer, 32).collate(
            [TokenRows(rows, tokenizer, 32)[i] for i in range(len(rows))])
        assert torch.allclose(changed.dataset.tensors[0], other.embed(ids, mask), atol=1e-5)
    assert len(list(tmp_path.iterdir())) == 3


def test_padding_to_the_longest_row_gives_the_logits_of_fixed_padding(rows):
    cfg, model = tiny("lora", max_length=64)
    tokenizer = load_tokenizer(cfg.model)
    model.eval()
    dynamic = features(model, rows, tokenizer, cfg.model, CPU).loader(8)
    fixed = torch.utils.data.DataLoader(fixed_length(rows, tokenizer, 64), batch_size=8)
    widths = []
    with torch.no_grad():
        for (ids, mask, labels), (fixed_ids, fixed_mask, fixed_labels) in zip(
                dynamic, fixed, strict=True):
            widths.append(ids.shape[1])
            assert torch.allclose(model(ids, mask), model(fixed_ids, fixed_mask), atol=1e-5)
            assert torch.equal(labels, fixed_labels)
    assert min(widths) < 64  # narrower than --max-length: the point of it


def test_each_mode_trains_exactly_the_weights_it_names():
    _, head = tiny("head")
    assert set(trainable_state(head)) == {"head.weight", "head.bias"}
    _, lora = tiny("lora")
    names = set(trainable_state(lora)) - {"head.weight", "head.bias"}
    assert names and all(("lora_A" in n or "lora_B" in n) and (".query." in n or ".value." in n)
                         for n in names)
    assert {"head.weight", "head.bias"} <= set(trainable_state(lora))
    _, full = tiny("full")
    frozen = {n for n, p in full.named_parameters() if not p.requires_grad}
    assert frozen == {"encoder.embeddings.position_embeddings.weight",
                      "encoder.embeddings.token_type_embeddings.weight"}


@pytest.mark.parametrize("finetune", ["head", "lora"])
def test_the_exported_model_gives_the_runs_logits(rows, tmp_path: Path, finetune):
    from sentence_transformers import SentenceTransformer

    cfg, model = tiny(finetune)
    with torch.no_grad():  # a trained-looking head and adapters, not the fresh ones
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    tokenizer = load_tokenizer(cfg.model)
    export_model(model, tokenizer, 32, tmp_path / "final_model")
    loaded = SentenceTransformer(str(tmp_path / "final_model"), device="cpu")
    theirs = loaded.encode(rows.texts, convert_to_tensor=True)
    model.eval()
    tokens = TokenRows(rows, tokenizer, 32)
    with torch.no_grad():
        ours = model(*tokens.collate([tokens[i] for i in range(len(rows))])[:2])
    assert torch.allclose(theirs, ours, atol=1e-4)
