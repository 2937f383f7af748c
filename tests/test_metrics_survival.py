"""Harrell's C-index and the Cox partial-likelihood loss against hand values and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cinema.metrics import survival
from cinema.metrics.survival import concordance_index, cox_partial_likelihood_loss


def brute_force_c_index(time, event, risk) -> float:
    concordant = 0.0
    comparable = 0
    for i in range(len(time)):
        if not event[i]:
            continue
        for j in range(len(time)):
            # j outlives i: later time, or censored at the time of i's event.
            if time[j] > time[i] or (time[j] == time[i] and not event[j]):
                comparable += 1
                concordant += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return concordant / comparable


def brute_force_cox_breslow(risk, time, event) -> float:
    total = 0.0
    for i in range(len(time)):
        if event[i]:
            at_risk = [math.exp(risk[j]) for j in range(len(time)) if time[j] >= time[i]]
            total += risk[i] - math.log(sum(at_risk))
    return -total / sum(event)


def test_c_index_hand_examples():
    assert concordance_index([1, 2, 3], [1, 1, 0], [3, 2, 1]) == 1.0  # pairs (0,1), (0,2), (1,2) all concordant
    assert concordance_index([1, 2, 3], [1, 1, 0], [1, 2, 3]) == 0.0
    # Subject 0 (event at 2) vs 1 (censored at 2): comparable, risks tie -> 1/2. vs 2 (time 3): risk 1 < 5 -> 0.
    # Subject 2's event has nobody after it; subject 1 is censored. C = 0.5 / 2.
    assert concordance_index([2, 2, 3], [1, 0, 1], [1, 1, 5]) == pytest.approx(0.25)
    assert math.isnan(concordance_index([2, 2], [1, 1], [0.3, 0.1]))  # tied events are not comparable


@pytest.mark.parametrize("seed", range(4))
def test_c_index_matches_brute_force_with_ties_and_censoring(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n = 80
    time = rng.integers(1, 15, n).astype(float)  # tied times
    event = rng.random(n) < 0.6  # ~40 % censored
    risk = rng.integers(0, 6, n) - 0.1 * time  # tied risks, loosely informative
    expected = brute_force_c_index(time, event, risk)
    assert concordance_index(time, event, risk) == pytest.approx(expected)
    monkeypatch.setattr(survival, "_PAIRS_PER_CHUNK", 7 * n)  # several chunks of 7 events
    assert concordance_index(time, event.astype(int), risk) == pytest.approx(expected)


def test_c_index_rejects_bad_input():
    with pytest.raises(ValueError, match="0/1"):
        concordance_index([1, 2], [1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="length"):
        concordance_index([1, 2], [1, 0], [0.1])


def test_cox_loss_hand_example():
    # All risks 0, distinct times 1 < 2 < 3, all events: risk sets hold 3, 2, 1 subjects.
    # loss = -(1/3) * [(0 - log 3) + (0 - log 2) + (0 - log 1)] = log(6) / 3.
    loss = cox_partial_likelihood_loss(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0]), torch.ones(3))
    assert loss.item() == pytest.approx(math.log(6) / 3)


@pytest.mark.parametrize("seed", range(3))
def test_cox_loss_matches_breslow_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 30
    time = rng.integers(1, 8, n).astype(float)  # many tied times
    event = (rng.random(n) < 0.7).astype(float)
    risk = rng.normal(size=n)
    loss = cox_partial_likelihood_loss(torch.tensor(risk)[:, None], torch.tensor(time), torch.tensor(event))
    assert loss.item() == pytest.approx(brute_force_cox_breslow(risk, time, event), rel=1e-9)


def test_cox_loss_gradient_sanity():
    time = torch.tensor([1.0, 2.0, 2.0, 4.0, 5.0, 7.0])
    event = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    correct = -time.clone()  # earlier event -> higher risk
    assert cox_partial_likelihood_loss(correct, time, event) < cox_partial_likelihood_loss(-correct, time, event)

    risk = torch.zeros(6, requires_grad=True)
    optimiser = torch.optim.SGD([risk], lr=0.5)
    losses = []
    for _ in range(5):
        optimiser.zero_grad()
        loss = cox_partial_likelihood_loss(risk, time, event)
        loss.backward()
        assert torch.isfinite(risk.grad).all()
        # Adding a constant to every risk leaves the partial likelihood unchanged, so the gradient sums to zero.
        assert risk.grad.sum().item() == pytest.approx(0.0, abs=1e-6)
        losses.append(loss.item())
        optimiser.step()
    assert np.all(np.diff(losses) < 0)
    # Learned risks rank subjects like their event times.
    assert concordance_index(time.numpy(), event.numpy(), risk.detach().numpy()) == 1.0


def test_cox_loss_edge_cases():
    risk = torch.randn(4, requires_grad=True)
    no_events = cox_partial_likelihood_loss(risk, torch.arange(4.0), torch.zeros(4))
    no_events.backward()
    assert no_events.item() == 0.0 and torch.equal(risk.grad, torch.zeros(4))
    half = cox_partial_likelihood_loss(risk.detach().bfloat16(), torch.arange(4.0), torch.ones(4))
    full = cox_partial_likelihood_loss(risk.detach().bfloat16().float(), torch.arange(4.0), torch.ones(4))
    assert half.dtype == torch.float32 and half.item() == pytest.approx(full.item())
    with pytest.raises(ValueError, match="length"):
        cox_partial_likelihood_loss(risk, torch.arange(3.0), torch.ones(4))
