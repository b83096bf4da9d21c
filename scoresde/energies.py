"""Energies U(x) -> (B,) and the Boltzmann law p(x) ∝ exp(-U(x) / kT), with exact references.

An energy is any callable U(x) -> (B,) on x of shape (B, ...). Its score at temperature kT is -∇U / kT, by
autograd (`energy_score`); scores of other kinds plug into the same Langevin samplers (`scoresde.samplers.mcmc`):
a ScoreFn at a fixed time (`fixed_time`), a score raised to 1/T (`tempered`), a Gaussian mixture (`mixture`).

A `Landscape` is an energy with what is known about it exactly: its minima and global minimum, closed-form moments
(harmonic), and for d <= 2 a quadrature box, from which `reference(landscape, kT)` computes the normalised Boltzmann
density on a grid and its moments (mean energy, E[x], E[x²], well occupancies) by Simpson's rule in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ._utils import append_dims, check_positive

__all__ = [
    "Energy",
    "Landscape",
    "Reference",
    "LANDSCAPES",
    "check_kT",
    "value_and_grad",
    "energy_score",
    "tempered",
    "fixed_time",
    "harmonic",
    "double_well",
    "muller_brown",
    "rosenbrock",
    "rastrigin",
    "mixture",
    "get",
    "reference",
]

Energy = Callable[[Tensor], Tensor]
Score = Callable[[Tensor], Tensor]


def check_kT(kT: float | Tensor, name: str = "kT") -> None:
    """Raise ValueError unless kT is a positive finite number (or a tensor of them: one host sync, at entry)."""
    if isinstance(kT, Tensor):
        if not bool((torch.isfinite(kT) & (kT > 0)).all()):
            raise ValueError(f"{name} must be positive and finite, got {kT.flatten()[:8].tolist()}")
        return
    check_positive(name, kT)


def value_and_grad(energy: Energy, x: Tensor) -> tuple[Tensor, Tensor]:
    """U(x) (B,) and ∇U(x) like x, detached: one forward and one backward pass, no graph kept."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        u = energy(xg)
        if not isinstance(u, Tensor) or u.shape != x.shape[:1]:
            raise ValueError(f"the energy must return shape (B,) = ({x.shape[0]},) for x of shape {tuple(x.shape)}, "
                             f"got {tuple(getattr(u, 'shape', ())) if isinstance(u, Tensor) else type(u).__name__}")
        (g,) = torch.autograd.grad(u.sum(), xg)
    return u.detach(), g


def energy_score(energy: Energy, kT: float | Tensor = 1.0) -> Score:
    """The score x -> -∇U(x) / kT of the Boltzmann law exp(-U / kT) (kT a number or per chain, shape (B,))."""
    check_kT(kT)

    def score(x: Tensor) -> Tensor:
        g = value_and_grad(energy, x)[1]
        return g.div_(append_dims(kT, g.ndim) if isinstance(kT, Tensor) else kT).neg_()

    return score


def tempered(score: Score, T: float | Tensor) -> Score:
    """score / T: the score of p^(1/T) (up to normalisation), i.e. of the Boltzmann law at T times the temperature."""
    check_kT(T, "T")
    return lambda x: score(x) / (append_dims(T, x.ndim) if isinstance(T, Tensor) else T)


def fixed_time(score_fn: Callable[[Tensor, Tensor], Tensor], t: float) -> Score:
    """A ScoreFn (x, t) at one time as a score of x alone, for the Langevin samplers (t = t_min: nearly the data)."""
    return lambda x: score_fn(x, x.new_full((x.shape[0],), float(t)))


# -- landscapes --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Landscape:
    """An energy U(x) -> (B,) on x of shape (B, dim) with exact facts: local minima (wells, global one first) and
    the global minimum energy; `moments(kT)` in closed form when known; `box(kT)` for quadrature when dim <= 2."""

    name: str
    energy: Energy
    dim: int
    minima: Tensor  # (K, dim) float64, the global minimum first
    u_min: float
    box: Callable[[float], Sequence[tuple[float, float]]] | None = None
    moments: Callable[[float], dict] | None = None
    grid: int = 1201  # quadrature points per axis
    domain: tuple[float, float] | Sequence[tuple[float, float]] = (-3.0, 3.0)  # search box, per axis or for all

    def bounds(self) -> list[tuple[float, float]]:
        """The search domain per axis (annealing starts uniform in it)."""
        d = self.domain
        return [tuple(d)] * self.dim if isinstance(d[0], (int, float)) else [tuple(b) for b in d]

    def __call__(self, x: Tensor) -> Tensor:
        return self.energy(x)

    @property
    def x_min(self) -> Tensor:
        return self.minima[0]

    def well(self, x: Tensor) -> Tensor:
        """The index of the nearest local minimum of each x (B, dim) -> (B,) long."""
        return torch.cdist(x.reshape(x.shape[0], -1).double(), self.minima.to(x.device)).argmin(1)


def _refine(energy: Energy, starts: Sequence[Sequence[float]]) -> tuple[Tensor, Tensor]:
    """Local minima from starting points (L-BFGS-B in float64), sorted by energy: (K, d), (K,)."""
    from scipy.optimize import minimize

    def fun(p: np.ndarray) -> tuple[float, np.ndarray]:
        u, g = value_and_grad(energy, torch.as_tensor(p, dtype=torch.float64)[None])
        return float(u[0]), g[0].numpy()

    pts = [minimize(fun, np.asarray(s, float), jac=True, method="L-BFGS-B", tol=1e-14).x for s in starts]
    x = torch.as_tensor(np.stack(pts), dtype=torch.float64)
    u = energy(x)
    order = torch.argsort(u)
    return x[order], u[order]


def harmonic(dim: int = 1, std: float | Sequence[float] = 1.0) -> Landscape:
    """U = ½ Σ (x_i / std_i)²: Boltzmann N(0, kT std²), mean energy d kT / 2 (any dim, closed form)."""
    s = torch.as_tensor(std, dtype=torch.float64).expand(dim).clone()
    if not bool((s > 0).all()):
        raise ValueError(f"std must be positive, got {s.tolist()}")

    inv = {}

    def energy(x: Tensor) -> Tensor:
        key = (x.device, x.dtype)
        if key not in inv:
            inv[key] = (1 / s).to(device=x.device, dtype=x.dtype)
        return 0.5 * (x * inv[key]).square().flatten(1).sum(1)

    def moments(kT: float) -> dict:
        return {"mean_energy": dim * kT / 2, "mean": np.zeros(dim), "second_moment": kT * s.numpy() ** 2,
                "occupancy": np.ones(1)}

    width = float(s.max())
    return Landscape("harmonic", energy, dim, torch.zeros(1, dim, dtype=torch.float64), 0.0,
                     box=lambda kT: [(-10 * width * kT**0.5, 10 * width * kT**0.5)] * dim, moments=moments)


def double_well(dim: int = 1, tilt: float = 0.25, height: float = 1.0, stiffness: float = 1.0) -> Landscape:
    """U = height (x_0² - 1)² + tilt x_0 + ½ stiffness Σ_{i>0} x_i² (dim 1 or 2): two wells, the one at x_0 < 0
    lower by about 2 tilt."""
    if dim not in (1, 2):
        raise ValueError(f"double_well has dim 1 or 2, got {dim!r}")
    check_positive("height", height)
    check_positive("stiffness", stiffness)

    def energy(x: Tensor) -> Tensor:
        x0 = x[:, 0]
        u = height * (x0.square() - 1).square() + tilt * x0
        return u + 0.5 * stiffness * x[:, 1:].square().sum(1)

    def box(kT: float):
        r = 1 + 2.6 * (kT / height) ** 0.25 + abs(tilt) / height
        return [(-r, r)] + [(-10 * (kT / stiffness) ** 0.5, 10 * (kT / stiffness) ** 0.5)] * (dim - 1)

    minima, u = _refine(energy, [[-1.0] + [0.0] * (dim - 1), [1.0] + [0.0] * (dim - 1)])
    return Landscape("double_well", energy, dim, minima, float(u[0]), box=box, grid=20001 if dim == 1 else 1201)


_MB = dict(A=(-200.0, -100.0, -170.0, 15.0), a=(-1.0, -1.0, -6.5, 0.7), b=(0.0, 0.0, 11.0, 0.6),
           c=(-10.0, -10.0, -6.5, 0.7), x0=(1.0, 0.0, -0.5, -1.0), y0=(0.0, 0.5, 1.5, 1.0))


def muller_brown(scale: float = 1.0) -> Landscape:
    """The Müller-Brown potential (Müller & Brown 1979) times scale: three wells, global minimum -146.70 scale at
    (-0.558, 1.442); the usual test of barrier crossing (kT of order 10 scale)."""
    check_positive("scale", scale)
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in _MB.items()}
    p["A"] = p["A"] * scale
    cache: dict = {}

    def energy(x: Tensor) -> Tensor:
        key = (x.device, x.dtype)
        if key not in cache:  # the parameters once per device and dtype, not per call
            cache[key] = {k: v.to(device=x.device, dtype=x.dtype) for k, v in p.items()}
        q = cache[key]
        dx, dy = x[:, :1] - q["x0"], x[:, 1:2] - q["y0"]
        e = (q["a"] * dx + q["b"] * dy) * dx + q["c"] * dy.square()
        return (q["A"] * e.exp()).sum(1)

    def box(kT: float):
        # far out U ~ 15 scale exp(q), q >= 0.4 r² around (-1, 1): reach U / kT > 35 + |U_min| / kT
        r = (math.log((35 * kT / scale + 150) / 15) / 0.4) ** 0.5
        return [(-1 - r, max(1.3, r - 1)), (min(-0.7, 1 - r), 1 + r)]

    minima, u = _refine(energy, [[-0.56, 1.44], [0.62, 0.03], [-0.05, 0.47]])
    return Landscape("muller_brown", energy, 2, minima, float(u[0]), box=box, grid=1201,
                     domain=[(-1.5, 1.2), (-0.5, 2.0)])


def rosenbrock(a: float = 1.0, b: float = 5.0) -> Landscape:
    """The banana U = (a - x)² + b (y - x²)²: global minimum 0 at (a, a²); y | x is N(x², kT / 2b)."""
    check_positive("b", b)

    def energy(x: Tensor) -> Tensor:
        return (a - x[:, 0]).square() + b * (x[:, 1] - x[:, 0].square()).square()

    def box(kT: float):
        r = 6.5 * kT**0.5
        w = 10 * (kT / (2 * b)) ** 0.5
        return [(a - r, a + r), (-w, max(abs(a - r), abs(a + r)) ** 2 + w)]

    return Landscape("rosenbrock", energy, 2, torch.tensor([[a, a * a]], dtype=torch.float64), 0.0, box=box,
                     grid=1601, domain=[(a - 3, a + 3), (-2, (abs(a) + 3) ** 2)])


def rastrigin(dim: int = 2, A: float = 10.0) -> Landscape:
    """U = A d + Σ (x_i² - A cos 2π x_i) (Rastrigin 1974): global minimum 0 at 0 among ~11^d local minima."""
    check_positive("A", A)

    def energy(x: Tensor) -> Tensor:
        return A * dim + (x.square() - A * torch.cos(2 * math.pi * x)).flatten(1).sum(1)

    def box(kT: float):
        r = max(5.12, (40 * kT) ** 0.5 + 1)
        return [(-r, r)] * dim

    return Landscape("rastrigin", energy, dim, torch.zeros(1, dim, dtype=torch.float64), 0.0, box=box, grid=2001,
                     domain=(-5.12, 5.12))


def mixture(gm, name: str = "mixture") -> Landscape:
    """A Gaussian mixture (toy_data.GaussianMixture) as the energy U = -log p: its Boltzmann law at kT = 1 is the
    mixture; wells at its local modes (found from the component means)."""
    if len(gm.event_shape) != 1:
        raise ValueError(f"mixture energies take points of shape (B, D), got event shape {gm.event_shape}")

    def energy(x: Tensor) -> Tensor:
        return -gm.log_prob(x)

    minima, u = _refine(energy, gm.means.tolist())
    keep = [0] + [i for i in range(1, len(minima)) if bool((minima[:i] - minima[i]).norm(dim=1).min() > 1e-4)]
    minima, u = minima[keep], u[keep]
    spread = float(gm.eigvals.max()) ** 0.5

    def box(kT: float):
        lo, hi = gm.means.min(0).values, gm.means.max(0).values
        r = 10 * spread * kT**0.5
        return [(float(l) - r, float(h) + r) for l, h in zip(lo, hi)]

    lo, hi = (gm.means.min(0).values - 4 * spread).tolist(), (gm.means.max(0).values + 4 * spread).tolist()
    return Landscape(name, energy, gm.dim, minima, float(u[0]), box=box if gm.dim <= 2 else None, grid=801,
                     domain=list(zip(lo, hi)))


LANDSCAPES: dict[str, Callable[..., Landscape]] = {
    "harmonic": harmonic,
    "double_well": double_well,
    "muller_brown": muller_brown,
    "rosenbrock": rosenbrock,
    "rastrigin": rastrigin,
}


def get(name: str, dim: int | None = None, **options) -> Landscape:
    """A landscape by name: one of LANDSCAPES (dim for harmonic, double_well, rastrigin) or a toy_data mixture."""
    if name in LANDSCAPES:
        fn = LANDSCAPES[name]
        if dim is not None:
            if name not in ("harmonic", "double_well", "rastrigin"):
                raise ValueError(f"{name} is {fn().dim}-dimensional; dim = {dim!r} cannot be set")
            options["dim"] = dim
        return fn(**options)
    import toy_data

    if name in toy_data.MIXTURES:
        gm = toy_data.load(name, **options)
        if dim is not None and dim != gm.dim:
            raise ValueError(f"{name} is {gm.dim}-dimensional; got dim = {dim!r}")
        return mixture(gm, name)
    raise ValueError(f"unknown energy {name!r}; choose from {', '.join([*LANDSCAPES, *toy_data.MIXTURES])}")


# -- exact references --------------------------------------------------------------------------------------------


@dataclass
class Reference:
    """The exact Boltzmann law of a landscape at kT: moments, and for dim <= 2 the normalised density on a grid."""

    kT: float
    mean_energy: float
    mean: np.ndarray  # E[x], (d,)
    second_moment: np.ndarray  # E[x²] per coordinate, (d,)
    occupancy: np.ndarray  # probability of each well (nearest local minimum), (K,)
    axes: list | None = None  # grid axes, for plots and exact draws
    density: np.ndarray | None = None  # normalised density on the grid, shape (n,) or (n, n)
    log_z: float | None = None  # log ∫ exp(-U / kT) dx (quadrature)

    def stats(self) -> dict[str, float]:
        """The flat table of exact statistics: mean_energy, mean[i], x2[i], well[k]."""
        out = {"mean_energy": float(self.mean_energy)}
        out.update({f"mean[{i}]": float(v) for i, v in enumerate(self.mean)})
        out.update({f"x2[{i}]": float(v) for i, v in enumerate(self.second_moment)})
        if len(self.occupancy) > 1:
            out.update({f"well[{k}]": float(v) for k, v in enumerate(self.occupancy)})
        return out

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """n draws from the gridded density (a cell by its mass, then uniform within it): exact to the grid step."""
        if self.density is None:
            raise ValueError("this reference has no grid to draw from")
        d = len(self.axes)
        mass = torch.as_tensor(self.density, dtype=torch.float64).flatten().clamp_min(0)
        cell = torch.multinomial(mass, n, replacement=True, generator=generator)
        idx = [torch.as_tensor(i) for i in np.unravel_index(cell.numpy(), self.density.shape)]
        u = torch.rand(n, d, generator=generator, dtype=torch.float64) - 0.5
        cols = []
        for i, ax in enumerate(self.axes):
            a = torch.as_tensor(ax, dtype=torch.float64)
            cols.append(a[idx[i]] + u[:, i] * float(a[1] - a[0]))
        return torch.stack(cols, 1).to(dtype)


def _evaluate(energy: Energy, pts: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    x = torch.as_tensor(pts, dtype=torch.float64)
    with torch.no_grad():
        return torch.cat([energy(c) for c in x.split(chunk)]).numpy()


def reference(landscape: Landscape, kT: float, grid: int | None = None) -> Reference:
    """The exact Boltzmann law at kT: closed-form moments when the landscape has them, else (dim <= 2) Simpson
    quadrature on a grid over its box; ValueError when the box is too small (density not negligible at its edge)."""
    from scipy.integrate import simpson

    check_kT(kT)
    if landscape.box is None or landscape.dim > 2:
        if landscape.moments is None:
            raise ValueError(f"{landscape.name} in {landscape.dim} dimensions has no exact reference (dim <= 2 only)")
        return Reference(kT, **landscape.moments(kT))
    n = grid or landscape.grid
    axes = [np.linspace(lo, hi, n) for lo, hi in landscape.box(kT)]
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1)  # (n, [n,] d)
    pts = mesh.reshape(-1, landscape.dim)
    u = _evaluate(landscape.energy, pts).reshape(mesh.shape[:-1])
    if not np.isfinite(u).all():
        raise ValueError(f"{landscape.name}: the energy is not finite on the quadrature box {landscape.box(kT)}")
    w = np.exp(-(u - u.min()) / kT)
    edge = max(float(np.abs(np.take(w, [0, -1], axis=a)).max()) for a in range(w.ndim))
    if edge > 1e-12:
        raise ValueError(f"{landscape.name}: the quadrature box {landscape.box(kT)} is too small at kT = {kT!r} "
                         f"(relative density {edge:.2g} at its edge)")

    def integrate(f: np.ndarray) -> float:
        for ax in reversed(axes):
            f = simpson(f, x=ax, axis=-1)
        return float(f)

    z = integrate(w)
    p = w / z
    labels = landscape.well(torch.as_tensor(pts)).numpy().reshape(u.shape)
    cell = p * math.prod(float(ax[1] - ax[0]) for ax in axes)  # a Riemann sum: Simpson's weights ring on a step
    occ = np.array([cell[labels == i].sum() for i in range(len(landscape.minima))])
    ref = Reference(kT, integrate(p * u), np.array([integrate(p * mesh[..., i]) for i in range(landscape.dim)]),
                    np.array([integrate(p * mesh[..., i] ** 2) for i in range(landscape.dim)]), occ / occ.sum(),
                    axes=axes, density=p, log_z=math.log(z) - float(u.min()) / kT)
    if landscape.moments is not None:  # closed form where known; the grid stays for plots and draws
        for key, v in landscape.moments(kT).items():
            setattr(ref, key, v)
    return ref
