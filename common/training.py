"""The one training and evaluation loop, used by simulated and deployed nodes alike."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from common.config import TrainConfig
from common.errors import DataError

# With --batch-size 0 a node's batch is an eighth of its rows: q = 1/8.
AUTO_BATCHES_PER_EPOCH = 8
EVAL_BATCH = 256  # evaluation takes no gradient: its batch changes nothing but speed


@dataclass(frozen=True)
class LocalSchedule:
    """How a node samples and how long it trains in one round.

    `sample_rate` is what Opacus's Poisson loader uses (1 / its source loader's length)
    and what the accountant is fed, so the plan, the loader and the audit agree.
    """

    batch_size: int
    sample_rate: float
    steps_per_round: int


def local_schedule(num_examples: int, train: TrainConfig) -> LocalSchedule:
    """The schedule of a node with `num_examples` training rows under `train`.

    The one place this is derived: the node plans its noise with it, and the simulation's
    preflight checks the same plan before anything starts. `batches` is the length of a
    `DataLoader(batch_size=batch_size)` over the rows (drop_last off).
    """
    if num_examples < 1:
        raise DataError("this node has no training examples: give it a data file with rows")
    batch_size = train.batch_size or math.ceil(num_examples / AUTO_BATCHES_PER_EPOCH)
    batches = math.ceil(num_examples / batch_size)
    return LocalSchedule(batch_size=batch_size, sample_rate=1 / batches,
                         steps_per_round=train.local_steps or train.local_epochs * batches)


@dataclass(frozen=True)
class TrainOutcome:
    """What a round of local training did; `mean_loss` leaves the node only if asked."""

    steps: int
    examples: int
    mean_loss: float


def _batches(loader: DataLoader) -> Iterator:
    # Re-iterating (not itertools.cycle) draws a fresh Poisson sample on every pass.
    while True:
        yield from loader


def train_steps(module: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                steps: int, device: torch.device) -> TrainOutcome:
    """Run exactly `steps` optimizer steps (each one a DP-SGD step under Opacus).

    A batch is (inputs..., labels) and `module(*inputs)` gives the logits: the head on
    embeddings, or the whole model on token ids and their mask (common.features).
    """
    module.train()
    total_loss, examples = 0.0, 0
    batches = _batches(loader)
    for _ in range(steps):
        *inputs, labels = (t.to(device) for t in next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(module(*inputs), labels)
        loss.backward()
        optimizer.step()
        total_loss += float(loss.detach()) * len(labels)
        examples += len(labels)
    return TrainOutcome(steps=steps, examples=examples, mean_loss=total_loss / max(examples, 1))


@torch.no_grad()
def evaluate(module: torch.nn.Module, loader: DataLoader,
             device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) over the batches of `loader`."""
    module.eval()
    total_loss, correct, n = 0.0, 0, 0
    for batch in loader:
        *inputs, labels = (t.to(device) for t in batch)
        logits = module(*inputs)
        total_loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == labels).sum())
        n += len(labels)
    return total_loss / max(n, 1), correct / max(n, 1)


# The local optimizer's settings (PyTorch's AdamW defaults, spelled out because the
# server's bound on an honest update below is derived from them).
ADAM_BETAS = (0.9, 0.999)
WEIGHT_DECAY = 0.01


def make_optimizer(model: torch.nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """AdamW over the trainable weights only (frozen ones never leave the node)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                             betas=ADAM_BETAS, weight_decay=WEIGHT_DECAY)


def max_update_norm(steps: int, learning_rate: float, num_weights: int,
                    weight_norm: float) -> float:
    """The largest L2 norm an update from `steps` local AdamW steps can have.

    A step moves a weight by lr * |m_hat| / sqrt(v_hat), whatever the (clipped, noised)
    gradients were. Cauchy-Schwarz over the gradient history gives, after any number of
    steps, |m_hat| / sqrt(v_hat) <= (1 - b1) / sqrt((1 - b2) (1 - b1^2 / b2)): 7.27 for
    PyTorch's betas (the bias corrections only lower it). Kingma & Ba's own
    lr * max(1, (1 - b1) / sqrt(1 - b2)) (2015, section 2.1) is exceeded after about 200
    steps by gradients growing step after step, and a node keeps its moments across rounds
    (client/moments.py). Decoupled weight decay adds lr * wd * |w| a step. Over `steps`
    steps and `num_weights` trainable weights that bounds the update.
    """
    beta1, beta2 = ADAM_BETAS
    per_weight = learning_rate * (1 - beta1) / math.sqrt((1 - beta2) * (1 - beta1**2 / beta2))
    return steps * (per_weight * math.sqrt(num_weights)
                    + learning_rate * WEIGHT_DECAY * weight_norm)
