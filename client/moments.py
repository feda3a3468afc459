"""The node's AdamW moments, kept from one training round of a run to its next.

Why: Adam's first steps move every weight by about the learning rate whatever the
gradient's size (its bias correction divides the first gradient by its own magnitude).
Started afresh each round, it jolts the global model by noise-sized full steps at the
start of every round; kept, its moments keep averaging the noised gradients across rounds,
as one long Adam run would. Under label skew this is what lets FedAvg of many short rounds
work (docs/recipe.md).

No privacy cost: the moments are computed from the noised, clipped gradients only
(post-processing of DP-SGD's output). They stay on the node, 0600 next to its ledger, and
are never sent. A moment file from another run, for other weights or torn by a power cut
(it is written without fsync: losing it only restarts Adam) is ignored, and the optimizer
starts afresh, as it did before this file existed.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from common.files import write_atomic


def _key(run_id: int, module: torch.nn.Module) -> list:
    """What the saved moments belong to: the run and the trainable weights, in order."""
    return [run_id, [(name, tuple(p.shape)) for name, p in module.named_parameters()
                     if p.requires_grad]]


def restore(path: Path, run_id: int, module: torch.nn.Module,
            optimizer: torch.optim.Optimizer) -> bool:
    """Load the moments saved for this run and these weights into `optimizer`.

    `optimizer` must be the plain AdamW over `module`'s trainable weights, before Opacus
    wraps it (its DPOptimizer steps this same object). True if moments were loaded.
    """
    if not path.exists():
        return False
    try:
        saved = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    except Exception:  # noqa: BLE001  (torn or foreign: start afresh, as without one)
        return False
    if saved.get("key") != _key(run_id, module):
        return False
    optimizer.load_state_dict(saved["optimizer"])
    return True


def save(path: Path, run_id: int, module: torch.nn.Module,
         optimizer: torch.optim.Optimizer) -> None:
    """Keep `optimizer`'s moments for this node's next round of the run."""
    buffer = io.BytesIO()
    torch.save({"key": _key(run_id, module), "optimizer": optimizer.state_dict()}, buffer)
    write_atomic(path, buffer.getvalue(), mode=0o600, durable=False)
