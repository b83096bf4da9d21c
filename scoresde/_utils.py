"""Small shared helpers: broadcasting over batch shapes, input checks and progress bars."""

from __future__ import annotations

import math
import sys
from typing import Iterable

import torch
from torch import Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dimensions so a (B,) tensor broadcasts against a (B, ...) one."""
    extra = ndim - v.ndim
    if extra < 0:
        raise ValueError(f"cannot broadcast a tensor of shape {tuple(v.shape)} to {ndim} dimensions")
    return v.reshape(v.shape + (1,) * extra)


def as_time(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    """Return t as a tensor; floats become float64 (or like's dtype/device)."""
    if isinstance(t, Tensor):
        return t
    if like is not None:
        return torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return torch.as_tensor(t, dtype=torch.float64)


def check_batch_t(x: Tensor, t: Tensor) -> None:
    """Raise if t is neither a scalar nor of shape (B,) for x of shape (B, ...)."""
    if t.ndim == 0:
        return
    if t.ndim != 1 or x.ndim == 0 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"t (or alpha, sigma) must be a scalar or have shape (B,) = ({x.shape[0] if x.ndim else '?'},) "
            f"for x of shape {tuple(x.shape)}; got t of shape {tuple(t.shape)}"
        )


def check_finite(value: Tensor, what: str) -> None:
    """Raise ValueError if value has a NaN or inf (one host sync: call outside hot loops)."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{what} is not finite (NaN or inf)")


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def progress_range(n: int, progress: bool | None, desc: str) -> Iterable[int]:
    """range(n), with a progress bar when asked for or when stderr is a terminal."""
    if progress is None:
        progress = sys.stderr.isatty() and n >= 50
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, leave=False)
