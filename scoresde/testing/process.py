"""Identity checks of a Process: everything it says must follow from its alpha(t) and sigma(t).

Derivatives are taken by autograd through the public alpha and sigma (central differences when they are not
differentiable), in float64, at times inside the process's range (inside the steps' intervals for a discrete one).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..processes import Process
from .data import knots, sample_times
from .report import Check, Report, worst

__all__ = ["check_process", "PROCESS_CHECKS"]

PROCESS_CHECKS = {
    "drift": "d log alpha/dt = f (f(t) and drift(x, t))",
    "diffusion": "d(sigma²)/dt = 2 f sigma² + g² (g2(t) and diffusion(t)²)",
    "perturb": "perturb(x0, t, eps) = alpha x0 + sigma eps",
    "transition": "transition(s, t) composes to the marginal at t",
    "posterior": "posterior_coefficients(s, t) is Bayes' rule of q(x_s | x0) and q(x_t | x_s)",
    "log_snr": "log_snr = log(alpha² / sigma²)",
    "log_snr_monotone": "log_snr decreases in t",
    "log_snr_inverse": "t_from_log_snr inverts log_snr",
    "prior": "the marginal at t_max matches the prior N(0, prior_std² I)",
    "ddpm_marginal": "the forward steps compose to the marginal: alpha(t_i)² = prod_{j<=i} (1 - beta_j)",
    "ddpm_posterior": "the posterior of step i is Bayes' rule of its forward steps (betas)",
}
_TINY = 1e-300


def _d_dt(fn: Callable[[Tensor], Tensor], t: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """(fn(t), dfn/dt): autograd through fn, or central differences where fn's output carries no gradient."""
    with torch.enable_grad():
        tt = t.detach().requires_grad_(True)
        y = fn(tt)
        if y.requires_grad:
            (d,) = torch.autograd.grad(y.sum(), tt)
            return y.detach(), d
    h = 1e-6 * (hi - lo)
    below, above = (t - h).clamp(lo, hi), (t + h).clamp(lo, hi)
    return y.detach(), (fn(above) - fn(below)) / (above - below)


def _rel(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).abs() / (b.abs() + _TINY)


def _sde_checks(process: Process, t: Tensor, x: Tensor, rtol: float) -> list[Check]:
    lo, hi = process.t_min, process.t_max
    alpha, dalpha = _d_dt(process.alpha, t, lo, hi)
    var, dvar = _d_dt(lambda s: process.sigma(s) ** 2, t, lo, hi)
    dlog_alpha = dalpha / alpha
    f, g2 = process.f(t), process.g2(t)
    # errors in f matter through its integral over the range: 1 / (t_max - t_min) is the rate that sets the scale
    scale_f = f.abs() + dlog_alpha.abs() + 1.0 / (hi - lo)
    err_drift = (process.drift(x, t) - dlog_alpha[:, None] * x).norm(dim=1) / (scale_f * x.norm(dim=1))
    drift = worst("drift", PROCESS_CHECKS["drift"], torch.maximum((f - dlog_alpha).abs() / scale_f, err_drift),
                  rtol, {"t": t})
    g2_ref = dvar - 2 * dlog_alpha * var
    scale_g = dvar.abs() + 2 * (dlog_alpha * var).abs() + g2.abs() + var / (hi - lo)
    err_g = torch.maximum((g2 - g2_ref).abs(), (process.diffusion(t) ** 2 - g2_ref).abs()) / scale_g
    return [drift, worst("diffusion", PROCESS_CHECKS["diffusion"], err_g, rtol, {"t": t})]


def _marginal_checks(process: Process, t: Tensor, x0: Tensor, eps: Tensor, rtol: float) -> list[Check]:
    alpha, sigma = process.alpha(t)[:, None], process.sigma(t)[:, None]
    err_p = (process.perturb(x0, t, eps) - (alpha * x0 + sigma * eps)).norm(dim=1) / (
        (alpha * x0).norm(dim=1) + (sigma * eps).norm(dim=1))
    ts = t.sort().values
    half = ts.shape[0] // 2
    s, u = ts[:half], ts[half:2 * half]
    a_s, a_t, var_s, var_t = process.alpha(s), process.alpha(u), process.sigma(s) ** 2, process.sigma(u) ** 2
    alpha_ts, sigma_ts = process.transition(s, u)
    err_tr = torch.maximum(_rel(alpha_ts * a_s, a_t), _rel(alpha_ts**2 * var_s + sigma_ts**2, var_t))
    a_ts = a_t / a_s
    c_x0, c_xt, std = process.posterior_coefficients(s, u)
    err_post = _posterior_error((c_x0, c_xt, std), a_s, var_s, a_ts, var_t - a_ts**2 * var_s)
    return [
        worst("perturb", PROCESS_CHECKS["perturb"], err_p, rtol, {"t": t}),
        worst("transition", PROCESS_CHECKS["transition"], err_tr, rtol, {"s": s, "t": u}),
        worst("posterior", PROCESS_CHECKS["posterior"], err_post, rtol, {"s": s, "t": u}),
    ]


def _posterior_error(coefficients, a_s: Tensor, var_s: Tensor, a_ts: Tensor, var_ts: Tensor) -> Tensor:
    """Largest relative error of (c_x0, c_xt, std²) against q(x_s | x_t, x0) ∝ N(x_s; a_s x0, var_s)
    N(x_t; a_ts x_s, var_ts), by completing the square."""
    c_x0, c_xt, std = coefficients
    den = var_ts + a_ts**2 * var_s
    ref = (a_s * var_ts / den, a_ts * var_s / den, var_s * var_ts / den)
    errs = [_rel(c_x0, ref[0]), _rel(c_xt, ref[1]), _rel(std**2, ref[2])]
    return torch.stack(errs).amax(0)


def _log_snr_checks(process: Process, t: Tensor, rtol: float) -> list[Check]:
    grid = torch.linspace(process.t_min, process.t_max, t.shape[0], dtype=t.dtype, device=t.device)
    tg = torch.cat([grid, t]).sort().values
    lam = process.log_snr(tg)
    ref = 2 * (torch.log(process.alpha(tg)) - torch.log(process.sigma(tg)))
    span = (lam[0] - lam[-1]).abs() + _TINY
    back = process.t_from_log_snr(lam)
    return [
        worst("log_snr", PROCESS_CHECKS["log_snr"], (lam - ref).abs() / (1 + ref.abs()), rtol, {"t": tg},
              scale="relative to 1 + |log_snr|"),
        worst("log_snr_monotone", PROCESS_CHECKS["log_snr_monotone"], (lam[1:] - lam[:-1]).clamp_min(0) / span,
              0.0, {"t": tg[1:]}, scale="largest increase / log_snr's range"),
        worst("log_snr_inverse", PROCESS_CHECKS["log_snr_inverse"],
              (back - tg).abs() / (process.t_max - process.t_min), rtol, {"t": tg}, scale="relative to t's range"),
    ]


def _prior_check(process: Process, data_std: float, tol: float, device) -> Check:
    """sqrt(2 KL) per dimension from q(x_T | x0), x0 at distance data_std per dimension, to the prior."""
    t_max = torch.tensor(process.t_max, dtype=torch.float64, device=device)
    a, s, p = float(process.alpha(t_max)), float(process.sigma(t_max)), float(process.prior_std)
    r = (s / p) ** 2
    kl = 0.5 * (r - 1 - math.log(r)) + 0.5 * (a * data_std / p) ** 2 if r > 0 else math.inf
    return Check("prior", PROCESS_CHECKS["prior"], math.sqrt(2 * kl), tol, {"t": process.t_max},
                 f"sqrt(2 KL) per dimension, data {data_std} from 0",
                 {"alpha": a, "sigma": s, "prior_std": p})


def _ddpm_checks(process: Process, rtol: float, device) -> list[Check]:
    betas = torch.as_tensor(process.betas, dtype=torch.float64).flatten().to(device)
    n = betas.numel()
    log_ab = torch.cumsum(torch.log1p(-betas), 0)
    ab, one_minus_ab = log_ab.exp(), -torch.expm1(log_ab)
    ti = torch.arange(1, n + 1, dtype=torch.float64, device=device) / n
    err_m = torch.maximum(_rel(process.alpha(ti) ** 2, ab), _rel(process.sigma(ti) ** 2, one_minus_ab))
    checks = [worst("ddpm_marginal", PROCESS_CHECKS["ddpm_marginal"], err_m, rtol, {"t": ti})]
    if n >= 2:  # steps i = 2..N: q(x_{i-1} | x_i, x0)
        coefficients = process.posterior_coefficients(ti[:-1], ti[1:])
        err = _posterior_error(coefficients, ab[:-1].sqrt(), one_minus_ab[:-1], (1 - betas[1:]).sqrt(), betas[1:])
        checks.append(worst("ddpm_posterior", PROCESS_CHECKS["ddpm_posterior"], err, rtol,
                            {"t": ti[1:], "step": torch.arange(2, n + 1)}))
    return checks


def check_process(
    process: Process,
    *,
    t: Tensor | None = None,
    n: int = 64,
    seed: int = 0,
    rtol: float = 1e-6,
    prior_tol: float = 0.05,
    data_std: float = 1.0,
    device: torch.device | str | None = None,
) -> Report:
    """Check a process's identities (PROCESS_CHECKS) at n seeded times (or at t), in float64.

    Drift and diffusion against autograd of alpha and sigma, perturb, transition and posterior against alpha and
    sigma, log_snr (definition, monotone, inverse), the prior at t_max for data within data_std of the origin
    (prior_tol), and for a process with `betas` (DiscreteVP) its forward steps against its marginal and posterior.
    rtol is the relative tolerance of the exact identities.
    """
    if t is None:
        t = sample_times(process, n, seed, interior=True, device=device)
    t = process.check_t(t.to(dtype=torch.float64))
    if t.ndim != 1 or t.shape[0] < 2:
        raise ValueError(f"t must have shape (n,) with n >= 2, got {tuple(t.shape)}")
    g = torch.Generator().manual_seed(seed + 2)
    x0, eps = torch.randn(2, t.shape[0], 3, generator=g, dtype=torch.float64).to(t.device)
    checks = _sde_checks(process, t, x0, rtol) + _marginal_checks(process, t, x0, eps, rtol)
    checks += _log_snr_checks(process, t, rtol) + [_prior_check(process, data_std, prior_tol, t.device)]
    if getattr(process, "betas", None) is not None and knots(process):
        checks += _ddpm_checks(process, rtol, t.device)
    return Report(f"check_process({process!r})", checks)
