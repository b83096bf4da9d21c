"""Time grids for sampling: decreasing float64 tensors of process times, from t_max down to t_min.

Each takes the number of steps (intervals) n and returns n + 1 times. A sampler evaluates the score at each
grid time (and, with `denoise=True`, returns Tweedie's x0 estimate at the last one).
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import Tensor

from .processes import Process

if TYPE_CHECKING:
    from .score import ScoreFn

__all__ = [
    "uniform_t",
    "uniform_log_snr",
    "karras",
    "ddpm_steps",
    "jump_log_snr",
    "optimized",
    "check_grid",
    "GRIDS",
    "PILOT_SEED",
]


def _ends(process: Process, t_min: float | None, t_max: float | None) -> tuple[float, float]:
    lo = process.t_min if t_min is None else float(t_min)
    hi = process.t_max if t_max is None else float(t_max)
    process.check_t(torch.tensor([lo, hi], dtype=torch.float64))
    if not lo < hi:
        raise ValueError(f"need t_min < t_max, got t_min={lo!r}, t_max={hi!r}")
    return lo, hi


def _check_steps(n: int) -> None:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"the number of steps must be a non-negative integer, got {n!r}")


def uniform_t(process: Process, n: int, t_min: float | None = None, t_max: float | None = None) -> Tensor:
    """n steps uniform in t (Song et al. 2021); on DiscreteVP with n = N - 1 these are DDPM's steps N..1."""
    _check_steps(n)
    lo, hi = _ends(process, t_min, t_max)
    return torch.linspace(hi, lo, n + 1, dtype=torch.float64)


def uniform_log_snr(process: Process, n: int, t_min: float | None = None, t_max: float | None = None) -> Tensor:
    """n steps uniform in log-SNR (DPM-Solver's 'logSNR' grid)."""
    _check_steps(n)
    lo, hi = _ends(process, t_min, t_max)
    lam = process.log_snr(torch.tensor([hi, lo], dtype=torch.float64))
    ts = process.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), n + 1, dtype=torch.float64))
    ts[0], ts[-1] = hi, lo  # exact ends despite round-off in the inverse
    return ts


def karras(
    process: Process, n: int, rho: float = 7.0, t_min: float | None = None, t_max: float | None = None
) -> Tensor:
    """EDM's grid (Karras et al. 2022, eq. 5): the noise level sigma/alpha uniform in sigma^(1/rho)."""
    _check_steps(n)
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho!r}")
    lo, hi = _ends(process, t_min, t_max)
    lam = process.log_snr(torch.tensor([hi, lo], dtype=torch.float64))
    s_max, s_min = torch.exp(-0.5 * lam).tolist()  # sigma / alpha = exp(-log_snr / 2)
    r = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    sig = (s_max ** (1 / rho) + r * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    ts = process.t_from_log_snr(-2 * torch.log(sig))
    ts[0], ts[-1] = hi, lo
    return ts


def ddpm_steps(process: Process, n: int) -> Tensor:
    """n steps through DDPM's integer steps N..1, evenly spaced and rounded (needs a process with num_steps)."""
    _check_steps(n)
    big_n = getattr(process, "num_steps", None)
    if big_n is None:
        raise ValueError(f"ddpm_steps needs a discrete process (DiscreteVP), got {process!r}")
    if n > big_n - 1:
        raise ValueError(f"{process!r} has {big_n} steps, so at most {big_n - 1} sampling steps; got {n}")
    steps = torch.linspace(big_n, 1, n + 1, dtype=torch.float64).round()
    return steps / big_n


def jump_log_snr(
    process: Process,
    n: int,
    s1: float | None = None,
    s2: float | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
) -> Tensor:
    """n steps: t_max, then sigma/alpha = s1, then n - 1 times uniform in log-SNR from sigma/alpha = s2 to t_min.

    One step jumps from the prior's noise level to s1 and one more to s2, where the data's structure appears;
    the rest of the budget is spread uniformly in log-SNR below it (with n = 2 the tail is t_min alone).
    Defaults: s1 = min(10, (sigma/alpha at t_max) / 2), s2 = min(2, s1 / 2). With n < 2 it is uniform_log_snr.
    """
    _check_steps(n)
    if n < 2:  # nothing to jump over
        return uniform_log_snr(process, n, t_min, t_max)
    lo, hi = _ends(process, t_min, t_max)
    lam_hi, lam_lo = process.log_snr(torch.tensor([hi, lo], dtype=torch.float64)).tolist()
    r_hi, r_lo = math.exp(-0.5 * lam_hi), math.exp(-0.5 * lam_lo)  # sigma / alpha at t_max and t_min
    s1 = min(10.0, r_hi / 2) if s1 is None else float(s1)
    s2 = min(2.0, s1 / 2) if s2 is None else float(s2)
    if not s1 > s2:
        raise ValueError(f"need s1 > s2, got s1 = {s1!r}, s2 = {s2!r}")
    # with a relative margin, so that round-off in t_from_log_snr cannot put s1 or s2 on an end time
    if not s2 > r_lo * (1 + 1e-9):
        raise ValueError(f"s2 = {s2!r} must exceed sigma/alpha = {r_lo:.6g} at t_min = {lo!r}")
    if not s1 < r_hi * (1 - 1e-9):
        raise ValueError(f"s1 = {s1!r} must be below sigma/alpha = {r_hi:.6g} at t_max = {hi!r}")
    tail = torch.linspace(-2 * math.log(s2), lam_lo, n - 1, dtype=torch.float64).tolist() if n > 2 else [lam_lo]
    lam = torch.tensor([lam_hi, -2 * math.log(s1)] + tail, dtype=torch.float64)
    ts = process.t_from_log_snr(lam)
    ts[0], ts[-1] = hi, lo  # exact ends despite round-off in the inverse
    return ts


PILOT_SEED = 987_654_321  # the pilot batch's seed in SamplerSpec.grid_for; no benchmark or CLI run draws with it


def _grid_from_increments(process: Process, lam_ends: tuple, logits) -> Tensor:
    """Times at log-SNR lam_0 + (lam_n - lam_0) * cumsum(softmax([0, logits])): decreasing t for any logits."""
    w = torch.cat([torch.zeros(1, dtype=torch.float64), torch.as_tensor(logits, dtype=torch.float64)])
    c = torch.cat([torch.zeros(1, dtype=torch.float64), torch.softmax(w, 0).cumsum(0)])
    ts = process.t_from_log_snr(lam_ends[0] + (lam_ends[1] - lam_ends[0]) * c)
    ts[0], ts[-1] = process.t_max, process.t_min
    return ts


def optimized(
    process: Process,
    n: int,
    score: ScoreFn,
    sampler: Callable,
    x: Tensor | Sequence[int],
    *,
    generator: torch.Generator | None = None,
    inits: Sequence[str] = ("log_snr", "jump", "karras", "uniform_t"),
    max_evals: int = 2000,
    step: float = 0.3,
    huber: float = 0.9,
    rtol: float | None = None,
    atol: float | None = None,
    **sampler_options,
) -> Tensor:
    """n steps placed to minimise a deterministic sampler's error on a pilot batch (optimised time steps).

    The reference is the probability-flow ODE from the pilot prior samples x (or a shape to draw them from
    `process.prior` with `generator`), solved by dopri5 to rtol/atol (1e-9 in float64, 1e-5 otherwise), then
    Tweedie's x0 at t_min, as every sampler ends. The interior times, parametrised by log-SNR increments, minimise
    the log of the mean Huber loss of ||sampler(x, ts) - reference||² (quadratic up to the `huber` quantile of the
    first applicable init grid's squared errors, so that pilots that cross between modes do not dominate) by
    Nelder-Mead (first simplex: each log increment moved by `step`), started from the best of the `inits` grids;
    in the spirit of Xue et al. 2024 ("Accelerating diffusion sampling with optimized time steps") and Sabour et
    al. 2024 ("Align Your Steps"). Only `score` is used, so it serves learned models as well as exact ones. Cost:
    one ODE solve plus about max_evals sampler runs (max_evals * NFE score evaluations) on the pilot batch. Draw
    the pilot batch independently of the samples you evaluate. A ValueError from the sampler on the first init
    grid (bad sampler_options, a non-finite score) is raised; later ones mark a grid as infeasible.
    """
    from .samplers.ode import probability_flow  # samplers import this module

    _check_steps(n)
    if not callable(sampler):
        raise ValueError(f"sampler must be a callable sampler function, got {sampler!r}")
    if not isinstance(max_evals, int) or max_evals < 1:
        raise ValueError(f"max_evals must be a positive integer, got {max_evals!r}")
    if not 0 < huber <= 1:
        raise ValueError(f"huber (a quantile) must be in (0, 1], got {huber!r}")
    if not step > 0:
        raise ValueError(f"step must be positive, got {step!r}")
    unknown = [g for g in inits if g not in GRIDS or g == "optimized"]
    if unknown or not inits:
        raise ValueError(f"inits must name grids from {', '.join(g for g in GRIDS if g != 'optimized')}; got {inits!r}")
    if not isinstance(x, Tensor):
        x = process.prior(tuple(x), generator=generator, dtype=torch.float64)
    if n < 2:  # no interior time to place
        return uniform_log_snr(process, n)
    lam_ends = tuple(process.log_snr(torch.tensor([process.t_max, process.t_min], dtype=torch.float64)).tolist())
    tol = 1e-9 if x.dtype == torch.float64 else 1e-5
    ref = probability_flow(score, process, x, uniform_log_snr(process, 1), method="dopri5",
                           rtol=tol if rtol is None else rtol, atol=tol if atol is None else atol)
    dims = tuple(range(1, x.ndim))
    if "progress" in inspect.signature(sampler).parameters:  # no bar per pilot run (there are ~max_evals of them)
        sampler_options = {"progress": False, **sampler_options}

    def errors(logits, strict: bool = False) -> Tensor | None:
        ts = _grid_from_increments(process, lam_ends, logits)
        try:
            out = sampler(score, process, x, ts, **sampler_options)
        except ValueError:  # a grid collapsed by round-off (times not strictly decreasing)
            if strict:
                raise
            return None
        return ((out - ref) ** 2).sum(dims)

    def loss(logits, e: Tensor | None = None) -> float:
        # Huber in the distance: squared below sqrt(c), linear above, so that the few pilots whose trajectories
        # cross between modes (and move by the modes' spacing) do not outweigh the bulk
        e = errors(logits) if e is None else e
        if e is None:
            return math.inf
        v = float(torch.where(e < c, e, 2 * (c * e).sqrt() - c).mean())
        return math.log(max(v, 1e-300)) if math.isfinite(v) else math.inf

    starts, c = [], None
    for name in inits:
        try:
            lam = process.log_snr(GRIDS[name](process, n))
        except ValueError:  # e.g. ddpm on a continuous process
            continue
        d = (lam[1:] - lam[:-1]).clamp_min(1e-12)
        logits = torch.log(d[1:] / d[0]).numpy()
        e = None
        if c is None:  # the scale of the Huber loss: a quantile of the first grid's squared errors
            e = errors(logits, strict=True)  # a valid grid: an error here is the sampler's or the score's
            finite = e[torch.isfinite(e)]
            c = float(finite.quantile(huber)) if finite.numel() else 0.0
            c = c if c > 0 else math.inf
        starts.append((loss(logits, e), name, logits))
    if not starts:
        raise ValueError(f"none of the initial grids {list(inits)!r} applies to {process!r}")
    best, _, logits = min(starts, key=lambda s: s[0])
    if max_evals > len(starts):
        import numpy as np
        from scipy.optimize import minimize

        # scipy's default first simplex moves a zero logit by 0.00025 only: start with steps of `step` instead
        simplex = np.vstack([logits, logits + step * np.eye(len(logits))])
        res = minimize(loss, logits, method="Nelder-Mead", options=dict(
            maxfev=max_evals - len(starts), xatol=1e-6, fatol=1e-8, adaptive=True, initial_simplex=simplex))
        if res.fun < best:
            logits = res.x
    return check_grid(process, _grid_from_increments(process, lam_ends, logits))


# name -> grid for the CLI and benchmarks: each is f(process, n), except "optimized", which also needs the score,
# the sampler and a pilot batch (SamplerSpec.grid_for supplies them)
GRIDS = {"uniform_t": uniform_t, "log_snr": uniform_log_snr, "karras": karras, "ddpm": ddpm_steps, "jump": jump_log_snr,
         "optimized": optimized}


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
