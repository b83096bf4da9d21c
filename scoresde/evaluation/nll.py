"""Negative log-likelihood of a trained model on held-out data, by the probability-flow ODE, in batches."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from ..likelihood import bits_per_dim, dequantize, log_likelihood
from .bounds import check_likelihood


def _mean_se(v: Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def evaluate_nll(model, data, n: int = 1000, *, batch: int = 1000, seed: int = 0,
                 dtype: torch.dtype = torch.float32, **options) -> dict:
    """Mean NLL (nats) of n samples of `data` (a held-out split for image sets) under a trained Model.

    Images with `n_levels` are dequantised (uniform) and also get bits/dim; data with an exact log_prob (Gaussian
    mixtures) also get the gap NLL - (-log p) on the same samples. options go to likelihood.log_likelihood.
    Returns {"nll", "nll_se", "nfe", "seconds"} plus "bpd", "bpd_se", "n_levels" or "gap", "gap_se", "entropy".
    """
    if tuple(data.event_shape) != tuple(model.event_shape):
        raise ValueError(f"the data have event shape {tuple(data.event_shape)}, the model {model.event_shape}")
    check_likelihood(model, n, batch, options.get("divergence", "exact") == "exact")
    g = torch.Generator().manual_seed(seed)
    x = data.sample(n, generator=g)
    n_levels = getattr(data, "n_levels", None) if x.ndim > 2 else None
    if n_levels:
        x = dequantize(x, n_levels, generator=g)
    score, logs, nfe, t0 = model.score_fn(), [], 0, time.perf_counter()
    for start in range(0, n, batch):
        res = log_likelihood(score, model.process, x[start:start + batch].to(model.device, dtype),
                             generator=torch.Generator(model.device).manual_seed(seed + start), **options)
        logs.append(res.log_p.double().cpu())
        nfe += res.nfe
    log_p = torch.cat(logs)
    out = {"nfe": nfe, "seconds": time.perf_counter() - t0}
    out["nll"], out["nll_se"] = _mean_se(-log_p)
    if n_levels:
        out["bpd"], out["bpd_se"] = _mean_se(bits_per_dim(log_p, x[0].numel(), n_levels=n_levels))
        out["n_levels"] = n_levels
    elif hasattr(data, "log_prob") and x.ndim == 2:
        exact = data.log_prob(x.double())
        out["entropy"] = float(-exact.mean())
        out["gap"], out["gap_se"] = _mean_se(exact - log_p)
    return out
