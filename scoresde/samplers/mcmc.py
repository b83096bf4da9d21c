"""Boltzmann samplers: many Langevin chains at once on an energy U at temperature kT, or on a score.

    ula          unadjusted Langevin on a score: x <- x + eta s(x) + sqrt(2 eta) z
    overdamped   the same chain in physical units: gamma dx = -∇U dt + sqrt(2 gamma kT) dW by Euler-Maruyama with
                 time step tau, i.e. eta = kT tau / gamma
    mala         Metropolis-adjusted Langevin (Roberts & Tweedie 1996): exact stationary law exp(-U / kT); per-chain
                 step adaptation during warm-up toward acceptance 0.574 (Robbins-Monro on log eta), then frozen
    baoab        underdamped Langevin, BAOAB splitting (Leimkuhler & Matthews 2013), mass m, friction gamma
    anneal       simulated annealing by MALA moves on a cooling schedule, with restarts and best-so-far per chain

Chains are the rows of x (B, ...); step sizes are a number or one per chain (B,), and nothing (adaptation
included) mixes chains, so given its noise a chain never depends on the rest of its batch. Device and dtype come
from x. Noise comes only from `generator` (the same generator gives the same chains; its stream is shared by the
batch) or from a caller's noise(k, like) -> the k-th standard normal draw shaped like `like` (per-chain streams);
MALA's accept test uses the uniform Φ(z) of a normal draw. Non-finite energies or scores are recorded per chain on
the device and raise one ValueError at the end naming the chain and the step s, the s-th state (0: the initial
one) or proposal; there is no host synchronisation inside the loops.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .._utils import append_dims, check_positive
from ..energies import Energy, Score, check_kT, energy_score, value_and_grad
from ._common import NoiseFn, noise_source

__all__ = ["Chains", "Annealed", "SCHEDULES", "cooling", "ula", "overdamped", "mala", "baoab", "anneal"]

TARGET_ACCEPT = 0.574  # optimal MALA acceptance (Roberts & Rosenthal 1998)


class Chains(NamedTuple):
    x: Tensor  # final states (B, ...)
    trace: Tensor | None  # states every `thin` steps from step burn_in on, (K, B, ...)
    step: Tensor  # the (final, frozen) step size of each chain, (B,)
    accept: Tensor | None = None  # per-chain acceptance rate after warm-up (MALA), (B,)
    v: Tensor | None = None  # final velocities (BAOAB)


class Annealed(NamedTuple):
    x_best: Tensor  # best state seen by each chain (B, ...)
    u_best: Tensor  # its energy (B,)
    x: Tensor  # final states
    u: Tensor  # final energies
    accept: Tensor  # per-chain acceptance rate over all moves (B,)
    evals: int  # energy + gradient evaluations per chain


# -- shared pieces ---------------------------------------------------------------------------------------------


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor of shape (chains, ...), got "
                         f"{getattr(x, 'shape', type(x))} {getattr(x, 'dtype', '')}")


def _check_steps(steps: int, burn_in: int, thin: int) -> int:
    """Validate the loop counts; return the number of recorded states."""
    for name, v, least in (("steps", steps, 0), ("burn_in", burn_in, 0), ("thin", thin, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {v!r}")
    return max(0, steps - burn_in + thin - 1) // thin if steps > burn_in else 0


def _per_chain(name: str, value: float | Tensor, x: Tensor) -> Tensor:
    """A positive step (number, or one per chain) as a (B,) tensor on x's device and dtype."""
    if isinstance(value, Tensor):
        if value.shape not in ((), x.shape[:1]):
            raise ValueError(f"{name} must be a number or have shape ({x.shape[0]},), got {tuple(value.shape)}")
        check_kT(value, name)
        return value.to(device=x.device, dtype=x.dtype).expand(x.shape[0]).clone()
    check_positive(name, value)
    return x.new_full(x.shape[:1], float(value))


class _Recorder:
    """States every `thin` steps from burn_in on, into one preallocated device tensor."""

    def __init__(self, x: Tensor, steps: int, burn_in: int, thin: int, record: bool):
        self.burn_in, self.thin = burn_in, thin
        n = _check_steps(steps, burn_in, thin)
        self.trace = x.new_empty((n,) + tuple(x.shape)) if record else None

    def __call__(self, k: int, x: Tensor) -> None:  # x after step k (0-based)
        if self.trace is not None and k >= self.burn_in and (k - self.burn_in) % self.thin == 0:
            self.trace[(k - self.burn_in) // self.thin].copy_(x)


class _ChainCheck:
    """The first step at which each chain saw a non-finite value, kept on the device; one sync at the end.

    Called with one (B,) tensor per step: the energy plus the sum of its gradient (or the sum of a score), which is
    non-finite exactly when one of them is."""

    def __init__(self, x: Tensor, steps: int, what: str):
        self.steps, self.what = steps, what
        self.first = torch.full(x.shape[:1], steps, dtype=torch.long, device=x.device)
        self.value = x.new_zeros(x.shape[:1])

    def __call__(self, k: int, v: Tensor) -> None:
        new = torch.where(torch.isfinite(v), self.steps, k) < self.first
        self.first = torch.where(new, k, self.first)
        self.value = torch.where(new, v, self.value)

    def raise_if_bad(self) -> None:
        if self.steps == 0 or not bool((self.first < self.steps).any()):
            return
        chain = int(self.first.argmin())
        step = int(self.first[chain])
        value, n_bad = float(self.value[chain]), int((self.first < self.steps).sum())
        raise ValueError(f"{self.what} is NaN or inf at chain {chain}, step {step} (value {value!r}; "
                         f"{n_bad} chains went bad)")


def _sum(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).sum(1)


# -- overdamped Langevin -----------------------------------------------------------------------------------------


def ula(
    score: Score,
    x: Tensor,
    steps: int,
    step: float | Tensor,
    *,
    burn_in: int = 0,
    thin: int = 1,
    record: bool = True,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
) -> Chains:
    """Unadjusted Langevin algorithm: x <- x + eta s(x) + sqrt(2 eta) z, eta = step (a number or per chain)."""
    _check_x(x)
    eta = _per_chain("step", step, x)
    rec = _Recorder(x, steps, burn_in, thin, record)
    eta_b = append_dims(eta, x.ndim)
    noise_b = (2 * eta_b).sqrt()
    draw = noise_source(generator, noise)
    check = _ChainCheck(x, steps, "the score")
    for k in range(steps):
        s = score(x)
        check(k, _sum(s))
        x = x + eta_b * s + noise_b * draw(k, x)
        rec(k, x)
    check.raise_if_bad()
    return Chains(x, rec.trace, eta)


def overdamped(
    energy: Energy,
    x: Tensor,
    steps: int,
    *,
    kT: float | Tensor,
    tau: float | Tensor,
    gamma: float = 1.0,
    **options,
) -> Chains:
    """Overdamped Langevin gamma dx = -∇U dt + sqrt(2 gamma kT) dW by Euler-Maruyama with time step tau:
    x <- x - (tau / gamma) ∇U + sqrt(2 kT tau / gamma) z, the ULA chain on -∇U / kT with eta = kT tau / gamma."""
    check_kT(kT)
    check_positive("gamma", gamma)
    _check_x(x)
    tau = _per_chain("tau", tau, x)
    kT_c = kT.to(x) if isinstance(kT, Tensor) else kT
    return ula(energy_score(energy, kT), x, steps, kT_c * tau / gamma, **options)


# -- MALA --------------------------------------------------------------------------------------------------------


def _mala_coefficients(eta: Tensor, kT, ndim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per chain, broadcast to x: a = eta / kT (drift on ∇U), b = sqrt(2 eta) (noise), c = sqrt(eta / 2) / kT."""
    kT_b = append_dims(kT, ndim) if isinstance(kT, Tensor) else kT
    eta_b = append_dims(eta, ndim)
    return eta_b / kT_b, (2 * eta_b).sqrt(), (eta_b / 2).sqrt() / kT_b


def _mala_step(energy: Energy, x: Tensor, u: Tensor, g: Tensor, coef: tuple, kT, z: Tensor, zu: Tensor):
    """One MALA move at temperature kT from (x, U(x), ∇U(x)): proposal y = x - a ∇U + b z, i.e.
    x + eta s + sqrt(2 eta) z, accepted when log Φ(zu) < log alpha. With w = c (∇U(x) + ∇U(y)), the proposal ratio log q(x|y) - log q(y|x)
    = |z|²/2 - |z - w|²/2 = -w·(w/2 - z). Returns x, u, g, accepted, log alpha, U(y), ∇U(y)."""
    a, b, c = coef
    y = torch.addcmul(x - a * g, b, z)
    uy, gy = value_and_grad(energy, y)
    w = c * (g + gy)
    log_alpha = torch.nan_to_num((u - uy) / kT - _sum(w * (0.5 * w - z)), nan=-math.inf)
    acc = torch.special.log_ndtr(zu) < log_alpha
    acc_b = append_dims(acc, x.ndim)
    return torch.where(acc_b, y, x), torch.where(acc, uy, u), torch.where(acc_b, gy, g), acc, log_alpha, uy, gy


def _accept_prob(log_alpha: Tensor) -> Tensor:
    return log_alpha.clamp(max=0).exp()


def mala(
    energy: Energy,
    x: Tensor,
    steps: int,
    *,
    kT: float | Tensor = 1.0,
    step: float | Tensor,
    warmup: int = 0,
    target_accept: float = TARGET_ACCEPT,
    burn_in: int | None = None,
    thin: int = 1,
    record: bool = True,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
) -> Chains:
    """Metropolis-adjusted Langevin on exp(-U / kT) with proposal x + eta s(x) + sqrt(2 eta) z (Roberts & Tweedie
    1996). During the first `warmup` steps each chain adapts log eta by Robbins-Monro toward `target_accept`
    (gain (k + 1)^-0.6); eta is then frozen at the chain's mean log eta over the warm-up's second half.
    Acceptance is counted after warm-up; states are recorded from burn_in (default: warmup) on."""
    _check_x(x)
    check_kT(kT)
    if not isinstance(warmup, int) or warmup < 0 or warmup > steps:
        raise ValueError(f"warmup must be an integer in [0, steps = {steps}], got {warmup!r}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
    kT = kT.to(x) if isinstance(kT, Tensor) else kT
    log_eta = _per_chain("step", step, x).log()
    rec = _Recorder(x, steps, warmup if burn_in is None else burn_in, thin, record)
    draw = noise_source(generator, noise)
    check = _ChainCheck(x, steps + 1, "the energy or its gradient")
    u, g = value_and_grad(energy, x)
    check(0, u + _sum(g))
    n_acc = torch.zeros_like(u)
    log_eta_sum = torch.zeros_like(u)
    half = warmup // 2
    coef = _mala_coefficients(log_eta.exp(), kT, x.ndim)
    for k in range(steps):
        x, u, g, acc, log_alpha, uy, gy = _mala_step(energy, x, u, g, coef, kT, draw(2 * k, x), draw(2 * k + 1, u))
        check(k + 1, uy + _sum(gy))
        if k < warmup:
            log_eta = log_eta + (k + 1) ** -0.6 * (_accept_prob(log_alpha) - target_accept)
            if k >= half:
                log_eta_sum += log_eta
            if k == warmup - 1:
                log_eta = log_eta_sum / (warmup - half)
            coef = _mala_coefficients(log_eta.exp(), kT, x.ndim)
        else:
            n_acc += acc
        rec(k, x)
    check.raise_if_bad()
    accept = n_acc / (steps - warmup) if steps > warmup else None
    return Chains(x, rec.trace, log_eta.exp(), accept)


# -- underdamped Langevin: BAOAB ---------------------------------------------------------------------------------


def baoab(
    energy: Energy,
    x: Tensor,
    steps: int,
    *,
    kT: float = 1.0,
    tau: float | Tensor,
    gamma: float = 1.0,
    mass: float = 1.0,
    v: Tensor | None = None,
    burn_in: int = 0,
    thin: int = 1,
    record: bool = True,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
) -> Chains:
    """Underdamped Langevin dx = v dt, m dv = -∇U dt - gamma m v dt + sqrt(2 gamma m kT) dW by BAOAB (Leimkuhler &
    Matthews 2013): half kick, half drift, exact Ornstein-Uhlenbeck, half drift, half kick; one gradient per step.
    v starts Maxwell-Boltzmann (drawn as noise draw 0) unless given; noise draw k + 1 drives step k."""
    _check_x(x)
    check_kT(kT)
    check_positive("gamma", gamma)
    check_positive("mass", mass)
    tau_c = _per_chain("tau", tau, x)
    rec = _Recorder(x, steps, burn_in, thin, record)
    draw = noise_source(generator, noise)
    h = append_dims(tau_c, x.ndim) / 2
    c1 = torch.exp(-gamma * 2 * h)
    c2 = (-torch.expm1(-2 * gamma * 2 * h)).sqrt() * math.sqrt(kT / mass)
    if v is None:
        v = draw(0, x) * math.sqrt(kT / mass)
    elif v.shape != x.shape:
        raise ValueError(f"v must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
    check = _ChainCheck(x, steps + 1, "the energy or its gradient")
    u, g = value_and_grad(energy, x)
    check(0, u + _sum(g))
    for k in range(steps):
        v = v - (h / mass) * g  # B
        x = x + h * v  # A
        v = c1 * v + c2 * draw(k + 1, x)  # O
        x = x + h * v  # A
        u, g = value_and_grad(energy, x)
        check(k + 1, u + _sum(g))
        v = v - (h / mass) * g  # B
        rec(k, x)
    check.raise_if_bad()
    return Chains(x, rec.trace, tau_c, None, v)


# -- simulated annealing -----------------------------------------------------------------------------------------


def _geometric(kT0: float, kT1: float, n: int) -> list[float]:
    return [kT0 * (kT1 / kT0) ** (k / max(n - 1, 1)) for k in range(n)]


def _linear(kT0: float, kT1: float, n: int) -> list[float]:
    return [kT0 + (kT1 - kT0) * k / max(n - 1, 1) for k in range(n)]


def _logarithmic(kT0: float, kT1: float, n: int) -> list[float]:
    c = (kT0 / kT1 - 1) / math.log(max(n, 2))  # kT0 / (1 + c log(1 + k)): the classic 1 / log k, ending at kT1
    return [kT0 / (1 + c * math.log1p(k)) for k in range(n)]


SCHEDULES: dict[str, Callable[[float, float, int], list[float]]] = {
    "geometric": _geometric,
    "linear": _linear,
    "logarithmic": _logarithmic,
}


def cooling(schedule: str, kT0: float, kT1: float, steps: int) -> list[float]:
    """The temperatures of `steps` annealing steps from kT0 down to kT1: geometric, linear or logarithmic."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown cooling schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    check_positive("kT0", kT0)
    check_positive("kT1", kT1)
    if kT1 > kT0:
        raise ValueError(f"kT1 = {kT1!r} must not exceed kT0 = {kT0!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return SCHEDULES[schedule](kT0, kT1, steps)


def anneal(
    energy: Energy,
    x: Tensor,
    steps: int,
    *,
    kT0: float,
    kT1: float,
    tau: float | Tensor,
    schedule: str = "geometric",
    gamma: float = 1.0,
    restarts: int = 1,
    adapt: float = 0.0,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
) -> Annealed:
    """Simulated annealing (Kirkpatrick et al. 1983) with MALA moves at kT_k = cooling(schedule, kT0, kT1) and
    eta_k = kT_k tau / gamma. steps are split into `restarts` cycles; each cycle reheats to kT0 from the chain's
    best state so far. adapt > 0: each chain tracks acceptance 0.574 as it cools, log tau += adapt (alpha - 0.574).
    Returns the best state and energy per chain; evals = steps + 1 energy and gradient evaluations per chain."""
    _check_x(x)
    if not isinstance(restarts, int) or restarts < 1 or restarts > max(steps, 1):
        raise ValueError(f"restarts must be an integer in [1, steps = {steps}], got {restarts!r}")
    check_positive("gamma", gamma)
    if not (isinstance(adapt, (int, float)) and 0 <= adapt < math.inf):
        raise ValueError(f"adapt must be a finite number >= 0, got {adapt!r}")
    log_tau = _per_chain("tau", tau, x).log()
    cycles = [steps // restarts + (i < steps % restarts) for i in range(restarts)]
    kTs = [kT for n in cycles for kT in (cooling(schedule, kT0, kT1, n) if n else [])]
    draw = noise_source(generator, noise)
    check = _ChainCheck(x, steps + 1, "the energy or its gradient")
    u, g = value_and_grad(energy, x)
    check(0, u + _sum(g))
    x_best, u_best, g_best = x, u, g
    n_acc = torch.zeros_like(u)
    starts = {sum(cycles[:i]) for i in range(1, restarts)}
    for k, kT in enumerate(kTs):
        if k in starts:
            x, u, g = x_best, u_best, g_best
        coef = _mala_coefficients(log_tau.exp() * (kT / gamma), kT, x.ndim)
        x, u, g, acc, log_alpha, uy, gy = _mala_step(energy, x, u, g, coef, kT, draw(2 * k, x), draw(2 * k + 1, u))
        check(k + 1, uy + _sum(gy))
        n_acc += acc
        if adapt:
            log_tau = log_tau + adapt * (_accept_prob(log_alpha) - TARGET_ACCEPT)
        better = u < u_best
        b = append_dims(better, x.ndim)
        x_best, u_best, g_best = torch.where(b, x, x_best), torch.where(better, u, u_best), torch.where(b, g, g_best)
    check.raise_if_bad()
    return Annealed(x_best, u_best, x, u, n_acc / max(steps, 1), steps + 1)
