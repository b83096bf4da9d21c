"""Score functions and the one place where score, eps, x0 (denoiser) and v convert into each other.

With x = alpha x0 + sigma eps (per sample, alpha and sigma broadcast over the data dimensions):

    score = -eps / sigma                      (the score of q(x_t | x0), averaged over x0 | x_t)
    x0    = (x - sigma eps) / alpha           Tweedie: x0 = (x + sigma² score) / alpha
    v     = alpha eps - sigma x0              (Salimans & Ho 2022; general alpha, sigma)

One vocabulary: a network's `prediction` is one of PREDICTIONS. Networks are conditioned on the noise level,
`net(x, sigma(t), **kwargs)`; `score_from` turns one into a ScoreFn, `predict` turns a ScoreFn back into a
prediction of any kind, and `convert` maps values between kinds.
"""

from __future__ import annotations

from typing import Callable, Literal, Protocol

from torch import Tensor

from ._utils import append_dims, as_time, check_batch_t
from .processes import Process

__all__ = ["ScoreFn", "Prediction", "PREDICTIONS", "convert", "tweedie", "score_from", "predict", "CountEvals"]

Prediction = Literal["score", "eps", "x0", "v"]
PREDICTIONS: tuple[str, ...] = ("score", "eps", "x0", "v")


class ScoreFn(Protocol):
    """score(x, t) -> ∇_x log p_t(x); x of shape (B, ...), t of shape (B,) in process time."""

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


def check_prediction(prediction: str) -> None:
    """Raise ValueError unless prediction is one of PREDICTIONS."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def _scales(x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    check_batch_t(x, alpha)
    check_batch_t(x, sigma)
    return append_dims(alpha, x.ndim), append_dims(sigma, x.ndim)


def _to_eps(src: str, value: Tensor, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
    if src == "eps":
        return value
    if src == "score":
        return -s * value
    if src == "x0":
        return (x - a * value) / s
    return (s * x + a * value) / (a**2 + s**2)  # v


def _from_eps(dst: str, eps: Tensor, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
    if dst == "eps":
        return eps
    if dst == "score":
        return -eps / s
    x0 = (x - s * eps) / a
    if dst == "x0":
        return x0
    return a * eps - s * x0  # v


def convert(value: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, *, src: Prediction, dst: Prediction) -> Tensor:
    """Convert a prediction of kind src at (x, alpha, sigma) into kind dst; alpha, sigma of shape (B,) or scalar."""
    check_prediction(src)
    check_prediction(dst)
    if src == dst:
        return value
    a, s = _scales(x, alpha, sigma)
    return _from_eps(dst, _to_eps(src, value, x, a, s), x, a, s)


def tweedie(x: Tensor, score: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    """Tweedie's formula: E[x0 | x_t] = (x + sigma² score) / alpha; Python-float alpha, sigma take a fused path."""
    if isinstance(alpha, float) and isinstance(sigma, float):
        return x.mul(1.0 / alpha).add_(score, alpha=sigma**2 / alpha)
    return convert(score, x, alpha, sigma, src="score", dst="x0")


def _alpha_sigma(process: Process, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    t = as_time(t, x)
    return process.alpha(t).to(x.dtype), process.sigma(t).to(x.dtype)


def score_from(net: Callable[..., Tensor], process: Process, prediction: Prediction = "eps", **kwargs) -> ScoreFn:
    """ScoreFn from a network net(x, sigma, **kwargs) that predicts eps, x0, v or the score."""
    check_prediction(prediction)

    def score(x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = _alpha_sigma(process, x, t)
        out = net(x, sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma, **kwargs)
        return convert(out, x, alpha, sigma, src=prediction, dst="score")

    return score


def predict(score: ScoreFn, process: Process, prediction: Prediction) -> Callable[[Tensor, Tensor], Tensor]:
    """The inverse adapter: (x, t) -> eps, x0 (Tweedie's denoiser), v or the score, from a ScoreFn."""
    check_prediction(prediction)

    def predicted(x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = _alpha_sigma(process, x, t)
        return convert(score(x, t), x, alpha, sigma, src="score", dst=prediction)

    return predicted


class CountEvals:
    """Wrap a ScoreFn and count its calls (NFE).

    >>> counted = CountEvals(score); sampler(counted, process, x, ts); counted.nfe
    """

    def __init__(self, score: ScoreFn):
        self.score = score
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.score(x, t)

    def reset(self) -> None:
        self.nfe = 0
