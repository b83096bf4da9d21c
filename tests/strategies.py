"""Hypothesis strategies: random processes, Gaussian mixtures and times (float64)."""

import torch
from hypothesis import strategies as st

from scoresde import VE, VP, DiscreteVP, SubVP
from toy_data import GaussianMixture

from .conftest import DEVICE


@st.composite
def processes(draw, discrete: bool = True):
    kinds = ["ve", "vp", "subvp"] + (["ddpm", "ddpm-cosine"] if discrete else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "ve":
        lo = draw(st.floats(1e-3, 0.5))
        return VE(lo, lo * draw(st.floats(2.0, 5000.0)))
    if kind in ("vp", "subvp"):
        bmin = draw(st.floats(0.01, 1.0))
        cls = VP if kind == "vp" else SubVP
        return cls(bmin, bmin + draw(st.floats(1.0, 30.0)))
    if kind == "ddpm":  # linear betas scale by 1000/N, so N > 20 keeps them below one
        return DiscreteVP.linear(draw(st.integers(25, 1000)))
    return DiscreteVP.cosine(draw(st.integers(2, 1000)))


@st.composite
def mixtures(draw, max_dim: int = 3, max_components: int = 4, labelled: bool = False):
    k = draw(st.integers(1, max_components))
    d = draw(st.integers(1, max_dim))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
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


def times(process, n: int, seed: int) -> torch.Tensor:
    """n times uniform on [t_min, t_max] (float64, on the test device)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return (process.t_min + u * (process.t_max - process.t_min)).to(DEVICE)


seeds = st.integers(0, 2**31 - 1)
