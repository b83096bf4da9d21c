"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, appendix D.2), and bits/dim.

Along dx/dt = F(x, t) = f(t) x - ½ g(t)² score(x, t) the density obeys d log p_t(x(t)) / dt = -div F, so
integrating x from t_min to t_max together with the divergence gives

    log p_{t_min}(x) = prior_logp(x(t_max)) + ∫_{t_min}^{t_max} div F(x(t), t) dt,
    div F = f(t) D - ½ g(t)² div score.

div score is exact (autograd, one vector-Jacobian product per data dimension: for low dimensions) or Hutchinson's
estimate εᵀ (∂score/∂x) ε with probes ε fixed over the whole solve (FFJORD, Grathwohl et al. 2019).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ._utils import check_batch, check_finite
from .processes import Process
from .samplers._common import ADAPTIVE_METHODS, FIXED_METHODS, check_ode_method, odeint, pf_drift
from .schedules import time_range
from .score import CountEvals, ScoreFn

__all__ = ["LikelihoodResult", "log_likelihood", "divergence", "bits_per_dim", "dequantize"]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")

# Exact divergence: at most this many Jacobian entries (columns x batch x D) per batched backward pass.
_MAX_JACOBIAN_ENTRIES = 1 << 24


class LikelihoodResult(NamedTuple):
    """log_p = prior_logp + delta_logp, per sample (B,), in nats; nfe counts the score evaluations made.

    std_err is the standard error over Hutchinson probes (n_probes >= 2), otherwise None; prior_logp and
    delta_logp (the integrated divergence) are means over probes; z is x carried to t_max (the latent code).
    """

    log_p: Tensor
    nfe: int
    std_err: Tensor | None
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor


def divergence(fn: Callable[[Tensor], Tensor], x: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(fn(x), div fn(x)) per sample for a batched fn: (B, ...) -> (B, ...) whose samples are independent.

    With eps = None the divergence is exact (one vector-Jacobian product per dimension, batched); with a probe eps
    of x's shape it is Hutchinson's estimate epsᵀ (∂fn/∂x) eps. fn(x) comes back detached.
    """
    with torch.enable_grad():
        y = x.detach().requires_grad_(True)
        out = fn(y)
        if out.shape != y.shape:
            raise ValueError(f"fn returned shape {tuple(out.shape)} for x of shape {tuple(y.shape)}")
        if not out.requires_grad:
            raise ValueError("the divergence needs a score differentiable in x, but its output carries no "
                             "gradient (it ignores x, or detaches it or runs under torch.no_grad)")
        if eps is not None:
            (vjp,) = torch.autograd.grad(out, y, grad_outputs=eps, allow_unused=True)
            if vjp is None:  # out depends on parameters only, not on x: div = 0
                return out.detach(), y.new_zeros(y.shape[0])
            return out.detach(), (vjp * eps).flatten(1).sum(1)
        b, d = y.shape[0], y[0].numel()
        chunk = max(1, min(d, _MAX_JACOBIAN_ENTRIES // max(b * d, 1)))
        div = y.new_zeros(b)
        for start in range(0, d, chunk):
            cols = torch.arange(start, min(start + chunk, d), device=y.device)
            # grad_outputs[j, b] = e_{cols[j]} for every sample: row cols[j] of each sample's Jacobian
            v = y.new_zeros(len(cols), b, d)
            v[torch.arange(len(cols), device=y.device), :, cols] = 1
            (rows,) = torch.autograd.grad(
                out, y, grad_outputs=v.reshape((len(cols),) + out.shape), is_grads_batched=True,
                retain_graph=start + chunk < d, allow_unused=True,
            )
            if rows is None:  # out does not depend on x
                return out.detach(), div
            rows = rows.reshape(len(cols), b, d)
            div = div + rows[torch.arange(len(cols), device=y.device), :, cols].sum(0)
    return out.detach(), div


_divergence = divergence  # log_likelihood's argument `divergence` shadows the function


def _check_args(x, divergence, n_probes, probe, rtol, atol, method, steps) -> None:
    check_batch(x)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; expected one of {DIVERGENCES}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; expected one of {PROBES}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be an integer >= 1, got {n_probes!r}")
    if method in FIXED_METHODS:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"the fixed-step method {method!r} needs steps, an integer >= 1; got steps={steps!r}")
    elif method in ADAPTIVE_METHODS and steps is not None:
        raise ValueError(f"steps={steps!r} applies to fixed-step methods {tuple(FIXED_METHODS)}, not {method!r}")
    check_ode_method(method, rtol, atol, x.dtype)


def _probes(y0: Tensor, reps: int, probe: str, generator: torch.Generator | None) -> Tensor:
    """Hutchinson probes, `reps` consecutive rows per sample. A sample's Rademacher probes are distinct (drawn without
    replacement; with more probes than the 2^D sign patterns, distinct within each block of 2^D): equal probes shrink
    the standard error, to exactly 0 when all coincide, while the estimate keeps its error."""
    if probe == "gaussian":
        return torch.randn(y0.shape, generator=generator, device=y0.device, dtype=y0.dtype)
    d = y0[0].numel()
    bits = torch.randint(0, 2, y0.shape, generator=generator, device=y0.device)
    if reps > 1:  # redraw each probe equal to an earlier one of its block (setup before the solve, not a hot loop)
        flat = bits.reshape(-1, reps, d)
        block = torch.arange(reps, device=y0.device) // (reps if d >= 62 else min(reps, 2**d))
        earlier = torch.ones(reps, reps, dtype=torch.bool, device=y0.device).tril(-1) & (block[:, None] == block)
        while True:
            same = ((flat[:, :, None, :] == flat[:, None, :, :]).all(-1) & earlier).any(-1)  # (B, reps)
            if not bool(same.any()):
                break
            flat[same] = torch.randint(0, 2, (int(same.sum()), d), generator=generator, device=y0.device)
        bits = flat.reshape(y0.shape)
    return bits.to(y0.dtype).mul_(2).sub_(1)


def log_likelihood(
    score: ScoreFn,
    process: Process,
    x: Tensor,
    *,
    divergence: str = "exact",
    n_probes: int = 1,
    probe: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    steps: int | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    generator: torch.Generator | None = None,
) -> LikelihoodResult:
    """log p_{t_min}(x) by the probability-flow ODE (Song et al. 2021, eq. 39), in x's device and dtype.

    divergence: "exact" (D vector-Jacobian products per evaluation, for low dimensions) or "hutchinson": each
        sample is repeated n_probes times, each copy with its own probe ("rademacher" or "gaussian", drawn once
        from generator and fixed over the solve); log_p is the mean over probes and std_err its standard error.
        Probes estimate div score only; f(t) D is added exactly. n_probes is ignored by the exact divergence.
    method: adaptive ("dopri5", ...; rtol, atol) or fixed-step ("euler", "midpoint", "heun2", "heun3", "rk4") with
        `steps` uniform steps in t. A fixed method makes the same number of score evaluations (stages x steps) on
        every call, whatever the data, so all ranks of a DistributedDataParallel job stay in step; an adaptive
        method's count depends on the batch.
    t_min, t_max: the integration range (default the process's); log_p is the density of x_{t_min}, and
        x(t_max) is scored under the process prior N(0, prior_std² I).
    """
    _check_args(x, divergence, n_probes, probe, rtol, atol, method, steps)
    lo, hi = time_range(process, t_min, t_max)
    check_finite(x, "x")
    b, d = x.shape[0], x[0].numel()
    reps = n_probes if divergence == "hutchinson" else 1
    y0 = x.repeat_interleave(reps, dim=0) if reps > 1 else x
    eps = _probes(y0, reps, probe, generator) if divergence == "hutchinson" else None
    counted = CountEvals(score)
    n = y0.shape[0]

    def ode(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        # everything stays on the device (no host synchronisation)
        tb = t.expand(n)
        s, div_s = _divergence(lambda y: counted(y, tb), state[0], eps)
        return pf_drift(process, t, state[0], s), process.f(t) * d - (0.5 * process.g2(t)) * div_s  # div of the drift

    if method in FIXED_METHODS:
        tt = torch.linspace(lo, hi, steps + 1, dtype=torch.float64)
    else:
        tt = torch.tensor([lo, hi], dtype=torch.float64)
    state0 = (y0.detach(), y0.new_zeros(n))
    with torch.no_grad():
        xs, deltas = odeint(ode, state0, tt, method=method, rtol=rtol, atol=atol)
        prior = process.prior_logp(xs[-1]).reshape(b, reps)
        delta = deltas[-1].reshape(b, reps)
    log_p = prior + delta
    check_finite(log_p, "the log-likelihood (the score returned NaN or inf, or the ODE diverged)")
    std_err = log_p.std(dim=1) / math.sqrt(reps) if reps > 1 else None
    z = xs[-1][::reps]  # every probe's copy of a sample follows the same x trajectory
    return LikelihoodResult(log_p.mean(1), counted.nfe, std_err, prior.mean(1), delta.mean(1), z)


# -- discrete data ---------------------------------------------------------------------------------------------------


def _bin_width(n_levels: int, data_range: tuple[float, float]) -> float:
    if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2:
        raise ValueError(f"n_levels must be an integer >= 2, got {n_levels!r}")
    a, b = (float(v) for v in data_range)
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise ValueError(f"data_range must be finite with low < high, got {tuple(data_range)!r}")
    return (b - a) / n_levels


def bits_per_dim(
    log_p: Tensor, dim: int, *, n_levels: int = 256, data_range: tuple[float, float] = (-1.0, 1.0)
) -> Tensor:
    """Bits per dimension of discrete data from the continuous log-density log_p (nats) of dequantised data.

    Convention (score_sde, Glow): level k in {0..L-1} owns the bin [a + k Δ, a + (k + 1) Δ) of data_range = (a, b),
    Δ = (b - a) / L, so the bins tile data_range; `dequantize` draws from them. With D values per sample,
    P(k) = ∫_bin p = Δ^D E_u[p(a + (k + u) Δ)], and by Jensen log P(k) >= E_u[log p(a + (k + u) Δ)] + D log Δ:
    the expected bound in bits/dim, for log_p evaluated at dequantised data, is

        bits/dim = -(log_p + D log Δ) / (D ln 2);

    the uniform density on data_range gives log2(L), and for 8-bit data in [-1, 1] this is -log_p / (D ln 2) + 7.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    delta = _bin_width(n_levels, data_range)
    return -(log_p + dim * math.log(delta)) / (dim * math.log(2.0))


def dequantize(
    x: Tensor,
    n_levels: int = 256,
    data_range: tuple[float, float] = (-1.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform dequantisation for `bits_per_dim`: x on the grid a + k (b - a) / (L - 1) -> a + (k + u) (b - a) / L.

    x is discrete data scaled the usual way (k / (L - 1) mapped onto data_range, e.g. 8-bit images as 2 k / 255 - 1);
    u ~ U[0, 1) per value from generator. The result lies in data_range and floor((y - a) / Δ) recovers k.
    """
    delta = _bin_width(n_levels, data_range)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    a, b = (float(v) for v in data_range)
    kf = (x - a) * ((n_levels - 1) / (b - a))
    k = kf.round()
    bad = ~((k - kf).abs() <= 1e-3) | (k < 0) | (k > n_levels - 1)
    if bool(bad.any()):
        v = x.flatten()[bad.flatten().nonzero()[0]].item()
        raise ValueError(f"x = {v!r} is not one of the {n_levels} levels on data_range {tuple(data_range)!r}")
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return a + (k + u) * delta
