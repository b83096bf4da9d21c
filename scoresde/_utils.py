"""Small shared helpers: broadcasting over batch shapes, input checks, progress bars, and the resource checks made
before work starts (devices, memory, writable outputs)."""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path
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


def check_batch(x: Tensor, name: str = "x") -> None:
    """Raise ValueError unless x is a floating-point tensor of shape (B, ...), B >= 1, with at least one event
    dimension (samplers, likelihood and losses share this message; a batch of scalars is (B, 1))."""
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] < 1:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape (B, ...) with B >= 1 and at least one event dimension "
                         f"(a batch of scalars is (B, 1)); got {got}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


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


# -- resources: checked before work starts ----------------------------------------------------------------------------
def check_device(device: str | torch.device) -> torch.device:
    """torch.device(device), refusing one this machine cannot use (a CUDA device on a CPU-only build, ...)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "no CUDA GPU is visible" if torch.backends.cuda.is_built() else "this torch build has no CUDA"
            raise ValueError(f"device {str(device)!r} is not available: {why}; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} is not available: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r} is not available on this machine; use cpu")
    elif dev.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported; use cpu or cuda")
    return dev


def _cgroup_free() -> int | None:
    """Bytes left under this container's cgroup (v2 or v1) memory limit, if it has one."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            cap, used = Path(limit).read_text().strip(), Path(usage).read_text().strip()
        except OSError:
            continue
        if cap.isdigit() and used.isdigit() and int(cap) < 1 << 60:
            return max(0, int(cap) - int(used))
    return None


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes that can be allocated now on device: free GPU memory, or the host's MemAvailable (/proc/meminfo,
    capped by a cgroup limit); None where it cannot be told."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type != "cpu":
        return None
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None and hasattr(os, "sysconf"):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            pass
    cgroup = _cgroup_free()
    return free if cgroup is None else cgroup if free is None else min(free, cgroup)


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} PB"


def check_memory(nbytes: float, what: str, device: str | torch.device = "cpu") -> None:
    """Raise ValueError (naming the estimate) if `what` needs more than the memory available on device."""
    free = available_memory(device)
    if free is not None and nbytes > free:
        raise ValueError(f"{what} needs about {format_bytes(nbytes)} of memory, more than the {format_bytes(free)} "
                         f"available on {torch.device(device).type}; ask for less")


def check_writable(path: str | Path, *, directory: bool, what: str = "--out", make: bool = True) -> Path:
    """Raise ValueError unless `path` can be written, as a directory or as a file, probed with a temporary file so
    that nothing is computed for an unwritable output. make: missing directories are made (the output goes there);
    without it the nearest existing one is probed and nothing is created, so a command that then fails on another
    value leaves no empty folder behind (its writers make the folders)."""
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a directory")
    if not directory and path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name")
    folder = path if directory else path.parent
    if not make:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise ValueError(f"{what} {path} is not writable: {folder} is a file")
    try:
        if make:
            folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{what} {path} is not writable: {e.strerror or e}") from None
    return path
