"""Survival analysis: Harrell's concordance index and the Cox partial-likelihood loss.

Risk convention: a higher risk score means an earlier event (shorter survival), as for a Cox model's log hazard.
``event`` is 1 (or True) when the event was observed at ``time`` and 0 when the subject was censored then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Bounds memory of the pairwise comparison: at most this many (i, j) pairs are materialised at once.
_PAIRS_PER_CHUNK = 4_000_000


def _survival_arrays(
    time: Sequence[float] | np.ndarray, event: Sequence[float] | np.ndarray, risk: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    time_arr = np.asarray(time, dtype=np.float64).ravel()
    event_arr = np.asarray(event).ravel()
    risk_arr = np.asarray(risk, dtype=np.float64).ravel()
    if not time_arr.size == event_arr.size == risk_arr.size:
        raise ValueError(f"time, event and risk differ in length: {time_arr.size}, {event_arr.size}, {risk_arr.size}")
    if not np.all(np.isin(event_arr, (0, 1))):
        raise ValueError("event must contain only 0/1 (or False/True)")
    if not (np.all(np.isfinite(time_arr)) and np.all(np.isfinite(risk_arr))):
        raise ValueError("time and risk must be finite")
    return time_arr, event_arr.astype(bool), risk_arr


def concordance_index(
    time: Sequence[float] | np.ndarray, event: Sequence[float] | np.ndarray, risk: Sequence[float] | np.ndarray
) -> float:
    """Harrell's C-index: the fraction of comparable pairs whose risks are ordered like their event times.

    A pair (i, j) is comparable when subject i had an event and j is known to outlive it: time_j > time_i, or
    time_j == time_i with j censored (a subject censored at an event time is taken to survive past it). Two events at
    the same time are not comparable. A comparable pair is concordant if risk_i > risk_j and counts 1/2 if the risks
    tie. This is the convention of scikit-survival's ``concordance_index_censored``. NaN if no pair is comparable.
    """
    time_arr, event_arr, risk_arr = _survival_arrays(time, event, risk)
    event_idx = np.flatnonzero(event_arr)
    concordant = 0.0
    comparable = 0
    chunk = max(1, _PAIRS_PER_CHUNK // max(time_arr.size, 1))
    for start in range(0, event_idx.size, chunk):
        rows = event_idx[start : start + chunk]
        t_i = time_arr[rows, None]
        outlives = (time_arr[None, :] > t_i) | ((time_arr[None, :] == t_i) & ~event_arr[None, :])
        r_i = risk_arr[rows, None]
        concordant += np.count_nonzero(outlives & (r_i > risk_arr[None, :]))
        concordant += 0.5 * np.count_nonzero(outlives & (r_i == risk_arr[None, :]))
        comparable += int(np.count_nonzero(outlives))
    return concordant / comparable if comparable else float("nan")


def cox_partial_likelihood_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox log partial likelihood with Breslow's handling of tied times, averaged over events.

    loss = -1/n_events * sum over events i of [risk_i - log sum_{j: time_j >= time_i} exp(risk_j)].
    With Breslow's approximation every event in a group of tied times shares the full risk set of that time.
    ``risk`` is the model's log-hazard, shape (n,) or (n, 1). Differentiable in ``risk``; a batch without events
    returns 0 (still attached to the graph). Note the likelihood couples the samples of a batch, so its value depends
    on the batch composition.
    """
    import torch  # deferred so that numpy-only metric users do not pay for importing torch

    risk = risk.reshape(-1)
    if risk.dtype in (torch.float16, torch.bfloat16):
        risk = risk.float()  # log-sum-exp over a whole batch loses too much precision in half types
    time = torch.as_tensor(time, device=risk.device).reshape(-1)
    event = torch.as_tensor(event, device=risk.device).reshape(-1).to(risk.dtype)
    if not risk.numel() == time.numel() == event.numel():
        raise ValueError(f"risk, time and event differ in length: {risk.numel()}, {time.numel()}, {event.numel()}")
    if risk.numel() == 0 or not bool(event.any()):
        return risk.sum() * 0.0
    order = torch.argsort(time, descending=True, stable=True)
    time_sorted = time[order]
    risk_sorted = risk[order]
    event_sorted = event[order]
    # With times descending, the risk set {j: time_j >= t} of a sample is everything up to the last sample tied with
    # it; its log-sum-exp is the running logcumsumexp read at that tie-group end.
    log_cumulative = torch.logcumsumexp(risk_sorted, dim=0)
    _, group_sizes = torch.unique_consecutive(time_sorted, return_counts=True)
    group_ends = torch.cumsum(group_sizes, dim=0) - 1
    log_risk_set = log_cumulative[torch.repeat_interleave(group_ends, group_sizes)]
    return -((risk_sorted - log_risk_set) * event_sorted).sum() / event_sorted.sum()
