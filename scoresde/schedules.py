"""Time grids for sampling: decreasing float64 tensors of process times, from t_max down to t_min.

Each takes the number of steps (intervals) `steps` and returns steps + 1 times; 0 steps is the grid [t_max], on
which a sampler makes no step and (with `denoise=True`) returns Tweedie's x0 at t_max: NFE 1. A sampler evaluates
the score at each grid time (and, with `denoise=True`, returns Tweedie's x0 estimate at the last one).
Grids only: optimised grids, which run a sampler, are in samplers/tuning.py.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .processes import Process

__all__ = [
    "uniform_t",
    "uniform_log_snr",
    "karras",
    "ddpm_steps",
    "scaled_log_snr",
    "check_grid",
    "time_range",
]


def time_range(process: Process, t_min: float | None = None, t_max: float | None = None) -> tuple[float, float]:
    """(t_min, t_max), each defaulting to the process's, checked to lie inside it in increasing order."""
    lo = process.t_min if t_min is None else float(t_min)
    hi = process.t_max if t_max is None else float(t_max)
    process.check_t(torch.tensor([lo, hi], dtype=torch.float64))
    if not lo < hi:
        raise ValueError(f"need t_min < t_max, got t_min={lo!r}, t_max={hi!r}")
    return lo, hi


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"the number of steps must be a non-negative integer, got {steps!r}")


def uniform_t(process: Process, steps: int, t_min: float | None = None, t_max: float | None = None) -> Tensor:
    """`steps` steps uniform in t (Song et al. 2021); on DiscreteVP with steps = N - 1 these are DDPM's steps N..1."""
    _check_steps(steps)
    lo, hi = time_range(process, t_min, t_max)
    return torch.linspace(hi, lo, steps + 1, dtype=torch.float64)


def uniform_log_snr(process: Process, steps: int, t_min: float | None = None, t_max: float | None = None) -> Tensor:
    """`steps` steps uniform in log-SNR (DPM-Solver's 'logSNR' grid)."""
    _check_steps(steps)
    lo, hi = time_range(process, t_min, t_max)
    if steps == 0:
        return torch.tensor([hi], dtype=torch.float64)
    lam = process.log_snr(torch.tensor([hi, lo], dtype=torch.float64))
    ts = process.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), steps + 1, dtype=torch.float64))
    ts[0], ts[-1] = hi, lo  # exact ends despite round-off in the inverse
    return ts


def karras(
    process: Process, steps: int, rho: float = 7.0, t_min: float | None = None, t_max: float | None = None
) -> Tensor:
    """EDM's grid (Karras et al. 2022, eq. 5): the noise level sigma/alpha uniform in sigma^(1/rho)."""
    _check_steps(steps)
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho!r}")
    lo, hi = time_range(process, t_min, t_max)
    if steps == 0:
        return torch.tensor([hi], dtype=torch.float64)
    lam = process.log_snr(torch.tensor([hi, lo], dtype=torch.float64))
    s_max, s_min = torch.exp(-0.5 * lam).tolist()  # sigma / alpha = exp(-log_snr / 2)
    r = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    sig = (s_max ** (1 / rho) + r * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    ts = process.t_from_log_snr(-2 * torch.log(sig))
    ts[0], ts[-1] = hi, lo
    return ts


def ddpm_steps(process: Process, steps: int) -> Tensor:
    """`steps` steps through DDPM's integer steps N..1, evenly spaced and rounded (needs a process with N)."""
    _check_steps(steps)
    big_n = getattr(process, "N", None)
    if big_n is None:
        raise ValueError(f"ddpm_steps needs a discrete process (DiscreteVP), got {process!r}")
    if steps > big_n - 1:
        raise ValueError(f"{process!r} has {big_n} steps, so at most {big_n - 1} sampling steps; got {steps}")
    return torch.linspace(big_n, 1, steps + 1, dtype=torch.float64).round() / big_n


def scaled_log_snr(
    process: Process, steps: int, data_scale: float, t_min: float | None = None, t_max: float | None = None
) -> Tensor:
    """`steps` steps uniform in log-SNR below the data's scale, sparser above it: sigma/alpha = data_scale / sinh²(u/2)
    with u uniform.

    Where sigma/alpha >> data_scale the data prediction is nearly the data mean, which an exponential integrator steps
    over exactly (a step's local error falls as (data_scale / (sigma/alpha))² there), so the steps grow as
    sqrt(sigma/alpha) above data_scale and are uniform in log-SNR below it: the density of steps follows
    (sigma/alpha) / data_scale, whatever the data's scale. The map from u to log-SNR is smooth on the grid's
    range, so every step shrinks as 1/steps (at last) and a sampler on it converges at its order. data_scale: the
    data's largest standard deviation (`samplers.tuning.data_scale` estimates it from the score); a large one
    gives uniform_log_snr.
    """
    _check_steps(steps)
    if isinstance(data_scale, bool) or not isinstance(data_scale, (int, float)) or not (
            math.isfinite(data_scale) and data_scale > 0):
        raise ValueError(f"data_scale must be a positive finite number, got {data_scale!r}")
    lo, hi = time_range(process, t_min, t_max)
    if steps == 0:
        return torch.tensor([hi], dtype=torch.float64)
    lam = process.log_snr(torch.tensor([hi, lo], dtype=torch.float64))
    # u = 2 asinh(sqrt(data_scale / (sigma/alpha))), sigma/alpha = exp(-log_snr / 2)
    u_ends = 2 * torch.asinh(torch.exp(0.5 * math.log(data_scale) + 0.25 * lam))
    u = torch.linspace(float(u_ends[0]), float(u_ends[1]), steps + 1, dtype=torch.float64)
    log_sinh = 0.5 * u + torch.log(-torch.expm1(-u)) - math.log(2)  # log sinh(u / 2), stable for large u
    ts = process.t_from_log_snr(4 * log_sinh - 2 * math.log(data_scale))
    ts[0], ts[-1] = hi, lo  # exact ends despite round-off in the inverse
    return ts


def check_grid(process: Process, ts: Tensor) -> Tensor:
    """Validate a sampling grid: 1-D, strictly decreasing, inside [t_min, t_max]; returned as CPU float64."""
    if not isinstance(ts, Tensor):
        ts = torch.as_tensor(ts, dtype=torch.float64)
    ts = ts.detach().to("cpu", torch.float64)
    if ts.ndim != 1 or ts.numel() < 1:
        raise ValueError(f"the time grid must be a non-empty 1-D tensor, got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError(f"the time grid holds a non-finite value: {ts.tolist()}")
    if ts.numel() > 1:
        d = ts[1:] - ts[:-1]
        if not bool((d < 0).all()):
            i = int((d >= 0).nonzero()[0])
            raise ValueError(
                f"the time grid must be strictly decreasing; ts[{i}] = {ts[i].item()!r} <= ts[{i + 1}] = {ts[i + 1].item()!r}"
            )
    process.check_t(ts)
    if math.isclose(float(ts[-1]), 0.0) and float(process.sigma(ts[-1:])) == 0:
        raise ValueError("the time grid must end where sigma > 0; use denoise=True for the final x0")
    return ts
