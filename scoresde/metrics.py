"""Sample-quality metrics between two point sets x (n, ...) and y (m, ...), flattened to (n, D) and (m, D).

Every metric takes its device and dtype from x (y is moved and cast to match; integer x becomes the default
float dtype) and returns a 0-dim tensor. Pairwise metrics (mmd, energy_distance) are O(n²): they are computed
in row blocks of bounded size (memory stays O(block), not O(n m)) and use only the first `max_n` rows of each
set. The only host synchronisations are the input checks, done once per call before any loop.

    sliced_wasserstein  sqrt(E_theta W2²(theta·X, theta·Y)), theta uniform on the unit sphere (fixed by seed)
    mmd                 unbiased (U-statistic) squared MMD, sum of RBF kernels; ~0 (and may be < 0) if X = Y
    energy_distance     squared energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (V-statistic; >= 0)
    frechet_distance    |mu_x - mu_y|² + Tr(S_x + S_y - 2 (S_x S_y)^½) of Gaussians fitted to features (FID's formula)
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "sliced_wasserstein",
    "mmd",
    "energy_distance",
    "log_density_gap",
    "frechet_distance",
    "frechet_distance_gaussians",
    "noise_floor",
    "METRICS",
]

MEDIAN_BANDWIDTH_FACTORS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
_MEDIAN_POINTS = 1000  # the median heuristic looks at (at most) this many pooled points, evenly spaced
_BLOCK_ELEMS_CPU = 1 << 20  # entries of one block on CPU: 4 MiB in float32 (cache-friendly, yet few thread barriers)
_BLOCK_ELEMS_ACCEL = 1 << 24  # on GPUs etc.: few large kernels (64 MiB in float32)


def _block_elems(device: torch.device) -> int:
    """Entries of one pairwise (or projection) block on device; tests patch this to force ragged blocks."""
    return _BLOCK_ELEMS_CPU if device.type == "cpu" else _BLOCK_ELEMS_ACCEL


# ----------------------------------------------------------------------------------------------- input checks


def _check_int(name: str, value: object, minimum: int) -> int:
    """value as an int, or ValueError naming it if it is not an integer >= minimum (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_finite(name: str, t: Tensor) -> None:
    """Raise ValueError naming t, the count and the first position of its NaN/inf entries."""
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite entries (NaN or inf) out of {t.numel()}; "
            f"first at index {first} (value {t[first].item()})"
        )


def _as_points(name: str, t: Tensor) -> Tensor:
    """A (n, ...) tensor as (n, D); a 1-D tensor is n scalar samples."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, ...), got {type(t).__name__}")
    if t.ndim == 0:
        raise ValueError(f"{name} must have shape (n, ...), got a 0-dim tensor")
    if t.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {t.shape[0]} ({name} of shape {tuple(t.shape)})")
    return t.reshape(t.shape[0], -1)


def _prepare(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten x and y to (n, D), (m, D) on x's device and float dtype; check shapes and finiteness."""
    x2, y2 = _as_points("x", x), _as_points("y", y)
    if x2.shape[1] != y2.shape[1]:
        raise ValueError(
            f"x and y must have the same number of features per sample; got x of shape {tuple(x.shape)} "
            f"(D={x2.shape[1]}) and y of shape {tuple(y.shape)} (D={y2.shape[1]})"
        )
    dtype = x2.dtype if x2.dtype.is_floating_point else torch.get_default_dtype()
    x2 = x2.to(dtype)
    y2 = y2.to(device=x2.device, dtype=dtype)
    _check_finite("x", x2)
    _check_finite("y", y2)
    return x2, y2


# ------------------------------------------------------------------------------------------ sliced Wasserstein


def _sort_last(t: Tensor) -> Tensor:
    """Sort along the last dimension (numpy's SIMD sort for CPU tensors without grad: ~10x torch's CPU sort)."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.requires_grad:
        return torch.from_numpy(np.sort(t.contiguous().numpy(), axis=-1))
    return torch.sort(t, dim=-1).values


def _directions(n_projections: int, dim: int, seed: int) -> Tensor:
    """n_projections unit vectors in R^dim, uniform on the sphere, drawn in float64 on CPU from seed."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n_projections, dim, generator=g, dtype=torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def _quantile_coupling(n: int, m: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Weights w and indices (i, j) with W2² = sum_k w_k (xs[i_k] - ys[j_k])² for sorted xs (n), ys (m).

    The empirical quantile functions are step functions with knots at k/n and l/m; between consecutive merged
    knots both are constant, so this is the exact W2² between the two empirical measures (in integer units of
    1/(n m), so the merge has no rounding).
    """
    knots = torch.cat([torch.arange(1, n + 1) * m, torch.arange(1, m + 1) * n]).unique()  # sorted, ends at n m
    widths = torch.diff(knots, prepend=knots.new_zeros(1))
    i = (knots + m - 1) // m - 1  # quantile level u in (a, b]: index ceil(b n / (n m)) - 1
    j = (knots + n - 1) // n - 1
    w = widths.to(torch.float64) / (n * m)
    return w.to(device=device, dtype=dtype), i.to(device), j.to(device)


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, seed: int = 0) -> Tensor:
    """Sliced Wasserstein-2: sqrt(mean over fixed random unit directions of W2² between the 1-D projections).

    The n_projections directions come from a CPU torch.Generator seeded with seed (drawn in float64, then cast
    and moved to x), so they are the same on every call, device and dtype. Each 1-D W2² compares sorted samples;
    for n != m it is the exact W2² between the two empirical measures, comparing their step quantile functions
    on the merged quantile levels {k/n} U {l/m} (a set repeated r times is at distance 0 from itself).
    """
    n_projections = _check_int("n_projections", n_projections, 1)
    x, y = _prepare(x, y)
    (n, dim), m = x.shape, y.shape[0]
    theta = _directions(n_projections, dim, seed).to(device=x.device, dtype=x.dtype)
    coupling = None if n == m else _quantile_coupling(n, m, x.device, x.dtype)
    xt, yt = x.T.contiguous(), y.T.contiguous()  # (D, n): the projection matmuls below are ~5x faster
    per_block = max(1, _block_elems(x.device) // (n + m))  # projections per block: memory O(block), not O(P (n + m))
    w2sq = []
    for p0 in range(0, n_projections, per_block):
        th = theta[p0 : p0 + per_block]
        xs, ys = _sort_last(th @ xt), _sort_last(th @ yt)  # (p, n), (p, m): sorted projections
        if coupling is None:
            w2sq.append(xs.sub_(ys).square_().mean(dim=1))
        else:
            w, i, j = coupling
            w2sq.append((xs[:, i].sub_(ys[:, j]).square_() * w).sum(dim=1))
    return torch.cat(w2sq).mean().sqrt()


# ---------------------------------------------------------------------------------------- pairwise statistics


_DIRECT_MAX_DIM = 1  # up to this D, sum squared coordinate differences (exact; above it the matmul form is faster)


def _sq_dists(a: Tensor, b: Tensor, a_sq: Tensor, b_sq: Tensor) -> Tensor:
    """Squared Euclidean distances, rows of a by rows of b; a_sq, b_sq: squared row norms (used when D > 1)."""
    if a.shape[1] <= _DIRECT_MAX_DIM:
        d2 = (a[:, 0, None] - b[None, :, 0]).square_()
        for k in range(1, a.shape[1]):
            d2 += (a[:, k, None] - b[None, :, k]).square_()
        return d2
    return torch.addmm(b_sq[None, :], a, b.T, alpha=-2.0).add_(a_sq[:, None]).clamp_min_(0.0)


def _pair_sum(a: Tensor, b: Tensor | None, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """sum_{i,j} fn(|a_i - b_j|²) in row blocks; with b None, the sum over pairs i < j of a (i.e. half the
    off-diagonal sum), each block computed only against the columns j >= its first row."""
    a_sq = a.square().sum(dim=1)
    total = a.new_zeros(())
    if b is not None:
        b_sq = b.square().sum(dim=1)
        rows = max(1, _block_elems(a.device) // b.shape[0])
        for r0 in range(0, a.shape[0], rows):
            total = total + fn(_sq_dists(a[r0 : r0 + rows], b, a_sq[r0 : r0 + rows], b_sq)).sum()
        return total
    n = a.shape[0]
    rows = max(1, _block_elems(a.device) // n)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        vals = fn(_sq_dists(a[r0:r1], a[r0:], a_sq[r0:r1], a_sq[r0:]))  # (r1 - r0, n - r0)
        total = total + vals[:, r1 - r0 :].sum() + vals[:, : r1 - r0].triu(diagonal=1).sum()
    return total


def _centre(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Translate both sets by x's mean (no metric changes; the matmul form of |a - b|² loses less precision)."""
    mu = x.mean(dim=0)
    return x - mu, y - mu


def _median_distance(z: Tensor) -> Tensor:
    """Median pairwise Euclidean distance of (at most _MEDIAN_POINTS evenly spaced rows of) z; never 0."""
    k = min(z.shape[0], _MEDIAN_POINTS)
    if k < z.shape[0]:
        z = z[torch.linspace(0, z.shape[0] - 1, k, device=z.device).round().long()]
    z_sq = z.square().sum(dim=1)
    iu = torch.triu_indices(k, k, offset=1, device=z.device)
    d = _sq_dists(z, z, z_sq, z_sq)[iu[0], iu[1]].sqrt()
    med = d.median()
    med = torch.where(med > 0, med, d.mean())  # many ties: fall back to the mean distance,
    return torch.where(med > 0, med, torch.ones_like(med))  # and all points equal: any bandwidth gives 0


def _bandwidths(bandwidths: Sequence[float] | Tensor | None, x: Tensor, y: Tensor) -> Tensor:
    """The RBF length scales as a 1-D tensor on x's device (default: median heuristic times the factors)."""
    if bandwidths is None:
        factors = torch.tensor(MEDIAN_BANDWIDTH_FACTORS, device=x.device, dtype=x.dtype)
        return _median_distance(torch.cat([x, y])) * factors
    h = torch.as_tensor(bandwidths, dtype=torch.float64).detach().cpu().reshape(-1)
    if h.numel() == 0 or not bool(torch.isfinite(h).all()) or not bool((h > 0).all()):
        raise ValueError(f"bandwidths must be a non-empty sequence of positive finite numbers, got {bandwidths!r}")
    return h.to(device=x.device, dtype=x.dtype)


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] | Tensor | None = None, max_n: int = 5000) -> Tensor:
    """Unbiased squared MMD with k(a, b) = sum_h exp(-|a-b|² / (2 h²)); uses only the first max_n rows of x and y.

    bandwidths: the length scales h; default: the median pairwise distance of the pooled (truncated) sample,
    estimated on at most 1000 evenly spaced pooled points, times (0.25, 0.5, 1, 2, 4). The U-statistic drops
    the i = j terms, so it is unbiased for MMD² and is ~0, often negative, when x and y share a distribution.
    """
    max_n = _check_int("max_n", max_n, 2)
    x, y = _prepare(x, y)
    x, y = _centre(x[:max_n], y[:max_n])  # bound the O(n²) cost
    h = _bandwidths(bandwidths, x, y)
    coefs = -0.5 / h.square()

    def kernel(d2: Tensor) -> Tensor:
        out = torch.zeros_like(d2)
        for c in coefs:
            out.add_((d2 * c).exp_())  # in place, 2x faster; autograd-safe (no saved tensor is overwritten)
        return out

    n, m = x.shape[0], y.shape[0]
    kxx = 2 * _pair_sum(x, None, kernel) / (n * (n - 1))
    kyy = 2 * _pair_sum(y, None, kernel) / (m * (m - 1))
    kxy = _pair_sum(x, y, kernel) / (n * m)
    return kxx + kyy - 2 * kxy


def energy_distance(x: Tensor, y: Tensor, max_n: int = 5000) -> Tensor:
    """Squared energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| between the empirical measures (first max_n rows).

    All expectations are plain means over all pairs (V-statistic, i = j included), so the value is >= 0 and,
    in 1-D, equals scipy.stats.energy_distance(x, y) ** 2: scipy returns the square root of this quantity.
    """
    max_n = _check_int("max_n", max_n, 2)
    x, y = _prepare(x, y)
    x, y = _centre(x[:max_n], y[:max_n])  # bound the O(n²) cost
    n, m = x.shape[0], y.shape[0]
    tiny = torch.finfo(x.dtype).tiny

    def dist(d2: Tensor) -> Tensor:
        return d2.clamp_min_(tiny).sqrt_()  # |a - b|, with a finite (zero) gradient at a = b

    exy = _pair_sum(x, y, dist) / (n * m)
    exx = 2 * _pair_sum(x, None, dist) / (n * n)
    eyy = 2 * _pair_sum(y, None, dist) / (m * m)
    return 2 * exy - exx - eyy


# ------------------------------------------------------------------------------------------- Fréchet distance


def _sqrt_psd(a: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative rounding clamped to 0)."""
    lam, v = torch.linalg.eigh(a)
    return (v * lam.clamp_min(0).sqrt()) @ v.T


def frechet_distance_gaussians(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> Tensor:
    """|mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½), the squared W2 distance between N(mu1, S1) and N(mu2, S2).

    Computed in float64 as Tr (S1 S2)^½ = Σ sqrt(eig(S1^½ S2 S1^½)) (a symmetric PSD matrix with the same
    eigenvalues as S1 S2, so no complex square roots); returned in mu1's dtype.
    """
    d = mu1.shape[-1]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"expected means of shape (D,) and covariances (D, D); got {tuple(mu1.shape)}, "
                         f"{tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}")
    out_dtype = mu1.dtype if mu1.dtype.is_floating_point else torch.get_default_dtype()
    mu1, cov1 = mu1.double(), cov1.double()
    mu2, cov2 = mu2.to(mu1.device).double(), cov2.to(mu1.device).double()
    s1h = _sqrt_psd(0.5 * (cov1 + cov1.T))
    m = s1h @ cov2 @ s1h
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt
    return fd.to(out_dtype)


def frechet_distance(x: Tensor, y: Tensor) -> Tensor:
    """Fréchet distance between Gaussians fitted to features x (n, D) and y (m, D): sample means and covariances
    (ddof = 1), then frechet_distance_gaussians. FID is this on Inception features; scoresde.digits_classifier
    gives features for 8 x 8 digits. Biased upward at finite n: compare with a real-versus-real floor at the same n.
    """
    x, y = _prepare(x, y)
    x64, y64 = x.double(), y.double()
    mu_x, mu_y = x64.mean(0), y64.mean(0)
    cov_x, cov_y = torch.cov(x64.T).reshape(x.shape[1], -1), torch.cov(y64.T).reshape(y.shape[1], -1)
    return frechet_distance_gaussians(mu_x, cov_x, mu_y, cov_y).to(x.dtype)


# -------------------------------------------------------------------------------------------- the other two


def _log_probs(name: str, log_prob: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """log_prob(x), checked to be finite with shape (n,) for x of shape (n, ...), n >= 2."""
    if not isinstance(x, Tensor) or x.ndim == 0 or x.shape[0] < 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape (n, ...) with n >= 2, got {shape}")
    lp = log_prob(x)
    if not isinstance(lp, Tensor) or lp.shape != (x.shape[0],):
        shape = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
        raise ValueError(f"log_prob({name}) must return shape ({x.shape[0]},), one value per sample; got {shape}")
    _check_finite(f"log_prob({name})", lp)
    return lp


def log_density_gap(log_prob: Callable[[Tensor], Tensor], x_gen: Tensor, x_ref: Tensor) -> tuple[Tensor, Tensor]:
    """(mean log_prob(x_gen) - mean log_prob(x_ref), its standard error sqrt(var_gen/n + var_ref/m), ddof = 1)."""
    lg = _log_probs("x_gen", log_prob, x_gen)
    lr = _log_probs("x_ref", log_prob, x_ref).to(device=lg.device, dtype=lg.dtype)
    gap = lg.mean() - lr.mean()
    se = (lg.var(correction=1) / lg.shape[0] + lr.var(correction=1) / lr.shape[0]).sqrt()
    return gap, se


def noise_floor(
    metric: Callable[..., Tensor] | str,
    sample: Callable[[int, torch.Generator], Tensor],
    n: int,
    seed: int = 0,
    **kw,
) -> Tensor:
    """metric (callable or METRICS name) between two independent exact n-sample sets, drawn with seeds seed, seed+1.

    sample(n, generator) gets a CPU torch.Generator; the floor is what the metric reports for a perfect sampler
    at this n (mmd's is ~0 and may be negative; the others' are > 0). kw goes to the metric.
    """
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        metric = METRICS[metric]
    n = _check_int("n", n, 2)
    a = sample(n, torch.Generator().manual_seed(seed))
    b = sample(n, torch.Generator().manual_seed(seed + 1))
    return metric(a, b, **kw)


METRICS: dict[str, Callable[..., Tensor]] = {f.__name__: f for f in (sliced_wasserstein, mmd, energy_distance)}
