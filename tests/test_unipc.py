"""UniPC and the scaled log-SNR grid against exact scores: exact exponential-integrator weights, measured order of
convergence, quality at NFE 10 against DPM-Solver++(2M), NFE accounting, reproducibility and bad input."""

import math

import numpy as np
import pytest
import torch

import toy_data
from scoresde import VE, VP, CountEvals
from scoresde.metrics import log_density_gap, sliced_wasserstein
from scoresde.samplers import ddim, dpm_solver_pp
from scoresde.samplers.registry import SAMPLERS
from scoresde.samplers.unipc import _exp_lagrange_weights, unipc
from scoresde.schedules import scaled_log_snr, uniform_log_snr

from .conftest import DEVICE


def _quadrature_weights(nodes, a, b, points=24):
    """∫_a^b exp(l - b) L_j(l) dl by Gauss-Legendre in float64 (exact for these smooth integrands to ~1e-15)."""
    xs, ws = np.polynomial.legendre.leggauss(points)
    lam = 0.5 * (b - a) * xs + 0.5 * (a + b)
    w = 0.5 * (b - a) * ws * np.exp(lam - b)
    out = []
    for j, nj in enumerate(nodes):
        basis = np.ones_like(lam)
        for m, nm in enumerate(nodes):
            if m != j:
                basis *= (lam - nm) / (nj - nm)
        out.append(float((w * basis).sum()))
    return out


@pytest.mark.parametrize("h", [1e-3, 0.2, 0.999, 1.0, 1.5, 4.0])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_closed_form_weights_match_quadrature(h, k):
    rng = np.random.default_rng(k)
    a, b = -0.3, -0.3 + h
    back = [a - s for s in np.cumsum(rng.uniform(0.3, 3.0, k) * h)]
    for nodes in ([a] + back[: k - 1], [b, a] + back[: k - 2]):  # predictor nodes; corrector nodes
        nodes = nodes[:k]
        got = _exp_lagrange_weights(nodes, a, b)
        want = _quadrature_weights(nodes, a, b)
        assert max(abs(g - w) for g, w in zip(got, want)) < 1e-12 * h, (nodes, got, want)
    assert _exp_lagrange_weights([a], a, b)[0] == pytest.approx(-math.expm1(-h), rel=1e-14)


def test_first_order_predictor_is_ddim():
    target, process = toy_data.load("ring8"), VP()
    ts = uniform_log_snr(process, 7)
    x = process.prior((100, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    score = target.score_fn(process)
    u = unipc(score, process, x, ts, order=1, corrector=False)
    assert torch.allclose(u, ddim(score, process, x, ts), rtol=1e-10, atol=1e-10)
    assert torch.allclose(u, dpm_solver_pp(score, process, x, ts, order=1), rtol=1e-10, atol=1e-10)


def _reference_unipc(score, process, x, ts, order=2, corrector=True, final_correction=True,
                     lower_order_final=False, denoise=True):
    """The research draft, step by step: weights by quadrature inside the loop, no precomputation."""
    ts = ts.to(torch.float64)
    alpha, sigma = process.alpha(ts).tolist(), process.sigma(ts).tolist()
    lam = (0.5 * process.log_snr(ts)).tolist()
    n = len(ts) - 1
    ds, ls, x_prev = [], [], None
    for i in range(n + 1):
        if i == n and not denoise:
            return x
        t = ts[i].to(device=x.device, dtype=x.dtype).expand(x.shape[0])
        d = (x + sigma[i] ** 2 * score(x, t)) / alpha[i]  # Tweedie
        if corrector and i > 0 and (i < n or final_correction):
            k = min(order, len(ds))
            w = _quadrature_weights([lam[i]] + ls[:k], lam[i - 1], lam[i])
            xc = sigma[i] / sigma[i - 1] * x_prev + alpha[i] * sum(wj * dj for wj, dj in zip(w, [d] + ds[:k]))
            if i == n:
                return d + (xc - x) / alpha[i]
            x = xc
        if i == n:
            return d
        ds, ls = [d] + ds, [lam[i]] + ls
        k = 1 if lower_order_final and i == n - 1 else min(order, len(ds))
        w = _quadrature_weights(ls[:k], lam[i], lam[i + 1])
        x_prev = x
        x = sigma[i + 1] / sigma[i] * x + alpha[i + 1] * sum(wj * dj for wj, dj in zip(w, ds[:k]))


@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize("options", [
    {}, {"corrector": False}, {"final_correction": False}, {"order": 1}, {"order": 3},
    {"order": 3, "lower_order_final": True}, {"order": 2, "corrector": False, "lower_order_final": True},
], ids=["default", "predictor", "no_final", "order1", "order3", "order3_lof", "order2p_lof"])
@pytest.mark.parametrize("process", [VP(), VE(0.01, 10.0)], ids=["vp", "ve"])
def test_matches_the_step_by_step_reference(process, options, denoise):
    target = toy_data.load("aniso")
    score = target.score_fn(process)
    x = process.prior((50, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(DEVICE)
    for ts in (scaled_log_snr(process, 8, 0.5), uniform_log_snr(process, 2), uniform_log_snr(process, 1)):
        got = unipc(score, process, x, ts, denoise=denoise, **options)
        want = _reference_unipc(score, process, x, ts, denoise=denoise, **options)
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-9), (ts, (got - want).abs().max())


# -- order of convergence on the probability-flow ODE ---------------------------------------------------------------


# (order, corrector) -> declared order of convergence: the predictor's order, one more with the corrector.
# Measured on 24 / 48 / 96 steps: 0.9, 1.96, 2.06, 3.04, 3.14.
ORDERS = {(1, False): 1, (1, True): 2, (2, False): 2, (2, True): 3, (3, False): 3}


@pytest.mark.parametrize("order,corrector", list(ORDERS), ids=[f"{o}{'c' if c else 'p'}" for o, c in ORDERS])
def test_measured_order_of_convergence(order, corrector, ode_problem):
    process, score, x, t0, t1, ref = ode_problem
    ns = [24, 48, 96]
    errs = []
    for n in ns:
        ts = uniform_log_snr(process, n, t_min=t1, t_max=t0)
        out = unipc(score, process, x, ts, order=order, corrector=corrector, denoise=False)
        errs.append((out - ref).abs().max().item())
    slope = -(math.log(errs[-1]) - math.log(errs[0])) / (math.log(ns[-1]) - math.log(ns[0]))
    assert abs(slope - ORDERS[order, corrector]) < 0.4, (order, corrector, errs, slope)


# -- quality at a small budget ---------------------------------------------------------------------------------------


def test_ring8_at_nfe_10_beats_dpm_solver_pp():
    """At NFE 10 under VP (n = 20000): UniPC on its default grid (scaled log-SNR, data scale estimated from the
    score) -0.138 nats / SW2 0.051, DPM-Solver++(2M) on the log-SNR grid -0.209 nats / SW2 0.076."""
    target, process, n = toy_data.load("ring8"), VP(), 20000
    ref = target.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEVICE)
    x = process.prior((n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    score = target.score_fn(process)
    res = {}
    for name, sampler, ts in [
        ("unipc", unipc, SAMPLERS["unipc"].grid_for(process, 10, score=score)),
        ("dpm_solver_pp", dpm_solver_pp, uniform_log_snr(process, 9)),
    ]:
        counted = CountEvals(score)
        out = sampler(counted, process, x, ts)
        assert counted.nfe == 10
        gap, _ = log_density_gap(target.log_prob, out, ref)
        res[name] = (gap.item(), sliced_wasserstein(out, ref).item())
    (gap_u, sw_u), (gap_d, sw_d) = res["unipc"], res["dpm_solver_pp"]
    assert abs(gap_u) < 0.8 * abs(gap_d) and abs(gap_u) < 0.16, res
    assert sw_u < 0.8 * sw_d, res


# -- the scaled log-SNR grid ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("process", [VP(), VE(0.01, 10.0)], ids=["vp", "ve"])
@pytest.mark.parametrize("n", [1, 2, 9, 30])
def test_scaled_grid(n, process):
    ts = scaled_log_snr(process, n, 0.7)
    assert ts.dtype == torch.float64 and ts.shape == (n + 1,)
    assert ts[0].item() == process.t_max and ts[-1].item() == process.t_min
    assert bool((ts[1:] < ts[:-1]).all())
    # sigma/alpha = data_scale / sinh²(u / 2), u uniform: the definition, checked at the interior times
    u = 2 * torch.asinh((0.7 / torch.exp(-0.5 * process.log_snr(ts))).sqrt())
    assert torch.allclose(torch.diff(u), torch.diff(u).mean().expand(n), rtol=1e-7)
    # uniform in log-SNR where sigma/alpha << data_scale: a huge data scale gives uniform_log_snr
    assert torch.allclose(scaled_log_snr(process, n, 1e9), uniform_log_snr(process, n), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("process", [VP(), VE(0.01, 10.0)], ids=["vp", "ve"])
def test_every_step_of_the_scaled_grid_shrinks(process):
    # the largest log-SNR step (the first, at high noise) falls with the steps, at last as 1/steps: no interval
    # is pinned (as the old jump grid's first two were), so a sampler on this grid converges at its order
    big = [torch.diff(process.log_snr(scaled_log_snr(process, n, 0.7))).abs().max().item() for n in
           (9, 30, 100, 200, 400)]
    assert all(b2 < b1 for b1, b2 in zip(big, big[1:])), big
    assert big[-1] < 0.55 * big[-2], big


def test_scaled_grid_bad_input():
    process = VP()
    with pytest.raises(ValueError, match="non-negative integer, got -1"):
        scaled_log_snr(process, -1, 1.0)
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match=f"data_scale must be a positive finite number, got {bad!r}"):
            scaled_log_snr(process, 5, bad)
    with pytest.raises(ValueError, match="t_min < t_max"):
        scaled_log_snr(process, 5, 1.0, t_min=0.5, t_max=0.4)
    assert scaled_log_snr(process, 0, 1.0).tolist() == [process.t_max]


# -- interface guarantees ------------------------------------------------------------------------------------------

VARIANTS = {
    "default": {},
    "predictor": {"corrector": False},
    "no_final": {"final_correction": False},
    "order3_lof": {"order": 3, "lower_order_final": True},
    "order1": {"order": 1},
}


@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize("steps", [0, 1, 2, 9])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_count_evals_matches_the_documented_nfe(variant, steps, denoise):
    target, process = toy_data.load("ring8"), VP()
    ts = uniform_log_snr(process, steps)
    score = CountEvals(target.score_fn(process))
    x = process.prior((3, 2), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    out = unipc(score, process, x, ts, denoise=denoise, **VARIANTS[variant])
    assert score.nfe == len(ts) - 1 + denoise
    assert out.shape == (3, 2) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_same_generator_same_samples_and_float64(variant):
    target, process = toy_data.load("ring8"), VE(0.01, 10.0)
    ts = scaled_log_snr(process, 14, 1.0)
    outs = []
    for _ in range(2):
        g = torch.Generator(device=DEVICE).manual_seed(7)
        x = process.prior((50, 2), generator=g, dtype=torch.float64).to(DEVICE)
        outs.append(unipc(target.score_fn(process), process, x, ts, generator=g, **VARIANTS[variant]))
    assert outs[0].dtype == torch.float64 and torch.equal(outs[0], outs[1])
    x32 = process.prior((50, 2), generator=torch.Generator().manual_seed(7)).to(DEVICE)
    assert unipc(target.score_fn(process), process, x32, ts, **VARIANTS[variant]).dtype == torch.float32


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_sample_does_not_depend_on_the_rest_of_the_batch(variant):
    target, process = toy_data.load("ring8"), VP()
    ts = scaled_log_snr(process, 11, 1.0)
    x = process.prior((12, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    big = unipc(target.score_fn(process), process, x, ts, **VARIANTS[variant])
    small = unipc(target.score_fn(process), process, x[:5], ts, **VARIANTS[variant])
    assert torch.allclose(small, big[:5], rtol=1e-10, atol=1e-12)


def test_callback_sees_every_evaluation():
    target, process = toy_data.load("ring8"), VP()
    ts = uniform_log_snr(process, 6)
    seen = []
    x = process.prior((10, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    out = unipc(target.score_fn(process), process, x, ts, final_correction=False, callback=seen.append)
    assert [c["i"] for c in seen] == [0, 1, 2, 3, 4, 5, 6]
    assert all(set(c) == {"i", "t", "x", "x0"} for c in seen)
    assert torch.allclose(seen[-1]["x0"], out)  # without the final correction the output is Tweedie's x0
    assert seen[0]["t"] == pytest.approx(process.t_max)


def test_nan_from_the_score_names_the_step():
    target, process = toy_data.load("ring8"), VP()
    calls = []

    def broken(x, t):
        calls.append(1)
        s = target.score(x, process, t)
        return s * float("nan") if len(calls) >= 3 else s

    x = process.prior((4, 2), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    with pytest.raises(ValueError, match=r"NaN or inf at step 2 \(t = [\d.]+, evaluation 3\)"):
        unipc(broken, process, x, scaled_log_snr(process, 9, 1.0))


def test_bad_grids_and_orders():
    target, process = toy_data.load("ring8"), VP()
    score = target.score_fn(process)
    x = process.prior((4, 2), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    with pytest.raises(ValueError, match=r"strictly decreasing; ts\[1\] = 0.3"):
        unipc(score, process, x, torch.tensor([0.5, 0.3, 0.4], dtype=torch.float64))
    with pytest.raises(ValueError, match="t = 1.5"):
        unipc(score, process, x, torch.tensor([1.5, 0.3], dtype=torch.float64))
    for order in (0, 4, 2.5, True):
        with pytest.raises(ValueError, match=f"order must be 1, 2 or 3, got {order!r}"):
            unipc(score, process, x, uniform_log_snr(process, 5), order=order)
    with pytest.raises(ValueError, match=r"shape \(B, ...\)"):
        unipc(score, process, torch.tensor(1.0), uniform_log_snr(process, 3))
