"""Checks of a learned score (no exact answer): each is a number with its scale, to track over training.

For dx = f(t) x dt + g(t) dw the marginal density obeys Fokker–Planck, ∂_t p = -∇·(f x p) + ½ g² Δp. With
log p = ℓ (D dimensions) this is ∂_t ℓ = ½ g² (Δℓ + |∇ℓ|²) - f (D + x·∇ℓ), and its gradient is the score PDE

    ∂_t s = ∇[½ g² (∇·s + |s|²) - f x·s]          (s = ∇ℓ; the f D term is constant in x),

which the true score satisfies at every noise level. Its residual, ∂_t s by central differences in t and ∇·s exact
(D <= 64) or by Hutchinson's estimator (whose noise then sets a floor), is measured relative to the sizes of its
four terms.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..likelihood import log_likelihood
from ..processes import Process
from ..schedules import uniform_log_snr
from ..score import PREDICTIONS, ScoreFn, check_prediction, convert, predict
from .data import knots
from .report import Check, Report

__all__ = ["check_learned", "noise_levels", "LEARNED_CHECKS", "TOLERANCES"]

LEARNED_CHECKS = {
    "conservative": "the score's Jacobian is symmetric: vᵀJw = wᵀJv (|J - Jᵀ| / |J|, random projections)",
    "views": "the eps / x0 / v / score views agree (score.predict and score.convert, in eps units)",
    "fokker_planck": "∂_t s = ∇(½ g² (∇·s + |s|²) - f (D + x·s)) (score Fokker–Planck residual)",
    "likelihood": "the probability-flow log-likelihood agrees across solvers (dopri5 vs rk4)",
}
# Defaults an exact score meets in float64 with a wide margin; for a network, track the numbers over training.
TOLERANCES = {"conservative": 1e-4, "views": 1e-6, "fokker_planck": 1e-3, "likelihood": 1e-2}
# Exact divergences up to these dimensions, Hutchinson's estimator above: in the Fokker–Planck residual its noise
# would be a floor (about 1e-3 to 5e-2 for exact mixture scores in 20 to 64 dimensions), so it goes further there.
_FP_EXACT_MAX_DIM = 64
_LIKELIHOOD_EXACT_MAX_DIM = 16


def noise_levels(process: Process, levels: int) -> Tensor:
    """`levels` times uniform in log-SNR strictly inside (t_min, t_max), increasing; for a discrete process each
    moved to the middle of its step's interval (where f and g are constant and t ± h stays inside it)."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    t = uniform_log_snr(process, levels + 1)[1:-1].flip(0)
    n = knots(process)
    if n:
        t = (torch.ceil(t * n).clamp(2, n) - 0.5) / n
    return t


def _fd_step(process: Process, t: Tensor, dtype: torch.dtype) -> float:
    """Central-difference step in t: eps^(1/3) over the rate at which the noised density changes there,
    2|f| + |g²| / sigma² (+ 1 / range); inside the step's interval for a discrete process."""
    t = t.reshape(1).to(torch.float64)
    rate = 2 * process.f(t).abs() + process.g2(t).abs() / process.sigma(t) ** 2 + 1 / (process.t_max - process.t_min)
    h = float(torch.finfo(dtype).eps ** (1 / 3) / rate)
    n = knots(process)
    return min(h, 0.25 / n) if n else h


def _norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1)


def _asymmetry(score: ScoreFn, x: Tensor, t: Tensor, n_probes: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """(pooled, per-sample) estimates of |J - Jᵀ|_F / |J|_F: E(vᵀJw)² = |J|², E(vᵀ(J - Jᵀ)w)² = |J - Jᵀ|²."""
    with torch.enable_grad():
        y = x.detach().requires_grad_(True)
        s = score(y, t)
        diffs, sizes = [], []
        for p in range(n_probes):
            v, w = torch.randn((2,) + x.shape, generator=g, dtype=x.dtype).to(x.device)
            (jt_v,) = torch.autograd.grad(s, y, v, retain_graph=True)
            (jt_w,) = torch.autograd.grad(s, y, w, retain_graph=p < n_probes - 1)
            a, b = (jt_v * w).flatten(1).sum(1), (jt_w * v).flatten(1).sum(1)  # vᵀJw, wᵀJv
            diffs.append((a - b) ** 2)
            sizes.append((a**2 + b**2) / 2)
    diff, size = torch.stack(diffs).sum(0), torch.stack(sizes).sum(0)
    return (diff.sum() / size.sum()).sqrt(), (diff / size).sqrt()


def _divergence(s: Tensor, y: Tensor, probes: Tensor | None) -> Tensor:
    """∇·s per sample, differentiable (create_graph): exact by D backward passes, or Hutchinson over probes."""
    if probes is None:
        flat = s.flatten(1)
        div = y.new_zeros(y.shape[0])
        for i in range(flat.shape[1]):
            (row,) = torch.autograd.grad(flat[:, i].sum(), y, create_graph=True)
            div = div + row.flatten(1)[:, i]
        return div
    est = [(torch.autograd.grad(s, y, e, create_graph=True)[0] * e).flatten(1).sum(1) for e in probes]
    return torch.stack(est).mean(0)


def _fokker_planck(score: ScoreFn, process: Process, x: Tensor, t: Tensor, h: float,
                   probes: Tensor | None) -> tuple[Tensor, Tensor]:
    """(pooled, per-sample) |∂_t s - ∇φ| over the sum of its terms' sizes |∂_t s| + |∇ ½g²∇·s| + |∇ ½g²|s|²| +
    |∇ f x·s| (they cancel for the true score: at high noise each is large and their sum small)."""
    f, g2 = process.f(t[:1]).to(x.dtype), process.g2(t[:1]).to(x.dtype)
    ds_dt = (score(x, t + h) - score(x, t - h)) / (2 * h)
    with torch.enable_grad():
        y = x.detach().requires_grad_(True)
        s = score(y, t)
        parts = (0.5 * g2 * _divergence(s, y, probes), 0.5 * g2 * (s * s).flatten(1).sum(1),
                 -f * (y * s).flatten(1).sum(1))
        grads = [torch.autograd.grad(p.sum(), y, retain_graph=True)[0] for p in parts]
    num = _norm(ds_dt - sum(grads))
    den = _norm(ds_dt) + sum(_norm(gr) for gr in grads)
    return (num.square().mean() / den.square().mean()).sqrt(), num / den


def _views(score: ScoreFn, process: Process, x: Tensor, t: Tensor,
           views: dict[str, Callable[[Tensor, Tensor], Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per view: (pooled RMS, per-sample) distance to the score's eps view, in eps units per dimension."""
    alpha, sigma = process.alpha(t).to(x.dtype), process.sigma(t).to(x.dtype)
    eps_ref = convert(score(x, t), x, alpha, sigma, src="score", dst="eps")
    out = {}
    for name, fn in views.items():
        kind = name.split(":")[0]
        eps = convert(fn(x, t), x, alpha, sigma, src=kind, dst="eps")
        err = _norm(eps - eps_ref) / x[0].numel() ** 0.5
        out[name] = (err.square().mean().sqrt(), err)
    return out


def _level_check(key: str, ts: Tensor, pooled: list[Tensor], per_sample: list[Tensor], tol: float, scale: str,
                 extra: dict | None = None) -> Check:
    values = torch.stack(pooled).double().cpu()
    k = int(torch.argmax(torch.nan_to_num(values, nan=float("inf"))))
    where = {"t": float(ts[k]), "sample": int(torch.argmax(torch.nan_to_num(per_sample[k], nan=float("inf"))))}
    where.update(extra or {})
    details = {"t": ts.tolist(), "value": values.tolist()}
    return Check(key, LEARNED_CHECKS[key], float(values[k]), tol, where, scale, details)


def _measure_levels(score: ScoreFn, process: Process, data: Tensor, ts: Tensor, checks: Sequence[str],
                    views: dict, n_probes: int, seed: int) -> dict[str, list]:
    """Per check (and per view): one (pooled, per-sample) pair per noise level, data noised afresh at each."""
    g = torch.Generator().manual_seed(seed)
    d = data[0].numel()
    acc: dict[str, list] = {"conservative": [], "fokker_planck": [], **{f"view {k}": [] for k in views}}
    for t in ts:
        tb = t.to(device=data.device, dtype=data.dtype).expand(data.shape[0])
        x = process.perturb(data, tb, torch.randn(data.shape, generator=g, dtype=data.dtype).to(data.device))
        if "conservative" in checks:
            acc["conservative"].append(_asymmetry(score, x, tb, n_probes, g))
        if "fokker_planck" in checks:
            probes = (None if d <= _FP_EXACT_MAX_DIM else
                      torch.randn((n_probes,) + x.shape, generator=g, dtype=x.dtype).to(x.device))
            acc["fokker_planck"].append(_fokker_planck(score, process, x, tb, _fd_step(process, t, x.dtype), probes))
        if "views" in checks:
            for name, v in _views(score, process, x, tb, views).items():
                acc[f"view {name}"].append(v)
    return acc


def check_learned(
    score: ScoreFn,
    process: Process,
    data: Tensor,
    *,
    checks: Sequence[str] = tuple(LEARNED_CHECKS),
    views: dict[str, Callable[[Tensor, Tensor], Tensor]] | None = None,
    levels: int | Tensor = 4,
    n_probes: int = 4,
    likelihood_samples: int = 64,
    likelihood_steps: int = 64,
    likelihood_rtol: float = 1e-5,
    seed: int = 0,
    tolerances: dict[str, float] | None = None,
) -> Report:
    """Check a learned score on clean `data` (B, ...) noised by process at `levels` noise levels (or given times).

    conservative: |J - Jᵀ|_F / |J|_F from n_probes random projection pairs; views: every prediction kind from
    score.predict, and each user view (name = kind, or "kind:label") fn(x, t), converted to eps and compared with
    the score's, as RMS per dimension in eps units; fokker_planck: the score PDE's relative residual; likelihood:
    RMS difference per dimension (nats) of log_likelihood with dopri5 (rtol = atol = likelihood_rtol) and rk4
    (likelihood_steps steps) on the first likelihood_samples points. The first three report the worst level, with
    every level's value in `details`. Default tolerances (TOLERANCES) fit exact scores in float64.
    """
    unknown = set(checks) - set(LEARNED_CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {list(LEARNED_CHECKS)}")
    if not isinstance(data, Tensor) or not data.is_floating_point() or data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must be clean samples, a floating-point tensor (B, ...); got "
                         f"{getattr(data, 'dtype', type(data))} of shape {tuple(getattr(data, 'shape', ()))}")
    for name in views or {}:
        check_prediction(name.split(":")[0])
    tol = {**TOLERANCES, **(tolerances or {})}
    ts = noise_levels(process, levels) if isinstance(levels, int) else torch.as_tensor(levels, dtype=torch.float64)
    all_views = {k: predict(score, process, k) for k in PREDICTIONS if k != "score"}
    all_views.update(views or {})
    acc = _measure_levels(score, process, data, ts, checks, all_views, n_probes, seed)
    out = []
    for key, scale in (("conservative", "|J - Jᵀ| / |J|"), ("fokker_planck", "|residual| / sum of its terms' sizes")):
        if key in checks:
            out.append(_level_check(key, ts, *zip(*acc[key]), tol[key], scale))
    if "fokker_planck" in checks:
        exact = data[0].numel() <= _FP_EXACT_MAX_DIM
        out[-1].details["divergence"] = "exact" if exact else f"hutchinson, {n_probes} probes"
    if "views" in checks:
        per_view = [(_level_check("views", ts, *zip(*acc[f"view {k}"]), tol["views"], "eps units (RMS per "
                                  "dimension)", {"view": k})) for k in all_views]
        worst_view = max(per_view, key=lambda c: (c.statistic != c.statistic, c.statistic))
        worst_view.details = {"t": ts.tolist(), **{c.where["view"]: c.details["value"] for c in per_view}}
        out.append(worst_view)
    if "likelihood" in checks:
        out.append(_likelihood_check(score, process, data[:likelihood_samples], likelihood_steps, likelihood_rtol,
                                     seed, tol["likelihood"]))
    return Report(f"check_learned({getattr(score, '__qualname__', type(score).__name__)}, {process!r})", out)


def _likelihood_check(score: ScoreFn, process: Process, x: Tensor, steps: int, rtol: float, seed: int,
                      tol: float) -> Check:
    d = x[0].numel()
    kw = dict(divergence="exact" if d <= _LIKELIHOOD_EXACT_MAX_DIM else "hutchinson")
    adaptive = log_likelihood(score, process, x, method="dopri5", rtol=rtol, atol=rtol,
                              generator=torch.Generator(x.device).manual_seed(seed), **kw)
    fixed = log_likelihood(score, process, x, method="rk4", steps=steps,
                           generator=torch.Generator(x.device).manual_seed(seed), **kw)  # the same probes
    err = (adaptive.log_p - fixed.log_p).abs() / d
    stat = float(err.square().mean().sqrt())
    details = {"log_p_dopri5": float(adaptive.log_p.mean()), "log_p_rk4": float(fixed.log_p.mean()),
               "nfe_dopri5": adaptive.nfe, "nfe_rk4": fixed.nfe}
    return Check("likelihood", LEARNED_CHECKS["likelihood"], stat, tol, {"sample": int(torch.argmax(err))},
                 "nats per dimension (RMS)", details)
