"""Guidance as score composition: each function takes ScoreFns and returns a ScoreFn, so a sampler never sees it.

Guidance acts on scores, so it works whatever a network predicts: wrap an eps-, x0- or v-network with
`score.score_from` first. Scores are linear in eps (eps = -sigma score), so a
combination here is the same combination of eps-predictions; for x0 and v it is the same only when the weights
sum to one (as in `classifier_free` and `interval`).

    classifier       score + scale ∇_x log p(y | x_t, t)         (Dhariwal & Nichol 2021), by autograd
    classifier_free  uncond + w (cond - uncond)                  (Ho & Salimans 2022)
    weighted_sum     Σ_i w_i s_i: several conditions, negative prompts, products of experts
    interval         guided for t in [t_lo, t_hi], base elsewhere (Kynkäänniemi et al. 2024)

Weights are Python numbers or (B,) tensors (one weight per sample, on x's device). They are checked once, when
the ScoreFn is built; the returned ScoreFn makes no host synchronisation.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch
from torch import Tensor

from ._utils import append_dims, check_finite
from .score import ScoreFn

__all__ = ["classifier", "classifier_free", "weighted_sum", "interval"]

Weight = float | Tensor
LogProbFn = Callable[[Tensor, Tensor], Tensor]


def _check_weight(name: str, value: object) -> None:
    """Raise ValueError unless value is a finite real number or a finite tensor of shape () or (B,)."""
    if isinstance(value, Tensor):
        if value.ndim > 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be a number or a real tensor of shape () or (B,), got {value!r}")
        check_finite(value, name)
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or a tensor of shape (B,), got {value!r}")


def _check_score(name: str, fn: object) -> None:
    if not callable(fn):
        raise ValueError(f"{name} must be a ScoreFn (x, t) -> score, got {type(fn).__name__}")


def _scale(w: Weight, s: Tensor) -> Tensor:
    """w · s, with a (B,) tensor w broadcast over the data dimensions of s."""
    if not isinstance(w, Tensor):
        return s * w
    if w.ndim == 1 and w.shape[0] != s.shape[0]:
        raise ValueError(f"a per-sample weight has shape {tuple(w.shape)} but the batch has {s.shape[0]} samples")
    return append_dims(w.to(device=s.device, dtype=s.dtype), s.ndim) * s


def classifier(score: ScoreFn, log_prob_fn: LogProbFn, scale: Weight = 1.0) -> ScoreFn:
    """score(x, t) + scale · ∇_x log p(y | x_t, t), the gradient by autograd of log_prob_fn(x, t) -> (B,).

    log_prob_fn returns the log-probability of the wanted label of each sample (bind y yourself, e.g.
    `lambda x, t: clf(x, t).log_softmax(-1)[:, 3]`); its gradient is taken of the batch sum, so it must treat
    samples independently (no batch statistics). Works under torch.no_grad() and torch.inference_mode(): x and t
    are cloned out of inference mode, but the classifier's own tensors must not be inference tensors. The gradient
    term carries no graph unless the caller tracks gradients of x (then it is differentiable, e.g. for likelihoods).
    """
    _check_score("score", score)
    _check_score("log_prob_fn", log_prob_fn)
    _check_weight("scale", scale)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        track = torch.is_grad_enabled() and x.requires_grad
        with torch.inference_mode(False), torch.enable_grad():
            xg = x if track else (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)
            tg = t.clone() if isinstance(t, Tensor) and t.is_inference() else t
            lp = log_prob_fn(xg, tg)
            if lp.shape != (x.shape[0],):
                raise ValueError(
                    f"log_prob_fn must return shape (B,) = ({x.shape[0]},), one log-probability per sample; "
                    f"got {tuple(lp.shape)} (index the wanted label's column)"
                )
            (grad,) = torch.autograd.grad(lp.sum(), xg, create_graph=track)
        # the score second: caches it shares with the classifier are then first built outside inference mode
        s = score(x, t)
        return s + _scale(scale, grad.to(s.dtype))

    return guided


def classifier_free(cond: ScoreFn, uncond: ScoreFn, w: Weight) -> ScoreFn:
    """uncond + w · (cond - uncond): w = 1 is cond, w = 0 is uncond; evaluates both (two NFE per call)."""
    _check_score("cond", cond)
    _check_score("uncond", uncond)
    _check_weight("w", w)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        u = uncond(x, t)
        return u + _scale(w, cond(x, t) - u)

    return guided


def weighted_sum(*scores: ScoreFn, weights: Sequence[Weight]) -> ScoreFn:
    """Σ_i weights[i] · scores[i](x, t); evaluates every score (one NFE each per call).

    Two conditions at once, uncond + w1 (c1 - uncond) + w2 (c2 - uncond):
        weighted_sum(uncond, c1, c2, weights=[1 - w1 - w2, w1, w2])
    A negative prompt, cond + w (cond - neg), i.e. classifier-free guidance away from neg:
        weighted_sum(cond, neg, weights=[1 + w, -w])   # = classifier_free(cond, neg, 1 + w)
    """
    if not scores:
        raise ValueError("weighted_sum needs at least one score")
    for i, fn in enumerate(scores):
        _check_score(f"scores[{i}]", fn)
    weights = list(weights)
    if len(weights) != len(scores):
        raise ValueError(f"weights has {len(weights)} entries {weights!r} but there are {len(scores)} scores")
    for i, w in enumerate(weights):
        _check_weight(f"weights[{i}]", w)

    def combined(x: Tensor, t: Tensor) -> Tensor:
        out = _scale(weights[0], scores[0](x, t))
        for w, fn in zip(weights[1:], scores[1:]):
            out = out + _scale(w, fn(x, t))
        return out

    return combined


def interval(guided: ScoreFn, base: ScoreFn, t_lo: float, t_hi: float) -> ScoreFn:
    """guided(x, t) for samples with t_lo <= t <= t_hi, base(x, t) for the rest (per sample, by torch.where).

    Both are evaluated at every call (their NFE add up) so that the choice needs no host synchronisation;
    an infinite bound makes the interval one-sided.
    """
    _check_score("guided", guided)
    _check_score("base", base)
    for name, v in (("t_lo", t_lo), ("t_hi", t_hi)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
            raise ValueError(f"{name} must be a number, got {v!r}")
    if not t_lo < t_hi:
        raise ValueError(f"the interval needs t_lo < t_hi, got t_lo = {t_lo!r}, t_hi = {t_hi!r}")

    def switched(x: Tensor, t: Tensor) -> Tensor:
        inside = (t >= t_lo) & (t <= t_hi)
        g, b = guided(x, t), base(x, t)
        return torch.where(append_dims(inside, g.ndim), g, b)

    return switched
