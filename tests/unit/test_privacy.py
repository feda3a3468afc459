"""DP-SGD as wired by common.privacy: clipping, noise, accounting, budget planning."""

import math

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader, TensorDataset

from common import privacy
from common.config import PrivacyConfig, RunConfig, TrainConfig
from common.data import subsample
from common.errors import DataError
from common.model import build_model, load_tokenizer, trainable_state
from common.training import LocalSchedule, local_schedule, train_steps
from tests.helpers.data import embedded_data, fixed_length

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dataset():
    cfg = RunConfig().replace(model="tiny", **{"max-length": 32})
    data = subsample(embedded_data(), 96, seed=0)
    return fixed_length(data, load_tokenizer(cfg.model), 32), data.label_names


def make(dataset, finetune="lora", noise=1.0, clip=1.0, batch=16, steps=2):
    ds, labels = dataset
    cfg = RunConfig().replace(model="tiny", finetune=finetune, **{"max-length": 32})
    model = build_model(cfg.model, labels, seed=0)
    loader = DataLoader(ds, batch_size=batch)
    plan = privacy.PrivacyPlan(noise_multiplier=noise, sample_rate=1 / len(loader),
                               steps_per_round=steps, planned_rounds=1, max_grad_norm=clip,
                               delta=1e-5, budget=1e9, accountant="rdp")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    return model, plan, privacy.make_private(model, optimizer, loader, plan, [])


def per_example_clipped_norm(dp_model, dp_optimizer, example) -> tuple[float, float]:
    """(raw per-example gradient norm, norm of what Opacus accumulates for it)."""
    dp_optimizer.zero_grad(set_to_none=True)
    ids, mask, label = (t.unsqueeze(0) for t in example)
    torch.nn.functional.cross_entropy(dp_model(ids, mask), label).backward()
    params = [p for p in dp_optimizer.params if p.requires_grad]
    raw = math.sqrt(sum(float(p.grad_sample.pow(2).sum()) for p in params))
    dp_optimizer.clip_and_accumulate()
    clipped = math.sqrt(sum(float(p.summed_grad.pow(2).sum()) for p in params))
    for p in params:
        p.summed_grad = None
    return raw, clipped


@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_per_example_gradients_are_clipped_to_C_before_noise(dataset, clip):
    _, _, (_, dp_model, dp_optimizer, _) = make(dataset, noise=0.0, clip=clip)
    for i in range(4):
        raw, clipped = per_example_clipped_norm(dp_model, dp_optimizer, dataset[0][i])
        assert raw > 1e-3  # so the small C really clips
        assert clipped == pytest.approx(min(raw, clip), rel=1e-4)


def test_noise_has_the_planned_scale(dataset):
    """One SGD(lr=1) step: noisy minus noiseless update is N(0, (sigma*C/B)^2) per weight."""
    sigma, clip, batch = 2.0, 0.5, 16
    deltas = []
    for noise in (0.0, sigma):
        model, plan, (_, dp_model, dp_opt, loader) = make(dataset, noise=noise, clip=clip,
                                                          batch=batch)
        before = trainable_state(model)
        torch.manual_seed(123)  # same Poisson batch in both runs
        train_steps(dp_model, dp_opt, loader, 1, CPU)
        after = trainable_state(model)
        deltas.append(np.concatenate([(after[k] - before[k]).ravel() for k in before]))
    diff = deltas[1] - deltas[0]
    expected_batch = plan.sample_rate * len(dataset[0])
    assert diff.std() == pytest.approx(sigma * clip / expected_batch, rel=0.1)
    assert abs(diff.mean()) < 0.05 * diff.std()


def test_same_seed_reproduces_and_different_seeds_differ(dataset):
    def run(seed):
        model, _, (_, dp_model, dp_opt, loader) = make(dataset, noise=1.0, steps=2)
        torch.manual_seed(seed)
        train_steps(dp_model, dp_opt, loader, 2, CPU)
        return np.concatenate([v.ravel() for v in trainable_state(model).values()])
    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


@pytest.mark.parametrize("accountant_cls, name", [(PRVAccountant, "prv"), (RDPAccountant, "rdp")])
def test_epsilon_equals_opacus_accountant_for_the_same_mechanism(dataset, accountant_cls, name):
    _, plan, (engine, dp_model, dp_opt, loader) = make(dataset, noise=1.1, steps=3)
    train_steps(dp_model, dp_opt, loader, 3, CPU)
    history = privacy.history_of(engine)
    assert history == [(1.1, plan.sample_rate, 3)]
    reference = accountant_cls()
    for _ in range(3):
        reference.step(noise_multiplier=1.1, sample_rate=plan.sample_rate)
    assert privacy.epsilon(history, 1e-5, name) == pytest.approx(
        reference.get_epsilon(delta=1e-5), rel=1e-9)


def test_the_per_step_rdp_is_opacus_own_and_computed_once_per_setting():
    from opacus.accountants.analysis import rdp

    memoised = rdp._compute_rdp
    for q, sigma, alpha in [(0.25, 3.47, 1.5), (0.01, 0.8, 7.0), (1.0, 2.0, 32)]:
        assert memoised(q, sigma, alpha) == memoised.__wrapped__(q, sigma, alpha)
    # A longer history of the same (sigma, q): the PRV domain and the RDP accountant
    # reuse every per-step value; only the composition itself is new work.
    privacy.epsilon([(2.345, 0.125, 10)], 1e-5, "prv")
    misses = memoised.cache_info().misses
    for steps in (50, 500):
        for name in ("prv", "rdp"):
            privacy.epsilon([(2.345, 0.125, steps)], 1e-5, name)
    assert memoised.cache_info().misses == misses


@pytest.mark.parametrize("history", [[(3.47, 0.25, 1)], [(3.47, 0.25, 499)],
                                     [(0.8, 0.01, 1200)], [(2.0, 0.1, 30), (1.2, 0.05, 70)]])
def test_prv_composes_by_numpy_fft_with_scipy_fft_epsilons(history, monkeypatch):
    import scipy.fft
    from opacus.accountants.analysis.prv import compose

    def prv_epsilon():
        accountant = PRVAccountant()
        accountant.history = list(history)
        return accountant.get_epsilon(delta=1e-5)

    assert compose.rfft is np.fft.rfft and compose.irfft is np.fft.irfft
    ours = prv_epsilon()
    monkeypatch.setattr(compose, "rfft", scipy.fft.rfft)
    monkeypatch.setattr(compose, "irfft", scipy.fft.irfft)
    assert ours == pytest.approx(prv_epsilon(), rel=1e-12, abs=0)


@pytest.mark.parametrize("examples, batch", [(1, 8), (7, 8), (8, 8), (9, 8), (180, 8),
                                             (96, 32), (97, 32), (1000, 64)])
def test_local_schedule_is_the_loader_opacus_samples_from(examples, batch):
    """Sample rate 1/len(loader) and steps per epoch len(loader), for a real DataLoader."""
    loader = DataLoader(TensorDataset(torch.zeros(examples)), batch_size=batch)
    by_epochs = local_schedule(examples, TrainConfig(batch_size=batch, local_epochs=3))
    assert by_epochs == LocalSchedule(batch_size=batch, sample_rate=1 / len(loader),
                                      steps_per_round=3 * len(loader))
    # The rate the accountant is fed is the rate Opacus's Poisson loader samples at.
    assert DPDataLoader.from_data_loader(loader).sample_rate == by_epochs.sample_rate
    by_steps = local_schedule(examples, TrainConfig(batch_size=batch, local_steps=5))
    assert by_steps == LocalSchedule(batch_size=batch, sample_rate=1 / len(loader),
                                     steps_per_round=5)


@pytest.mark.parametrize("examples, batches", [(1, 1), (7, 7), (8, 8), (9, 5), (113, 8),
                                               (900, 8), (38_158, 8)])
def test_automatic_batch_is_an_eighth_of_the_rows(examples, batches):
    """--batch-size 0: batches of ceil(rows / 8), so q = 1/8 once a node has a few dozen
    rows; the rate is always that of the loader the node really samples from."""
    schedule = local_schedule(examples, TrainConfig(batch_size=0, local_epochs=5))
    loader = DataLoader(TensorDataset(torch.zeros(examples)), batch_size=schedule.batch_size)
    assert len(loader) == batches
    assert schedule.sample_rate == 1 / len(loader)
    assert schedule.steps_per_round == 5 * len(loader)


def test_local_schedule_refuses_a_node_without_training_rows():
    with pytest.raises(DataError, match="no training examples"):
        local_schedule(0, TrainConfig())


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_planned_rounds_fit_the_budget_and_one_more_is_refused(accountant):
    cfg = PrivacyConfig(epsilon=3.0, delta=1e-5, accountant=accountant)
    plan = privacy.plan(cfg, budget=3.0, delta=1e-5, sample_rate=0.02, steps_per_round=50,
                        planned_rounds=4)
    history: privacy.History = []
    projected = []
    for _ in range(4):
        projected.append(privacy.next_round_epsilon(history, plan))
        history = [(plan.noise_multiplier, plan.sample_rate,
                    sum(n for *_, n in history) + plan.steps_per_round)]
    spent = privacy.epsilon(history, 1e-5, accountant)
    assert 2.9 <= spent <= 3.0
    assert projected == sorted(projected) and projected[-1] == pytest.approx(spent)
    with pytest.raises(privacy.BudgetExhausted, match="budget exhausted"):
        privacy.next_round_epsilon(history, plan)


def test_full_finetuning_trains_under_opacus_with_broadcast_embeddings_frozen(dataset):
    model, _, (_, dp_model, dp_opt, loader) = make(dataset, finetune="full", noise=0.5)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any("position_embeddings" in n for n in frozen)
    assert any("token_type_embeddings" in n for n in frozen)
    before = trainable_state(model)
    train_steps(dp_model, dp_opt, loader, 1, CPU)
    after = trainable_state(model)
    assert "encoder.embeddings.word_embeddings.weight" in after
    assert not np.allclose(before["encoder.embeddings.word_embeddings.weight"],
                           after["encoder.embeddings.word_embeddings.weight"])


def test_full_finetuning_fails_under_opacus_if_broadcast_embeddings_train(dataset):
    """Why the freeze exists: per-sample grads of broadcast embeddings cannot be stacked."""
    ds, labels = dataset
    cfg = RunConfig().replace(model="tiny", finetune="full", **{"max-length": 32})
    model = build_model(cfg.model, labels, seed=0)
    for name, p in model.named_parameters():
        if "position_embeddings" in name or "token_type_embeddings" in name:
            p.requires_grad_(True)
    loader = DataLoader(ds, batch_size=16)
    plan = privacy.PrivacyPlan(noise_multiplier=0.5, sample_rate=1 / len(loader),
                               steps_per_round=1, planned_rounds=1, max_grad_norm=1.0,
                               delta=1e-5, budget=1e9, accountant="rdp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _, dp_model, dp_opt, dp_loader = privacy.make_private(model, optimizer, loader, plan, [])
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        train_steps(dp_model, dp_opt, dp_loader, 1, CPU)
