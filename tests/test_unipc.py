"""UniPC and the jump grid against exact scores: exact exponential-integrator weights, measured order of
convergence, quality at NFE 10 against DPM-Solver++(2M), NFE accounting, reproducibility and bad input."""

import math

import numpy as np
import pytest
import torch

import toy_data
from scoresde import VE, VP, CountEvals
from scoresde.metrics import log_density_gap, sliced_wasserstein
from scoresde.samplers import ddim, dpm_solver_pp
from scoresde.samplers.unipc import _exp_lagrange_weights, unipc
from scoresde.schedules import jump_log_snr, uniform_log_snr

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
    for ts in (jump_log_snr(process, 8, s1=5.0), uniform_log_snr(process, 2), uniform_log_snr(process, 1)):
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
    """At NFE 10 under VP (n = 20000): UniPC on the jump grid -5 se / 0.95 floor, DPM-Solver++(2M) on the
    log-SNR grid -15 se / 1.4 floor."""
    target, process, n = toy_data.load("ring8"), VP(), 20000
    ref = target.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEVICE)
    x = process.prior((n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    score = target.score_fn(process)
    res = {}
    for name, sampler, ts in [
        ("unipc", unipc, jump_log_snr(process, 9)),
        ("dpm_solver_pp", dpm_solver_pp, uniform_log_snr(process, 9)),
    ]:
        counted = CountEvals(score)
        out = sampler(counted, process, x, ts)
        assert counted.nfe == 10
        gap, se = log_density_gap(target.log_prob, out, ref)
        res[name] = (gap.item() / se.item(), sliced_wasserstein(out, ref).item())
    (z_u, sw_u), (z_d, sw_d) = res["unipc"], res["dpm_solver_pp"]
    assert abs(z_u) < 0.5 * abs(z_d) and abs(z_u) < 10, res
    assert sw_u < sw_d, res


# -- the jump grid ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 9, 30])
def test_jump_grid(n):
    process = VP()
    ts = jump_log_snr(process, n)
    assert ts.dtype == torch.float64 and ts.shape == (n + 1,)
    assert ts[0].item() == process.t_max and ts[-1].item() == process.t_min
    assert bool((ts[1:] < ts[:-1]).all())
    ratio = torch.exp(-0.5 * process.log_snr(ts))  # sigma / alpha
    assert ratio[1].item() == pytest.approx(10.0, rel=1e-9)
    if n > 2:
        assert ratio[2].item() == pytest.approx(2.0, rel=1e-9)
        steps = torch.diff(process.log_snr(ts[2:]))
        assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-8)
    ve = jump_log_snr(VE(0.01, 10.0), n, s1=5.0, s2=1.0, t_min=0.1, t_max=0.9)
    assert ve[0].item() == 0.9 and ve[-1].item() == 0.1 and bool((ve[1:] < ve[:-1]).all())


def test_jump_grid_bad_input():
    process = VP()
    assert torch.equal(jump_log_snr(process, 1), uniform_log_snr(process, 1))  # nothing to jump over
    with pytest.raises(ValueError, match="non-negative integer, got -1"):
        jump_log_snr(process, -1)
    with pytest.raises(ValueError, match="need s1 > s2, got s1 = 2.0, s2 = 3.0"):
        jump_log_snr(process, 5, s1=2.0, s2=3.0)
    with pytest.raises(ValueError, match=r"s2 = 0.001 must exceed sigma/alpha = 0.01\d* at t_min"):
        jump_log_snr(process, 5, s2=0.001)
    with pytest.raises(ValueError, match=r"s1 = 1000.0 must be below sigma/alpha = 15\d\.\d* at t_max = 1.0"):
        jump_log_snr(process, 5, s1=1000.0)
    with pytest.raises(ValueError, match=r"s1 = 10.0 must be below sigma/alpha = 10 at t_max"):
        jump_log_snr(VE(0.01, 10.0), 5, s1=10.0)  # sigma_max = s1: the first jump would not move
    ve_default = jump_log_snr(VE(0.01, 10.0), 5)  # defaults adapt: s1 = sigma_max / 2 = 5, s2 = 2
    assert torch.allclose(VE(0.01, 10.0).sigma(ve_default[1:3]), torch.tensor([5.0, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="t_min < t_max"):
        jump_log_snr(process, 5, t_min=0.5, t_max=0.4)


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
    ts = jump_log_snr(process, 14, s1=5.0)
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
    ts = jump_log_snr(process, 11)
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
        unipc(broken, process, x, jump_log_snr(process, 9))


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
