"""Seeded times and noised batches for the checks (plain functions; the hypothesis strategies build on them)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..processes import Process

__all__ = ["sample_times", "noisy_batch", "knots"]


def knots(process: Process) -> int | None:
    """N for a discrete process with N steps at t_i = i / N (DiscreteVP's convention), else None."""
    n = getattr(process, "N", None) if process.discrete else None
    return int(n) if n else None


def sample_times(
    process: Process,
    n: int,
    seed: int = 0,
    *,
    interior: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """n seeded times uniform on [t_min, t_max]. interior=True keeps a discrete process's times inside its steps'
    intervals (5% to 95% of the way), where its piecewise alpha and sigma have derivatives."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    big_n = knots(process)
    if interior and big_n and big_n > 1:
        steps = torch.randint(2, big_n + 1, (n,), generator=g)
        t = (steps - (0.05 + 0.9 * u)) / big_n
    else:
        t = process.t_min + u * (process.t_max - process.t_min)
    return t.to(device=device, dtype=dtype)


def noisy_batch(
    mixture,
    process: Process,
    n: int,
    seed: int = 0,
    *,
    t: Tensor | None = None,
    interior: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """(x_t, t): n samples of a data source with .sample(n, generator=, dtype=) noised by process at seeded times
    (or at the given t); the times and the data are drawn from independent streams."""
    t = sample_times(process, n, seed, interior=interior, device=device, dtype=dtype) if t is None else t
    g = torch.Generator().manual_seed(seed + 1)
    x0 = mixture.sample(n, generator=g, dtype=dtype).to(device=t.device)
    eps = torch.randn(x0.shape, generator=g, dtype=dtype).to(device=t.device)
    return process.perturb(x0, t, eps), t
