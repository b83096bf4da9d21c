"""Samplers against exact scores: quality versus the noise floor, measured order of convergence, per-sample
independence, reproducibility, NFE accounting and bad input."""

import functools
import math

import pytest
import torch

import toy_data
from scoresde import VE, VP, DiscreteVP, CountEvals
from scoresde.processes import EDM
from scoresde.metrics import sliced_wasserstein
from scoresde.samplers import analytic_x0_var, ancestral, ancestral_analytic, ddim, dpm_solver_pp, euler, heun, langevin, probability_flow
from scoresde.samplers.registry import SAMPLERS, get_sampler
from scoresde.samplers.tuning import pilot_batch
from scoresde.schedules import karras, scaled_log_snr, uniform_log_snr, uniform_t
from toy_data import GaussianMixture

from .conftest import DEVICE

# NFE budgets at which each sampler should be close to the target on exact scores (stochastic ones need more).
BUDGET = {
    "ancestral": 100,
    "ancestral_analytic": 50,
    "euler_maruyama": 200,
    "predictor_corrector": 200,
    "annealed_langevin": 506,
    "probability_flow": 41,
    "ddim": 40,
    "euler": 40,
    "heun": 31,
    "dpm_solver_pp": 20,
    "unipc": 20,
    "dpm_solver_pp_sde": 30,
}
N = 4000


def _image_mixture():
    g = torch.Generator().manual_seed(0)
    means = 0.8 * torch.randn(3, 64, generator=g, dtype=torch.float64)
    return GaussianMixture.isotropic([0.5, 0.3, 0.2], means, 0.25, event_shape=(1, 8, 8))


def _run(name, target, process, nfe, n=N, seed=0, dtype=torch.float32):
    spec = get_sampler(name)
    ts = spec.grid_for(process, nfe, score=target.score_fn(process), shape=target.event_shape)
    score = CountEvals(target.score_fn(process))
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = process.prior((n,) + target.event_shape, generator=g, dtype=dtype)
    out = spec(score, process, x, ts, nfe=nfe, generator=g)
    pilot = 0
    if name == "ancestral_analytic":  # its pilot batch's evaluations are counted in the NFE too
        counted = CountEvals(target.score_fn(process))
        analytic_x0_var(counted, process, ts, pilot_batch(process, 1000, x))
        pilot = counted.nfe
    return out, score.nfe - pilot, spec.spent(nfe)


def _floor(target, n=N):
    a = target.sample(n, generator=torch.Generator().manual_seed(101)).to(DEVICE)
    b = target.sample(n, generator=torch.Generator().manual_seed(102)).to(DEVICE)
    return a, sliced_wasserstein(a, b).item()


# The exact reference set and its noise floor, the same for every sampler: made once (the tests only read them).
@functools.cache
def _ring8_floor():
    return _floor(toy_data.load("ring8"))


@functools.cache
def _image_floor():
    return _floor(_image_mixture(), 2000)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("process", [VP(), VE(0.01, 10.0), EDM(0.01, 10.0)], ids=["vp", "ve", "edm"])
def test_every_sampler_reaches_ring8(name, process):
    target = toy_data.load("ring8")
    ref, floor = _ring8_floor()
    out, nfe, declared = _run(name, target, process, BUDGET[name])
    assert nfe == declared <= BUDGET[name]
    assert out.shape == (N, 2) and out.dtype == torch.float32 and out.device.type == DEVICE.type
    assert sliced_wasserstein(out, ref).item() < 2.5 * floor, name


@pytest.mark.parametrize("name", ["ancestral", "ddim"])
def test_ddpm_samplers_on_discrete_vp(name):
    target = toy_data.load("ring8")
    ref, floor = _ring8_floor()
    process = DiscreteVP.linear()
    spec = get_sampler(name)
    ts = uniform_t(process, 999) if name == "ancestral" else spec.grid_for(process, BUDGET[name],
                                                                            score=target.score_fn(process))
    assert name != "ancestral" or torch.allclose(ts * 1000, torch.arange(1000, 0, -1, dtype=torch.float64))
    g = torch.Generator(device=DEVICE).manual_seed(0)
    out = spec(target.score_fn(process), process, process.prior((N, 2), generator=g), ts, generator=g)
    assert sliced_wasserstein(out, ref).item() < 2.5 * floor


@pytest.mark.parametrize("name", ["ancestral", "euler_maruyama", "ddim", "heun", "dpm_solver_pp", "probability_flow"])
def test_image_shaped_data(name):
    target = _image_mixture()
    ref, floor = _image_floor()
    out, _, _ = _run(name, target, VP(), BUDGET[name], n=2000)
    assert out.shape == (2000, 1, 8, 8)
    assert sliced_wasserstein(out, ref).item() < 2.5 * floor


# -- order of convergence on the probability-flow ODE ---------------------------------------------------------------


SOLVERS = {
    "ddim": (lambda s, p, x, ts: ddim(s, p, x, ts, denoise=False), 1),
    "euler": (lambda s, p, x, ts: euler(s, p, x, ts, denoise=False), 1),
    "heun": (lambda s, p, x, ts: heun(s, p, x, ts, denoise=False), 2),
    "dpm_solver_pp_2m": (lambda s, p, x, ts: dpm_solver_pp(s, p, x, ts, lower_order_final=False, denoise=False), 2),
    "dpm_solver_pp_3m": (
        lambda s, p, x, ts: dpm_solver_pp(s, p, x, ts, order=3, lower_order_final=False, denoise=False), 3),
    "pf_euler": (lambda s, p, x, ts: probability_flow(s, p, x, ts, method="euler", denoise=False), 1),
    "pf_midpoint": (lambda s, p, x, ts: probability_flow(s, p, x, ts, method="midpoint", denoise=False), 2),
    "pf_rk4": (lambda s, p, x, ts: probability_flow(s, p, x, ts, method="rk4", denoise=False), 4),
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_measured_order_of_convergence(name, ode_problem):
    solver, order = SOLVERS[name]
    process, score, x, t0, t1, ref = ode_problem
    ns = [16, 32, 64] if order < 4 else [8, 16, 32]
    errs = []
    for n in ns:
        ts = uniform_log_snr(process, n, t_min=t1, t_max=t0)
        errs.append((solver(score, process, x, ts) - ref).abs().max().item())
    slope = -(math.log(errs[-1]) - math.log(errs[0])) / (math.log(ns[-1]) - math.log(ns[0]))
    assert abs(slope - order) < 0.4, (name, errs, slope)


# -- interface guarantees ------------------------------------------------------------------------------------------


def _caller_noise(rows: int, draws: int = 64):
    """Noise per (draw, row) from a per-row seed: a row's noise never depends on the batch it is in."""
    table = torch.stack([torch.randn(draws, 2, generator=torch.Generator().manual_seed(100 + r), dtype=torch.float64)
                         for r in range(rows)], 1).to(DEVICE)  # (draws, rows, 2)
    return lambda k, x: table[k, : x.shape[0]]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_sample_does_not_depend_on_the_rest_of_the_batch(name):
    target, process = toy_data.load("ring8"), VP()
    spec = get_sampler(name)
    nfe = max(12, spec.min_nfe)
    ts = spec.grid_for(process, nfe, score=target.score_fn(process))
    noise = _caller_noise(nfe)
    x = process.prior((12, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    big = spec(target.score_fn(process), process, x, ts, nfe=nfe, noise=noise)
    small = spec(target.score_fn(process), process, x[:5], ts, nfe=nfe, noise=noise)
    assert torch.allclose(small, big[:5], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_generator_same_samples_and_float64(name):
    target, process = toy_data.load("ring8"), VE(0.01, 10.0)
    spec = get_sampler(name)
    nfe = max(15, spec.min_nfe)
    ts = spec.grid_for(process, nfe, score=target.score_fn(process))
    outs = []
    for _ in range(2):
        g = torch.Generator(device=DEVICE).manual_seed(7)
        x = process.prior((50, 2), generator=g, dtype=torch.float64)
        outs.append(spec(target.score_fn(process), process, x, ts, nfe=nfe, generator=g))
    assert outs[0].dtype == torch.float64 and torch.equal(outs[0], outs[1])


def test_ddim_with_eta_one_is_the_ancestral_sampler():
    target, process = toy_data.load("ring8"), VP()
    ts = uniform_t(process, 30)
    x = process.prior((200, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    noise = _caller_noise(200)
    a = ancestral(target.score_fn(process), process, x, ts, noise=noise)
    d = ddim(target.score_fn(process), process, x, ts, eta=1.0, noise=noise)
    assert torch.allclose(a, d, rtol=1e-9, atol=1e-9)
    d0 = ddim(target.score_fn(process), process, x, ts, eta=0.0, noise=noise)
    assert not torch.allclose(a, d0, atol=1e-3)


# -- Analytic-DPM's reverse variance (ancestral with x0_var) ----------------------------------------------------------


@pytest.mark.parametrize("process", [VP(), DiscreteVP.linear(), VE(0.01, 10.0)], ids=["vp", "ddpm", "ve"])
def test_analytic_x0_var_is_the_gaussian_posterior_variance(process):
    # for N(m, s0² I) data, Cov[x0 | x_t] = s0² sigma² / (alpha² s0² + sigma²) I exactly, at every x_t
    s0 = 0.3
    target = GaussianMixture.isotropic([1.0], [[1.0, -0.5]], s0)
    ts = scaled_log_snr(process, 10, 1.0)
    x = process.prior((1000, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    v = analytic_x0_var(target.score_fn(process), process, ts, x)
    a, s = process.alpha(ts[:-1]), process.sigma(ts[:-1])
    exact = s0**2 * s**2 / (a**2 * s0**2 + s**2)
    assert v.shape == (10,) and v.dtype == torch.float64
    assert torch.allclose(v, exact, rtol=0.03), (v, exact)


def test_ancestral_with_the_x0_variance_keeps_the_marginal_variance():
    # one big step t -> s from exact x_t of N(m, s0² I) data: with the exact x0 variance the step is the exact
    # posterior q(x_s | x_t), so x_s has p_s's variance; DDPM's plug-in step (x0_var=None) falls short of it
    s0, t, s = 0.3, 0.6, 0.05
    process = VP()
    target = GaussianMixture.isotropic([1.0], [[1.0, -0.5]], s0)
    ts = torch.tensor([t, s], dtype=torch.float64)
    a_t, sig_t = process.alpha(ts), process.sigma(ts)
    g = torch.Generator().manual_seed(0)
    n = 40000
    x = (a_t[0] * torch.tensor([1.0, -0.5], dtype=torch.float64)
         + (a_t[0] ** 2 * s0**2 + sig_t[0] ** 2).sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64))
    x0_var = [s0**2 * sig_t[0] ** 2 / (a_t[0] ** 2 * s0**2 + sig_t[0] ** 2)]
    var_s = float(a_t[1] ** 2 * s0**2 + sig_t[1] ** 2)
    outs = {}
    for key, v in [("analytic", x0_var), ("plain", None)]:
        gen = torch.Generator(device=DEVICE).manual_seed(1)
        outs[key] = ancestral(target.score_fn(process), process, x.to(DEVICE), ts, x0_var=v, generator=gen,
                              denoise=False).var(0).mean().item()
    assert outs["analytic"] == pytest.approx(var_s, rel=0.02)
    assert outs["plain"] < 0.9 * var_s
    # the plug-in step in closed form: Tweedie's x0 is linear in x_t (slope k), so Var x_s = (c_x0 k + c_xt)² Var x_t
    # + std² (measured 0.0298, nearly all std²: a sampler drawing 0.8x its noise reads 0.019)
    c_x0, c_xt, std = (float(c) for c in process.posterior_coefficients(ts[1:], ts[:1]))
    var_t = float(a_t[0] ** 2 * s0**2 + sig_t[0] ** 2)
    k = float(a_t[0]) * s0**2 / var_t
    assert outs["plain"] == pytest.approx((c_x0 * k + c_xt) ** 2 * var_t + std**2, rel=0.02)


def test_ancestral_analytic_runs_its_pilot_through_the_counted_score():
    target, process = toy_data.load("ring8"), VP()
    ts = get_sampler("ancestral_analytic").grid_for(process, 12, score=target.score_fn(process))
    x = process.prior((50, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    noise = _caller_noise(50)
    pilot = CountEvals(target.score_fn(process))
    x0_var = analytic_x0_var(pilot, process, ts, pilot_batch(process, 1000, x))
    assert x0_var.shape == (11,) and bool((x0_var > 0).all()) and pilot.nfe > 20
    counted = CountEvals(target.score_fn(process))
    auto = ancestral_analytic(counted, process, x, ts, noise=noise)
    assert torch.equal(auto, ancestral(target.score_fn(process), process, x, ts, noise=noise, x0_var=x0_var))
    assert counted.nfe == pilot.nfe + len(ts)  # the pilot's cost is visible: steps + final denoise + pilot
    with pytest.raises(ValueError, match="x0_var must hold 11 finite non-negative values"):
        ancestral(target.score_fn(process), process, x, ts, x0_var=[0.1] * 10)
    with pytest.raises(ValueError, match="x0_var must hold 11 finite non-negative values"):
        ancestral(target.score_fn(process), process, x, ts, x0_var=[-0.1] + [0.1] * 10)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("nfe", [1, 7, 30])
def test_count_evals_matches_the_documented_nfe(name, nfe):
    target, process = toy_data.load("ring8"), VP()
    spec = get_sampler(name)
    try:
        ts = spec.grid_for(process, nfe, score=target.score_fn(process))
    except ValueError as e:
        if nfe < spec.min_nfe:  # samplers of several evaluations per step refuse fewer than 7 steps
            assert f"{name} needs NFE >= {spec.min_nfe}, got NFE = {nfe}" in str(e)
            return
        assert "too small" in str(e) and nfe < spec.evals_per_step + spec.extra + 1
        return
    score = CountEvals(target.score_fn(process))
    x = process.prior((3, 2))
    spec(score, process, x, ts, nfe=nfe, generator=torch.Generator().manual_seed(0))
    if name == "ancestral_analytic":  # its pilot batch's evaluations are counted too
        pilot = CountEvals(target.score_fn(process))
        analytic_x0_var(pilot, process, ts, pilot_batch(process, 1000, x))
        assert score.nfe == spec.spent(nfe) + pilot.nfe
        return
    assert score.nfe == spec.spent(nfe) <= nfe


def test_adaptive_probability_flow_counts_its_evaluations():
    target, process = toy_data.load("ring8"), VP()
    score = CountEvals(target.score_fn(process))
    ts = uniform_t(process, 1)
    out = probability_flow(score, process, process.prior((100, 2)), ts, method="dopri5", rtol=1e-4, atol=1e-4)
    assert score.nfe > 10 and torch.isfinite(out).all()


def test_callback_sees_every_step_and_the_final_estimate():
    target, process = toy_data.load("ring8"), VP()
    ts = karras(process, 6)
    seen = []
    out = heun(target.score_fn(process), process, process.prior((10, 2)), ts, callback=seen.append)
    assert [c["i"] for c in seen] == [0, 1, 2, 3, 4, 5, 6]
    assert all(set(c) == {"i", "t", "x", "x0"} for c in seen)
    assert torch.allclose(seen[-1]["x0"], out)
    assert seen[0]["t"] == pytest.approx(process.t_max)


def test_plain_langevin_samples_a_fixed_gaussian():
    process = VE(0.01, 10.0)
    target = GaussianMixture.isotropic([1.0], [[1.0, -1.0]], 0.5)
    x = torch.zeros(4000, 2, dtype=torch.float64, device=DEVICE)
    out = langevin(target.score_fn(process), x, 0.0, 400, 0.02, generator=torch.Generator(device=DEVICE).manual_seed(0))
    assert torch.allclose(out.mean(0).cpu(), torch.tensor([1.0, -1.0], dtype=torch.float64), atol=0.05)
    assert torch.allclose(out.std(0).cpu(), torch.full((2,), math.sqrt(0.25 + 1e-4), dtype=torch.float64), rtol=0.05)


# -- bad input -------------------------------------------------------------------------------------------------------


def test_bad_grids_and_budgets():
    target, process = toy_data.load("ring8"), VP()
    score, x = target.score_fn(process), process.prior((4, 2))
    with pytest.raises(ValueError, match=r"strictly decreasing; ts\[1\] = 0.3"):
        ddim(score, process, x, torch.tensor([0.5, 0.3, 0.4], dtype=torch.float64))
    with pytest.raises(ValueError, match="t = 1.5"):
        ddim(score, process, x, torch.tensor([1.5, 0.3], dtype=torch.float64))
    with pytest.raises(ValueError, match="NFE must be a positive integer, got 0"):
        get_sampler("heun").steps_for(0)
    with pytest.raises(ValueError, match="heun needs NFE >= 15, got NFE = 14"):
        get_sampler("heun").steps_for(14)
    with pytest.raises(ValueError, match="probability_flow needs NFE >= 29, got NFE = 28"):
        get_sampler("probability_flow").steps_for(28)
    assert get_sampler("probability_flow").budget(29)[0] == 7
    with pytest.raises(ValueError, match="predictor_corrector needs NFE >= 15, got NFE = 14"):
        get_sampler("predictor_corrector").steps_for(14)
    assert get_sampler("predictor_corrector").budget(15)[0] == 7
    assert get_sampler("heun").budget(15) == (7, {"euler_first": False}, 15)
    assert get_sampler("heun").budget(16) == (8, {"euler_first": True}, 16)
    with pytest.raises(ValueError, match="NFE = 1 is too small for annealed_langevin: it needs at least 2"):
        get_sampler("annealed_langevin").steps_for(1)
    with pytest.raises(ValueError, match="unknown sampler 'dpmpp'"):
        get_sampler("dpmpp")
    with pytest.raises(ValueError, match=r"shape \(B, ...\)"):
        ddim(score, process, torch.tensor(1.0), uniform_t(process, 3))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_nan_from_the_score_names_the_step(name):
    target, process = toy_data.load("ring8"), VP()
    spec = get_sampler(name)
    ts = spec.grid_for(process, 40, score=target.score_fn(process))
    calls = []

    def broken(x, t):
        calls.append(1)
        s = target.score(x, process, t)
        return s * float("nan") if len(calls) >= 3 else s

    with pytest.raises(ValueError, match=r"NaN or inf at (step \d+|ODE evaluation 3)"):
        spec(broken, process, process.prior((4, 2)), ts, nfe=40, generator=torch.Generator().manual_seed(0))


# -- 0 steps: every grid is [t_max], every sampler's NFE 1 is Tweedie's x0 there -------------------------------------


@pytest.mark.parametrize("process", [VP(), VE(0.01, 10.0), DiscreteVP.linear(100)], ids=["vp", "ve", "ddpm"])
def test_zero_steps_is_the_grid_t_max_for_every_grid(process):
    from scoresde.samplers.registry import GRIDS

    for name, grid in GRIDS.items():
        if name == "optimized" or (name == "ddpm_steps" and not isinstance(process, DiscreteVP)):
            continue
        args = (1.0,) if name == "scaled_log_snr" else ()  # the data scale
        assert grid(process, 0, *args).tolist() == [process.t_max], name


@pytest.mark.parametrize("name", [n for n, s in SAMPLERS.items() if s.deterministic])
def test_nfe_one_returns_tweedie_at_t_max_not_the_prior_noise(name):
    target, process = toy_data.load("ring8"), VP()
    spec = get_sampler(name)
    ts = uniform_log_snr(process, 0) if spec.min_nfe > 1 else spec.grid_for(process, 1, score=target.score_fn(process))
    x = process.prior((500, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(DEVICE)
    score = CountEvals(target.score_fn(process))
    out = spec(score, process, x, ts)
    t = torch.full((500,), process.t_max, dtype=torch.float64, device=DEVICE)
    expected = target.posterior_mean(x, process, t)
    assert score.nfe == 1
    assert torch.allclose(out, expected, atol=1e-10)
    assert out.norm(dim=1).max() < 0.1  # E[x0 | x_T] is near the data mean (0), far from the noise (|x| ~ 1.4)


def test_adaptive_tolerance_below_the_dtype_precision_is_refused():
    target, process = toy_data.load("ring8"), VP()
    x = process.prior((10, 2), generator=torch.Generator().manual_seed(0))  # float32
    with pytest.raises(ValueError, match="rtol = 1e-10 is below torch.float32's precision"):
        probability_flow(target.score_fn(process), process, x, uniform_t(process, 1), method="dopri5", rtol=1e-10)
    out = probability_flow(target.score_fn(process), process, x.double(), uniform_t(process, 1), method="dopri5",
                           rtol=1e-10, atol=1e-10)
    assert torch.isfinite(out).all()
