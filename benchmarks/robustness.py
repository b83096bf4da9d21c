"""Scale and dimension robustness of the samplers' default grids on exact Gaussian-mixture scores.

    python -m benchmarks.robustness                                   # every target, default samplers, VP
    python -m benchmarks.robustness --targets ring8x16,mix5 --samplers unipc --nfe 5,8,10,15

Targets: ring8, grid25 and aniso, each also rescaled by 1/4, 4 and 16 (means x c, covariances x c²), and seeded
random mixtures in 5 and 16 dimensions with full covariances and unequal weights. For each sampler (registry name
or variant NAME:KEY=VALUE) on its default grid (or --grid) and each NFE budget: the log-density gap in standard
errors and sliced W2 in units of its noise floor (two exact sample sets), `*` when both are within the floors
(|gap| < 3 se, SW2 < 1.5 floor); then the smallest NFE passing both per (sampler, target). Writes
benchmarks/results/<--json>.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

import toy_data
from scoresde import CountEvals
from scoresde.processes import from_config
from toy_data import GaussianMixture

from ._common import quality, reference, sampler, write_json

SCALES = {"q": 0.25, "x4": 4.0, "x16": 16.0}  # target-name suffix -> scale factor c
DEFAULT_SAMPLERS = ("unipc,dpm_solver_pp,dpm_solver_pp:order=3,heun,euler,ddim,probability_flow,"
                    "ancestral_analytic,ancestral,euler_maruyama,predictor_corrector,annealed_langevin")


def scaled(mixture: GaussianMixture, c: float) -> GaussianMixture:
    """The mixture of c x0: means x c, covariances x c²."""
    return GaussianMixture(mixture.weights, mixture.means * c, mixture.covariances * c**2)


def random_mixture(dim: int, k: int = 6, seed: int = 0) -> GaussianMixture:
    """k full-covariance components in `dim` dimensions: weights ~ Dirichlet(2), means ~ N(0, 1.5² I) shifted so that
    the mixture's mean is 0 (as data is usually centred; a far-off mean puts the prior N(0, I) of VP measurably off
    p_T), covariances Q diag(s²) Qᵀ with Q a random rotation and the standard deviations s log-uniform in
    [0.05, 0.5]."""
    g = torch.Generator().manual_seed(seed)
    w = -torch.log(torch.rand(k, 2, generator=g, dtype=torch.float64)).sum(1)  # Gamma(2, 1) from two exponentials
    means = 1.5 * torch.randn(k, dim, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(k, dim, dim, generator=g, dtype=torch.float64))
    s = torch.exp(math.log(0.05) + torch.rand(k, dim, generator=g, dtype=torch.float64) * math.log(10.0))
    means = means - (w / w.sum()) @ means
    cov = q @ torch.diag_embed(s**2) @ q.transpose(1, 2)
    return GaussianMixture(w / w.sum(), means, 0.5 * (cov + cov.transpose(1, 2)))


def target(name: str) -> GaussianMixture:
    """ring8 / grid25 / aniso [+ q | x4 | x16], mix5 or mix16."""
    if name.startswith("mix"):
        return random_mixture(int(name[3:]), seed=int(name[3:]))
    for suffix, c in SCALES.items():
        if name.endswith(suffix) and name[: -len(suffix)] in toy_data.MIXTURES:
            return scaled(toy_data.load(name[: -len(suffix)]), c)
    return toy_data.load(name)


TARGETS = [f"{b}{s}" for b in ("ring8", "grid25", "aniso") for s in ("", *SCALES)] + ["mix5", "mix16"]
