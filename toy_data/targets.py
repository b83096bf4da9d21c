"""Named 2D Gaussian-mixture targets (exact scores) and sample-only 2D toy sets."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .mixture import GaussianMixture

__all__ = ["ring8", "grid25", "aniso", "ToySet", "MIXTURES", "SETS"]


def ring8(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """Eight equal isotropic Gaussians on a circle; component k has label k."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([ang.cos(), ang.sin()], 1)
    return GaussianMixture.isotropic(torch.full((8,), 1 / 8, dtype=torch.float64), means, std, labels=range(8))


def grid25(spacing: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """A 5 x 5 grid of equal isotropic Gaussians centred on the origin; labels 0..24."""
    c = (torch.arange(5, dtype=torch.float64) - 2) * spacing
    means = torch.cartesian_prod(c, c)
    return GaussianMixture.isotropic(torch.full((25,), 1 / 25, dtype=torch.float64), means, std, labels=range(25))


def aniso() -> GaussianMixture:
    """Three Gaussians with full, strongly anisotropic covariances and unequal weights; labels 0..2."""
    means = [[-1.5, 0.5], [1.0, 1.2], [0.5, -1.5]]
    covs = [
        [[0.30, 0.25], [0.25, 0.30]],
        [[0.05, -0.03], [-0.03, 0.10]],
        [[0.40, 0.00], [0.00, 0.02]],
    ]
    return GaussianMixture([0.5, 0.3, 0.2], means, covs, labels=[0, 1, 2])


# -- sample-only sets: fn(n, generator) -> (n, 2) float64 on the generator's device --------------------------------


def _u(n: int, g: torch.Generator | None, device) -> Tensor:
    return torch.rand(n, generator=g, device=device, dtype=torch.float64)


def _n(shape, g: torch.Generator | None, device) -> Tensor:
    return torch.randn(shape, generator=g, device=device, dtype=torch.float64)


def _moons(n: int, generator: torch.Generator | None = None, device=None, noise: float = 0.05) -> Tensor:
    """Two interleaved half circles (as scikit-learn's make_moons), centred and scaled."""
    upper = _u(n, generator, device) < 0.5
    th = _u(n, generator, device) * math.pi
    x = torch.where(upper, th.cos(), 1 - th.cos())
    y = torch.where(upper, th.sin(), 0.5 - th.sin())
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.5
    return pts + noise * _n((n, 2), generator, device)


def _swiss_roll(n: int, generator: torch.Generator | None = None, device=None, noise: float = 0.3) -> Tensor:
    """The 2D swiss roll, scaled to about unit spread."""
    th = 1.5 * math.pi * (1 + 2 * _u(n, generator, device))
    pts = torch.stack([th * th.cos(), th * th.sin()], 1)
    return (pts + noise * _n((n, 2), generator, device)) / 5.0


def _checkerboard(n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Uniform on the black squares of a 4 x 4 checkerboard on [-2, 2]²."""
    x1 = _u(n, generator, device) * 4 - 2
    x2 = _u(n, generator, device) - torch.randint(0, 2, (n,), generator=generator, device=device) * 2.0
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], 1)


def _rings(n: int, generator: torch.Generator | None = None, device=None, noise: float = 0.04) -> Tensor:
    """Three concentric rings with radii 0.5, 1.25, 2 (points in proportion to circumference)."""
    radii = torch.tensor([0.5, 1.25, 2.0], dtype=torch.float64, device=device)
    which = torch.multinomial(radii, n, replacement=True, generator=generator)
    th = _u(n, generator, device) * 2 * math.pi
    r = radii[which]
    return torch.stack([r * th.cos(), r * th.sin()], 1) + noise * _n((n, 2), generator, device)


def _spirals(n: int, generator: torch.Generator | None = None, device=None, noise: float = 0.05) -> Tensor:
    """Two interleaved spirals."""
    s = _u(n, generator, device).sqrt() * 3 * math.pi
    sign = torch.where(_u(n, generator, device) < 0.5, -1.0, 1.0).to(s)
    pts = sign[:, None] * torch.stack([s * s.cos(), -s * s.sin()], 1) / (1.5 * math.pi)
    return pts + noise * _n((n, 2), generator, device)


def _pinwheel(n: int, generator: torch.Generator | None = None, device=None, arms: int = 5) -> Tensor:
    """Pinwheel with curved arms (Johnson et al. 2016)."""
    k = torch.randint(0, arms, (n,), generator=generator, device=device).double()
    feats = _n((n, 2), generator, device) * torch.tensor([0.3, 0.05], dtype=torch.float64, device=device)
    feats[:, 0] += 1.0
    ang = k * 2 * math.pi / arms + 0.25 * torch.exp(feats[:, 0])
    rot = torch.stack([ang.cos(), -ang.sin(), ang.sin(), ang.cos()], 1).reshape(n, 2, 2)
    return 2.0 * torch.einsum("nij,nj->ni", rot, feats)


class ToySet:
    """A sample-only 2D distribution with the same sample() signature as GaussianMixture; options (e.g. noise) go
    to its sampler."""

    def __init__(self, name: str, fn: Callable[..., Tensor], **options):
        self.name, self.fn, self.options, self.event_shape = name, fn, options, (2,)

    def __repr__(self) -> str:
        return f"ToySet({self.name!r})"

    def sample(self, n: int, generator=None, device=None, dtype=torch.float32) -> Tensor:
        if generator is not None and device is None:
            device = generator.device
        return self.fn(n, generator, device, **self.options).to(dtype)


MIXTURES: dict[str, Callable[..., GaussianMixture]] = {"ring8": ring8, "grid25": grid25, "aniso": aniso}
SETS: dict[str, Callable[..., Tensor]] = {
    "moons": _moons,
    "swiss_roll": _swiss_roll,
    "checkerboard": _checkerboard,
    "rings": _rings,
    "spirals": _spirals,
    "pinwheel": _pinwheel,
}
