"""Deterministic (and DDIM's eta-stochastic) samplers: DDIM, DPM-Solver++, EDM's Heun and Euler, and the
probability-flow ODE solved by torchdiffeq."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..processes import Process
from ..score import ScoreFn
from ._common import (FIXED_METHODS, Callback, FiniteCheck, NoiseFn, check_ode_method, final_denoise, finish,
                      first_order_loop, multistep_loop, noise_source, odeint, pf_drift, prepare, progress_range,
                      report)

__all__ = ["ddim", "dpm_solver_pp", "heun", "euler", "probability_flow"]


def ddim(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *,
    eta: float = 0.0,
    generator: torch.Generator | None = None, noise: NoiseFn | None = None,
    callback: Callback | None = None, denoise: bool = True, progress: bool | None = None,
) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12): x_s = alpha_s x0 + sqrt(sigma_s² - c²) eps + c z, c = eta * posterior std.

    eta = 0 is deterministic (Euler on the probability-flow ODE in sigma/alpha); eta = 1 is the ancestral sampler.
    NFE = len(ts) - 1 + denoise.
    """
    if not 0 <= eta:
        raise ValueError(f"eta must be non-negative, got {eta!r}")
    g = prepare(process, x, ts)
    s_, t_ = g.ts[1:], g.ts[:-1]
    _, _, std = process.posterior_coefficients(s_, t_)
    a_s, sig_s = process.alpha(s_), process.sigma(s_)
    a_t, sig_t = process.alpha(t_), process.sigma(t_)
    c = eta * std
    if bool((c > sig_s * (1 + 1e-12)).any()):
        raise ValueError(f"eta = {eta!r} is too large: the noise c exceeds sigma_s on this grid")
    keep = (sig_s**2 - c**2).clamp_min(0).sqrt()
    A = (a_s / a_t).tolist()
    B = (a_s * sig_t**2 / a_t - keep * sig_t).tolist()
    draw = noise_source(generator, noise)
    return first_order_loop(
        score, x, g, A, B, c.tolist(), draw=draw, callback=callback, denoise=denoise, progress=progress, desc="ddim"
    )


def _dpmpp_coefficients(lam: list, alpha: list, sigma: list, order: int, lower_order_final: bool) -> list:
    """Per step (A, B0, B1, B2): x_{i+1} = A x_i + B0 D_i + B1 D_{i-1} + B2 D_{i-2} (DPM-Solver++ 1S / 2M / 3M).

    Every update is linear in x and the data predictions D, so the whole grid's coefficients are computed here,
    in float64, once; the 3M terms follow Lu et al. (2022) with phi_2 = expm1(-h)/h + 1, phi_3 = phi_2/h - 1/2.
    """
    n = len(lam) - 1
    out = []
    for i in range(n):
        h = lam[i + 1] - lam[i]
        a = alpha[i + 1]
        k = min(order, i + 1)
        if lower_order_final and i == n - 1:
            k = 1
        b = [-a * math.expm1(-h), 0.0, 0.0]
        if k == 2:  # D1 = D0 + (D0 - D_{-1}) / (2 r)
            r = (lam[i] - lam[i - 1]) / h
            c = -a * math.expm1(-h) / (2 * r)
            b[0] += c
            b[1] -= c
        elif k == 3:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            q = r0 / (r0 + r1)
            d1 = ((1 + q) / r0, -(1 + q) / r0 - q / r1, q / r1)  # d1 = d1_0 + (d1_0 - d1_1) q
            d2 = (1 / r0 / (r0 + r1), (-1 / r0 - 1 / r1) / (r0 + r1), 1 / r1 / (r0 + r1))
            phi_2 = math.expm1(-h) / h + 1
            phi_3 = phi_2 / h - 0.5
            b = [b[j] + a * phi_2 * d1[j] - a * phi_3 * d2[j] for j in range(3)]
        out.append((sigma[i + 1] / sigma[i], b[0], b[1], b[2]))
    return out


def dpm_solver_pp(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *,
    order: int = 2,
    lower_order_final: bool = True,
    generator: torch.Generator | None = None, noise: NoiseFn | None = None,
    callback: Callback | None = None, denoise: bool = True, progress: bool | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), or (3M) with order=3, in lambda = log(alpha / sigma).

    Multistep on the data prediction D; the first steps fall back to lower order, and with lower_order_final the
    last step is first order (stabler at small NFE). Works for VE as well as VP through lambda.
    NFE = len(ts) - 1 + denoise.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    g = prepare(process, x, ts)
    coef = _dpmpp_coefficients([0.5 * v for v in g.log_snr], g.alpha, g.sigma, order, lower_order_final)
    A, B = [c[0] for c in coef], [list(c[1:]) for c in coef]
    return multistep_loop(score, x, g, A, B, [0.0] * len(A), draw=noise_source(generator, noise),
                          callback=callback, denoise=denoise, progress=progress, desc="dpm_solver_pp")


def _edm(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *,
    second_order: bool,
    euler_first: bool,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    generator,
    noise,
    callback,
    denoise: bool,
    progress,
    desc: str,
) -> Tensor:
    """EDM's sampler (Karras et al. 2022, Algorithm 2) in y = x / alpha and sigma~ = sigma / alpha = exp(-log_snr/2),
    where the probability-flow ODE of every process reads dy / dsigma~ = -sigma(t) score(alpha(t) y, t)."""
    g = prepare(process, x, ts)
    n = len(g.ts) - 1
    times = g.ts.tolist()
    sig = [math.exp(-0.5 * v) for v in g.log_snr]  # sigma~ per grid time
    sig_top = math.exp(-0.5 * float(process.log_snr(torch.tensor(process.t_max, dtype=torch.float64))))
    gamma = [
        min(s_churn / max(n, 1), math.sqrt(2) - 1) if s_churn > 0 and s_tmin <= sig[i] <= s_tmax else 0.0
        for i in range(n)
    ]
    sig_hat = [min(sig[i] * (1 + gamma[i]), sig_top) for i in range(n)]
    t_hat_cpu = process.t_from_log_snr(-2 * torch.log(torch.tensor(sig_hat or [1.0], dtype=torch.float64)))
    t_hat_cpu = t_hat_cpu.clamp(process.t_min, process.t_max)
    churned = [sig_hat[i] > sig[i] for i in range(n)]
    t_hat = [
        t_hat_cpu[i].to(device=x.device, dtype=x.dtype).expand(x.shape[0]) if churned[i] else g.t[i] for i in range(n)
    ]
    a_hat = process.alpha(t_hat_cpu).tolist()
    s_hat = process.sigma(t_hat_cpu).tolist()
    draw = noise_source(generator, noise)
    heun_steps = [second_order and not (euler_first and i == 0) for i in range(n)]
    check = FiniteCheck(x, n + sum(heun_steps) + int(denoise))
    k = 0
    y = x / g.alpha[0]
    for i in progress_range(n, progress, desc):
        if churned[i]:
            y = y + (s_noise * math.sqrt(sig_hat[i] ** 2 - sig[i] ** 2)) * draw(i, y)
            a_i, s_i, t_i, tv = a_hat[i], s_hat[i], t_hat[i], float(t_hat_cpu[i])
        else:
            a_i, s_i, t_i, tv = g.alpha[i], g.sigma[i], g.t[i], times[i]
        xi = y * a_i
        s = score(xi, t_i)
        check(k, s, i, tv)
        k += 1
        report(callback, i, tv, xi, s, a_i, s_i)
        dt = sig[i + 1] - sig_hat[i]
        if not heun_steps[i]:
            y = y.add(s, alpha=-s_i * dt)
            continue
        y_next = y.add(s, alpha=-s_i * dt)
        s2 = score(y_next * g.alpha[i + 1], g.t[i + 1])
        check(k, s2, i, times[i + 1])
        k += 1
        y = y.add(s, alpha=-0.5 * s_i * dt).add_(s2, alpha=-0.5 * g.sigma[i + 1] * dt)
    x = y * g.alpha[n]
    return finish(score, x, g, check, k, callback, denoise)


def heun(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *,
    euler_first: bool = False,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
    generator: torch.Generator | None = None, noise: NoiseFn | None = None,
    callback: Callback | None = None, denoise: bool = True, progress: bool | None = None,
) -> Tensor:
    """EDM's second-order Heun sampler (Karras et al. 2022, Algorithm 2), with optional churn.

    euler_first: the first step is Euler's (one evaluation): from t_max, where the data prediction is nearly the
    data mean, Euler in sigma/alpha is nearly exact; it spends an even NFE budget without waste.
    NFE = 2 (len(ts) - 1) - euler_first + denoise.
    """
    return _edm(score, process, x, ts, second_order=True, euler_first=euler_first, s_churn=s_churn, s_tmin=s_tmin,
                s_tmax=s_tmax, s_noise=s_noise, generator=generator, noise=noise, callback=callback,
                denoise=denoise, progress=progress, desc="heun")


def euler(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
    generator: torch.Generator | None = None, noise: NoiseFn | None = None,
    callback: Callback | None = None, denoise: bool = True, progress: bool | None = None,
) -> Tensor:
    """EDM's first-order sampler: Euler in sigma/alpha (equal to DDIM without churn). NFE = len(ts) - 1 + denoise."""
    return _edm(score, process, x, ts, second_order=False, euler_first=False, s_churn=s_churn, s_tmin=s_tmin,
                s_tmax=s_tmax, s_noise=s_noise, generator=generator, noise=noise, callback=callback,
                denoise=denoise, progress=progress, desc="euler")


def probability_flow(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *,
    method: str = "rk4",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None, noise: NoiseFn | None = None,
    callback: Callback | None = None, denoise: bool = True, progress: bool | None = None,
) -> Tensor:
    """The probability-flow ODE dx/dt = f x - ½ g² score (Song et al. 2021), solved by torchdiffeq.

    Fixed-step methods (euler, midpoint, heun2, heun3, rk4) take one step per grid interval; adaptive methods
    (dopri5, ...) integrate from ts[0] to ts[-1] with rtol/atol (refused below x's dtype precision).
    NFE = stages x steps (fixed) or what the solver spends (adaptive), + denoise.
    """
    check_ode_method(method, rtol, atol, x.dtype)
    g = prepare(process, x, ts)
    n = len(g.ts) - 1
    b = x.shape[0]
    sums: list = []

    def drift(t: Tensor, y: Tensor) -> Tensor:
        # f and g² stay on the device: no host synchronisation per evaluation (the grid was checked above)
        s = score(y, t.expand(b))
        sums.append(s.sum())
        if callback is not None:
            report(callback, len(sums) - 1, float(t), y, s, float(process.alpha(t)), float(process.sigma(t)))
        return pf_drift(process, t, y, s)

    if n > 0:
        x = odeint(drift, x, g.ts if method in FIXED_METHODS else g.ts[[0, -1]], method=method, rtol=rtol,
                   atol=atol)[-1]
    if sums:
        bad = ~torch.isfinite(torch.stack(sums))
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            raise ValueError(f"the score returned NaN or inf at ODE evaluation {k + 1}")
    if denoise:
        check = FiniteCheck(x, 1)
        x = final_denoise(score, x, g, check, 0, callback)
        check.raise_if_bad()
    return x
