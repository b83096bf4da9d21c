"""Training losses: objects with a per-sample value, the one thing the trainer asks of what it minimises.

    loss(net, process, x0, labels, *, generator) -> (B,)

`net` is the network being trained (possibly inside DistributedDataParallel), `x0` a batch of clean data, `labels`
its class labels (None for an unconditional network) and every random draw comes from `generator`. The trainer
calls `loss.check(net, process)` once before the first step (a loss raises ValueError there when it cannot train
that network), then averages the values of each batch. A study plugs its own objective in by passing such an
object to `train(config, loss=...)`: no config field and no CLI flag.

Denoising score matching (`DSMLoss`, `dsm_loss`): E_t E_{x0, eps} [lambda(t) ||s(x_t, t) + eps / sigma(t)||²].
With lambda(t) = sigma(t)² (the default) the objective is the eps-prediction loss ||eps_hat - eps||², where
eps_hat = -sigma s is what the network's output converts to (score.convert), whatever it predicts.
The other weightings are the likelihood weighting lambda = g(t)² (Song et al. 2021, "Maximum likelihood
training of score-based diffusion models"; then the loss bounds the negative log-likelihood), Min-SNR-gamma
(Hang et al. 2023: lambda = sigma² min(SNR, gamma) / SNR with SNR = alpha² / sigma², i.e. the eps loss with the
low-noise levels, SNR > gamma, down-weighted) and no weighting.

Noise-aware classifiers (`ClassifierLoss`, `classifier_loss`): cross-entropy of the labels at x_t, with t drawn as
for DSM, so the classifier is trained at every noise level guidance will query.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ._utils import append_dims, check_batch
from .nets import is_classifier
from .processes import Process
from .score import convert

__all__ = ["WEIGHTINGS", "Loss", "DSMLoss", "ClassifierLoss", "dsm_loss", "classifier_loss", "ImportanceSampler"]

WEIGHTINGS = ("sigma2", "likelihood", "min_snr", "none")


class Loss:
    """Base class of training losses: `loss(net, process, x0, labels, *, generator)` -> per-sample values (B,)."""

    def check(self, net: nn.Module, process: Process) -> None:
        """Raise ValueError if this loss cannot train `net` under `process` (called once, before the first step)."""

    def __call__(self, net: Callable[..., Tensor], process: Process, x0: Tensor, labels: Tensor | None, *,
                 generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError


def _unwrapped(net: nn.Module) -> nn.Module:
    """The network itself, also inside DistributedDataParallel (whose wrapper hides its attributes)."""
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


class DSMLoss(Loss):
    """Denoising score matching of a score network (eps, x0, v or score prediction, read from `net.prediction`).

    `weighting` and `snr_gamma` as in `dsm_loss`; `importance` draws t by `ImportanceSampler` (likelihood weighting
    only); `label_dropout` replaces that share of a conditional network's labels by its null label
    (`net.num_classes`), for classifier-free guidance.
    """

    def __init__(self, weighting: str = "sigma2", *, snr_gamma: float = 5.0, importance: bool = False,
                 label_dropout: float = 0.0):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose from {', '.join(WEIGHTINGS)}")
        if not (snr_gamma > 0 and math.isfinite(snr_gamma)):
            raise ValueError(f"snr_gamma must be a positive number, got {snr_gamma!r}")
        if importance and weighting != "likelihood":
            raise ValueError(f"importance sampling of t goes with weighting='likelihood', not {weighting!r}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout!r}")
        self.weighting, self.snr_gamma, self.importance, self.label_dropout = \
            weighting, snr_gamma, importance, label_dropout
        self._sampler: tuple[Process, ImportanceSampler] | None = None

    def __repr__(self) -> str:
        return (f"DSMLoss({self.weighting!r}, snr_gamma={self.snr_gamma}, importance={self.importance}, "
                f"label_dropout={self.label_dropout})")

    def _importance(self, process: Process) -> ImportanceSampler | None:
        if not self.importance:
            return None
        if self._sampler is None or self._sampler[0] is not process:
            self._sampler = (process, ImportanceSampler(process))
        return self._sampler[1]

    def check(self, net: nn.Module, process: Process) -> None:
        if is_classifier(net):
            raise ValueError("DSMLoss trains score networks, not noise-aware classifiers (use ClassifierLoss)")
        self._importance(process)  # refuses a discrete process before training starts

    def __call__(self, net, process, x0, labels, *, generator=None):
        inner = _unwrapped(net)
        kwargs = {}
        if labels is not None:
            if self.label_dropout > 0:
                drop = torch.rand(labels.shape, generator=generator, device=labels.device) < self.label_dropout
                labels = torch.where(drop, torch.full_like(labels, inner.num_classes), labels)
            kwargs["labels"] = labels
        return dsm_loss(net, process, x0, prediction=getattr(inner, "prediction", "eps"), weighting=self.weighting,
                        generator=generator, snr_gamma=self.snr_gamma, importance=self._importance(process), **kwargs)


class ClassifierLoss(Loss):
    """Cross-entropy of a noise-aware classifier net(x_t, sigma(t)) -> logits (`classifier_loss`)."""

    def __repr__(self) -> str:
        return "ClassifierLoss()"

    def check(self, net: nn.Module, process: Process) -> None:
        if not is_classifier(net):
            raise ValueError("ClassifierLoss trains noise-aware classifiers, not score networks (use DSMLoss)")

    def __call__(self, net, process, x0, labels, *, generator=None):
        if labels is None:
            raise ValueError("ClassifierLoss needs the batch's labels")
        return classifier_loss(net, process, x0, labels, generator=generator)


class ImportanceSampler:
    """Draws t with density q(t) ∝ g(t)² / sigma(t)² (the likelihood weighting relative to the eps loss).

    Then lambda(t) ||s + eps/sigma||² / (q(t) (t_max - t_min)) = Z ||eps_hat - eps||² / (t_max - t_min): a
    constant weight, so the likelihood-weighted loss has the variance of the plain eps loss (Song et al. 2021,
    Sec. 5). The inverse CDF is tabulated once on a fine CPU grid and looked up on the device.
    """

    def __init__(self, process: Process, grid: int = 4096):
        if process.discrete:
            raise ValueError(f"importance sampling of t is for continuous processes; {process!r} trains at "
                             "discrete steps")
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


def _check_t(t: Tensor, b: int) -> Tensor:
    if t.shape != (b,):
        raise ValueError(f"t must have shape ({b},), got {tuple(t.shape)}")
    return t  # its range is checked by process.alpha_sigma


def _noised(process: Process, x0: Tensor, t: Tensor, eps: Tensor | None,
            generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(eps, alpha, sigma, x_t): x_t = alpha(t) x0 + sigma(t) eps, eps drawn from `generator` unless given."""
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    alpha, sigma = process.alpha_sigma(t)
    x_t = torch.addcmul(append_dims(alpha, x0.ndim) * x0, append_dims(sigma, x0.ndim), eps)
    return eps, alpha, sigma, x_t


def dsm_loss(
    net: Callable[..., Tensor],
    process: Process,
    x0: Tensor,
    *,
    prediction: str = "eps",
    weighting: str = "sigma2",
    t: Tensor | None = None,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
    importance: ImportanceSampler | None = None,
    reduce: str = "mean",
    snr_gamma: float = 5.0,
    **net_kwargs,
) -> Tensor:
    """Per-sample denoising score matching loss of net(x_t, sigma(t), **net_kwargs), which predicts `prediction`.

    lambda(t) = sigma² ("sigma2", the eps-prediction loss), g² ("likelihood"), sigma² min(SNR, snr_gamma) / SNR
    ("min_snr") or 1 ("none"); t is drawn by `process.train_times` (or by `importance`, likelihood weighting only)
    unless given. `reduce` averages ("mean") or sums ("sum", as in the likelihood bound) over the data dimensions.
    Returns a (B,) tensor.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose from {', '.join(WEIGHTINGS)}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    if weighting == "min_snr" and not snr_gamma > 0:
        raise ValueError(f"snr_gamma must be > 0 for the min_snr weighting, got {snr_gamma!r}")
    if importance is not None and weighting != "likelihood":
        raise ValueError(f"importance sampling of t is for the likelihood weighting, not {weighting!r}")
    check_batch(x0, "x0")
    b = x0.shape[0]
    weight = None
    if t is not None:
        t = _check_t(t, b)
    elif importance is not None:
        t, weight = importance(b, generator=generator, device=x0.device, dtype=x0.dtype)
    else:
        t = process.train_times(b, generator=generator, device=x0.device, dtype=x0.dtype)
    eps, alpha, sigma, x_t = _noised(process, x0, t, eps, generator)
    eps_hat = convert(net(x_t, sigma, **net_kwargs), x_t, alpha, sigma, src=prediction, dst="eps")
    err = torch.nn.functional.mse_loss(eps_hat, eps, reduction="none").flatten(1)
    loss = err.mean(1) if reduce == "mean" else err.sum(1)
    if weight is not None:
        return loss * weight
    if weighting == "likelihood":
        return loss * (process.g2(t) / sigma.square())
    if weighting == "min_snr":
        # min(SNR, gamma) / SNR written as min(1, gamma / SNR): no 0/0 where alpha² underflows
        return loss * (snr_gamma * (sigma / alpha).square()).clamp(max=1.0)
    if weighting == "none":
        return loss / sigma.square()
    return loss


def classifier_loss(
    clf: Callable[[Tensor, Tensor], Tensor],
    process: Process,
    x0: Tensor,
    labels: Tensor,
    *,
    t: Tensor | None = None,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample cross-entropy of a noise-aware classifier clf(x_t, sigma(t)) -> logits over noisy inputs, with t
    drawn by `process.train_times` unless given (so the classifier is trained at every noise level guidance will
    query). Returns a (B,) tensor."""
    check_batch(x0, "x0")
    b = x0.shape[0]
    if labels.shape != (b,):
        raise ValueError(f"labels must have shape ({b},), got {tuple(labels.shape)}")
    if t is None:
        t = process.train_times(b, generator=generator, device=x0.device, dtype=x0.dtype)
    _, _, sigma, x_t = _noised(process, x0, _check_t(t, b), eps, generator)
    return torch.nn.functional.cross_entropy(clf(x_t, sigma), labels.long(), reduction="none")
