"""Canaries of the empirical privacy audit (fedpriv audit-empirical), on simulated nodes.

The auditor writes, for each node it audits through, a file of the canaries it chose to
include (embeddings and labels; which canaries were left out stays with the auditor).
Such a node trains on its canaries instead of its rows, through the same DP-SGD as
every node: the audit measures that mechanism. Only simulated nodes read the file: a
deployed node's data is its own, whatever the coordinator's run config says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from common.config import RunConfig
from common.errors import ConfigError
from common.features import Features
from common.model import TextClassifier


def canary_path(folder: str | Path, partition: int) -> Path:
    """Where the canaries of simulated node `partition` are kept."""
    return Path(folder) / f"client-{partition}.npz"


def canary_features(cfg: RunConfig, node_config: dict, model: TextClassifier
                    ) -> Features | None:
    """The canaries this simulated node trains on, or None (it trains on its rows)."""
    if not cfg.data.canaries or "partition-id" not in node_config:
        return None
    path = canary_path(cfg.data.canaries, int(node_config["partition-id"]))
    if not path.exists():
        return None
    if cfg.model.finetune != "head":
        raise ConfigError(f"invalid --canaries {cfg.data.canaries}: canaries are embeddings, "
                          "for --finetune head only")
    with np.load(path) as canaries:
        inputs = torch.from_numpy(canaries["features"].astype(np.float32))
        labels = torch.from_numpy(canaries["labels"].astype(np.int64))
    if inputs.ndim != 2 or inputs.shape[1] != model.head.in_features or not len(inputs):
        raise ConfigError(f"{path}: canaries of shape {tuple(inputs.shape)} do not fit the "
                          f"head's {model.head.in_features} inputs")
    return Features(model.head, TensorDataset(inputs, labels))
