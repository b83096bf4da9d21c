"""Matplotlib figures (Agg backend, PNG): targets and score fields, sample grids, quality-versus-NFE, samples."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .processes import Process  # noqa: E402


def _save(fig, out: str | Path) -> Path:
    """Save and close fig; a name without an image suffix gets ".png" (as matplotlib would add), and the path
    returned is the file written."""
    out = Path(out)
    if out.suffix.lower().lstrip(".") not in fig.canvas.get_supported_filetypes():
        out = out.with_name(out.name + ".png")
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


def plot_sample_grid(
    samples: Mapping[tuple[str, int], torch.Tensor], reference: torch.Tensor, out: str | Path, max_points: int = 3000
) -> Path:
    """Scatter plots: rows are samplers, columns NFE budgets; the first column is exact samples."""
    names = list(dict.fromkeys(k[0] for k in samples))
    budgets = sorted(set(k[1] for k in samples))
    fig, axes = plt.subplots(len(names), len(budgets) + 1, figsize=(2.2 * (len(budgets) + 1), 2.2 * len(names)),
                             squeeze=False)
    ref = reference[:max_points].cpu().double()
    lo, hi = _lim(ref)
    for r, name in enumerate(names):
        ax = axes[r, 0]
        ax.scatter(ref[:, 0], ref[:, 1], s=0.5, alpha=0.4, color="gray")
        ax.set_ylabel(name, fontsize=8)
        if r == 0:
            ax.set_title("exact", fontsize=9)
        for c, nfe in enumerate(budgets, start=1):
            ax = axes[r, c]
            x = samples.get((name, nfe))
            if x is not None:
                x = x[:max_points].cpu().double()
                ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.4)
            if r == 0:
                ax.set_title(f"NFE {nfe}", fontsize=9)
        for ax in axes[r]:
            ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", xticks=[], yticks=[])
    return _save(fig, out)


def plot_quality_vs_nfe(records: Sequence[Mapping], floors: Mapping[str, float], metrics: Sequence[str],
                        out: str | Path) -> Path:
    """One panel per metric: metric against measured NFE for each sampler, with the noise floor dashed."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.8), squeeze=False)
    names = list(dict.fromkeys(r["sampler"] for r in records))
    for ax, m in zip(axes[0], metrics):
        for name in names:
            rs = sorted((r for r in records if r["sampler"] == name), key=lambda r: r["nfe"])
            ys = [abs(r[m]) for r in rs]
            ax.plot([r["nfe"] for r in rs], ys, marker="o", ms=3, label=name)
        if m in floors:
            ax.axhline(abs(floors[m]), ls="--", color="k", lw=1, label="noise floor")
        ax.set(xscale="log", yscale="log", xlabel="NFE (measured)", ylabel=("|" + m + "|") if m == "logp_gap" else m)
        ax.grid(True, which="both", alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="upper right")
    return _save(fig, out)


def plot_trajectories(paths: Mapping[str, torch.Tensor], reference: torch.Tensor, out: str | Path) -> Path:
    """Sample paths (steps, n, 2) per sampler, over the exact samples."""
    cols = min(5, len(paths))
    rows = -(-len(paths) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    ref = reference[:3000].cpu().double()
    lo, hi = _lim(ref, pad=1.0)
    for ax in axes.flat[len(paths):]:
        ax.axis("off")
    for ax, (name, p) in zip(axes.flat, paths.items()):
        p = p.cpu().double()
        ax.scatter(ref[:, 0], ref[:, 1], s=0.5, alpha=0.2, color="gray")
        for j in range(p.shape[1]):
            ax.plot(p[:, j, 0], p[:, j, 1], lw=0.5, alpha=0.6)
        ax.scatter(p[-1, :, 0], p[-1, :, 1], s=3, color="k", zorder=3)
        ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", title=name, xticks=[], yticks=[])
    return _save(fig, out)


def plot_points(x: torch.Tensor, out: str | Path, reference: torch.Tensor | None = None, title: str = "",
                max_points: int = 10000) -> Path:
    """Scatter of 2D samples, beside the reference (training distribution) when given."""
    panels = [("samples", x)] + ([("data", reference)] if reference is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), squeeze=False)
    pts = [p[:max_points].detach().cpu().double() for _, p in panels]
    lo, hi = _lim(torch.cat(pts) if reference is not None else pts[0])
    for ax, (name, _), p in zip(axes[0], panels, pts):
        ax.scatter(p[:, 0], p[:, 1], s=0.5, alpha=0.4, color="C0" if name == "samples" else "gray")
        ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"{name}{': ' + title if title and name == 'samples' else ''}", fontsize=9)
    return _save(fig, out)


def plot_image_grid(x: torch.Tensor, out: str | Path, title: str = "", nrow: int | None = None,
                    value_range: tuple[float, float] = (-1.0, 1.0)) -> Path:
    """A grid of images (B, C, H, W) in value_range; C = 1 in grey, C = 3 in colour."""
    x = x.detach().cpu().float()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 1 or 3, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(b))))
    ncol = int(math.ceil(b / nrow))
    lo, hi = value_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    canvas = torch.ones(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for k in range(b):
        r, q = divmod(k, nrow)
        canvas[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[k]
    size = min(12.0, max(3.0, canvas.shape[2] / 24))
    fig, ax = plt.subplots(figsize=(size, size * canvas.shape[1] / canvas.shape[2]))
    img = canvas[0] if c == 1 else canvas.permute(1, 2, 0)
    ax.imshow(img.numpy(), cmap="gray" if c == 1 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set(xticks=[], yticks=[])
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, out)


MAX_GRID = 400  # images drawn by save_samples (all of them go to its .pt and .npy files)


def save_samples(x: torch.Tensor, out: str | Path, reference: torch.Tensor | None = None, title: str = "",
                 nrow: int | None = None, arrays: bool = True) -> list[Path]:
    """A PNG (scatter of points beside the reference, or a grid of the first MAX_GRID images) and, if arrays,
    the samples as .pt and .npy next to it; returns the files written."""
    import numpy as np

    x = x.detach().cpu()
    png = Path(out).with_suffix(".png")
    if x.ndim == 2:
        plot_points(x, png, reference=reference, title=title)
    else:
        more = f" (first {MAX_GRID} of {len(x)})" if len(x) > MAX_GRID else ""
        plot_image_grid(x[:MAX_GRID], png, title=title + more, nrow=nrow)
    if not arrays:
        return [png]
    torch.save(x, png.with_suffix(".pt"))
    np.save(png.with_suffix(".npy"), x.numpy())
    return [png, png.with_suffix(".pt"), png.with_suffix(".npy")]


def plot_boltzmann(samples: torch.Tensor, axes: Sequence, density, out: str | Path, title: str = "",
                   max_points: int = 500_000) -> Path:
    """Samples (N, d), d = 1 or 2, over the exact Boltzmann density on its grid (axes, density): a histogram and
    the density line in 1-D; in 2-D the exact density beside the samples' 2-D histogram, exact contours on both."""
    import numpy as np

    x = samples.detach().reshape(samples.shape[0], -1)[:max_points].cpu().double().numpy()
    d = x.shape[1]
    if d == 1:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.hist(x[:, 0], bins=120, range=(axes[0][0], axes[0][-1]), density=True, color="C0", alpha=0.5,
                label=f"samples ({len(x)})")
        ax.plot(axes[0], density, color="k", lw=1.2, label="exact Boltzmann")
        ax.set(xlabel="x", ylabel="density", title=title)
        ax.legend(fontsize=8)
        return _save(fig, out)
    if d != 2:
        raise ValueError(f"plot_boltzmann draws 1-D or 2-D samples, got {d} dimensions")
    p = np.asarray(density)
    levels = np.quantile(p[p > p.max() * 1e-6], [0.5, 0.8, 0.95, 0.99]) if (p > 0).any() else None
    q = np.quantile(x, [0.001, 0.999], axis=0)  # zoom onto where the mass is
    lim = [(q[0, i] - 0.1 * (q[1, i] - q[0, i]), q[1, i] + 0.1 * (q[1, i] - q[0, i])) for i in range(2)]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(9, 4))
    a0.contourf(axes[0], axes[1], p.T, levels=30, cmap="Blues")
    a0.set_title("exact Boltzmann density", fontsize=9)
    a1.hist2d(x[:, 0], x[:, 1], bins=150, range=lim, density=True, cmap="Blues")
    a1.set_title(f"samples ({len(x)}){': ' + title if title else ''}", fontsize=9)
    for ax in (a0, a1):
        if levels is not None:
            ax.contour(axes[0], axes[1], p.T, levels=np.unique(levels), colors="k", linewidths=0.6)
        ax.set(xlim=lim[0], ylim=lim[1], xlabel="x", ylabel="y")
    return _save(fig, out)


def plot_traces(traces: Mapping[str, torch.Tensor], out: str | Path, chains: int = 4) -> Path:
    """Traces (draws, chains) of scalar quantities, the first few chains of each, one panel per quantity."""
    fig, axes = plt.subplots(len(traces), 1, figsize=(8, 1.8 * len(traces)), squeeze=False)
    for ax, (name, t) in zip(axes[:, 0], traces.items()):
        t = t.detach().cpu().double()
        for j in range(min(chains, t.shape[1])):
            ax.plot(t[:, j], lw=0.5)
        ax.set_ylabel(name, fontsize=8)
    axes[-1, 0].set_xlabel("recorded step")
    return _save(fig, out)
