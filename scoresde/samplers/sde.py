"""Stochastic samplers: DDPM's ancestral sampler, reverse-SDE Euler-Maruyama, predictor-corrector, DPM-Solver++ SDE."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..processes import Process
from ..score import ScoreFn
from ._common import (Callback, FiniteCheck, NoiseFn, finish, first_order_loop, multistep_loop, noise_source,
                      prepare, progress_range, report)

__all__ = ["ancestral", "euler_maruyama", "predictor_corrector", "dpm_solver_pp_sde"]


def ancestral(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *,
    x0_var: Sequence[float] | Tensor | None = None,
    generator: torch.Generator | None = None, noise: NoiseFn | None = None,
    callback: Callback | None = None, denoise: bool = True, progress: bool | None = None,
) -> Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2): x_s ~ q(x_s | x_t, x0 = Tweedie's estimate).

    On DiscreteVP with consecutive steps this is DDPM's exact posterior; on any process, the Gaussian posterior
    between consecutive grid times. x0_var (one value per step, at the times ts[:-1]): the mean per-dimension
    variance of x0 given x_t, E tr Cov[x0 | x_t] / d; the step's variance becomes std² + c_x0² x0_var, the
    optimal isotropic reverse variance of Analytic-DPM (Bao et al. 2022, Theorem 1; see `analytic_x0_var`).
    None takes the plug-in x0 as certain (DDPM's beta-tilde variance). NFE = len(ts) - 1 + denoise.
    """
    g = prepare(process, x, ts)
    s_, t_ = g.ts[1:], g.ts[:-1]
    c_x0, c_xt, std = process.posterior_coefficients(s_, t_)
    if x0_var is not None:
        v = torch.as_tensor(x0_var, dtype=torch.float64).detach().cpu().reshape(-1)
        if v.numel() != len(t_) or not bool((torch.isfinite(v) & (v >= 0)).all()):
            raise ValueError(f"x0_var must hold {len(t_)} finite non-negative values (one per step), "
                             f"got {v.tolist()}")
        std = (std**2 + c_x0**2 * v).sqrt()
    alpha_t, sigma_t = process.alpha(t_), process.sigma(t_)
    A = (c_x0 / alpha_t + c_xt).tolist()
    B = (c_x0 * sigma_t**2 / alpha_t).tolist()
    draw = noise_source(generator, noise)
    return first_order_loop(
        score, x, g, A, B, std.tolist(), draw=draw, callback=callback, denoise=denoise, progress=progress, desc="ancestral"
    )


def _em_coefficients(process: Process, ts: Tensor) -> tuple[list, list, list]:
    """Per step (A, B, C) of x_s = A x + B score + C z: Euler-Maruyama on the reverse SDE from t to s < t."""
    t_ = ts[:-1]
    h = ts[1:] - t_  # negative
    f, g2 = process.f(t_), process.g2(t_)
    return (1 + f * h).tolist(), (-g2 * h).tolist(), (g2 * -h).sqrt().tolist()


def euler_maruyama(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *,
    generator: torch.Generator | None = None, noise: NoiseFn | None = None,
    callback: Callback | None = None, denoise: bool = True, progress: bool | None = None,
) -> Tensor:
    """Euler-Maruyama on the reverse SDE dx = [f x - g² score] dt + g dw (Song et al. 2021). NFE = len(ts) - 1 + denoise."""
    g = prepare(process, x, ts)
    A, B, C = _em_coefficients(process, g.ts)
    draw = noise_source(generator, noise)
    return first_order_loop(
        score, x, g, A, B, C, draw=draw, callback=callback, denoise=denoise, progress=progress, desc="euler_maruyama"
    )


def predictor_corrector(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *,
    predictor: str = "reverse_diffusion",
    langevin_steps: int = 1,
    snr: float = 0.16,
    generator: torch.Generator | None = None, noise: NoiseFn | None = None,
    callback: Callback | None = None, denoise: bool = True, progress: bool | None = None,
) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 1-2).

    Predictor: 'reverse_diffusion' (x_s = (2 - alpha_ts) x_t + sigma_ts² score + sigma_ts z) or 'euler_maruyama'.
    Corrector: Langevin steps at the new time s with step 2 a (snr |z| / |score|)², a = alpha_ts², norms per
    sample (never averaged over the batch), capped at sigma_ts² / 2 (sigma_ts² = the predictor's noise variance):
    a corrector step then injects at most the noise of a predictor step, so the Langevin time per step vanishes
    with the grid's steps and the scheme converges as NFE grows (with a fixed snr step it would not; in low
    dimensions the snr ratio is heavy-tailed, |score| ~ 0 at a mode). NFE = (len(ts) - 1)(1 + langevin_steps) + denoise.
    """
    if predictor not in ("reverse_diffusion", "euler_maruyama"):
        raise ValueError(f"unknown predictor {predictor!r}; choose 'reverse_diffusion' or 'euler_maruyama'")
    if not isinstance(langevin_steps, int) or langevin_steps < 0:
        raise ValueError(f"langevin_steps must be a non-negative integer, got {langevin_steps!r}")
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr!r}")
    g = prepare(process, x, ts)
    s_, t_ = g.ts[1:], g.ts[:-1]
    alpha_ts, sigma_ts = process.transition(s_, t_)
    if predictor == "reverse_diffusion":
        A, B, C = (2 - alpha_ts).tolist(), (sigma_ts**2).tolist(), sigma_ts.tolist()
    else:
        A, B, C = _em_coefficients(process, g.ts)
    a_corr = (alpha_ts**2).tolist()
    max_step = (0.5 * sigma_ts**2).tolist()
    draw = noise_source(generator, noise)
    n = len(g.ts) - 1
    times = g.ts.tolist()
    check = FiniteCheck(x, n * (1 + langevin_steps) + int(denoise))
    k = d = 0  # score evaluations, noise draws
    for i in progress_range(n, progress, "predictor_corrector"):
        s = score(x, g.t[i])
        check(k, s, i, times[i])
        k += 1
        report(callback, i, times[i], x, s, g.alpha[i], g.sigma[i])
        x = x.mul(A[i]).add_(s, alpha=B[i]).add_(draw(d, x), alpha=C[i])
        d += 1
        for _ in range(langevin_steps):
            s = score(x, g.t[i + 1])
            check(k, s, i, times[i + 1])
            k += 1
            z = draw(d, x)
            d += 1
            ratio = z.flatten(1).norm(dim=1) / s.flatten(1).norm(dim=1).clamp_min(1e-30)
            step = ((2 * a_corr[i] * snr**2) * ratio**2).clamp_max(max_step[i])
            step = step.reshape((-1,) + (1,) * (x.ndim - 1))
            x = x + step * s + (2 * step).sqrt() * z
    return finish(score, x, g, check, k, callback, denoise)


def _dpmpp_sde_coefficients(lam: list, alpha: list, sigma: list, eta: float, order: int) -> tuple[list, list, list]:
    """Per step A, [B0, B1, B2], C of x_{i+1} = A x_i + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + C z: the data-prediction
    SDE's exact solution with D a polynomial in lambda through the last `order` data predictions (lower orders on
    the first steps; order 3 is k-diffusion's sample_dpmpp_3m_sde)."""
    A, B, C = [], [], []
    for i in range(len(lam) - 1):
        h = lam[i + 1] - lam[i]
        big_h = (1 + eta) * h
        a = alpha[i + 1]
        b = [-a * math.expm1(-big_h), 0.0, 0.0]
        phi2 = math.expm1(-big_h) / big_h + 1  # ∫_0^1 (1 - e^{-H(1 - v)}) dv-type weights of D's slope and curvature
        if order >= 3 and i > 1:  # D quadratic in lambda through D_i, D_{i-1}, D_{i-2}
            phi3 = phi2 / big_h - 0.5
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            # d1_0 = (D0 - D1) / r0, d1_1 = (D1 - D2) / r1, d1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1),
            # d2 = (d1_0 - d1_1) / (r0 + r1); x += a (phi2 d1 - phi3 d2)
            c1_0, c1_1 = (1 / r0, -1 / r0, 0.0), (0.0, 1 / r1, -1 / r1)
            diff = [u - v for u, v in zip(c1_0, c1_1)]
            d1 = [u + w * r0 / (r0 + r1) for u, w in zip(c1_0, diff)]
            d2 = [w / (r0 + r1) for w in diff]
            b = [bj + a * (phi2 * u - phi3 * v) for bj, u, v in zip(b, d1, d2)]
        elif order >= 2 and i > 0:  # D linear in lambda through D_i, D_{i-1}
            k = a * phi2 * h / (lam[i] - lam[i - 1])
            b = [b[0] + k, -k, 0.0]
        A.append(sigma[i + 1] / sigma[i] * math.exp(-eta * h))
        B.append(b[:order])
        C.append(sigma[i + 1] * math.sqrt(-math.expm1(-2 * eta * h)))
    return A, B, C


def dpm_solver_pp_sde(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *,
    eta: float = 1.0,
    order: int = 3,
    generator: torch.Generator | None = None, noise: NoiseFn | None = None,
    callback: Callback | None = None, denoise: bool = True, progress: bool | None = None,
) -> Tensor:
    """SDE-DPM-Solver++(3M) (Lu et al. 2022; k-diffusion's sample_dpmpp_3m_sde, and at order 2 sample_dpmpp_2m_sde
    in its 'heun' form), lambda = log(alpha/sigma).

    x_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h} x_i + sigma_{i+1} sqrt(1 - e^{-2 eta h}) z
      + alpha_{i+1} ∫ (1 + eta) e^{-(1 + eta)(lambda_{i+1} - l)} D(l) dl, with D a polynomial in lambda through the
    last `order` data predictions (lower orders on the first steps; order 1 is SDE-DPM-Solver++1, DDPM's ancestral
    step at eta = 1). eta = 1 is the reverse SDE, eta = 0 the probability-flow ODE. Order 3 is the default: on the
    scale-robustness set (RESULTS_samplers.md) it reaches both floors from NFE <= 50 on 10 of the 11 targets whose ODE
    map does (order 2: 9), at NFE <= 10 it is a little worse than order 2. NFE = len(ts) - 1 + denoise.
    """
    if order not in (1, 2, 3) or isinstance(order, bool):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a non-negative finite number, got {eta!r}")
    g = prepare(process, x, ts)
    A, B, C = _dpmpp_sde_coefficients([0.5 * v for v in g.log_snr], g.alpha, g.sigma, float(eta), order)
    return multistep_loop(score, x, g, A, B, C, draw=noise_source(generator, noise), callback=callback,
                          denoise=denoise, progress=progress, desc="dpm_solver_pp_sde")
