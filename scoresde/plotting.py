"""Matplotlib figures (Agg backend, PNG): targets and score fields, sample grids, quality-versus-NFE."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .processes import Process  # noqa: E402


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def _lim(points: torch.Tensor, pad: float = 0.5) -> tuple[float, float]:
    q = points.abs().quantile(0.995).item()
    return -q - pad, q + pad


def plot_score_fields(
    targets: Mapping[str, object],
    process: Process,
    times: Sequence[float],
    out: str | Path,
    n: int = 4000,
    grid: int = 21,
    seed: int = 0,
) -> Path:
    """Rows: targets; first column exact samples, then the exact diffused density and score field at each time."""
    fig, axes = plt.subplots(len(targets), len(times) + 1, figsize=(3 * (len(times) + 1), 3 * len(targets)), squeeze=False)
    g = torch.Generator().manual_seed(seed)
    for row, (name, target) in enumerate(targets.items()):
        x = target.sample(n, generator=g, dtype=torch.float64)
        lo, hi = _lim(x)
        ax = axes[row, 0]
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", title=f"{name}: samples")
        ax.set_ylabel(name)
        u = torch.linspace(lo, hi, grid, dtype=torch.float64)
        pts = torch.cartesian_prod(u, u)
        fine = torch.linspace(lo, hi, 120, dtype=torch.float64)
        fpts = torch.cartesian_prod(fine, fine)
        for col, tv in enumerate(times, start=1):
            t = torch.full((pts.shape[0],), float(tv), dtype=torch.float64)
            s = target.score(pts, process, t)
            s = s / (1 + s.norm(dim=1, keepdim=True))  # compress long arrows
            tf = torch.full((fpts.shape[0],), float(tv), dtype=torch.float64)
            dens = target.log_prob(fpts, process, tf).exp().reshape(120, 120)
            ax = axes[row, col]
            ax.contourf(fine, fine, dens.T, levels=20, cmap="Blues")
            ax.quiver(pts[:, 0], pts[:, 1], s[:, 0], s[:, 1], color="k", width=0.004)
            sig = process.sigma(torch.tensor(float(tv), dtype=torch.float64)).item()
            ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", title=f"t={tv:g}, sigma={sig:.3g}")
    fig.suptitle(f"exact diffused densities and scores under {process!r}")
    return _save(fig, out)
