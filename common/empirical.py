"""An empirical lower bound on epsilon from one training run (Steinke, Nasr and Jagielski
2023, "Privacy Auditing with One (1) Training Run", NeurIPS 2023).

The method: m canaries, each included in the training data independently with
probability 1/2. After training, the auditor scores every canary from what it observed,
guesses "included" for the k+ highest scores and "excluded" for the k- lowest, and
abstains on the rest: r = k+ + k- guesses, v of them correct. If training is
(epsilon, delta)-DP with respect to each canary, the paper's Theorem 3 (with delta, its
Proposition 5.2 / Algorithm 2 of the appendix) bounds the chance of v or more correct
guesses:

    P[correct >= v] <= P[Binomial(r, e^eps / (1 + e^eps)) >= v] + 2 m delta alpha,
    alpha = max over i in 1..v of P[v - i <= Binomial(r, e^eps/(1+e^eps)) < v] / i.

That probability (the p-value of "epsilon is eps") falls as eps falls; the lower bound
at confidence 1 - beta is the largest eps whose p-value is below beta, found by
bisection as in the paper's code. It is a statement about the mechanism: with
probability at least 1 - beta over the canaries' random inclusion, the training is not
(eps, delta)-DP for any eps below the bound.

`one_run_epsilon` is that computation; `guess` turns scores into (r, v) for a number of
guesses fixed before the run (choosing it after seeing the scores would need a
correction for the choice). Nothing here knows about canaries' form or training: see
simulations/empirical.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom

BISECTION_STEPS = 30  # as the paper's code: the bound to within 2^-30 of its epsilon range


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[v or more of r guesses correct] if training were (eps, delta)-DP (the tail bound).

    m canaries, each included with probability 1/2; r guesses made (the rest abstained
    on); v of them correct.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got m={m} r={r} v={v}")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need eps >= 0 and delta in [0, 1], got {eps}, {delta}")
    q = 1 / (1 + math.exp(-eps))  # the accuracy of eps-DP randomized response
    beta = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha = 0.0
    if v > 0:
        # P[v > Binomial(r, q) >= v - i] for i = 1..v, each divided by i
        i = np.arange(1, v + 1)
        alpha = float(np.max(np.cumsum(binom.pmf(v - i, r, q)) / i))
    return min(beta + alpha * delta * 2 * m, 1.0)


def one_run_epsilon(m: int, r: int, v: int, delta: float, confidence: float) -> float:
    """The largest eps the guesses refute at `confidence`: the empirical lower bound."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} must be in (0, 1)")
    level = 1 - confidence
    lo, hi = 0.0, 1.0  # keep p_value(lo) < level <= p_value(hi)
    while p_value(m, r, v, hi, delta) < level:
        hi += 1
    if p_value(m, r, v, lo, delta) >= level:
        return 0.0  # the guesses refute no epsilon at all
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < level:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class Guesses:
    """The auditor's guesses: r made (the rest abstained on), `correct` of them right."""

    canaries: int
    guesses: int
    correct: int
    threshold: float  # scores above it were guessed "included", below it "excluded"

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def guess(scores: np.ndarray, included: np.ndarray, fraction: float) -> Guesses:
    """Guess the inclusion of round(fraction x m) canaries, those whose scores lie
    farthest from a threshold, and count the correct guesses.

    The theorem holds for any guesser that looks only at what training produced and
    makes at most r guesses, r fixed beforehand: so the number of guesses comes from
    `fraction` (set before the run) and the threshold from the scores alone, at the
    widest gap among the middle half of them (where "included" meets "excluded" when
    each canary is in with probability 1/2).
    """
    if len(scores) != len(included) or len(scores) < 2:
        raise ValueError("need one score per canary, and at least two canaries")
    if not 0 < fraction <= 1:
        raise ValueError(f"guess fraction {fraction} must be in (0, 1]")
    threshold = split_point(scores)
    r = max(1, round(fraction * len(scores)))
    chosen = np.argsort(-np.abs(scores - threshold), kind="stable")[:r]
    correct = int(((scores[chosen] > threshold) == included[chosen]).sum())
    return Guesses(canaries=len(scores), guesses=r, correct=correct,
                   threshold=float(threshold))


def split_point(scores: np.ndarray) -> float:
    """The middle of the widest gap between consecutive sorted scores in their middle half."""
    s = np.sort(scores)
    lo, hi = len(s) // 4, max(len(s) // 4 + 1, 3 * len(s) // 4)
    gaps = s[lo + 1:hi + 1] - s[lo:hi]
    i = lo + int(np.argmax(gaps))
    return float((s[i] + s[i + 1]) / 2)
