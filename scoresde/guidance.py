"""Guidance as score composition: each function takes ScoreFns and returns a ScoreFn, so a sampler never sees it.

Guidance acts on scores, so it works whatever a network predicts: wrap an eps-, x0- or v-network with
`score.score_from` first. Scores are linear in eps (eps = -sigma score), so a
combination here is the same combination of eps-predictions; for x0 and v it is the same only when the weights
sum to one (as in `classifier_free` and `interval`).

    classifier       score + scale ∇_x log p(y | x_t, t)         (Dhariwal & Nichol 2021), by autograd
    classifier_free  uncond + w (cond - uncond)                  (Ho & Salimans 2022)
    weighted_sum     Σ_i w_i s_i: several conditions, negative prompts, products of experts
    interval         guided for t in [t_lo, t_hi], base elsewhere (Kynkäänniemi et al. 2024)

Linear inverse problems, y = A x0 + noise_std n with n ~ N(0, I) and A one of the operators below
(Mask: inpainting, BlockAverage: super-resolution, Projection: any full-row-rank matrix, e.g. grayscale):

    dps              score + ζ_t ∇_x log N(y; A x0_hat(x_t), I), ζ_t ∝ ζ / |y - A x0_hat|   (Chung et al. 2023)
    pigdm            score + ∇_x log N(y; A x0_hat(x_t), r_t² A Aᵀ + noise_std² I)         (Song et al. 2023)
    replacement      a sampler -> a sampler: after each step A x_t is set to a draw of alpha_t y + sigma_t A eps
                     (Song et al. 2021's imputation); acts on x, so it wraps the sampler, not the score
    repaint          replacement with each step re-noised and re-taken `resample` times (Lugmayr et al. 2022)

For a Gaussian-mixture prior the exact posterior score is `GaussianMixture.condition(A, y, noise_std)
.score_fn(process)`; every method here is measured against it (tests/test_inverse.py, benchmarks/inverse.py).

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
from .processes import Process
from .schedules import check_grid
from .score import ScoreFn, tweedie

__all__ = [
    "classifier",
    "classifier_free",
    "weighted_sum",
    "interval",
    "LinearOperator",
    "Mask",
    "BlockAverage",
    "Projection",
    "dps",
    "pigdm",
    "replacement",
    "repaint",
]

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


def _differentiable(x: Tensor, t: Tensor, track: bool) -> tuple[Tensor, Tensor]:
    """(x as a leaf that requires grad, or x itself when the caller tracks its gradient; t out of inference mode).
    Call inside torch.inference_mode(False) and torch.enable_grad()."""
    xg = x if track else (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)
    tg = t.clone() if isinstance(t, Tensor) and t.is_inference() else t
    return xg, tg


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
            xg, tg = _differentiable(x, t, track)
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


# -- linear measurement operators --------------------------------------------------------------------------------


def _shape(name: str, shape: object) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in shape)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a tuple of positive integers, got {shape!r}") from None
    if not out or any(v < 1 for v in out):
        raise ValueError(f"{name} must be a tuple of positive integers, got {shape!r}")
    return out


class LinearOperator:
    """A linear measurement y = A x on samples x of shape (B, *event_shape); y of shape (B, *measurement_shape).

    Subclasses give A, AT (the adjoint) and gram_solve; pinv, replace and matrix follow from them.
    """

    event_shape: tuple[int, ...]
    measurement_shape: tuple[int, ...]

    def A(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def AT(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def gram_solve(self, v: Tensor, scale: Weight, shift: Weight) -> Tensor:
        """(scale A Aᵀ + shift I)⁻¹ v for v of shape (B, *measurement_shape); scale, shift numbers or (B,)."""
        raise NotImplementedError

    def pinv(self, y: Tensor) -> Tensor:
        """The pseudo-inverse A⁺ y = Aᵀ (A Aᵀ)⁻¹ y (A has full row rank)."""
        return self.AT(self.gram_solve(y, 1.0, 0.0))

    def replace(self, x: Tensor, target: Tensor) -> Tensor:
        """x changed only along A's row space so that A x = target: x + A⁺ (target - A x)."""
        return x + self.pinv(target - self.A(x))

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """A as an (M, D) matrix (for tests and exact posteriors), by applying it to the standard basis."""
        d = math.prod(self.event_shape)
        basis = torch.eye(d, dtype=dtype).reshape((d, *self.event_shape))
        return self.A(basis).reshape(d, -1).T.contiguous()

    def check_measurement(self, y: Tensor) -> Tensor:
        """y as a floating tensor of shape measurement_shape (one measurement) or (B, *measurement_shape)."""
        if not isinstance(y, Tensor):
            y = torch.as_tensor(y, dtype=torch.float64)
        m = self.measurement_shape
        if tuple(y.shape) != m and tuple(y.shape[1:]) != m:
            raise ValueError(f"y must have shape {m} or (B, *{m}) for {self!r}, got {tuple(y.shape)}")
        if not y.is_floating_point():
            y = y.to(torch.get_default_dtype())
        check_finite(y, "y")
        return y

    def _check_x(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"{self!r} acts on samples of shape (B, *{self.event_shape}), got {tuple(x.shape)}")


def _per_sample(w: Weight, v: Tensor) -> Weight:
    """A number, or a (B,) tensor broadcast over v's trailing dimensions."""
    return append_dims(w.to(device=v.device, dtype=v.dtype), v.ndim) if isinstance(w, Tensor) else w


class Mask(LinearOperator):
    """Inpainting: y = the coordinates where `known` is True (A Aᵀ = I); `known` has the event shape."""

    def __init__(self, known: Tensor):
        known = torch.as_tensor(known)
        if known.dtype != torch.bool:
            if not bool(((known == 0) | (known == 1)).all()):
                raise ValueError("a mask must hold booleans or 0/1 values, got other values")
            known = known.bool()
        if known.ndim == 0:
            raise ValueError("a mask must have the event shape of the data, got a 0-dim tensor")
        m = int(known.sum())
        if m == 0:
            raise ValueError(f"the mask observes nothing: no True entry in a mask of shape {tuple(known.shape)}")
        self.known = known.cpu()
        self.event_shape = tuple(known.shape)
        self.measurement_shape = (m,)
        self._index = self.known.flatten().nonzero()[:, 0]
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"Mask({self.measurement_shape[0]} of {math.prod(self.event_shape)} known)"

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._cache:
            self._cache[device] = (self._index.to(device), self.known.to(device))
        return self._cache[device]

    def A(self, x: Tensor) -> Tensor:
        self._check_x(x)
        return x.flatten(1).index_select(1, self._on(x.device)[0])

    def AT(self, y: Tensor) -> Tensor:
        out = y.new_zeros(y.shape[0], math.prod(self.event_shape))
        return out.index_copy_(1, self._on(y.device)[0], y).reshape((y.shape[0], *self.event_shape))

    def gram_solve(self, v: Tensor, scale: Weight, shift: Weight) -> Tensor:
        return v / (_per_sample(scale, v) + _per_sample(shift, v))

    def replace(self, x: Tensor, target: Tensor) -> Tensor:
        """x with its known coordinates set to target, exactly (no arithmetic on them)."""
        return torch.where(self._on(x.device)[1], self.AT(target.expand(x.shape[0], -1)).to(x.dtype), x)


class BlockAverage(LinearOperator):
    """Super-resolution: the mean over factor x factor pixel blocks of (C, H, W) images, or over blocks of `factor`
    consecutive coordinates of (D,) vectors; A Aᵀ = I / n with n the block size."""

    def __init__(self, event_shape: Sequence[int], factor: int):
        self.event_shape = _shape("event_shape", event_shape)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        if len(self.event_shape) not in (1, 3):
            raise ValueError(f"BlockAverage acts on (D,) vectors or (C, H, W) images, got event shape "
                             f"{self.event_shape}")
        spatial = self.event_shape[-1:] if len(self.event_shape) == 1 else self.event_shape[1:]
        if any(v % factor for v in spatial):
            raise ValueError(f"factor {factor} does not divide the sizes {spatial} of event shape {self.event_shape}")
        self.factor = factor
        self.block = factor ** len(spatial)
        self.measurement_shape = self.event_shape[:-len(spatial)] + tuple(v // factor for v in spatial)

    def __repr__(self) -> str:
        return f"BlockAverage({self.event_shape}, factor={self.factor})"

    def A(self, x: Tensor) -> Tensor:
        self._check_x(x)
        f, b = self.factor, x.shape[0]
        if len(self.event_shape) == 1:
            return x.reshape(b, -1, f).mean(2)
        c, h, w = self.event_shape
        return x.reshape(b, c, h // f, f, w // f, f).mean((3, 5))

    def AT(self, y: Tensor) -> Tensor:
        f, up = self.factor, y / self.block
        if len(self.event_shape) == 1:
            return up.repeat_interleave(f, dim=1)
        return up.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)

    def gram_solve(self, v: Tensor, scale: Weight, shift: Weight) -> Tensor:
        return v / (_per_sample(scale, v) / self.block + _per_sample(shift, v))


class Projection(LinearOperator):
    """y = P x.flatten(1) for an (M, D) matrix P of full row rank (colorization-like: `Projection.grayscale`)."""

    def __init__(self, matrix: Tensor, event_shape: Sequence[int] | None = None):
        p = torch.as_tensor(matrix, dtype=torch.float64).detach().cpu()
        if p.ndim != 2 or p.shape[0] < 1:
            raise ValueError(f"the projection matrix must have shape (M, D), got {tuple(p.shape)}")
        check_finite(p, "the projection matrix")
        self.event_shape = _shape("event_shape", event_shape if event_shape is not None else (p.shape[1],))
        if math.prod(self.event_shape) != p.shape[1]:
            raise ValueError(f"the matrix has D = {p.shape[1]} columns but event shape {self.event_shape} holds "
                             f"{math.prod(self.event_shape)} values")
        lam, u = torch.linalg.eigh(p @ p.T)
        if not float(lam[0]) > 1e-10 * float(lam[-1]):
            raise ValueError(f"the projection matrix must have full row rank; P Pᵀ has eigenvalue {float(lam[0])!r}")
        self.P, self.measurement_shape = p, (p.shape[0],)
        self._gram = (lam, u)
        self._cache: dict = {}

    @classmethod
    def grayscale(cls, event_shape: Sequence[int]) -> "Projection":
        """The per-pixel mean over the channels of (C, H, W) images: colorization's measurement."""
        c, h, w = _shape("event_shape", event_shape)
        p = torch.eye(h * w, dtype=torch.float64).repeat(1, c) / c
        return cls(p, (c, h, w))

    def __repr__(self) -> str:
        return f"Projection({tuple(self.P.shape)})"

    def _on(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(v.to(device=like.device, dtype=like.dtype) for v in (self.P, *self._gram))
        return self._cache[key]

    def A(self, x: Tensor) -> Tensor:
        self._check_x(x)
        return x.flatten(1) @ self._on(x)[0].T

    def AT(self, y: Tensor) -> Tensor:
        return (y @ self._on(y)[0]).reshape((y.shape[0], *self.event_shape))

    def gram_solve(self, v: Tensor, scale: Weight, shift: Weight) -> Tensor:
        _, lam, u = self._on(v)
        return ((v @ u) / (_per_sample(scale, v) * lam + _per_sample(shift, v))) @ u.T


# -- measurement guidance: scores ---------------------------------------------------------------------------------

Cotangent = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def _check_problem(A: object, y: Tensor) -> Tensor:
    if not isinstance(A, LinearOperator):
        raise ValueError(f"A must be a LinearOperator (Mask, BlockAverage, Projection), got {type(A).__name__}")
    return A.check_measurement(y)


def _check_noise_std(noise_std: object) -> float:
    if isinstance(noise_std, bool) or not isinstance(noise_std, numbers.Real) or not noise_std >= 0 \
            or not math.isfinite(noise_std):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    return float(noise_std)


def _x0_guided(score: ScoreFn, process: Process, y: Tensor, cotangent: Cotangent) -> ScoreFn:
    """score(x, t) + (∂x0_hat/∂x)ᵀ c with c = cotangent(x0_hat, y, alpha, sigma, t) held constant, x0_hat Tweedie's
    estimate from the same score evaluation: one NFE and one vector-Jacobian product per call."""

    def guided(x: Tensor, t: Tensor) -> Tensor:
        track = torch.is_grad_enabled() and x.requires_grad
        with torch.inference_mode(False), torch.enable_grad():
            xg, tg = _differentiable(x, t, track)
            s = score(xg, tg)
            alpha, sigma = process.alpha(tg).to(x.dtype), process.sigma(tg).to(x.dtype)
            x0 = tweedie(xg, s, alpha, sigma)
            c = cotangent(x0.detach(), y.to(device=x.device, dtype=x.dtype), alpha, sigma, tg)
            (grad,) = torch.autograd.grad(x0, xg, grad_outputs=c, create_graph=track)
        return (s if track else s.detach()) + grad

    return guided


def dps(score: ScoreFn, process: Process, A: LinearOperator, y: Tensor, zeta: Weight = 1.0, *,
        steps: int = 1000) -> ScoreFn:
    """Diffusion posterior sampling (Chung et al. 2023, Algorithm 1) as a score: score - w(t) ∇_x |y - A x0_hat(x)|,
    the gradient by autograd through Tweedie's x0_hat, i.e. score + ζ_t ∇_x log N(y; A x0_hat, I) with DPS's
    normalisation ζ_t = ζ / |y - A x0_hat| (per sample), rescaled to DPS's step size (noise in y absorbed in ζ).

    DPS moves x by -ζ ∇|y - A x0_hat| after each of `steps` DDPM steps; a step that moves x by B · score has
    B ≈ g(t)² Δt (ancestral, Euler-Maruyama), so the same guidance as a score has weight w(t) = ζ steps / g(t)²,
    whatever the sampler's NFE. ζ is the paper's ζ' (1 on 256² images; data of another size wants another ζ).
    """
    _check_score("score", score)
    y = _check_problem(A, y)
    _check_weight("zeta", zeta)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    tiny = torch.finfo(torch.float64).tiny

    def cotangent(x0: Tensor, y: Tensor, alpha: Tensor, sigma: Tensor, t: Tensor) -> Tensor:
        r = y - A.A(x0)
        norm = r.flatten(1).norm(dim=1).clamp_min(tiny) * process.g2(t).to(r.dtype) / steps
        return A.AT(r * _per_sample(_scale_weight(zeta, norm), r))

    return _x0_guided(score, process, y, cotangent)


def _scale_weight(w: Weight, norm: Tensor) -> Tensor:
    """w / norm per sample, w a number or a (B,) tensor."""
    return (w.to(device=norm.device, dtype=norm.dtype) if isinstance(w, Tensor) else w) / norm


def pigdm(score: ScoreFn, process: Process, A: LinearOperator, y: Tensor, noise_std: float,
          scale: Weight = 1.0) -> ScoreFn:
    """Pseudoinverse-guided diffusion (ΠGDM, Song, Vahdat, Mardani & Kautz 2023, eq. 7): score + scale ·
    ∇_x log N(y; A x0_hat(x_t), r_t² A Aᵀ + noise_std² I), the gradient a vector-Jacobian product through
    Tweedie's x0_hat: (∂x0_hat/∂x)ᵀ Aᵀ (r_t² A Aᵀ + noise_std² I)⁻¹ (y - A x0_hat).

    r_t² = sigma² / (alpha² + sigma²): the paper's sigma_t² / (1 + sigma_t²) for x_t / alpha = x0 + (sigma /
    alpha) eps, the variance of x0 given x_t for unit-variance Gaussian data: exact for that prior (and then the
    guided score is the exact posterior score), approximate for others.
    """
    _check_score("score", score)
    y = _check_problem(A, y)
    noise_var = _check_noise_std(noise_std) ** 2
    _check_weight("scale", scale)

    def cotangent(x0: Tensor, y: Tensor, alpha: Tensor, sigma: Tensor, t: Tensor) -> Tensor:
        r2 = sigma**2 / (alpha**2 + sigma**2)
        return _scale(scale, A.AT(A.gram_solve(y - A.A(x0), r2, noise_var)))

    return _x0_guided(score, process, y, cotangent)


# -- measurement guidance: samplers -------------------------------------------------------------------------------

Sampler = Callable[..., Tensor]


def _stepwise(sampler: Sampler, A: LinearOperator, y: Tensor, resample: int, name: str) -> Sampler:
    """The sampler run one grid step at a time; after each step A x is set to a draw of alpha y + sigma A eps, and
    all but the last of `resample` tries re-noise x to the step's start by q(x_t | x_s)."""
    if not callable(sampler):
        raise ValueError(f"sampler must be a sampler function (score, process, x, ts, ...) -> x, got {sampler!r}")
    y = _check_problem(A, y)

    def sample(score: ScoreFn, process: Process, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
               callback: Callable[[dict], None] | None = None, denoise: bool = True, **options) -> Tensor:
        for key in ("noise", "progress"):
            if key in options:
                raise ValueError(f"{name} draws its noise from generator and shows no progress; {key}= is not taken")
        ts = check_grid(process, ts)
        yy = y.to(device=x.device, dtype=x.dtype)
        a_ts, s_ts = (v.tolist() for v in process.transition(ts[1:], ts[:-1]))
        alpha, sigma = process.alpha(ts).tolist(), process.sigma(ts).tolist()
        for i in range(len(ts) - 1):
            cb = None if callback is None else (lambda d, i=i: callback({**d, "i": i}))
            for k in range(resample):
                if k > 0:  # RePaint's jump back: x_t ~ q(x_t | x_s)
                    x = x.mul(a_ts[i]).add_(_randn(x, generator), alpha=s_ts[i])
                x = sampler(score, process, x, ts[i:i + 2], generator=generator, callback=cb, denoise=False,
                            progress=False, **options)
                target = yy * alpha[i + 1] + A.A(_randn(x, generator)) * sigma[i + 1]
                x = A.replace(x, target)
        if denoise:
            t = torch.full((x.shape[0],), float(ts[-1]), device=x.device, dtype=x.dtype)
            x = A.replace(tweedie(x, score(x, t), alpha[-1], sigma[-1]), yy)
        return x

    sample.__name__ = f"{name}_{getattr(sampler, '__name__', 'sampler')}"
    return sample


def _randn(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def replacement(sampler: Sampler, A: LinearOperator, y: Tensor) -> Sampler:
    """Imputation by replacement (Song et al. 2021, appendix I): a sampler with the same signature that runs
    `sampler` one step at a time and then sets the measured part to the forward process of y, A x_s = alpha_s y +
    sigma_s A eps (for a Mask: the known coordinates, exactly); the final x0 gets A x0 = y.

    y is treated as noiseless. Multistep samplers restart at every step (DPM-Solver++ becomes first order); the
    caller's `noise=` is not taken (noise comes from `generator`). NFE = that of `sampler` on the grid (+1 to denoise).
    """
    return _stepwise(sampler, A, y, 1, "replacement")


def repaint(sampler: Sampler, A: LinearOperator, y: Tensor, resample: int = 10) -> Sampler:
    """RePaint (Lugmayr et al. 2022) with jump length one: each step of `replacement` is taken `resample` times,
    re-noising x from s back to t by q(x_t | x_s) in between, so the unknown part can adapt to the known part.
    NFE = resample x that of `sampler` on the grid (+1 to denoise)."""
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample must be a positive integer, got {resample!r}")
    return _stepwise(sampler, A, y, resample, "repaint")
