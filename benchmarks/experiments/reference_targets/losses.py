"""The study's losses: DSM and classifier targets estimated from a reference batch, widened noise, and the guided-DSM
classifier objective. Not part of the library: each loss implements `scoresde.losses.Loss`, so the library trainer
runs it unchanged (`train(config, data=data, loss=ReferenceDSMLoss(data, 256, widen=8))`), and the functions
(`dsm_loss`, `classifier_loss`, `guided_dsm_classifier_loss`) serve the study's own fine-tuning phases.

The reference target (the "stable target field" of Xu et al. 2023, "Stable target field for reduced variance score
estimation in diffusion models"). Plain DSM regresses the network on eps, whose mean given x_t is the target
E[eps | x_t] = (x_t - alpha E[x0 | x_t]) / sigma. Estimate E[x0 | x_t] from points x_1..x_n instead:

    x0_hat = sum_j w_j x_j,    w_j = k(x_t | x_j) / sum_k k(x_t | x_k),    k(x_t | x) = N(x_t; alpha x, sigma² I).

Let one point (the sample's own x0) be a draw from p(x0 | x_t) and the other n - 1 independent draws from the data
p. x0_hat is symmetric in its points, so its mean is the same under the symmetrised law of the set, whose density
is (1/n) sum_k [k(x_t | x_k) / p_t(x_t)] prod_j p(x_j). The normaliser cancels:

    E[x0_hat | x_t] = ∫ sum_j [k(x_t | x_j) x_j / sum_k k(x_t | x_k)] (1/n) sum_k [k(x_t | x_k) / p_t(x_t)] prod p
                    = E_{x ~ p}[k(x_t | x) x] / p_t(x_t) = E[x0 | x_t],

exactly, for any n (conditional importance sampling). So (x_t - alpha x0_hat) / sigma is an unbiased eps target
with the same minimiser as DSM and less variance; the rest of the batch and a fresh reference batch of R points
serve as the other points (`reference_x0`). For labelled points the same weights give p_hat(y | x_t) (one-hot labels
averaged) and, over the points of one label only, E[x0 | x_t, y] (`reference_posterior`).

Widened noise. DSM only trains the score where p_t has mass: between ring8's modes at small t it never sees an x_t.
A `widen_frac` share of the samples at t >= widen_t_min is drawn as x_t = alpha x0 + c sigma eps, c log-uniform on
[1, widen]. Their targets are the reference estimate of the p_t score at that x_t: their own point is no draw from
p(x0 | x_t) under the sigma kernel, so it is left out (`exclude_own`) and the estimate is the self-normalised one
over the other points: consistent as they grow, with a bias of order 1 / (effective sample size). Their loss is
weighted 1 / c².

Guided DSM. Classifier guidance uses only the classifier's gradient, and cross-entropy trains its labels, not its
gradient. `guided_dsm_classifier_loss` adds DSM (eps weighting) of the guided score s_base + ∇_x log p_clf(y | x_t)
with the base (unconditional) score frozen: its minimiser over gradient fields is ∇_x log p(y | x_t) =
s(x_t | y) - s_base, the exact classifier gradient when s_base is exact, and otherwise the one that also corrects
the base model's error on labelled data.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import Tensor, nn

from scoresde.losses import Loss
from scoresde.nets import is_classifier
from scoresde.processes import Process
from scoresde.score import ScoreFn, convert

__all__ = ["reference_x0", "reference_posterior", "dsm_loss", "classifier_loss", "guided_dsm_classifier_loss",
           "ReferenceDSMLoss", "ReferenceClassifierLoss", "GuidedDSMClassifierLoss"]


def _append_dims(v: Tensor, ndim: int) -> Tensor:
    """A (B,) tensor shaped to broadcast against (B, ...) tensors of `ndim` dimensions."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


# -- the reference estimates ----------------------------------------------------------------------------------------
def _no_autocast(x: Tensor):
    """The reference estimates divide by sigma: keep them (and the reference draws) out of bf16 autocast."""
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
    """E[x0 | x_t] estimated from the batch's clean points x0 (B, ...) and reference points (R, ...), as (B, ...):
    x0_hat_i = sum_j w_ij x_j, w_ij ∝ N(x_t_i; alpha_i x_j, sigma_i² I), exactly unbiased when x_t_i came from the
    process's kernel (module docstring). Samples with `exclude_own` (B,) True leave their own x0 out. Distances are
    taken in float64 (float32 on MPS)."""
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


# -- per-sample losses ----------------------------------------------------------------------------------------------
def _check_reference(x0: Tensor, reference: Tensor | None, widen: float, widen_frac: float, net_kwargs: dict,
                     reference_labels: Tensor | None = None, labelled: bool = False) -> None:
    _check_widen(widen, widen_frac)
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


def _check_widen(widen: float, widen_frac: float) -> None:
    if not (widen >= 1 and math.isfinite(widen)):
        raise ValueError(f"widen must be a finite number >= 1, got {widen!r}")
    if not 0.0 <= widen_frac <= 1.0:
        raise ValueError(f"widen_frac must lie in [0, 1], got {widen_frac!r}")


def _perturb(process: Process, x0: Tensor, t: Tensor | None, eps: Tensor | None, generator: torch.Generator | None,
             widen: float, widen_frac: float, widen_t_min: float) -> tuple[Tensor, ...]:
    """(t, eps, alpha, sigma, x_t, wide, c): t drawn by process.train_times unless given, then eps unless given,
    then x_t = alpha x0 + c sigma eps, where a widen_frac share of the samples at t >= widen_t_min (`wide`) has c
    log-uniform on [1, widen] and the others c = 1; wide and c are None when widen is 1 (nothing more is drawn)."""
    if t is None:
        t = process.train_times(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
    elif t.shape != x0.shape[:1]:
        raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    alpha, sigma = process.alpha_sigma(t)
    wide = c = None
    noise = sigma
    if widen > 1:
        wide = (torch.rand(t.shape, generator=generator, device=t.device, dtype=t.dtype) < widen_frac) \
            & (t >= widen_t_min)
        u = torch.rand(t.shape, generator=generator, device=t.device, dtype=t.dtype)
        c = torch.where(wide, torch.exp(u * math.log(widen)), torch.ones_like(u))
        noise = sigma * c
    x_t = torch.addcmul(_append_dims(alpha, x0.ndim) * x0, _append_dims(noise, x0.ndim), eps)
    return t, eps, alpha, sigma, x_t, wide, c


def dsm_loss(net: Callable[..., Tensor], process: Process, x0: Tensor, *, prediction: str = "eps",
             t: Tensor | None = None, eps: Tensor | None = None, generator: torch.Generator | None = None,
             reference: Tensor | None = None, widen: float = 1.0, widen_frac: float = 0.5, widen_t_min: float = 0.0,
             **net_kwargs) -> Tensor:
    """Per-sample eps-loss DSM of net(x_t, sigma(t), **net_kwargs) (predicting `prediction`), its target eps replaced
    by (x_t - alpha x0_hat) / sigma, x0_hat the `reference_x0` estimate over the batch and `reference` (R points;
    unconditional networks only), when given. `widen` > 1 (needs `reference`) draws a `widen_frac` share of the
    samples at t >= `widen_t_min` with noise c sigma, c log-uniform in [1, widen], weighted 1 / c². (B,) tensor."""
    _check_reference(x0, reference, widen, widen_frac, net_kwargs)
    _, eps, alpha, sigma, x_t, wide, c = _perturb(process, x0, t, eps, generator, widen, widen_frac, widen_t_min)
    eps_hat = convert(net(x_t, sigma, **net_kwargs), x_t, alpha, sigma, src=prediction, dst="eps")
    if reference is not None:
        x0_hat = reference_x0(x_t, alpha, sigma, x0, reference, exclude_own=wide)
        eps = convert(x0_hat, x_t, alpha, sigma, src="x0", dst="eps")
    loss = torch.nn.functional.mse_loss(eps_hat, eps, reduction="none").flatten(1).mean(1)
    return loss if c is None else loss / c.square()


def classifier_loss(clf: Callable[[Tensor, Tensor], Tensor], process: Process, x0: Tensor, labels: Tensor, *,
                    t: Tensor | None = None, generator: torch.Generator | None = None,
                    reference: Tensor | None = None, reference_labels: Tensor | None = None, widen: float = 1.0,
                    widen_frac: float = 0.5, widen_t_min: float = 0.0) -> Tensor:
    """Per-sample cross-entropy of a noise-aware classifier clf(x_t, sigma(t)) -> logits; with `reference` points and
    their `reference_labels`, against the `reference_posterior` estimate p_hat(y | x_t) (soft labels) instead of
    the hard labels, and `widen` > 1 draws part of the batch with widened noise as in `dsm_loss` (unweighted)."""
    _check_labels(x0, labels)
    _check_reference(x0, reference, widen, widen_frac, {}, reference_labels, labelled=True)
    _, _, alpha, sigma, x_t, wide, _ = _perturb(process, x0, t, None, generator, widen, widen_frac, widen_t_min)
    logits = clf(x_t, sigma)
    if reference is None:
        return torch.nn.functional.cross_entropy(logits, labels.long(), reduction="none")
    p_hat, _ = reference_posterior(x_t, alpha, sigma, x0, labels, reference, reference_labels, logits.shape[-1], wide)
    return torch.nn.functional.cross_entropy(logits.to(p_hat.dtype), p_hat, reduction="none")


def _check_labels(x0: Tensor, labels: Tensor) -> None:
    if labels.shape != x0.shape[:1]:
        raise ValueError(f"labels must have shape ({x0.shape[0]},), got {tuple(labels.shape)}")


def guided_dsm_classifier_loss(clf: Callable[[Tensor, Tensor], Tensor], base_score: ScoreFn, process: Process,
                               x0: Tensor, labels: Tensor, *, dsm_weight: float = 1.0, t: Tensor | None = None,
                               eps: Tensor | None = None, generator: torch.Generator | None = None,
                               reference: Tensor | None = None, reference_labels: Tensor | None = None,
                               widen: float = 1.0, widen_frac: float = 0.5, widen_t_min: float = 0.0) -> Tensor:
    """Per-sample CE + dsm_weight * ||sigma (s_base(x_t, t) + ∇_x log p(y | x_t)) + eps||² (mean over dimensions),
    no gradient into the frozen `base_score`. With `reference` points and their `reference_labels`, the CE target is
    p_hat(y | x_t) and eps is replaced by (x_t - alpha x0_hat) / sigma, x0_hat the estimate of E[x0 | x_t, y]
    (`reference_posterior`); `widen` > 1 as in `dsm_loss` (their DSM term weighted 1 / c²). (B,) tensor."""
    if not (dsm_weight >= 0 and dsm_weight < float("inf")):
        raise ValueError(f"dsm_weight must be a finite number >= 0, got {dsm_weight!r}")
    _check_labels(x0, labels)
    _check_reference(x0, reference, widen, widen_frac, {}, reference_labels, labelled=True)
    t, eps, alpha, sigma, x_t, wide, c = _perturb(process, x0, t, eps, generator, widen, widen_frac, widen_t_min)
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
        eps = convert(x0_hat, x_t.detach(), alpha, sigma, src="x0", dst="eps")
    guided = _append_dims(sigma, x0.ndim) * (s_base.to(grad.dtype) + grad) + eps
    dsm = guided.square().flatten(1).mean(1)
    return ce + dsm_weight * (dsm if c is None else dsm / c.square())


# -- the same as loss objects for scoresde.training.train ------------------------------------------------------------
def _inner(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


class _ReferenceLoss(Loss):
    """Shared by the study's loss objects: `reference` (R >= 0) fresh points drawn from `data` each step with the
    batch's generator (after the batch, outside autocast), and the widened-noise settings."""

    def __init__(self, data: Any, reference: int, *, widen: float = 1.0, widen_frac: float = 0.5,
                 widen_t_min: float = 0.0):
        if not isinstance(reference, int) or reference < 0:
            raise ValueError(f"reference must be an integer >= 0, got {reference!r}")
        _check_widen(widen, widen_frac)
        if widen > 1 and not reference:
            raise ValueError(f"widen = {widen} needs reference > 0 (the widened samples' target is the reference "
                             "estimate of the score)")
        if not math.isfinite(widen_t_min):
            raise ValueError(f"widen_t_min must be a finite number, got {widen_t_min!r}")
        self.data, self.reference = data, reference
        self.widen, self.widen_frac, self.widen_t_min = widen, widen_frac, widen_t_min

    def check(self, net: nn.Module, process: Process) -> None:
        if self.widen > 1 and not self.widen_t_min < process.t_max:
            raise ValueError(f"widen_t_min = {self.widen_t_min} leaves no time for widened noise: the process ends "
                             f"at t = {process.t_max}")

    def _draw(self, x0: Tensor, generator: torch.Generator | None, labelled: bool) -> dict:
        """The keyword arguments of the reference and widening for this step's loss function."""
        if not self.reference:
            return {}
        with _no_autocast(x0):
            drawn = self.data.sample(self.reference, generator=generator, device=x0.device, return_labels=labelled)
        ref = dict(widen=self.widen, widen_frac=self.widen_frac, widen_t_min=self.widen_t_min)
        if labelled:
            return dict(ref, reference=drawn[0], reference_labels=drawn[1])
        return dict(ref, reference=drawn)


class ReferenceDSMLoss(_ReferenceLoss):
    """`dsm_loss` with a reference batch of `reference` points from `data` and widened noise, for unconditional
    score networks."""

    def check(self, net: nn.Module, process: Process) -> None:
        super().check(net, process)
        if is_classifier(net) or getattr(net, "num_classes", 0):
            raise ValueError("ReferenceDSMLoss is for unconditional score networks (the reference estimates the "
                             "unconditional score)")

    def __call__(self, net, process, x0, labels, *, generator=None):
        return dsm_loss(net, process, x0, prediction=getattr(_inner(net), "prediction", "eps"), generator=generator,
                        **self._draw(x0, generator, labelled=False))


class ReferenceClassifierLoss(_ReferenceLoss):
    """`classifier_loss` against the reference posterior p_hat(y | x_t), with widened noise."""

    def check(self, net: nn.Module, process: Process) -> None:
        super().check(net, process)
        if not is_classifier(net):
            raise ValueError("ReferenceClassifierLoss trains noise-aware classifiers")

    def __call__(self, net, process, x0, labels, *, generator=None):
        return classifier_loss(net, process, x0, labels, generator=generator, **self._draw(x0, generator, True))


class GuidedDSMClassifierLoss(_ReferenceLoss):
    """`guided_dsm_classifier_loss` of a classifier guiding the frozen `base_score`; with `data` and `reference` > 0,
    its reference-batch targets. `from_run` takes the base from a score model's run directory and checks it against
    the classifier (same process, same event shape). One process only: the double backward through
    DistributedDataParallel is not supported."""

    def __init__(self, base_score: ScoreFn, *, dsm_weight: float = 1.0, data: Any = None, reference: int = 0,
                 **widening):
        super().__init__(data, reference, **widening)
        if not (dsm_weight >= 0 and math.isfinite(dsm_weight)):
            raise ValueError(f"dsm_weight must be a finite number >= 0, got {dsm_weight!r}")
        self.base_score, self.dsm_weight = base_score, dsm_weight
        self.base: tuple[str, dict, tuple] | None = None  # (run, process config, event shape) when from a run

    @classmethod
    def from_run(cls, run: str, *, device: str | torch.device = "cpu", **kw) -> "GuidedDSMClassifierLoss":
        from scoresde.training import load_model

        base = load_model(run, device=device)  # FileNotFoundError naming the path when it holds no checkpoint
        if is_classifier(base.net):
            raise ValueError(f"the base {run!r} is a classifier; it must be a score model")
        loss = cls(base.score_fn(), **kw)
        loss.base = (str(run), base.process.config(), tuple(base.event_shape))
        return loss

    def check(self, net: nn.Module, process: Process) -> None:
        super().check(net, process)
        if not is_classifier(net):
            raise ValueError(f"the guided-DSM objective trains noise-aware classifiers, not {type(net).__name__}")
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise ValueError("the guided-DSM objective trains in one process (double backward through "
                             "DistributedDataParallel is not supported); run without torchrun")
        if self.base is not None:
            run, base_process, shape = self.base
            if base_process != process.config():
                raise ValueError(f"the base {run!r} was trained on process {base_process}, the classifier on "
                                 f"{process.config()}")
            if shape != tuple(net.event_shape):
                raise ValueError(f"the base {run!r} models shape {shape}, the classifier {tuple(net.event_shape)}")

    def __call__(self, net, process, x0, labels, *, generator=None):
        return guided_dsm_classifier_loss(net, self.base_score, process, x0, labels, dsm_weight=self.dsm_weight,
                                          generator=generator, **self._draw(x0, generator, True))
