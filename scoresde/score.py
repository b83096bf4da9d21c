"""Score functions and the one place where score, eps, x0 (denoiser) and v convert into each other.

With x = alpha x0 + sigma eps (per sample, alpha and sigma broadcast over the data dimensions):

    score = -eps / sigma                      (the score of q(x_t | x0), averaged over x0 | x_t)
    x0    = (x - sigma eps) / alpha           Tweedie: x0 = (x + sigma² score) / alpha
    v     = alpha eps - sigma x0              (Salimans & Ho 2022; general alpha, sigma)

Networks are conditioned on the noise level: `net(x, sigma(t), **kwargs)`.
"""

from __future__ import annotations

from typing import Callable, Literal, Protocol

from torch import Tensor

from ._utils import append_dims, as_time, check_batch_t
from .processes import Process

__all__ = [
    "ScoreFn",
    "Prediction",
    "PREDICTIONS",
    "to_eps",
    "from_eps",
    "convert",
    "tweedie",
    "score_from_prediction",
    "score_from_eps",
    "score_from_x0",
    "score_from_v",
    "prediction_from_score",
    "eps_from_score",
    "x0_from_score",
    "v_from_score",
    "count_evals",
]

Prediction = Literal["score", "eps", "x0", "v"]
PREDICTIONS: tuple[str, ...] = ("score", "eps", "x0", "v")


class ScoreFn(Protocol):
    """score(x, t) -> ∇_x log p_t(x); x of shape (B, ...), t of shape (B,) in process time."""

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


def _check_kind(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {kind!r}; expected one of {PREDICTIONS}")


def _scales(x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    check_batch_t(x, alpha)
    check_batch_t(x, sigma)
    return append_dims(alpha, x.ndim), append_dims(sigma, x.ndim)


def to_eps(kind: Prediction, value: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Convert a prediction of the given kind at (x, alpha, sigma) into eps; alpha, sigma of shape (B,) or scalar."""
    _check_kind(kind)
    a, s = _scales(x, alpha, sigma)
    if kind == "eps":
        return value
    if kind == "score":
        return -s * value
    if kind == "x0":
        return (x - a * value) / s
    return (s * x + a * value) / (a**2 + s**2)  # v


def from_eps(kind: Prediction, eps: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Convert eps at (x, alpha, sigma) into a prediction of the given kind."""
    _check_kind(kind)
    a, s = _scales(x, alpha, sigma)
    if kind == "eps":
        return eps
    if kind == "score":
        return -eps / s
    x0 = (x - s * eps) / a
    if kind == "x0":
        return x0
    return a * eps - s * x0  # v


def convert(value: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, *, src: Prediction, dst: Prediction) -> Tensor:
    """Convert a prediction of kind src into kind dst at (x, alpha, sigma)."""
    _check_kind(dst)
    if src == dst:
        _check_kind(src)
        return value
    return from_eps(dst, to_eps(src, value, x, alpha, sigma), x, alpha, sigma)


def tweedie(x: Tensor, score: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    """Tweedie's formula: E[x0 | x_t] = (x + sigma² score) / alpha; Python-float alpha, sigma take a fused path."""
    if isinstance(alpha, float) and isinstance(sigma, float):
        return x.mul(1.0 / alpha).add_(score, alpha=sigma**2 / alpha)
    return convert(score, x, alpha, sigma, src="score", dst="x0")


def _alpha_sigma(process: Process, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    t = as_time(t, x)
    return process.alpha(t).to(x.dtype), process.sigma(t).to(x.dtype)


def score_from_prediction(net: Callable[..., Tensor], process: Process, kind: Prediction, **kwargs) -> ScoreFn:
    """ScoreFn from a network net(x, sigma, **kwargs) that predicts eps, x0, v or the score."""
    _check_kind(kind)

    def score(x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = _alpha_sigma(process, x, t)
        out = net(x, sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma, **kwargs)
        return convert(out, x, alpha, sigma, src=kind, dst="score")

    return score


def score_from_eps(net: Callable[..., Tensor], process: Process, **kwargs) -> ScoreFn:
    """ScoreFn from an eps-prediction network: score = -eps / sigma."""
    return score_from_prediction(net, process, "eps", **kwargs)


def score_from_x0(net: Callable[..., Tensor], process: Process, **kwargs) -> ScoreFn:
    """ScoreFn from a denoiser (x0-prediction network)."""
    return score_from_prediction(net, process, "x0", **kwargs)


def score_from_v(net: Callable[..., Tensor], process: Process, **kwargs) -> ScoreFn:
    """ScoreFn from a v-prediction network."""
    return score_from_prediction(net, process, "v", **kwargs)


def prediction_from_score(score: ScoreFn, process: Process, kind: Prediction) -> Callable[[Tensor, Tensor], Tensor]:
    """The inverse adapter: (x, t) -> eps, x0 (Tweedie denoiser), v or score, from a ScoreFn."""
    _check_kind(kind)

    def predict(x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = _alpha_sigma(process, x, t)
        return convert(score(x, t), x, alpha, sigma, src="score", dst=kind)

    return predict


def eps_from_score(score: ScoreFn, process: Process) -> Callable[[Tensor, Tensor], Tensor]:
    """(x, t) -> eps = -sigma(t) score(x, t)."""
    return prediction_from_score(score, process, "eps")


def x0_from_score(score: ScoreFn, process: Process) -> Callable[[Tensor, Tensor], Tensor]:
    """(x, t) -> E[x0 | x_t] by Tweedie's formula."""
    return prediction_from_score(score, process, "x0")


def v_from_score(score: ScoreFn, process: Process) -> Callable[[Tensor, Tensor], Tensor]:
    """(x, t) -> v = alpha eps - sigma x0."""
    return prediction_from_score(score, process, "v")


class count_evals:
    """Wrap a ScoreFn and count its calls (NFE) and the samples it scored.

    >>> counted = count_evals(score); sampler(counted, process, x, ts); counted.nfe
    """

    def __init__(self, score: ScoreFn):
        self.score = score
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.score(x, t)

    def reset(self) -> None:
        self.nfe = 0
