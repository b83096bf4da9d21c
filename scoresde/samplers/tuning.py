"""Pilot-batch tuning from the score alone: optimised time grids and Analytic-DPM's reverse variance.

Both draw a pilot batch of prior samples with PILOT_SEED (independent of the samples being evaluated) and solve the
probability-flow ODE from it; only the score is used, so learned models are tuned as exact ones are.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from .._utils import check_batch
from ..processes import Process
from ..schedules import check_grid, karras, scaled_log_snr, uniform_log_snr, uniform_t
from ..score import ScoreFn, tweedie
from ._common import odeint, pf_drift, prepare
from .ode import probability_flow
from .sde import ancestral

__all__ = ["optimized", "data_scale", "analytic_x0_var", "ancestral_analytic", "pilot_batch", "PILOT_SEED"]


PILOT_SEED = 987_654_321  # the seed of every pilot batch; no benchmark or CLI run draws samples with it


def data_scale(score: ScoreFn, process: Process, x: Tensor) -> float:
    """The data's largest standard deviation, from Tweedie's x0 at t_max on pilot prior samples x (one evaluation).

    For data of covariance eigenvalue v, Tweedie's x0 at t_max has covariance eigenvalue c = alpha² v² /
    (alpha² v + sigma²) (exact for Gaussian data, the high-noise limit of any data); the top eigenvalue c of the
    pilot's x0 covariance is solved for v. An error in the score only adds spread, so the estimate errs large,
    towards uniform_log_snr in `scaled_log_snr`. At least the noise level sigma/alpha at t_min.
    """
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"the pilot batch needs shape (n, ...) with n >= 2, got {getattr(x, 'shape', type(x))}")
    ts = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
    (a, a_min), (sig, sig_min) = process.alpha(ts).tolist(), process.sigma(ts).tolist()
    t = torch.full((x.shape[0],), process.t_max, dtype=x.dtype, device=x.device)
    x0 = tweedie(x, score(x, t), a, sig).detach().double().flatten(1).cpu()
    if not bool(torch.isfinite(x0).all()):
        raise ValueError(f"the score returned NaN or inf on the pilot batch at t_max = {process.t_max!r}")
    c = float(torch.linalg.matrix_norm(x0 - x0.mean(0), ord=2)) ** 2 / (x.shape[0] - 1)
    v = 0.5 * (c + math.sqrt(c * c + 4 * c * (sig / a) ** 2))
    return max(math.sqrt(v), sig_min / a_min)


def _grid_from_increments(process: Process, lam_ends: tuple, logits) -> Tensor:
    """Times at log-SNR lam_0 + (lam_n - lam_0) * cumsum(softmax([0, logits])): decreasing t for any logits."""
    w = torch.cat([torch.zeros(1, dtype=torch.float64), torch.as_tensor(logits, dtype=torch.float64)])
    c = torch.cat([torch.zeros(1, dtype=torch.float64), torch.softmax(w, 0).cumsum(0)])
    ts = process.t_from_log_snr(lam_ends[0] + (lam_ends[1] - lam_ends[0]) * c)
    ts[0], ts[-1] = process.t_max, process.t_min
    return ts


def optimized(
    process: Process,
    steps: int,
    score: ScoreFn,
    sampler: Callable,
    x: Tensor | Sequence[int],
    *,
    generator: torch.Generator | None = None,
    inits: Sequence[Callable] | None = None,
    max_evals: int = 200,
    step: float = 0.3,
    huber: float = 0.9,
    rtol: float | None = None,
    atol: float | None = None,
    **sampler_options,
) -> Tensor:
    """`steps` steps placed to minimise a deterministic sampler's error on a pilot batch (optimised time steps).

    The reference is the probability-flow ODE from the pilot prior samples x (or a shape to draw them from
    `process.prior` with `generator`), solved by dopri5 to rtol/atol (1e-6 in float64, 1e-5 otherwise), then
    Tweedie's x0 at t_min, as every sampler ends. Two errors per pilot between the sampler's end point x̂ and the
    reference x*: the squared distance ||x̂ - x*||², and the squared change of log-density, estimated from the score
    by the trapezoid rule on the segment, log p(x̂) - log p(x*) ≈ ½ (s(x̂) + s(x*)) · (x̂ - x*) with s the score at
    t_min (exact for a Gaussian; invariant to any invertible linear map of the data, where the distance weighs an
    error across a narrow component and along a wide one alike; one more score evaluation per run). The interior
    times, parametrised by log-SNR increments, minimise the sum of the logs of the two mean Huber losses (each
    quadratic up to the `huber` quantile of the first applicable init grid's errors, so that pilots that cross
    between modes do not dominate; the logs make the sum free of units) by Nelder-Mead (first simplex: each log
    increment moved by `step`), started from the best of the `inits` grids (default: scaled_log_snr at the data
    scale estimated from x, uniform_log_snr, karras, uniform_t); in the spirit of Xue et al. 2024 ("Accelerating
    diffusion sampling with optimized time steps") and Sabour et al. 2024 ("Align Your Steps"). Only `score` is
    used, so it serves learned models as well as exact ones. Cost: one ODE solve (~100-250 evaluations) plus
    max_evals sampler runs ((NFE + 1) score evaluations each) on the pilot batch: measured 1.5-4 s for 1000
    pilots of the 2-D and 5-D mixtures of benchmarks.robustness at NFE 8-10 on one shared CPU thread, 5.5-8.5 s for
    6 components in 16 dimensions (the score's cost sets it). Draw the pilot batch independently of the samples you
    evaluate. A ValueError from the sampler on the first init grid (bad sampler_options, a non-finite score) is
    raised; later ones mark a grid as infeasible.
    """
    _check_options(steps, sampler, max_evals, huber, step, inits)
    if not isinstance(x, Tensor):
        x = process.prior(tuple(x), generator=generator, dtype=torch.float64)
    if inits is None:
        inits = (_scaled_grid(data_scale(score, process, x)), uniform_log_snr, karras, uniform_t)
    if steps < 2:  # no interior time to place
        return uniform_log_snr(process, steps)
    lam_ends = tuple(process.log_snr(torch.tensor([process.t_max, process.t_min], dtype=torch.float64)).tolist())
    tol = 1e-6 if x.dtype == torch.float64 else 1e-5
    ref = probability_flow(score, process, x, uniform_log_snr(process, 1), method="dopri5",
                           rtol=tol if rtol is None else rtol, atol=tol if atol is None else atol)
    errors = _end_point_errors(score, process, x, ref, lam_ends, sampler, sampler_options)

    def loss(logits, es: tuple | None = None) -> float:
        es = errors(logits) if es is None else es
        return math.inf if es is None else _huber_log_loss(es, scales)

    starts, scales = [], None
    for grid in inits:
        try:
            lam = process.log_snr(grid(process, steps))
        except ValueError:  # e.g. ddpm on a continuous process
            continue
        d = (lam[1:] - lam[:-1]).clamp_min(1e-12)
        logits = torch.log(d[1:] / d[0]).numpy()
        es = None
        if scales is None:  # the scales of the Huber losses: a quantile of the first grid's errors
            es = errors(logits, strict=True)  # a valid grid: an error here is the sampler's or the score's
            scales = []
            for e in es:
                finite = e[torch.isfinite(e)]
                c = float(finite.quantile(huber)) if finite.numel() else 0.0
                scales.append(c if c > 0 else math.inf)
        starts.append((loss(logits, es), grid.__name__, logits))
    if not starts:
        raise ValueError(f"none of the initial grids {[g.__name__ for g in inits]} applies to {process!r}")
    best, _, logits = min(starts, key=lambda s: s[0])
    if max_evals > len(starts):
        logits = _nelder_mead(loss, logits, best, max_evals - len(starts), step)
    return check_grid(process, _grid_from_increments(process, lam_ends, logits))


def _end_point_errors(score, process, x, ref, lam_ends, sampler, sampler_options) -> Callable:
    """errors(logits, strict=False) -> (||x̂ - x*||², (log p(x̂) - log p(x*))²) per pilot, or None for a grid the
    sampler rejects; the log-density change by the trapezoid rule on the score at t_min (alpha-scaled points)."""
    dims = tuple(range(1, x.ndim))
    a_min = float(process.alpha(torch.tensor([process.t_min], dtype=torch.float64)))
    t_min = torch.full((x.shape[0],), process.t_min, dtype=x.dtype, device=x.device)
    s_ref = score(a_min * ref, t_min)  # the score of p_{t_min} at the reference's end points
    if not bool(torch.isfinite(s_ref).all()):
        raise ValueError(f"the score returned NaN or inf at t_min = {process.t_min!r} on the pilots' ODE end points")
    if "progress" in inspect.signature(sampler).parameters:  # no bar per pilot run (there are ~max_evals of them)
        sampler_options = {"progress": False, **sampler_options}

    def errors(logits, strict: bool = False) -> tuple[Tensor, Tensor] | None:
        ts = _grid_from_increments(process, lam_ends, logits)
        try:
            out = sampler(score, process, x, ts, **sampler_options)
        except ValueError:  # a grid collapsed by round-off (times not strictly decreasing)
            if strict:
                raise
            return None
        s_out = score(a_min * out, t_min)
        if not bool(torch.isfinite(s_out).all()):  # a pilot sync, not a sampling loop
            if strict:
                raise ValueError(f"the score returned NaN or inf at t_min = {process.t_min!r} on the sampler's end "
                                 f"points of the pilot batch")
            return None  # a grid whose end points the score cannot evaluate is infeasible
        d = out - ref
        dlogp = 0.5 * a_min * ((s_out + s_ref) * d).sum(dims)
        return (d**2).sum(dims), dlogp**2

    return errors


def _huber_log_loss(es: tuple, scales: list) -> float:
    """The sum over the error kinds of log mean Huber(e; c): quadratic below the scale c, linear in the square root
    above, so that the few pilots whose trajectories cross between modes (and move by the modes' spacing) do not
    outweigh the bulk; the logs make the sum free of units."""
    total = 0.0
    for e, c in zip(es, scales):
        v = float(torch.where(e < c, e, 2 * (c * e).sqrt() - c).mean())
        if not math.isfinite(v):
            return math.inf
        total += math.log(max(v, 1e-300))
    return total


def _scaled_grid(scale: float) -> Callable:
    """scaled_log_snr at this data scale, as a grid(process, steps)."""

    def scaled_log_snr_(process: Process, steps: int) -> Tensor:
        return scaled_log_snr(process, steps, scale)

    scaled_log_snr_.__name__ = "scaled_log_snr"
    return scaled_log_snr_


def _check_options(steps, sampler, max_evals, huber, step, inits) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"the number of steps must be a non-negative integer, got {steps!r}")
    if not callable(sampler):
        raise ValueError(f"sampler must be a callable sampler function, got {sampler!r}")
    if not isinstance(max_evals, int) or max_evals < 1:
        raise ValueError(f"max_evals must be a positive integer, got {max_evals!r}")
    if not 0 < huber <= 1:
        raise ValueError(f"huber (a quantile) must be in (0, 1], got {huber!r}")
    if not step > 0:
        raise ValueError(f"step must be positive, got {step!r}")
    if inits is not None and (not inits or not all(callable(g) for g in inits)):
        raise ValueError(f"inits must be grid functions grid(process, steps) such as schedules.karras; got {inits!r}")


def _nelder_mead(loss: Callable, logits, best: float, maxfev: int, step: float):
    """Minimise loss from logits (loss `best`) by Nelder-Mead; the better of the start and the optimum."""
    import numpy as np
    from scipy.optimize import minimize

    # scipy's default first simplex moves a zero logit by 0.00025 only: start with steps of `step` instead
    simplex = np.vstack([logits, logits + step * np.eye(len(logits))])
    res = minimize(loss, logits, method="Nelder-Mead", options=dict(
        maxfev=maxfev, xatol=1e-6, fatol=1e-8, adaptive=True, initial_simplex=simplex))
    return res.x if res.fun < best else logits


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
    g = prepare(process, x, ts)
    n = len(g.ts) - 1
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    tol = 1e-6 if x.dtype == torch.float64 else 1e-4
    rtol, atol = (tol if rtol is None else rtol), (tol if atol is None else atol)
    b = x.shape[0]
    if b < 2:
        raise ValueError(f"the pilot batch needs at least 2 samples, got {b}")

    evals = [0]

    def drift(t: Tensor, y: Tensor) -> Tensor:
        s = score(y, t.expand(b))
        evals[0] += 1
        if not bool(torch.isfinite(s).all()):  # a pilot, not a sampling loop: a host sync per evaluation is fine
            raise ValueError(f"the score returned NaN or inf at ODE evaluation {evals[0]} of the pilot batch "
                             f"(t = {float(t):.6g})")
        return pf_drift(process, t, y, s)

    xs = odeint(drift, x, g.ts, method="dopri5", rtol=rtol, atol=atol).unbind(0)
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


def pilot_batch(process: Process, size: int, like: Tensor, seed: int = PILOT_SEED) -> Tensor:
    """`size` prior samples in like's event shape, dtype and device, drawn on the CPU with `seed`."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"the pilot batch size must be an integer >= 2, got {size!r}")
    g = torch.Generator().manual_seed(seed)
    return process.prior((size, *like.shape[1:]), generator=g, dtype=like.dtype).to(like.device)


def ancestral_analytic(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *, pilot: int = 1000, **options
) -> Tensor:
    """`ancestral` with Analytic-DPM's reverse variance (Bao et al. 2022), its x0 variance estimated by
    `analytic_x0_var` on `pilot` prior samples (pilot_batch) through the same score.

    The pilot's evaluations (one adaptive ODE solve, about 100, plus len(ts)) are made through `score`, so a
    CountEvals wrapper counts them; to pay them once for many calls, call `analytic_x0_var` yourself and pass
    `ancestral(..., x0_var=v)`. NFE = pilot evaluations + len(ts) - 1 + denoise.
    """
    check_batch(x)  # before the pilot batch takes x's event shape
    v = analytic_x0_var(score, process, ts, pilot_batch(process, pilot, x))
    return ancestral(score, process, x, ts, x0_var=v, **options)
