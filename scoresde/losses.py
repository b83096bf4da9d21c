"""Denoising score matching: E_t E_{x0, eps} [lambda(t) ||s(x_t, t) + eps / sigma(t)||²].

With lambda(t) = sigma(t)² (the default) the objective is the eps-prediction loss ||eps_hat - eps||², where
eps_hat = -sigma s is what the network's output converts to (score.py's `to_eps`), whatever it predicts.
The other weightings are the likelihood weighting lambda = g(t)² (Song et al. 2021, "Maximum likelihood
training of score-based diffusion models"; then the loss bounds the negative log-likelihood), Min-SNR-gamma
(Hang et al. 2023: lambda = sigma² min(SNR, gamma) / SNR with SNR = alpha² / sigma², i.e. the eps loss with the
low-noise levels, SNR > gamma, down-weighted) and no weighting.

With a reference batch of data, the regression target -eps / sigma becomes a reference-batch estimate of the score
(`reference_x0`; the "stable target field" of Xu et al. 2023): the same minimiser with less variance, and, with
widened noise for part of the batch, a target that trains the score where p_t is small (between modes), which plain
DSM never samples.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable

import torch
from torch import Tensor

from ._utils import append_dims
from .processes import DiscreteVP, Process
from .score import to_eps

__all__ = ["WEIGHTINGS", "CLASSIFIER_OBJECTIVES", "sample_t", "dsm_loss", "reference_x0", "reference_posterior",
           "ImportanceSampler", "classifier_loss", "guided_dsm_classifier_loss"]

WEIGHTINGS = ("sigma2", "likelihood", "min_snr", "none")
CLASSIFIER_OBJECTIVES = ("ce", "guided_dsm")


def sample_t(process: Process, n: int, *, generator: torch.Generator | None = None, device=None,
             dtype: torch.dtype = torch.float32) -> Tensor:
    """Training times: uniform on [t_min, t_max]; uniform over the integer steps 1..N for DiscreteVP."""
    if isinstance(process, DiscreteVP):
        i = torch.randint(1, process.num_steps + 1, (n,), generator=generator, device=device)
        return i.to(dtype) / process.num_steps
    return torch.empty(n, device=device, dtype=dtype).uniform_(process.t_min, process.t_max, generator=generator)


class ImportanceSampler:
    """Draws t with density q(t) ∝ g(t)² / sigma(t)² (the likelihood weighting relative to the eps loss).

    Then lambda(t) ||s + eps/sigma||² / (q(t) (t_max - t_min)) = Z ||eps_hat - eps||² / (t_max - t_min): a
    constant weight, so the likelihood-weighted loss has the variance of the plain eps loss (Song et al. 2021,
    Sec. 5). The inverse CDF is tabulated once on a fine CPU grid and looked up on the device.
    """

    def __init__(self, process: Process, grid: int = 4096):
        if isinstance(process, DiscreteVP):
            raise ValueError("importance sampling of t is for continuous processes; DiscreteVP samples steps")
        t = torch.linspace(process.t_min, process.t_max, grid, dtype=torch.float64)
        w = process.g2(t) / process.sigma(t) ** 2
        cdf = torch.cat([t.new_zeros(1), torch.cumsum(0.5 * (w[1:] + w[:-1]) * t.diff(), 0)])
        self.z = float(cdf[-1])
        self.span = process.t_max - process.t_min
        self.t, self.cdf = t, cdf / cdf[-1]
        self._cache: dict = {}

    def __call__(self, n: int, *, generator=None, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
        """n times and their per-sample weights lambda(t) / (sigma² q(t) span) (a constant Z / span)."""
        key = (torch.device(device) if device is not None else torch.device("cpu"), dtype)
        if key not in self._cache:
            self._cache[key] = (self.t.to(device=key[0], dtype=dtype), self.cdf.to(device=key[0], dtype=dtype))
        t, cdf = self._cache[key]
        u = torch.rand(n, generator=generator, device=device, dtype=dtype)
        j = torch.searchsorted(cdf, u).clamp_(1, cdf.numel() - 1)
        c0, c1, t0, t1 = cdf[j - 1], cdf[j], t[j - 1], t[j]
        ts = t0 + (t1 - t0) * (u - c0) / (c1 - c0).clamp_min(1e-30)
        return ts, torch.full_like(ts, self.z / self.span)


def dsm_loss(
    net: Callable[..., Tensor],
    process: Process,
    x0: Tensor,
    *,
    output: str = "eps",
    weighting: str = "sigma2",
    t: Tensor | None = None,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
    importance: ImportanceSampler | None = None,
    reduce: str = "mean",
    snr_gamma: float = 5.0,
    reference: Tensor | None = None,
    widen: float = 1.0,
    widen_frac: float = 0.5,
    widen_t_min: float = 0.0,
    **net_kwargs,
) -> Tensor:
    """Per-sample denoising score matching loss of net(x_t, sigma(t), **net_kwargs), which predicts `output`.

    lambda(t) = sigma² ("sigma2", the eps-prediction loss), g² ("likelihood"), sigma² min(SNR, snr_gamma) / SNR
    ("min_snr") or 1 ("none"); t is drawn by
    `sample_t` (or by `importance`, likelihood weighting only) unless given. `reduce` averages ("mean") or sums
    ("sum", as in the likelihood bound) over the data dimensions. Returns a (B,) tensor.

    `reference` (R data points, R >= 0; unconditional networks only) replaces the target eps by
    (x_t - alpha x0_hat) / sigma, x0_hat the `reference_x0` estimate of E[x0 | x_t] over the batch's x0 and the
    reference: the same minimiser as DSM, less variance. `widen` > 1 (needs `reference`) draws a `widen_frac` share of
    the samples at t >= `widen_t_min` with noise c sigma, c log-uniform in [1, widen], weighted 1 / c²: their x_t lie
    where p_t is small, and the reference target is the score there (see `reference_x0`). Their targets carry a
    bias of order 1 / (effective sample size) (own point left out), so with widening the minimiser is the score only
    up to that bias, blended with the unbiased targets where both kinds of samples land.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose from {', '.join(WEIGHTINGS)}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    if weighting == "min_snr" and not snr_gamma > 0:
        raise ValueError(f"snr_gamma must be > 0 for the min_snr weighting, got {snr_gamma!r}")
    if importance is not None and weighting != "likelihood":
        raise ValueError(f"importance sampling of t is for the likelihood weighting, not {weighting!r}")
    _check_reference(x0, reference, widen, widen_frac, net_kwargs)
    b = x0.shape[0]
    weight = None
    if t is None:
        if importance is not None:
            t, weight = importance(b, generator=generator, device=x0.device, dtype=x0.dtype)
        else:
            t = sample_t(process, b, generator=generator, device=x0.device, dtype=x0.dtype)
    elif t.shape != (b,):
        raise ValueError(f"t must have shape ({b},), got {tuple(t.shape)}")
    else:
        process.check_t(t)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    # t is in range by construction or checked above
    alpha, sigma, x_t, wide, c = _perturb(process, x0, t, eps, generator, widen, widen_frac, widen_t_min)
    out = net(x_t, sigma, **net_kwargs)
    eps_hat = out if output == "eps" else to_eps(output, out, x_t, alpha, sigma)
    if reference is not None:
        eps = to_eps("x0", reference_x0(x_t, alpha, sigma, x0, reference, exclude_own=wide), x_t, alpha, sigma)
    err = torch.nn.functional.mse_loss(eps_hat, eps, reduction="none").flatten(1)
    loss = err.mean(1) if reduce == "mean" else err.sum(1)
    if c is not None:
        loss = loss / c.square()
    if weight is not None:
        return loss * weight
    if weighting == "likelihood":
        return loss * (process._g2(t) / sigma.square())
    if weighting == "min_snr":
        # min(SNR, gamma) / SNR written as min(1, gamma / SNR): no 0/0 where alpha² underflows
        return loss * (snr_gamma * (sigma / alpha).square()).clamp(max=1.0)
    if weighting == "none":
        return loss / sigma.square()
    return loss


def _perturb(process: Process, x0: Tensor, t: Tensor, eps: Tensor, generator: torch.Generator | None, widen: float,
             widen_frac: float, widen_t_min: float) -> tuple[Tensor, ...]:
    """(alpha, sigma, x_t, wide, c): x_t = alpha x0 + c sigma eps, where a widen_frac share of the samples at
    t >= widen_t_min (`wide`) has c log-uniform on [1, widen] and the others c = 1; wide and c are None when widen
    is 1 (then nothing is drawn)."""
    alpha, sigma = process._alpha_sigma(t)
    wide = c = None
    noise = sigma
    if widen > 1:
        wide = (torch.rand(t.shape, generator=generator, device=t.device, dtype=t.dtype) < widen_frac) \
            & (t >= widen_t_min)
        u = torch.rand(t.shape, generator=generator, device=t.device, dtype=t.dtype)
        c = torch.where(wide, torch.exp(u * math.log(widen)), torch.ones_like(u))
        noise = sigma * c
    x_t = torch.addcmul(append_dims(alpha, x0.ndim) * x0, append_dims(noise, x0.ndim), eps)
    return alpha, sigma, x_t, wide, c


def _check_reference(x0: Tensor, reference: Tensor | None, widen: float, widen_frac: float, net_kwargs: dict,
                     reference_labels: Tensor | None = None, labelled: bool = False) -> None:
    if not (widen >= 1 and math.isfinite(widen)):
        raise ValueError(f"widen must be a finite number >= 1, got {widen!r}")
    if not 0.0 <= widen_frac <= 1.0:
        raise ValueError(f"widen_frac must lie in [0, 1], got {widen_frac!r}")
    if reference is None:
        if widen > 1:
            raise ValueError(f"widen = {widen} needs a reference batch: the widened samples' target is the "
                             "reference estimate of the score")
        return
    if reference.shape[1:] != x0.shape[1:]:
        raise ValueError(f"reference points must have shape (R, {', '.join(map(str, x0.shape[1:]))}), got "
                         f"{tuple(reference.shape)}")
    if reference.device != x0.device:
        raise ValueError(f"reference points are on {reference.device}, the batch on {x0.device}")
    if net_kwargs.get("labels") is not None:
        raise ValueError("a reference-batch target is for unconditional networks: it estimates the unconditional "
                         "score from unlabelled reference points")
    if labelled and (reference_labels is None or reference_labels.shape != reference.shape[:1]):
        got = None if reference_labels is None else tuple(reference_labels.shape)
        raise ValueError(f"a classifier's reference needs reference_labels of shape ({reference.shape[0]},), "
                         f"got {got}")
    if labelled and reference_labels.is_floating_point():
        raise ValueError(f"reference_labels must be integer class indices, got dtype {reference_labels.dtype}")


def _no_autocast(x: Tensor):
    """The reference estimates divide by sigma: keep them out of bf16 autocast."""
    return torch.autocast(x.device.type, enabled=False) if x.device.type in ("cuda", "cpu") else nullcontext()


def _reference_logits(x_t: Tensor, alpha: Tensor, sigma: Tensor, x0: Tensor, reference: Tensor,
                      exclude_own: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(logit, own, pts): log N(x_t_i; alpha_i x_j, sigma_i² I) up to a per-row constant over the points x0 and the
    reference, (B, B + R) in float64 (float32 on MPS), with the own points left out where exclude_own; the own
    points' logits before that; and the points flattened, (B + R, D), in x0's dtype."""
    b = x0.shape[0]
    ddtype = torch.float32 if x0.device.type == "mps" else torch.float64
    pts = torch.cat([x0, reference.to(x0.dtype)]).flatten(1)  # (B + R, D)
    xt = x_t.detach().flatten(1).to(ddtype)
    a, s2 = alpha.to(ddtype)[:, None], sigma.to(ddtype).square()[:, None]
    # (a x_t . x_j - a² |x_j|² / 2) / s2 as one product of augmented matrices, in float64: the two terms nearly
    # cancel where sigma is small
    p64 = pts.to(ddtype)
    rows = torch.cat([xt * (a / s2), -a.square() / (2 * s2)], 1)  # (B, D + 1)
    logit = rows @ torch.cat([p64, p64.square().sum(1, keepdim=True)], 1).T  # (B, B + R)
    own = -((xt - a * p64[:b]).square().sum(1) - xt.square().sum(1)) / (2 * s2[:, 0])  # from the distance
    kept = own
    if exclude_own is not None:
        kept = torch.where(exclude_own, torch.full_like(own, float("-inf")), own)
    logit.diagonal()[:b].copy_(kept)
    return logit, own, pts


def reference_x0(x_t: Tensor, alpha: Tensor, sigma: Tensor, x0: Tensor, reference: Tensor,
                 exclude_own: Tensor | None = None) -> Tensor:
    """E[x0 | x_t] estimated from the batch's clean points x0 (B, ...) and reference points (R, ...), as (B, ...).

    x0_hat_i = sum_j w_ij x_j over x0 and the reference, w_ij ∝ N(x_t_i; alpha_i x_j, sigma_i² I). Sample i's own
    x0_i is a draw from p(x0 | x_t_i) when x_t_i came from the process's kernel, and every other point an
    independent draw from the data (fresh each step; the rest of the batch qualifies): then E[x0_hat_i | x_t_i] is
    exactly E[x0 | x_t_i] (conditional importance sampling), so (x_t - alpha x0_hat) / sigma is an unbiased eps
    target with less variance than eps itself (the stable target field of Xu et al. 2023, "Stable target field for
    reduced variance score estimation in diffusion models"). Samples whose x_t came from another kernel (widened
    noise) pass `exclude_own` (B,) True: their own x0 is left out and the estimate is the self-normalised one over
    the other points, consistent as they grow, with a bias of order 1 / (effective sample size). Distances are taken
    in float64 (float32 on MPS).
    """
    with _no_autocast(x0):
        logit, _, pts = _reference_logits(x_t, alpha, sigma, x0, reference, exclude_own)
        return (torch.softmax(logit, 1).to(pts.dtype) @ pts).reshape(x0.shape)


def reference_posterior(x_t: Tensor, alpha: Tensor, sigma: Tensor, x0: Tensor, labels: Tensor, reference: Tensor,
                        reference_labels: Tensor, num_classes: int,
                        exclude_own: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """For labelled points: (p_hat (B, K), x0_hat (B, ...)), estimates of p(y | x_t) and of E[x0 | x_t, y = labels]
    by the same weights as `reference_x0` (the latter over the points of each sample's own label only). Both are
    exactly unbiased for samples drawn from the process's kernel (own point included), consistent for the others; a
    widened sample whose label has no other point among them falls back to its own point."""
    with _no_autocast(x0):
        logit, own, pts = _reference_logits(x_t, alpha, sigma, x0, reference, exclude_own)
        all_labels = torch.cat([labels, reference_labels.to(labels.device)]).long()
        w = torch.softmax(logit, 1)
        # a product with the one-hot labels, not index_add_ (nondeterministic on CUDA)
        p_hat = w @ torch.nn.functional.one_hot(all_labels, num_classes).to(w.dtype)
        same = all_labels[None, :] == labels.long()[:, None]
        masked = torch.where(same, logit, torch.full_like(logit, float("-inf")))
        none = ~torch.isfinite(masked).any(1)
        diag = masked.diagonal()[:x0.shape[0]]
        diag.copy_(torch.where(none, own, diag))
        x0_hat = (torch.softmax(masked, 1).to(pts.dtype) @ pts).reshape(x0.shape)
        return p_hat.to(torch.promote_types(x0.dtype, torch.float32)), x0_hat


def classifier_loss(
    clf: Callable[[Tensor, Tensor], Tensor],
    process: Process,
    x0: Tensor,
    labels: Tensor,
    *,
    t: Tensor | None = None,
    generator: torch.Generator | None = None,
    reference: Tensor | None = None,
    reference_labels: Tensor | None = None,
    widen: float = 1.0,
    widen_frac: float = 0.5,
    widen_t_min: float = 0.0,
) -> Tensor:
    """Per-sample cross-entropy of a noise-aware classifier clf(x_t, sigma(t)) -> logits over noisy inputs,
    with t drawn as for DSM (so the classifier is trained at every noise level guidance will query).

    With `reference` points and their `reference_labels` the target is the `reference_posterior` estimate of
    p(y | x_t) (soft labels; the same minimiser, less variance), and `widen` > 1 draws part of the batch with widened
    noise as in `dsm_loss` (unweighted): it trains the classifier where p_t is small, between the classes."""
    _check_reference(x0, reference, widen, widen_frac, {}, reference_labels, labelled=True)
    _, _, alpha, sigma, x_t, wide, _ = _noisy_labelled(process, x0, labels, t, None, generator, widen, widen_frac,
                                                       widen_t_min)
    logits = clf(x_t, sigma)
    if reference is None:
        return torch.nn.functional.cross_entropy(logits, labels.long(), reduction="none")
    p_hat, _ = reference_posterior(x_t, alpha, sigma, x0, labels, reference, reference_labels, logits.shape[-1], wide)
    return torch.nn.functional.cross_entropy(logits.to(p_hat.dtype), p_hat, reduction="none")


def _noisy_labelled(process: Process, x0: Tensor, labels: Tensor, t: Tensor | None, eps: Tensor | None,
                    generator: torch.Generator | None, widen: float = 1.0, widen_frac: float = 0.5,
                    widen_t_min: float = 0.0) -> tuple[Tensor, ...]:
    """(t, eps, alpha, sigma, x_t, wide, c) for the classifier losses: t drawn as for DSM unless given (then
    checked), then eps, then the widened noise (wide and c None without it)."""
    b = x0.shape[0]
    if labels.shape != (b,):
        raise ValueError(f"labels must have shape ({b},), got {tuple(labels.shape)}")
    if t is None:
        t = sample_t(process, b, generator=generator, device=x0.device, dtype=x0.dtype)
    else:
        process.check_t(t)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return (t, eps, *_perturb(process, x0, t, eps, generator, widen, widen_frac, widen_t_min))


def guided_dsm_classifier_loss(
    clf: Callable[[Tensor, Tensor], Tensor],
    base_score: Callable[[Tensor, Tensor], Tensor],
    process: Process,
    x0: Tensor,
    labels: Tensor,
    *,
    dsm_weight: float = 1.0,
    t: Tensor | None = None,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
    reference: Tensor | None = None,
    reference_labels: Tensor | None = None,
    widen: float = 1.0,
    widen_frac: float = 0.5,
    widen_t_min: float = 0.0,
) -> Tensor:
    """Per-sample CE + dsm_weight * ||sigma (s_base(x_t, t) + ∇_x log p(y | x_t)) + eps||² (mean over dimensions).

    Classifier guidance uses only the classifier's gradient, and cross-entropy trains its labels, not its gradient.
    The second term is DSM (eps-loss weighting) of the guided score s_base + ∇_x log p_clf(y | x_t), with the base
    (unconditional) score frozen: its minimiser over gradient fields is ∇_x log p(y | x_t) = s(x_t | y) − s_base, the
    exact classifier gradient when s_base is exact, and otherwise the one that also corrects the base model's error
    on labelled data. `base_score(x, t)` is a ScoreFn; no gradient flows into it. Returns a (B,) tensor.

    With `reference` points and their `reference_labels`, the CE target is the `reference_posterior` estimate of
    p(y | x_t) and eps is replaced by (x_t - alpha x0_hat) / sigma, x0_hat its estimate of E[x0 | x_t, y] (the same
    minimisers, less variance); `widen` > 1 draws part of the batch with widened noise as in `dsm_loss` (their DSM
    term weighted 1 / c²): the gradient is then trained between the classes too, where p_t is small.
    """
    if not (dsm_weight >= 0 and dsm_weight < float("inf")):
        raise ValueError(f"dsm_weight must be a finite number >= 0, got {dsm_weight!r}")
    _check_reference(x0, reference, widen, widen_frac, {}, reference_labels, labelled=True)
    t, eps, alpha, sigma, x_t, wide, c = _noisy_labelled(process, x0, labels, t, eps, generator, widen, widen_frac,
                                                         widen_t_min)
    with torch.no_grad():
        s_base = base_score(x_t, t)
    x_t.requires_grad_(True)
    with torch.enable_grad():
        logits = clf(x_t, sigma)
        log_p = logits.log_softmax(-1).gather(1, labels.long()[:, None])[:, 0]
        (grad,) = torch.autograd.grad(log_p.sum(), x_t, create_graph=True)
    if reference is None:
        ce = torch.nn.functional.cross_entropy(logits, labels.long(), reduction="none")
    else:
        p_hat, x0_hat = reference_posterior(x_t, alpha, sigma, x0, labels, reference, reference_labels,
                                            logits.shape[-1], wide)
        ce = torch.nn.functional.cross_entropy(logits.to(p_hat.dtype), p_hat, reduction="none")
        eps = to_eps("x0", x0_hat, x_t.detach(), alpha, sigma)
    guided = append_dims(sigma, x0.ndim) * (s_base.to(grad.dtype) + grad) + eps
    dsm = guided.square().flatten(1).mean(1)
    return ce + dsm_weight * (dsm if c is None else dsm / c.square())
