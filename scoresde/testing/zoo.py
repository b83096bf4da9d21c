"""A zoo of broken models: classic bugs in a process, a score or a denoiser view, each caught by the kit.

Each `Mutant` builds the broken version of a correct process (target "process"), of a mixture's exact score
(target "score") or of its denoiser view (target "views"); `caught_by` names the report keys that fail on it,
and `mutant.check(process, mixture)` runs the kit's checks on it (`check_correct` runs them on the correct model).
The kit's own tests assert every mutant is caught and every correct model passes, across hypothesis examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..processes import VP, DiscreteVP, Process, SubVP
from ..score import ScoreFn
from .exact import check_exact_score
from .learned import check_learned
from .process import check_process
from .report import Report

__all__ = ["Mutant", "MUTANTS", "get", "check_correct"]


# -- broken processes ------------------------------------------------------------------------------------------------
class _Delegate(Process):
    """Forwards everything to a correct process through its public methods; a mutant overrides one thing."""

    def __init__(self, inner: Process):
        self.inner = inner
        self.t_min, self.t_max, self.discrete = inner.t_min, inner.t_max, inner.discrete
        for name in ("N", "betas"):
            if hasattr(inner, name):
                setattr(self, name, getattr(inner, name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def _alpha(self, t):
        return self.inner.alpha(t)

    def _sigma(self, t):
        return self.inner.sigma(t)

    def _log_snr(self, t):
        return self.inner.log_snr(t)

    def _t_from_log_snr(self, log_snr):
        return self.inner.t_from_log_snr(log_snr)

    def _f(self, t):
        return self.inner.f(t)

    def _g2(self, t):
        return self.inner.g2(t)

    @property
    def prior_std(self) -> float:
        return self.inner.prior_std


class _DriftSignFlip(_Delegate):
    def _f(self, t):
        return -self.inner.f(t)


class _G2SigmaForVariance(_Delegate):
    def _g2(self, t):  # d sigma/dt - 2 f sigma, where d sigma²/dt - 2 f sigma² was meant
        f, sigma = self.inner.f(t), self.inner.sigma(t)
        dsigma = (self.inner.g2(t) + 2 * f * sigma**2) / (2 * sigma)
        return dsigma - 2 * f * sigma


class _PerturbMissingAlpha(_Delegate):
    def perturb(self, x0: Tensor, t, eps: Tensor) -> Tensor:
        sigma = self.sigma(torch.as_tensor(t, dtype=x0.dtype, device=x0.device))
        return x0 + sigma.reshape(sigma.shape + (1,) * (x0.ndim - sigma.ndim)) * eps


class _LogSnrWithoutSquare(_Delegate):
    def _log_snr(self, t):  # log(alpha / sigma); t_from_log_snr still inverts log(alpha² / sigma²)
        return 0.5 * self.inner.log_snr(t)


class _TransitionVarianceForStd(_Delegate):
    def transition(self, s, t):  # returns sigma_ts² where sigma_ts was meant
        alpha_ts, sigma_ts = self.inner.transition(s, t)
        return alpha_ts, sigma_ts**2


class _PosteriorSigmaForVariance(_Delegate):
    def posterior_coefficients(self, s, t):  # c_xt = alpha_ts sigma_s / sigma_t, where sigma_s² / sigma_t²
        c_x0, c_xt, std = self.inner.posterior_coefficients(s, t)
        return c_x0, c_xt * self.sigma(t) / self.sigma(s), std


class _AlphaOne(_Delegate):
    def _alpha(self, t):
        return torch.ones_like(t)


class _UnitPrior(_Delegate):
    prior_std = 1.0


class _ReversedTime(Process):
    """alpha and sigma read at t_min + t_max - t (t for 1 - t); f and g² follow by autograd."""

    def __init__(self, inner: Process):
        self.inner = inner
        self.t_min, self.t_max, self.discrete = inner.t_min, inner.t_max, inner.discrete
        if hasattr(inner, "N"):
            self.N = inner.N

    def __repr__(self) -> str:
        return f"ReversedTime({self.inner!r})"

    def _alpha(self, t):
        return self.inner.alpha(self.t_min + self.t_max - t)

    def _sigma(self, t):
        return self.inner.sigma(self.t_min + self.t_max - t)


class _AlphaBarForAlpha(DiscreteVP):
    """alpha(t_i) = alpha_bar_i, where sqrt(alpha_bar_i) was meant (sigma stays sqrt(1 - alpha_bar_i))."""

    def __repr__(self) -> str:
        return f"AlphaBarForAlpha(N={self.N})"

    def _alpha(self, t):
        return torch.exp(self._log_alpha_bar(t))


class _DDPMOffByOne(DiscreteVP):
    """The posterior of step i built from beta_{i+1} (betas[i] of the 0-based array in a 1-based loop)."""

    def __repr__(self) -> str:
        return f"DDPMOffByOne(N={self.N})"

    def posterior_coefficients(self, s, t):
        c_x0, c_xt, std = super().posterior_coefficients(s, t)
        t = torch.as_tensor(t, dtype=torch.float64)
        i = self.t_to_step(t).clamp(2, self.N)
        consecutive = (i - self.t_to_step(torch.as_tensor(s, dtype=torch.float64))) == 1
        betas, ab = self.betas.to(t.device), self.alphas_cumprod.to(t.device)
        beta, ab_t, ab_s = betas[i.clamp(max=self.N - 1)], ab[i - 1], ab[i - 2]
        wrong = (ab_s.sqrt() * beta / (1 - ab_t), (1 - beta).sqrt() * (1 - ab_s) / (1 - ab_t),
                 (beta * (1 - ab_s) / (1 - ab_t)).sqrt())
        return tuple(torch.where(consecutive, w.to(c.dtype), c) for w, c in zip(wrong, (c_x0, c_xt, std)))


def _wrong_beta(process: Process) -> Process:
    cls = type(process)
    broken = type(f"WrongBeta{cls.__name__}", (cls,), {
        "beta": lambda self, t: self.beta_min + t * self.beta_max,  # slope beta_max where beta_max - beta_min
    })
    return broken(process.beta_min, process.beta_max, process.t_min)


def _unscaled_linear_betas(process: DiscreteVP) -> DiscreteVP:
    cfg = process.config()
    return DiscreteVP(torch.linspace(cfg["beta_start"], cfg["beta_end"], process.N, dtype=torch.float64))


# -- broken scores (of a mixture noised by a correct process) ---------------------------------------------------------
def _reflect(process: Process, t: Tensor) -> Tensor:
    return process.t_min + process.t_max - t


def _rotation(x: Tensor) -> Tensor:
    """R x with R a quarter turn in the first two coordinates (antisymmetric)."""
    flat = x.flatten(1)
    out = torch.zeros_like(flat)
    out[:, 0], out[:, 1] = -flat[:, 1], flat[:, 0]
    return out.reshape(x.shape)


def _score_sigma_for_variance(process: Process, mixture) -> ScoreFn:
    def score(x, t):  # (alpha x0 - x) / sigma from the exact denoiser, where / sigma² was meant
        a = process.alpha(t).to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        s = process.sigma(t).to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        return (a * mixture.posterior_mean(x, process, t) - x) / s

    return score


def _time_quantised(process: Process, mixture, levels: int = 8) -> ScoreFn:
    def score(x, t):  # the network sees t rounded up to one of `levels` steps
        lo, hi = process.t_min, process.t_max
        tq = lo + torch.ceil((t - lo) / (hi - lo) * levels) / levels * (hi - lo)
        return mixture.score(x, process, tq.clamp(lo, hi))

    return score


def _denoiser_sigma_for_variance(process: Process, mixture) -> dict:
    def x0(x, t):  # (x + sigma score) / alpha, where sigma² was meant
        a = process.alpha(t).to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        s = process.sigma(t).to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        return (x + s * mixture.score(x, process, t)) / a

    return {"x0": x0}


def _not_constant_alpha(process: Process, mixture) -> bool:
    return float(process.alpha(torch.tensor(process.t_max, dtype=torch.float64))) < 0.99


def _has_drift(process: Process, mixture) -> bool:
    t = torch.linspace(process.t_min, process.t_max, 9, dtype=torch.float64)
    return bool(process.f(t).abs().max() > 0)


@dataclass(frozen=True)
class Mutant:
    """A broken model: `build(process, mixture)` gives the broken process, ScoreFn or views of a correct one."""

    name: str
    bug: str
    target: str  # "process", "score" or "views"
    build: Callable
    caught_by: tuple[str, ...]
    applies: Callable = lambda process, mixture: True

    def check(self, process: Process, mixture, *, seed: int = 0, likelihood: bool = True) -> Report:
        """The kit's checks for this mutant's target, run on the broken model; the likelihood check (slow) runs
        when the mutant is caught_by it, unless likelihood=False."""
        return _run(self.target, self.build(process, mixture), process, mixture, seed,
                    likelihood and "likelihood" in self.caught_by)


def check_correct(target: str, process: Process, mixture, *, seed: int = 0, likelihood: bool = False) -> Report:
    """The same checks on the correct model of `target` (the mutants' control)."""
    correct = {"process": process, "score": mixture.score_fn(process), "views": {}}[target]
    return _run(target, correct, process, mixture, seed, likelihood)


def _run(target: str, model, process: Process, mixture, seed: int, likelihood: bool) -> Report:
    if target == "process":
        return check_process(model, seed=seed)
    data = mixture.sample(32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if target == "views":
        return check_learned(mixture.score_fn(process), process, data, views=model, checks=("views",), seed=seed)
    learned = ("conservative", "views", "fokker_planck") + (("likelihood",) if likelihood else ())
    return (check_exact_score(model, process, mixture=mixture, seed=seed)
            + check_learned(model, process, data, checks=learned, seed=seed, likelihood_samples=4))


_EXACT = ("gradient", "tweedie", "mixture")
MUTANTS: tuple[Mutant, ...] = (
    Mutant("drift_sign_flip", "f = -d log alpha/dt (the drift's sign flipped)", "process",
           lambda p, m: _DriftSignFlip(p), ("drift",), _has_drift),
    Mutant("g2_sigma_for_variance", "g² = d sigma/dt - 2 f sigma (sigma for sigma²)", "process",
           lambda p, m: _G2SigmaForVariance(p), ("diffusion",)),
    Mutant("reversed_time", "alpha, sigma read at 1 - t (t for 1 - t)", "process",
           lambda p, m: _ReversedTime(p),
           ("diffusion", "transition", "posterior", "log_snr_monotone", "log_snr_inverse", "prior")),
    Mutant("perturb_missing_alpha", "perturb = x0 + sigma eps (the alpha factor missing)", "process",
           lambda p, m: _PerturbMissingAlpha(p), ("perturb",), _not_constant_alpha),
    Mutant("log_snr_without_square", "log_snr = log(alpha / sigma)", "process",
           lambda p, m: _LogSnrWithoutSquare(p), ("log_snr", "log_snr_inverse")),
    Mutant("wrong_beta_schedule", "beta(t) = beta_min + t beta_max in the SDE (alpha uses the right one)", "process",
           lambda p, m: _wrong_beta(p), ("drift", "diffusion"), lambda p, m: type(p) in (VP, SubVP)),
    Mutant("ddpm_betas_not_rescaled", "DDPM linear betas not rescaled by 1000/N (N <= 400)", "process",
           lambda p, m: _unscaled_linear_betas(p), ("prior",),
           lambda p, m: type(p) is DiscreteVP and p.config().get("schedule") == "linear" and p.N <= 400),
    Mutant("ddpm_off_by_one", "the DDPM posterior of step i built from beta_{i+1}", "process",
           lambda p, m: _DDPMOffByOne(p.betas), ("ddpm_posterior",),
           lambda p, m: type(p) is DiscreteVP and p.N >= 3),
    Mutant("alpha_bar_for_alpha", "DDPM's alpha(t_i) = alpha_bar_i (the square root missing)", "process",
           lambda p, m: _AlphaBarForAlpha(p.betas),
           ("drift", "diffusion", "log_snr", "ddpm_marginal", "ddpm_posterior"), lambda p, m: type(p) is DiscreteVP),
    Mutant("transition_variance_for_std", "transition(s, t) returns sigma_ts² for sigma_ts", "process",
           lambda p, m: _TransitionVarianceForStd(p), ("transition", "posterior")),
    Mutant("posterior_sigma_for_variance", "the posterior's c_xt = alpha_ts sigma_s / sigma_t (sigma for sigma²)",
           "process", lambda p, m: _PosteriorSigmaForVariance(p), ("posterior",)),
    Mutant("unit_prior", "prior_std = 1 for a process whose sigma(t_max) is not 1", "process",
           lambda p, m: _UnitPrior(p), ("prior",),
           lambda p, m: abs(p.sigma(torch.tensor(p.t_max, dtype=torch.float64)).item() - 1) > 0.2),
    Mutant("score_sign_flip", "the score's sign flipped", "score",
           lambda p, m: (lambda x, t: -m.score(x, p, t)), _EXACT + ("fokker_planck",)),
    Mutant("score_sigma_for_variance", "score = (alpha x0 - x) / sigma (sigma for sigma²)", "score",
           _score_sigma_for_variance, _EXACT),
    Mutant("score_reversed_time", "the score read at 1 - t (t for 1 - t)", "score",
           lambda p, m: (lambda x, t: m.score(x, p, _reflect(p, t))), _EXACT + ("fokker_planck",)),
    Mutant("score_missing_alpha", "the mixture noised without alpha (components mu, Sigma + sigma² I)", "score",
           lambda p, m: (lambda x, t: m.score(x, _AlphaOne(p), t)), _EXACT + ("fokker_planck",),
           _not_constant_alpha),
    Mutant("wrong_temperature", "the score of p_t at temperature 1.25 (0.8 times the score)", "score",
           lambda p, m: (lambda x, t: 0.8 * m.score(x, p, t)), _EXACT + ("fokker_planck",)),
    Mutant("non_conservative", "the score plus 0.2 times a quarter turn of it (not a gradient)", "score",
           lambda p, m: (lambda x, t: (lambda s: s + 0.2 * _rotation(s))(m.score(x, p, t))),
           _EXACT + ("conservative", "fokker_planck"), lambda p, m: m.dim >= 2),
    Mutant("time_quantised", "the network sees t rounded up to 8 steps", "score",
           _time_quantised, _EXACT + ("fokker_planck", "likelihood")),
    Mutant("denoiser_sigma_for_variance", "the x0 view (x + sigma score) / alpha (sigma for sigma²)", "views",
           _denoiser_sigma_for_variance, ("views",)),
)


def get(name: str) -> Mutant:
    """The mutant called name."""
    for m in MUTANTS:
        if m.name == name:
            return m
    raise ValueError(f"unknown mutant {name!r}; choose from {', '.join(m.name for m in MUTANTS)}")
