"""The one-run audit's mathematics (Steinke, Nasr, Jagielski 2023) against known values and
simulated mechanisms of known epsilon, and the canaries' construction and scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.empirical import guess, one_run_epsilon, p_value
from simulations.empirical import make_canaries, scores, write_canary_files


def logit(q: float) -> float:
    return math.log(q / (1 - q))


@pytest.mark.parametrize("r, confidence", [(100, 0.95), (1000, 0.95), (5000, 0.9)])
def test_all_guesses_right_at_delta_0_has_a_closed_form(r, confidence) -> None:
    """With delta 0 and every guess right the p-value is q^r, q = e^eps / (1 + e^eps):
    the bound is the eps whose q is (1 - confidence)^(1/r)."""
    expected = logit((1 - confidence) ** (1 / r))
    assert one_run_epsilon(r, r, r, 0.0, confidence) == pytest.approx(expected, abs=1e-6)


def test_p_value_matches_the_tail_bound_with_delta() -> None:
    """beta + 2 m delta alpha, computed here from the binomial's terms one by one."""
    from scipy.stats import binom

    m, r, v, eps, delta = 2000, 300, 280, 2.0, 1e-3
    q = 1 / (1 + math.exp(-eps))
    beta = sum(binom.pmf(j, r, q) for j in range(v, r + 1))
    alpha = max(sum(binom.pmf(v - j, r, q) for j in range(1, i + 1)) / i
                for i in range(1, v + 1))
    assert p_value(m, r, v, eps, delta) == pytest.approx(beta + 2 * m * delta * alpha, rel=1e-9)
    assert p_value(m, r, v, eps, 0.0) == pytest.approx(beta, rel=1e-9)


def test_the_bound_grows_with_correct_guesses_and_falls_with_delta() -> None:
    bounds = [one_run_epsilon(1000, 1000, v, 1e-5, 0.95) for v in (500, 600, 800, 1000)]
    assert bounds[0] == 0.0 and bounds == sorted(bounds) and bounds[-1] > 5
    assert one_run_epsilon(20000, 20000, 20000, 1e-5, 0.95) > 8  # what the audit needs
    assert one_run_epsilon(20000, 20000, 19999, 1e-5, 0.95) < 8  # and one error spoils it
    assert one_run_epsilon(5000, 5000, 5000, 1e-5, 0.95) < 8  # too few canaries cannot


def randomized_response(eps: float, m: int, rng: np.random.Generator):
    """An eps-DP mechanism over m inclusion bits: each reported right with prob e^eps/(1+e^eps)."""
    included = rng.random(m) < 0.5
    truthful = rng.random(m) < 1 / (1 + math.exp(-eps))
    return np.where(truthful == included, 1.0, -1.0) + rng.normal(0, 1e-3, m), included


def test_on_a_mechanism_of_known_epsilon_the_bound_holds_and_is_close() -> None:
    """Randomized response is exactly eps-DP: the 95% bound exceeds eps in at most ~5% of
    runs, and comes near eps on the others (the guesser is the optimal one)."""
    rng = np.random.default_rng(0)
    eps, runs = 2.0, 200
    bounds = []
    for _ in range(runs):
        s, included = randomized_response(eps, 2000, rng)
        g = guess(s, included, 1.0)
        bounds.append(one_run_epsilon(g.canaries, g.guesses, g.correct, 0.0, 0.95))
    assert np.mean(np.array(bounds) > eps) <= 0.08
    assert np.median(bounds) > 0.8 * eps


def test_guessing_finds_the_gap_whatever_the_share_included() -> None:
    """Perfectly separated scores give every guess right, though not half are included."""
    rng = np.random.default_rng(1)
    included = rng.random(999) < 0.42
    s = np.where(included, 5.0, 0.0) + rng.normal(0, 0.1, 999)
    g = guess(s, included, 1.0)
    assert (g.guesses, g.correct) == (999, 999) and 0.3 < g.threshold < 4.7
    top = guess(s, included, 0.1)
    assert top.guesses == 100 and top.correct == 100


def test_canaries_two_per_axis_with_distinct_labels_and_a_third_reference(tmp_path) -> None:
    c = make_canaries([4, 5], dim=8, num_labels=3, seed=3)
    assert len(c.partition) == 2 * 2 * 8
    for p in (4, 5):
        mine = c.partition == p
        assert sorted(c.column[mine]) == sorted(list(range(8)) * 2)
    plus, minus = c.sign == 1, c.sign == -1
    assert (c.label[plus] != c.label[minus]).all()  # pairs are in the same order
    assert ((c.reference != c.label) & (c.reference[plus] == c.reference[minus]).repeat(2)).all()
    assert 0.3 < c.included.mean() < 0.7
    write_canary_files(c, tmp_path, dim=8)
    with np.load(tmp_path / "client-4.npz") as f:
        mine = (c.partition == 4) & c.included
        assert f["features"].shape == (mine.sum(), 8)
        assert (np.abs(f["features"]).sum(axis=1) == 1).all()  # one axis each, unit length
        assert (f["features"][np.arange(mine.sum()), c.column[mine]] == c.sign[mine]).all()
        assert (f["labels"] == c.label[mine]).all()


def test_a_canary_scores_by_how_its_column_moved_towards_its_label() -> None:
    """Movement as an included canary makes it (label up, others down, signed by its axis):
    included canaries score positive, the excluded ones of the same columns about zero."""
    c = make_canaries([0], dim=16, num_labels=3, seed=5)
    movement = np.zeros((3, 16))
    for k, s, a, inc in zip(c.column, c.sign, c.label, c.included, strict=True):
        if inc:
            movement[:, k] -= 0.5 * s
            movement[a, k] += 1.5 * s
    got = scores(c, {0: movement})
    assert (got[c.included] > 0.5).all() and (np.abs(got[~c.included]) < 1e-9).all()
