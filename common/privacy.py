"""Differential privacy of one node, in one place: plan, train privately, account, refuse.

Guarantee: record-level (example-level) (epsilon, delta)-DP for each node's data, over
everything that node releases in noised updates across all rounds it takes part in.
The mechanism is DP-SGD (Abadi et al. 2016) as implemented by Opacus: Poisson sampling
of each example with probability q per step, per-example gradient clipping to L2 norm C,
Gaussian noise of standard deviation sigma * C added to the summed clipped gradients.

No privacy mathematics is done here by hand. The noise multiplier comes from
`opacus.accountants.utils.get_noise_multiplier`; the epsilon spent comes from an Opacus
accountant (`prv` or `rdp`) fed the node's full history of (sigma, q, steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.analysis.prv import compose as opacus_prv_compose
from opacus.accountants.utils import get_noise_multiplier
from torch.utils.data import DataLoader

from common.config import PrivacyConfig

MECHANISM = "dp-sgd/poisson-subsampled-gaussian"

# What an Opacus accountant keeps: (noise_multiplier, sample_rate, steps) per phase.
Phase = tuple[float, float, int]
History = list[Phase]


# Opacus recomputes the RDP of one step of the sampled Gaussian mechanism at each of its
# 150 orders on every get_epsilon, in pure Python, and its PRV accountant does it twice
# (to size its domain): 70% of a PRV epsilon's time. It is a pure function of (q, sigma,
# order), the same in every round of a node's plan, so it is computed once per process.
# Each of Opacus's callers looks it up in its module at call time; the values are the
# ones Opacus computes, so claims and an auditor's recomputation do not change.
opacus_rdp._compute_rdp = lru_cache(maxsize=16384)(opacus_rdp._compute_rdp)

# The PRV accountant composes a history by FFT over a mesh whose size grows with the steps
# it accounts for, so each new step count is a new FFT length. scipy.fft keeps a plan per
# recent length in its C++ module, out of reach and never freed: a node answering 300
# messages of one step each grew by 70 to 100 MB (flat with `rdp`). numpy.fft runs the
# same pocketfft transform without keeping plans, and gives the same epsilons
# (tests/unit/test_privacy.py compares them).
opacus_prv_compose.rfft, opacus_prv_compose.irfft = np.fft.rfft, np.fft.irfft


class BudgetExhausted(Exception):
    """The next round would take the node past the epsilon it accepts."""


@dataclass(frozen=True)
class PrivacyPlan:
    """Fixed by a node on its first round; later rounds reuse it so sigma never drops."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_rounds: int
    max_grad_norm: float
    delta: float
    budget: float
    accountant: str

    def to_dict(self) -> dict:
        return asdict(self)


def plan(cfg: PrivacyConfig, *, budget: float, delta: float, sample_rate: float,
         steps_per_round: int, planned_rounds: int) -> PrivacyPlan:
    """Choose sigma so the whole planned training (rounds x steps) spends at most `budget`.

    A noise multiplier set directly in the config is used as given; the budget still
    bounds what the node will spend with it.
    """
    sigma = cfg.noise_multiplier or _noise_multiplier(
        budget, delta, sample_rate, steps_per_round * planned_rounds, cfg.accountant)
    return PrivacyPlan(noise_multiplier=float(sigma), sample_rate=sample_rate,
                       steps_per_round=steps_per_round, planned_rounds=planned_rounds,
                       max_grad_norm=cfg.max_grad_norm, delta=delta, budget=budget,
                       accountant=cfg.accountant)


@lru_cache(maxsize=256)  # pure; a simulation's nodes share few (q, steps) settings
def _noise_multiplier(budget: float, delta: float, sample_rate: float, steps: int,
                      accountant: str) -> float:
    return get_noise_multiplier(target_epsilon=budget, target_delta=delta,
                                sample_rate=sample_rate, steps=steps, accountant=accountant)


def opacus_history(phases: Sequence[Phase]) -> tuple[Phase, ...]:
    """The history an Opacus accountant would hold after these phases.

    Opacus's accountants merge consecutive steps with the same (sigma, q) into one
    phase, so three rounds of 30 identical steps are one phase of 90 steps.
    """
    merged: list[Phase] = []
    for sigma, q, steps in phases:
        if steps <= 0:
            continue
        if merged and merged[-1][0] == sigma and merged[-1][1] == q:
            merged[-1] = (sigma, q, merged[-1][2] + steps)
        else:
            merged.append((float(sigma), float(q), int(steps)))
    return tuple(merged)


def epsilon(phases: Sequence[Phase], delta: float, accountant: str) -> float:
    """Epsilon of all `phases` at `delta`, by a fresh Opacus accountant ("prv" or "rdp").

    The one epsilon function: nodes compute their claims and auditors recompute them
    with it.
    """
    return _epsilon(opacus_history(phases), float(delta), accountant)


@lru_cache(maxsize=4096)  # a pure function of its arguments; PRV is slow enough to memoise
def _epsilon(history: tuple[Phase, ...], delta: float, accountant: str) -> float:
    if not history:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


def next_round_epsilon(history: History, p: PrivacyPlan) -> float:
    """Epsilon after one more round of `p`; raise BudgetExhausted if that exceeds the budget."""
    projected = epsilon(
        [*history, (p.noise_multiplier, p.sample_rate, p.steps_per_round)], p.delta, p.accountant)
    if projected > p.budget:
        spent = epsilon(history, p.delta, p.accountant)
        raise BudgetExhausted(f"budget exhausted: spent epsilon {spent:.3f} of {p.budget:g}; "
                              f"one more round would reach {projected:.3f} (delta {p.delta:g})")
    return projected


def make_private(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                 p: PrivacyPlan, history: History):
    """Wrap model, optimizer and loader with an Opacus PrivacyEngine that resumes `history`.

    Returns (engine, model, optimizer, loader). The loader samples each example
    independently with probability `p.sample_rate` (Poisson sampling), which is what
    the accountant's analysis assumes. Randomness (sampling, noise) comes from torch's
    global generator: seed it before training for reproducible simulations. For
    production nodes `secure_mode` (a cryptographic RNG) is the stronger choice.
    """
    model.train()  # Opacus validates the module in training mode
    engine = PrivacyEngine(accountant=p.accountant)
    engine.accountant.history = [tuple(phase) for phase in history]
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=p.noise_multiplier, max_grad_norm=p.max_grad_norm,
        poisson_sampling=True)
    if abs(loader.sample_rate - p.sample_rate) > 1e-12:
        raise RuntimeError(f"Opacus sample rate {loader.sample_rate} differs from the plan's "
                           f"{p.sample_rate}: the accounting would be wrong")
    return engine, model, optimizer, loader


def history_of(engine: PrivacyEngine) -> History:
    return [(float(s), float(q), int(n)) for s, q, n in engine.accountant.history]
