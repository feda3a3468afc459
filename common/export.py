"""The final model as a sentence-transformers folder: encoder, pooling, the trained head.

`SentenceTransformer(folder).encode(texts)` returns the logits, so one line of a
well-known library loads and runs it (docs/recipe.md). A plain `transformers` sequence
classifier cannot carry the model's mean pooling; sentence-transformers is the format
the default encoder itself ships in.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from peft import PeftModel

from common.model import TextClassifier


def export_model(model: TextClassifier, tokenizer, max_length: int, out_dir: Path) -> None:
    """Save `model` (LoRA merged into the encoder) under `out_dir`."""
    from sentence_transformers import SentenceTransformer, models

    model = model.to(torch.device("cpu"))
    encoder = model.encoder
    if isinstance(encoder, PeftModel):
        encoder = encoder.merge_and_unload()
    hidden, labels = model.head.in_features, model.head.out_features
    with tempfile.TemporaryDirectory() as tmp:
        encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        modules = [models.Transformer(tmp, max_seq_length=max_length),
                   models.Pooling(hidden, pooling_mode=model.pooling.mode)]
        if model.pooling.normalize:
            modules.append(models.Normalize())
        modules.append(models.Dense(hidden, labels, activation_function=torch.nn.Identity(),
                                    init_weight=model.head.weight.detach().clone(),
                                    init_bias=model.head.bias.detach().clone()))
        SentenceTransformer(modules=modules, device="cpu").save(str(out_dir))
