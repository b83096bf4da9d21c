"""UniPC-style multistep sampler: exact Adams-Bashforth predictor and Adams-Moulton corrector on the data prediction
in lambda = log(alpha / sigma), and the 'jump' grid it is tuned for."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..processes import Process
from ..score import ScoreFn, tweedie
from ._common import Callback, FiniteCheck, NoiseFn, prepare, report, progress_range

__all__ = ["unipc"]

_SERIES_BELOW = 1.0  # moments by their power series for h below this, by the (then stable) recurrence above


def _exp_moments(h: float, k: int) -> list:
    """m_j = ∫_0^1 exp(-(1 - u) h) u^j du = j! phi_{j+1}(-h) for j < k.

    For h >= 1 the recurrence m_j = (1 - j m_{j-1}) / h, m_0 = -expm1(-h) / h, loses at most a factor j / h per
    step; for small h it would cancel, so there the alternating series j! sum_m (-h)^m / (m + j + 1)! is summed.
    """
    if h >= _SERIES_BELOW:
        m = [-math.expm1(-h) / h]
        for j in range(1, k):
            m.append((1.0 - j * m[-1]) / h)
        return m
    out = []
    for j in range(k):
        term, total = 1.0 / (j + 1), 0.0  # term_m = j! (-h)^m / (m + j + 1)!
        for m in range(40):
            total += term
            term *= -h / (m + j + 2)
            if abs(term) < 1e-18 * abs(total):
                break
        out.append(total)
    return out


def _exp_lagrange_weights(nodes: list, a: float, b: float) -> list:
    """w_j = ∫_a^b exp(l - b) L_j(l) dl for the Lagrange basis L_j on the given nodes (exact, in float64).

    In u = (l - a) / h, h = b - a, each L_j is expanded in powers of u, and
    ∫_0^1 exp(-(1 - u) h) u^k du = k! phi_{k+1}(-h).
    """
    h = b - a
    u = [(v - a) / h for v in nodes]
    m = _exp_moments(h, len(nodes))
    out = []
    for j, uj in enumerate(u):
        c = [1.0]  # coefficients of L_j in powers of u, lowest first
        for i, ui in enumerate(u):
            if i == j:
                continue
            d = uj - ui
            c = [(c[k - 1] if k > 0 else 0.0) / d - (c[k] * ui / d if k < len(c) else 0.0) for k in range(len(c) + 1)]
        out.append(h * sum(ck * mk for ck, mk in zip(c, m)))
    return out


def _unipc_coefficients(
    lam: list, alpha: list, sigma: list, order: int, lower_order_final: bool, corrected: list
) -> tuple[list, list]:
    """(pred, corr): pred[i] = (A, [B_0, B_1, ...]) gives x_{i+1} = A x_i + sum_j B_j D_{i-j} (i < n); corr[i] for
    i in `corrected` gives the corrected x_i = A x_{i-1} + sum_j C_j D_{i-j} (the first term is the new D_i).

    Adams-Bashforth of `order` nodes (fewer while the history fills up; one on the last step with
    lower_order_final), Adams-Moulton of one node more, with the exact weights of the exponential integrator.
    """
    n = len(lam) - 1
    pred, corr = [], [None] * (n + 1)
    for i in range(n):
        k = 1 if lower_order_final and i == n - 1 else min(order, i + 1)
        w = _exp_lagrange_weights([lam[i - j] for j in range(k)], lam[i], lam[i + 1])
        pred.append((sigma[i + 1] / sigma[i], [alpha[i + 1] * v for v in w]))
    for i in corrected:
        k = min(order, i)
        w = _exp_lagrange_weights([lam[i - j] for j in range(k + 1)], lam[i - 1], lam[i])
        corr[i] = (sigma[i] / sigma[i - 1], [alpha[i] * v for v in w])
    return pred, corr


def _combine(x: Tensor, a: float, b: list, ds: list) -> Tensor:
    """a x + sum_j b_j ds[j] (a new tensor)."""
    out = x.mul(a)
    for bj, dj in zip(b, ds):
        out.add_(dj, alpha=bj)
    return out


def unipc(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *,
    order: int = 2,
    corrector: bool = True,
    final_correction: bool = True,
    lower_order_final: bool = False,
    generator: torch.Generator | None = None, noise: NoiseFn | None = None,
    callback: Callback | None = None, denoise: bool = True, progress: bool | None = None,
) -> Tensor:
    """UniPC (Zhao et al. 2023): exponential Adams-Bashforth predictor, Adams-Moulton corrector on D in lambda."""
    # Predictor: x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} sum_j w_j D_{i-j}, the last `order` data
    # predictions interpolated in lambda and integrated exactly against exp(lambda - lambda_{i+1}). Corrector: D_{i+1}
    # at the predicted x_{i+1} redoes the step with order + 1 nodes (no extra evaluation); the corrected x_{i+1}
    # carries on. Final correction (with denoise): x0 = D_n + (x_n^corrected - x_n) / alpha_n.
    # NFE = len(ts) - 1 + denoise.
    if isinstance(order, bool) or not isinstance(order, int) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    g = prepare(process, x, ts)
    n = len(g.ts) - 1
    corrected = list(range(1, n)) if corrector else []
    if corrector and final_correction and denoise and n > 0:
        corrected.append(n)
    pred, corr = _unipc_coefficients(
        [0.5 * v for v in g.log_snr], g.alpha, g.sigma, order, lower_order_final, corrected
    )
    times = g.ts.tolist()
    check = FiniteCheck(x, n + int(denoise))
    ds: list = []  # D_i, D_{i-1}, ..., most recent first: at most order + 1
    x_prev = x
    for i in progress_range(n, progress, "unipc"):
        s = score(x, g.t[i])
        check(i, s, i, times[i])
        report(callback, i, times[i], x, s, g.alpha[i], g.sigma[i])
        ds.insert(0, tweedie(x, s, g.alpha[i], g.sigma[i]))
        del ds[order + 1:]
        if corr[i] is not None:
            x = _combine(x_prev, *corr[i], ds)
        x_prev = x
        x = _combine(x, *pred[i], ds)
    if denoise:
        s = score(x, g.t[n])
        check(n, s, n, times[n])
        report(callback, n, times[n], x, s, g.alpha[n], g.sigma[n])
        d = tweedie(x, s, g.alpha[n], g.sigma[n])
        if corr[n] is not None:
            d.add_(_combine(x_prev, *corr[n], [d] + ds).sub_(x), alpha=1.0 / g.alpha[n])
        x = d
    check.raise_if_bad()
    return x
