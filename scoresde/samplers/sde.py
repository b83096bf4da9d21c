"""Stochastic samplers: DDPM's ancestral sampler, reverse-SDE Euler-Maruyama, predictor-corrector."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..processes import Process
from ..score import ScoreFn
from ._common import (
    Callback,
    FiniteCheck,
    NoiseFn,
    final_denoise,
    first_order_loop,
    noise_source,
    prepare,
    report,
    steps,
)

__all__ = ["ancestral", "analytic_x0_var", "euler_maruyama", "predictor_corrector"]


def ancestral(
    score: ScoreFn,
    process: Process,
    x: Tensor,
    ts: Tensor,
    *,
    x0_var: Sequence[float] | Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    progress: bool | None = None,
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


def analytic_x0_var(
    score: ScoreFn, process: Process, ts: Tensor, x: Tensor, *, rtol: float | None = None, atol: float | None = None
) -> Tensor:
    """Analytic-DPM's x0 variance (Bao et al. 2022) at the times ts[:-1], from a pilot batch and the score only.

    v_t = E tr Cov[x0 | x_t] / d over x_t ~ p_t, where the paper averages over noised training data, here x_t comes
    from the probability-flow ODE started at the pilot prior samples x (dopri5 to rtol/atol: 1e-6 in float64, 1e-4
    otherwise), whose marginals are the model's own p_t; no data is needed. Two estimates of v_t, combined with
    inverse-variance weights (each is noisy where the other is not): (sigma²/alpha²)(1 - sigma² E||score||² / d),
    Tweedie's second-order formula with the Fisher identity (the paper's; accurate at low noise), and
    (tr Cov[x0] - tr Cov[x0_hat(x_t)]) / d, the law of total variance with Tweedie's x0_hat (accurate at high
    noise, where the first is a small difference of large terms). Clipped to [0, sigma²/alpha²] as in the paper.
    Cost: one ODE solve and len(ts) score evaluations on the pilot batch, once per model and grid. CPU float64.
    """
    import torchdiffeq

    g = prepare(process, x, ts)
    n = len(g.ts) - 1
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    tol = 1e-6 if x.dtype == torch.float64 else 1e-4
    rtol, atol = (tol if rtol is None else rtol), (tol if atol is None else atol)
    b, lo, hi = x.shape[0], float(g.ts[-1]), float(g.ts[0])
    if b < 2:
        raise ValueError(f"the pilot batch needs at least 2 samples, got {b}")

    evals = [0]

    def drift(t: Tensor, y: Tensor) -> Tensor:
        t = t.clamp(lo, hi)
        s = score(y, t.expand(b))
        evals[0] += 1
        if not bool(torch.isfinite(s).all()):  # a pilot, not a sampling loop: a host sync per evaluation is fine
            raise ValueError(f"the score returned NaN or inf at ODE evaluation {evals[0]} of the pilot batch "
                             f"(t = {float(t):.6g})")
        return process._f(t) * y - (0.5 * process._g2(t)) * s

    tt = g.ts.to(device=x.device, dtype=x.dtype)
    xs = torchdiffeq.odeint(drift, x, tt, method="dopri5", rtol=rtol, atol=atol,
                            options=dict(first_step=(hi - lo) * 1e-3)).unbind(0)
    d = x[0].numel()
    u, x0 = [], []  # per pilot and time: (sigma²/alpha²)(1 - sigma² ||score||² / d), and Tweedie's x0
    for i in range(n + 1):
        s = score(xs[i], g.t[i]).detach().double().flatten(1)
        a, sig = g.alpha[i], g.sigma[i]
        u.append((sig / a) ** 2 * (1 - sig**2 * s.pow(2).sum(1) / d))
        x0.append((xs[i].detach().double().flatten(1) + sig**2 * s) / a)
    u, x0 = torch.stack(u).cpu(), torch.stack(x0).cpu()  # (n + 1, b), (n + 1, b, d)
    if not (bool(torch.isfinite(u).all()) and bool(torch.isfinite(x0).all())):
        k = int((~torch.isfinite(u)).any(1).nonzero()[0]) if not bool(torch.isfinite(u).all()) else 0
        raise ValueError(f"the score returned NaN or inf on the pilot batch at t = {float(g.ts[k]):.6g}")
    v1, se1 = u.mean(1), u.std(1) / b**0.5
    # Cov[x0] from the ODE's end (Tweedie's x0 there, plus its own small posterior variance v1[n])
    sq = (x0 - x0.mean(1, keepdim=True)).pow(2).sum(2) / d  # (n + 1, b)
    w = sq[n] + v1[n] - sq  # per pilot, paired through its trajectory
    v2, se2 = w.mean(1), w.std(1) / b**0.5
    p1, p2 = 1 / se1.square().clamp_min(1e-300), 1 / se2.square().clamp_min(1e-300)
    v = ((p1 * v1 + p2 * v2) / (p1 + p2))[:n]
    r2 = (torch.tensor(g.sigma[:n], dtype=torch.float64) / torch.tensor(g.alpha[:n], dtype=torch.float64)) ** 2
    return v.clamp(min=0).minimum(r2)


def _em_coefficients(process: Process, ts: Tensor) -> tuple[list, list, list]:
    """Per step (A, B, C) of x_s = A x + B score + C z: Euler-Maruyama on the reverse SDE from t to s < t."""
    t_ = ts[:-1]
    h = ts[1:] - t_  # negative
    f, g2 = process.f(t_), process.g2(t_)
    return (1 + f * h).tolist(), (-g2 * h).tolist(), (g2 * -h).sqrt().tolist()


def euler_maruyama(
    score: ScoreFn,
    process: Process,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    progress: bool | None = None,
) -> Tensor:
    """Euler-Maruyama on the reverse SDE dx = [f x - g² score] dt + g dw (Song et al. 2021). NFE = len(ts) - 1 + denoise."""
    g = prepare(process, x, ts)
    A, B, C = _em_coefficients(process, g.ts)
    draw = noise_source(generator, noise)
    return first_order_loop(
        score, x, g, A, B, C, draw=draw, callback=callback, denoise=denoise, progress=progress, desc="euler_maruyama"
    )


def predictor_corrector(
    score: ScoreFn,
    process: Process,
    x: Tensor,
    ts: Tensor,
    *,
    predictor: str = "reverse_diffusion",
    corrector_steps: int = 1,
    snr: float = 0.16,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    progress: bool | None = None,
) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 1-2).

    Predictor: 'reverse_diffusion' (x_s = (2 - alpha_ts) x_t + sigma_ts² score + sigma_ts z) or 'euler_maruyama'.
    Corrector: Langevin steps at the new time s with step 2 a (snr |z| / |score|)², a = alpha_ts², norms per
    sample (never averaged over the batch). In low dimensions that ratio is heavy-tailed (|score| ~ 0 at a mode),
    so each sample's step is capped at sigma(s)², stable for any density whose components have variance >= sigma².
    NFE = (len(ts) - 1)(1 + corrector_steps) + denoise.
    """
    if predictor not in ("reverse_diffusion", "euler_maruyama"):
        raise ValueError(f"unknown predictor {predictor!r}; choose 'reverse_diffusion' or 'euler_maruyama'")
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be a non-negative integer, got {corrector_steps!r}")
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
    max_step = (process.sigma(s_) ** 2).tolist()
    draw = noise_source(generator, noise)
    n = len(g.ts) - 1
    times = g.ts.tolist()
    check = FiniteCheck(x, n * (1 + corrector_steps) + int(denoise))
    k = d = 0  # score evaluations, noise draws
    for i in steps(n, progress, "predictor_corrector"):
        s = score(x, g.t[i])
        check(k, s, i, times[i])
        k += 1
        report(callback, i, times[i], x, s, g.alpha[i], g.sigma[i])
        x = x.mul(A[i]).add_(s, alpha=B[i]).add_(draw(d, x), alpha=C[i])
        d += 1
        for _ in range(corrector_steps):
            s = score(x, g.t[i + 1])
            check(k, s, i, times[i + 1])
            k += 1
            z = draw(d, x)
            d += 1
            ratio = z.flatten(1).norm(dim=1) / s.flatten(1).norm(dim=1).clamp_min(1e-30)
            step = ((2 * a_corr[i] * snr**2) * ratio**2).clamp_max(max_step[i])
            step = step.reshape((-1,) + (1,) * (x.ndim - 1))
            x = x + step * s + (2 * step).sqrt() * z
    if denoise:
        x = final_denoise(score, x, g, check, k, callback)
    check.raise_if_bad()
    return x
