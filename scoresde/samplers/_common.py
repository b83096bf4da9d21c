"""What every sampler shares: grid preparation, noise, the non-finite check, progress and callbacks, and the one
probability-flow drift and ODE solver wrapper (the PF-ODE sampler, the pilot of tuning.py and likelihood.py use it).

A sampler precomputes its per-step coefficients as Python floats from the CPU float64 grid, so a step is a few
fused tensor operations with no host-device synchronisation; the only synchronisation is one check at the end.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .._utils import check_batch, progress_range  # noqa: F401  (progress_range: re-exported for the samplers)
from ..processes import Process
from ..schedules import check_grid
from ..score import tweedie

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_METHODS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}  # score evaluations per step

NoiseFn = Callable[[int, Tensor], Tensor]
Callback = Callable[[dict], None]


class Grid(NamedTuple):
    ts: Tensor  # CPU float64 times, decreasing
    t: list  # per grid time, a (B,) tensor of that time in x's dtype and device
    alpha: list  # Python floats
    sigma: list
    log_snr: list


def prepare(process: Process, x: Tensor, ts: Tensor) -> Grid:
    """Validate x and the grid; precompute per-time batches and coefficients."""
    check_batch(x)
    ts = check_grid(process, ts)
    t_dev = ts.to(device=x.device, dtype=x.dtype)[:, None].expand(-1, x.shape[0])
    return Grid(
        ts,
        list(t_dev.unbind(0)),
        process.alpha(ts).tolist(),
        process.sigma(ts).tolist(),
        process.log_snr(ts).tolist(),
    )


def noise_source(generator: torch.Generator | None, noise: NoiseFn | None) -> NoiseFn:
    """noise(k, x) -> the k-th standard normal draw like x (k counts draws from 0): the caller's, or from generator."""
    if noise is not None:
        return noise

    def draw(i: int, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    return draw


class FiniteCheck:
    """Record one sum per score evaluation on the device; one sync at the end names the first bad step."""

    def __init__(self, x: Tensor, n: int):
        self.dims = tuple(range(x.ndim))
        self.sums = [x.new_empty(()) for _ in range(n)]
        self.where: list = [None] * n

    def __call__(self, k: int, value: Tensor, step: int, t: float) -> None:
        torch.sum(value, dim=self.dims, out=self.sums[k])
        self.where[k] = (step, t)

    def raise_if_bad(self) -> None:
        if not self.sums:
            return
        ok = torch.isfinite(torch.stack(self.sums))
        if not bool(ok.all()):
            k = int((~ok).nonzero()[0])
            step, t = self.where[k]
            raise ValueError(f"the score returned NaN or inf at step {step} (t = {t:.6g}, evaluation {k + 1})")


def pf_drift(process: Process, t: Tensor, y: Tensor, score: Tensor) -> Tensor:
    """The probability-flow ODE's drift f(t) y - ½ g(t)² score (Song et al. 2021, eq. 13) at a scalar time t."""
    return process.f(t) * y - (0.5 * process.g2(t)) * score


def check_ode_method(method: str, rtol: float, atol: float, dtype: torch.dtype) -> None:
    """Raise ValueError for an unknown method, or an adaptive tolerance below what dtype can resolve."""
    if method in FIXED_METHODS:
        return
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; expected one of {ADAPTIVE_METHODS + tuple(FIXED_METHODS)}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"{name} must be a positive finite number, got {tol!r}")
    eps = torch.finfo(dtype).eps
    if rtol < eps:
        raise ValueError(f"rtol = {rtol!r} is below {dtype}'s precision ({eps:.3g}): the solver cannot reach it "
                         "(it would take many more steps and stop short); use float64 or a larger rtol")


def odeint(fn: Callable, y0, ts: Tensor, *, method: str, rtol: float = 1e-5, atol: float = 1e-5):
    """torchdiffeq.odeint of dy/dt = fn(t, y) through the CPU float64 times ts (adaptive methods: only the ends
    are steps; the solution comes back at every time). fn sees t clamped to the range of ts (an adaptive step may
    overshoot it) and as a tensor on y's device; y0 is a tensor or a tuple of tensors."""
    import torchdiffeq

    first = y0[0] if isinstance(y0, tuple) else y0
    lo, hi = float(ts.min()), float(ts.max())
    opts: dict = dict(method=method)
    if method not in FIXED_METHODS:  # an explicit first step: torchdiffeq's own guess can probe far outside [lo, hi]
        opts.update(rtol=rtol, atol=atol, options=dict(first_step=(hi - lo) * 1e-3))
    tt = ts.to(device=first.device, dtype=first.dtype)
    try:
        return torchdiffeq.odeint(lambda t, y: fn(t.clamp(lo, hi), y), y0, tt, **opts)
    except AssertionError as e:  # torchdiffeq asserts "underflow in dt" when an adaptive step collapses
        raise ValueError(f"the ODE solver {method} stopped ({e}): the score returned NaN or inf, or the ODE "
                         "diverged") from None


def report(callback: Callback | None, i: int, t: float, x: Tensor, score: Tensor, alpha: float, sigma: float) -> None:
    """Call callback({i, t, x, x0}) with Tweedie's x0 from the score already evaluated (no extra NFE)."""
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "x0": tweedie(x, score, alpha, sigma)})


def final_denoise(score, x: Tensor, grid: Grid, check: FiniteCheck, k: int, callback: Callback | None) -> Tensor:
    """The last evaluation (denoise=True): Tweedie's x0 at ts[-1], recorded as evaluation k."""
    n = len(grid.ts) - 1
    t = float(grid.ts[n])
    s = score(x, grid.t[n])
    check(k, s, n, t)
    report(callback, n, t, x, s, grid.alpha[n], grid.sigma[n])
    return tweedie(x, s, grid.alpha[n], grid.sigma[n])


def finish(score, x: Tensor, grid: Grid, check: FiniteCheck, k: int, callback: Callback | None, denoise: bool) -> Tensor:
    """End of a sampling loop: Tweedie's x0 at ts[-1] if denoise (evaluation k), then the one finiteness check."""
    if denoise:
        x = final_denoise(score, x, grid, check, k, callback)
    check.raise_if_bad()
    return x


def first_order_loop(
    score,
    x: Tensor,
    grid: Grid,
    A: list,
    B: list,
    C: list,
    *,
    draw: NoiseFn,
    callback: Callback | None,
    denoise: bool,
    progress: bool | None,
    desc: str,
) -> Tensor:
    """x <- A[i] x + B[i] score(x, t_i) + C[i] z_i over the grid, then Tweedie's x0 at the last time if denoise.

    The shared loop of the ancestral, DDIM and Euler-Maruyama samplers: one score evaluation per step.
    """
    n = len(grid.ts) - 1
    times = grid.ts.tolist()
    check = FiniteCheck(x, n + int(denoise))
    for i in progress_range(n, progress, desc):
        s = score(x, grid.t[i])
        check(i, s, i, times[i])
        report(callback, i, times[i], x, s, grid.alpha[i], grid.sigma[i])
        x = x.mul(A[i]).add_(s, alpha=B[i])
        if C[i] != 0:
            x.add_(draw(i, x), alpha=C[i])
    return finish(score, x, grid, check, n, callback, denoise)


def multistep_loop(
    score,
    x: Tensor,
    grid: Grid,
    A: list,
    B: list,
    C: list,
    *,
    draw: NoiseFn,
    callback: Callback | None,
    denoise: bool,
    progress: bool | None,
    desc: str,
) -> Tensor:
    """x <- A[i] x + sum_j B[i][j] D_{i-j} + C[i] z_i over the grid, D_i = Tweedie's x0 at (x_i, t_i); then Tweedie's
    x0 at the last time if denoise.

    The shared loop of the multistep data-prediction samplers (DPM-Solver++ and its SDE): one evaluation per step,
    the last few D kept in local variables.
    """
    n = len(grid.ts) - 1
    times = grid.ts.tolist()
    keep = max(map(len, B), default=1)
    check = FiniteCheck(x, n + int(denoise))
    ds: list = []  # D_i, D_{i-1}, ..., most recent first
    for i in progress_range(n, progress, desc):
        s = score(x, grid.t[i])
        check(i, s, i, times[i])
        report(callback, i, times[i], x, s, grid.alpha[i], grid.sigma[i])
        ds.insert(0, tweedie(x, s, grid.alpha[i], grid.sigma[i]))
        del ds[keep:]
        x = x.mul(A[i])
        for b, d in zip(B[i], ds):
            if b != 0:
                x.add_(d, alpha=b)
        if C[i] != 0:
            x.add_(draw(i, x), alpha=C[i])
    return finish(score, x, grid, check, n, callback, denoise)
