"""Langevin dynamics: NCSN's annealed Langevin sampler and plain unadjusted Langevin on a fixed score."""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import as_time, check_positive
from ..processes import Process
from ..score import ScoreFn
from ._common import Callback, FiniteCheck, NoiseFn, finish, noise_source, prepare, progress_range, report

__all__ = ["annealed_langevin", "langevin"]


def annealed_langevin(
    score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *,
    langevin_steps: int = 5,
    step_size: float | None = None,
    generator: torch.Generator | None = None, noise: NoiseFn | None = None,
    callback: Callback | None = None, denoise: bool = True, progress: bool | None = None,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    At each grid time t_i, langevin_steps of x <- x + (e_i / 2) score + sqrt(e_i) z with e_i = step_size * sigma_i² / sigma_L²
    (sigma_L = sigma at the last grid time; step_size defaults to 0.2 sigma_L², NCSN's 2e-5 at sigma_L = 0.01).
    With denoise, a final Tweedie step (Jolicoeur-Martineau et al. 2021). NFE = len(ts) * langevin_steps + denoise.
    """
    if not isinstance(langevin_steps, int) or langevin_steps < 1:
        raise ValueError(f"langevin_steps must be a positive integer, got {langevin_steps!r}")
    g = prepare(process, x, ts)
    sig_l = g.sigma[-1]
    eps = 0.2 * sig_l**2 if step_size is None else step_size
    check_positive("step_size", eps)
    e = [eps * s**2 / sig_l**2 for s in g.sigma]
    n = len(g.ts)
    times = g.ts.tolist()
    draw = noise_source(generator, noise)
    check = FiniteCheck(x, n * langevin_steps + int(denoise))
    k = 0
    for i in progress_range(n, progress, "annealed_langevin"):
        for _ in range(langevin_steps):
            s = score(x, g.t[i])
            check(k, s, i, times[i])
            report(callback, i, times[i], x, s, g.alpha[i], g.sigma[i])
            x = x.add(s, alpha=e[i] / 2).add_(draw(k, x), alpha=e[i] ** 0.5)
            k += 1
    return finish(score, x, g, check, k, callback, denoise)


def langevin(
    score: ScoreFn,
    x: Tensor,
    t: Tensor | float,
    steps: int,
    step_size: float,
    *,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
) -> Tensor:
    """Unadjusted Langevin algorithm on the fixed score at time t: x <- x + (e/2) score + sqrt(e) z."""
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    check_positive("step_size", step_size)
    t = as_time(t, x).expand(x.shape[0])
    draw = noise_source(generator, noise)
    check = FiniteCheck(x, steps)
    for k in range(steps):
        s = score(x, t)
        check(k, s, k, float("nan"))
        x = x.add(s, alpha=step_size / 2).add_(draw(k, x), alpha=step_size**0.5)
    check.raise_if_bad()
    return x
