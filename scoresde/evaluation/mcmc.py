"""MCMC diagnostics over many chains: rank-normalised split R-hat and bulk / tail ESS (Vehtari, Gelman, Simpson,
Carpenter & Bürkner 2021) with Geyer's initial monotone sequence (Geyer 1992), the estimators of Stan and ArviZ,
in numpy float64 (ArviZ is not needed). A trace is an array (draws, chains) of one scalar quantity.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata
from torch import Tensor

__all__ = ["autocorrelation", "ess", "ess_bulk", "ess_tail", "rhat", "split_chains"]


def _as_trace(trace) -> np.ndarray:
    a = trace.detach().cpu().double().numpy() if isinstance(trace, Tensor) else np.asarray(trace, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 4:
        raise ValueError(f"a trace must have shape (draws >= 4, chains), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("the trace has NaN or inf values")
    return a


def split_chains(a: np.ndarray) -> np.ndarray:
    """(n, m) -> (n // 2, 2m): each chain's first and second halves (an odd middle draw is dropped)."""
    n = a.shape[0] // 2
    return np.concatenate([a[:n], a[a.shape[0] - n:]], axis=1)


def autocorrelation(a: np.ndarray) -> np.ndarray:
    """Per-chain autocovariance (biased, lag 0..n-1) by FFT: (n, m) -> (n, m)."""
    n = a.shape[0]
    x = a - a.mean(0)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(x, size, axis=0)
    return np.fft.irfft(f * np.conj(f), size, axis=0)[:n] / n


def _rank_normalise(a: np.ndarray) -> np.ndarray:
    """z = Φ^{-1}((r - 3/8) / (S + 1/4)) with r the pooled ranks (ties averaged)."""
    r = rankdata(a, method="average").reshape(a.shape)
    return ndtri((r - 0.375) / (a.size + 0.25))


def ess(trace) -> float:
    """Multi-chain effective sample size of a (draws, chains) trace, without splitting or ranks (Geyer's initial
    monotone sequence on the combined autocorrelation, Stan's estimator)."""
    a = _as_trace(trace)
    n, m = a.shape
    acov = autocorrelation(a)
    w = acov[0].mean() * n / (n - 1)  # within-chain variance
    var_plus = w * (n - 1) / n + (a.mean(0).var(ddof=1) if m > 1 else 0.0)
    if var_plus <= 0:
        return float(n * m)
    rho = 1 - (w - acov.mean(1)) / var_plus
    rho[0] = 1.0
    pairs = rho[: n - n % 2].reshape(-1, 2).sum(1)  # Geyer: P_k = rho_2k + rho_2k+1
    stop = np.nonzero(pairs <= 0)[0]
    k = stop[0] if len(stop) else len(pairs)
    pairs = np.minimum.accumulate(pairs[:k])  # initial monotone sequence
    tau = -1 + 2 * pairs.sum()
    return float(n * m / max(tau, 1 / np.log10(n * m)))


def ess_bulk(trace) -> float:
    """Bulk ESS: ess of the rank-normalised split chains."""
    return ess(_rank_normalise(split_chains(_as_trace(trace))))


def ess_tail(trace) -> float:
    """Tail ESS: the smaller ESS of the 5% and 95% quantile indicators over split chains."""
    a = split_chains(_as_trace(trace))
    lo, hi = np.quantile(a, [0.05, 0.95])
    return min(ess((a <= lo).astype(float)), ess((a <= hi).astype(float)))


def _rhat(a: np.ndarray) -> float:
    n = a.shape[0]
    w = a.var(0, ddof=1).mean()
    b = n * a.mean(0).var(ddof=1)
    return float(np.sqrt(((n - 1) / n * w + b / n) / w))


def rhat(trace) -> float:
    """Rank-normalised split R-hat: the larger of the bulk and the folded (|x - median|) statistics."""
    a = split_chains(_as_trace(trace))
    folded = np.abs(a - np.median(a))
    return max(_rhat(_rank_normalise(a)), _rhat(_rank_normalise(folded)))
