"""Hypothesis strategies: processes with valid random parameters, times, Gaussian mixtures, batches, dtypes, devices.

Needs hypothesis (`pip install "scoresde[test]"`); the rest of scoresde.testing does not.
"""

from __future__ import annotations

try:
    from hypothesis import strategies as st
except ImportError as e:  # pragma: no cover - exercised in a subprocess by the kit's tests
    raise ImportError(
        "scoresde.testing.strategies needs hypothesis: pip install 'scoresde[test]' (or pip install hypothesis); "
        "the checks in scoresde.testing work without it"
    ) from e

import torch

from toy_data import GaussianMixture

from ..processes import EDM, VE, VP, DiscreteVP, Process, SubVP
from .data import noisy_batch, sample_times

__all__ = ["processes", "times", "mixtures", "batches", "dtypes", "devices", "seeds", "PROCESS_KINDS"]

seeds = st.integers(0, 2**31 - 1)
PROCESS_KINDS = ("ve", "edm", "vp", "subvp", "ddpm", "ddpm-cosine", "ddpm-custom")


@st.composite
def processes(draw, discrete: bool = True, reaches_prior: bool = True, kinds: tuple[str, ...] | None = None):
    """VE, EDM, VP, SubVP and (discrete=True) DiscreteVP with linear, cosine or custom betas, parameters drawn at random.

    reaches_prior=True keeps to parameters whose marginal at t_max is the prior for data of unit scale
    (check_process's "prior" passes); False draws the wider ranges that the other identities hold on too.
    """
    kinds = kinds or tuple(k for k in PROCESS_KINDS if discrete or not k.startswith("ddpm"))
    kind = draw(st.sampled_from(kinds))
    if kind in ("ve", "edm"):  # EDM: alpha = 1, sigma = t on [sigma_min, sigma_max]
        lo = draw(st.floats(1e-3, 0.5))
        hi = draw(st.floats(30.0, 1000.0)) if reaches_prior else lo * draw(st.floats(2.0, 5000.0))
        return (VE if kind == "ve" else EDM)(lo, hi)
    if kind in ("vp", "subvp"):
        bmin = draw(st.floats(0.01, 1.0))
        return (VP if kind == "vp" else SubVP)(bmin, bmin + draw(st.floats(15.0 if reaches_prior else 1.0, 30.0)))
    if kind == "ddpm":  # linear betas scale by 1000/N, so N > 20 keeps them below one
        return DiscreteVP.linear(draw(st.integers(25, 1000)))
    if kind == "ddpm-cosine":
        return DiscreteVP.cosine(draw(st.integers(2, 1000)))
    # custom: increasing betas with -log alpha_bar_N = total
    n = draw(st.integers(2, 200))
    g = torch.Generator().manual_seed(draw(seeds))
    u = (0.01 + torch.rand(n, generator=g, dtype=torch.float64)).sort().values
    total = draw(st.floats(8.0, 20.0) if reaches_prior else st.floats(0.1, 20.0))
    return DiscreteVP(-torch.expm1(-total * u / u.sum()))


def times(process: Process, n: int = 16, interior: bool = False, device=None, dtype: torch.dtype = torch.float64):
    """n times inside [t_min, t_max] (interior: inside a discrete process's steps), as a float64 tensor."""
    return seeds.map(lambda seed: sample_times(process, n, seed, interior=interior, device=device, dtype=dtype))


@st.composite
def mixtures(draw, max_dim: int = 3, max_components: int = 4, labelled: bool = False, min_dim: int = 1):
    """Gaussian mixtures in min_dim..max_dim dimensions with random weights, means and full covariances (labels: two
    classes, both present)."""
    k = draw(st.integers(1, max_components))
    d = draw(st.integers(min_dim, max_dim))
    g = torch.Generator().manual_seed(draw(seeds))
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    means = 2 * torch.randn(k, d, generator=g, dtype=torch.float64)
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64) * draw(st.floats(0.05, 1.0))
    cov = a @ a.transpose(1, 2) + draw(st.floats(1e-3, 0.5)) * torch.eye(d, dtype=torch.float64)
    labels = torch.randint(0, 2, (k,), generator=g) if labelled else None
    if labelled:
        labels[0] = 0
        if k > 1:
            labels[1] = 1
    return GaussianMixture(w / w.sum(), means, cov, labels=labels)


def batches(mixture, process: Process, max_size: int = 32, device=None, dtype: torch.dtype = torch.float64):
    """(x_t, t): 1..max_size samples of mixture noised by process at random times (noisy_batch)."""
    return st.tuples(st.integers(1, max_size), seeds).map(
        lambda a: noisy_batch(mixture, process, a[0], a[1], device=device, dtype=dtype))


def dtypes():
    """float32 and float64."""
    return st.sampled_from([torch.float32, torch.float64])


def devices():
    """"cpu", and "cuda" when a GPU is present."""
    return st.sampled_from(["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
