"""Checks of an exact score (no network): against a log density, a posterior mean, or a Gaussian mixture."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..processes import Process
from ..score import ScoreFn, predict
from .data import noisy_batch
from .report import Report, worst

__all__ = ["check_exact_score", "EXACT_CHECKS"]

EXACT_CHECKS = {
    "gradient": "score = autograd of the log density",
    "tweedie": "Tweedie's x0 = (x + sigma² score) / alpha is the posterior mean E[x0 | x_t]",
    "mixture": "score = the score of the mixture noised by the process (alpha mu_k, alpha² Sigma_k + sigma² I)",
}
_TINY = 1e-300


def _norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1)


def check_exact_score(
    score: ScoreFn,
    process: Process,
    *,
    mixture=None,
    log_prob: Callable[[Tensor, Tensor], Tensor] | None = None,
    posterior_mean: Callable[[Tensor, Tensor], Tensor] | None = None,
    x: Tensor | None = None,
    t: Tensor | None = None,
    n: int = 32,
    seed: int = 0,
    rtol: float = 1e-6,
) -> Report:
    """Check a score that should be exact, at (x, t) or at n seeded samples of `mixture` noised by process.

    gradient: against autograd of log_prob(x, t) -> (B,) (default: the mixture's noised log density);
    tweedie: predict(score, process, "x0") against posterior_mean(x, t) (default: the mixture's exact one), relative
    to the size of Tweedie's terms (|x| + |alpha m - x|) / alpha; mixture: against toy_data.GaussianMixture.score
    of the mixture noised by process. Each statistic is the largest relative error over the samples.
    """
    if mixture is not None:
        log_prob = log_prob or (lambda x, t: mixture.log_prob(x, process, t))
        posterior_mean = posterior_mean or (lambda x, t: mixture.posterior_mean(x, process, t))
    if log_prob is None and posterior_mean is None:
        raise ValueError("check_exact_score needs a reference: a mixture, a log_prob or a posterior_mean")
    if x is None:
        if mixture is None:
            raise ValueError("give x and t, or a mixture to draw them from")
        x, t = noisy_batch(mixture, process, n, seed)
    elif t is None:
        raise ValueError("x was given without t")
    s = score(x, t)
    where = {"t": t, "sample": torch.arange(x.shape[0])}
    checks = []
    if log_prob is not None:
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_prob(y, t).sum(), y)
        err = _norm(s - grad) / (_norm(grad) + _TINY)
        checks.append(worst("gradient", EXACT_CHECKS["gradient"], err, rtol, where))
    if posterior_mean is not None:
        x0, m = predict(score, process, "x0")(x, t), posterior_mean(x, t)
        alpha = process.alpha(t).to(x.dtype).expand(x.shape[0])
        scale = (_norm(x) + _norm(alpha.reshape((-1,) + (1,) * (x.ndim - 1)) * m - x)) / alpha
        checks.append(worst("tweedie", EXACT_CHECKS["tweedie"], _norm(x0 - m) / (scale + _TINY), rtol, where,
                            scale="relative to Tweedie's terms"))
    if mixture is not None:
        ref = mixture.score(x, process, t)
        checks.append(worst("mixture", EXACT_CHECKS["mixture"], _norm(s - ref) / (_norm(ref) + _TINY), rtol, where))
    return Report(f"check_exact_score({getattr(score, '__qualname__', type(score).__name__)}, {process!r})", checks)
