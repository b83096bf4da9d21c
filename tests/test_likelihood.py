"""Probability-flow likelihoods against exact Gaussian-mixture densities; Hutchinson's estimator; bits/dim."""

import functools
import math

import pytest
import torch

import toy_data
from scoresde import VE, VP, SubVP, CountEvals
from scoresde.likelihood import bits_per_dim, dequantize, divergence, log_likelihood
from toy_data import GaussianMixture

from .conftest import DEVICE

F64 = dict(dtype=torch.float64, device=DEVICE)
# sigma_max = 50 >> the data's spread, so the VE prior N(0, sigma_max² I) is close to p_{t_max}.
PROCESSES = {"vp": VP(), "ve": VE(0.01, 50.0), "subvp": SubVP()}


def _points(target, process, n, seed=0, dtype=torch.float64):
    """n samples of the mixture noised to t_min (where log_likelihood evaluates the density)."""
    g = torch.Generator().manual_seed(seed)
    x0 = target.sample(n, generator=g, dtype=torch.float64)
    x = process.perturb(x0, process.t_min, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    return x.to(device=DEVICE, dtype=dtype)


def _exact(target, process, x, t):
    return target.log_prob(x, process, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))


def _gaussian16(event_shape=(16,)):
    """One Gaussian in 16 dimensions with an anisotropic, rotated covariance (eigenvalues 0.03 .. 3)."""
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    lam = torch.logspace(math.log10(0.03), math.log10(3.0), 16, dtype=torch.float64)
    cov = q @ torch.diag(lam) @ q.T
    mean = 0.5 * torch.randn(1, 16, generator=g, dtype=torch.float64)
    return GaussianMixture([1.0], mean, (0.5 * (cov + cov.T))[None], event_shape=event_shape)


# -- exact divergence -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROCESSES))
def test_exact_divergence_recovers_the_mixture_density(name):
    process, target = PROCESSES[name], toy_data.load("ring8")
    x = _points(target, process, 32)
    res = log_likelihood(target.score_fn(process), process, x, rtol=1e-6, atol=1e-6)
    exact = _exact(target, process, x, process.t_min)
    assert res.log_p.shape == (32,) and res.log_p.dtype == torch.float64 and res.log_p.device.type == DEVICE.type
    assert res.std_err is None and res.z.shape == x.shape
    assert torch.allclose(res.log_p, res.prior_logp + res.delta_logp)
    assert (res.log_p - exact).abs().max().item() < 1e-2
    # With the exact density of p_{t_max} in place of the prior only the ODE's error remains.
    ode_only = res.delta_logp + _exact(target, process, res.z, process.t_max)
    assert (ode_only - exact).abs().max().item() < 1e-3
    assert 50 < res.nfe < 1000


def test_exact_divergence_of_a_gaussian_score_is_minus_the_precision_trace():
    target, process, t = _gaussian16(), VP(), 0.2
    x = _points(target, process, 5)
    s, div = divergence(lambda y: target.score(y, process, t), x)
    alpha, sigma = process.alpha(t), process.sigma(t)
    var = alpha**2 * target.eigvals[0] + sigma**2
    assert torch.allclose(s, target.score(x, process, t))
    assert torch.allclose(div, -(1 / var).sum().to(div).expand(5), rtol=1e-12)


def test_partial_range_and_float32():
    target, process = toy_data.load("aniso"), VP()
    x = _points(target, process, 16)
    res = log_likelihood(target.score_fn(process), process, x, t_min=0.3, t_max=0.8, rtol=1e-7, atol=1e-7)
    ode_only = res.delta_logp + _exact(target, process, res.z, 0.8)
    assert (ode_only - _exact(target, process, x, 0.3)).abs().max().item() < 1e-4
    x32 = x.float()
    res32 = log_likelihood(target.score_fn(process), process, x32)
    assert res32.log_p.dtype == torch.float32
    assert (res32.log_p.double() - _exact(target, process, x, process.t_min)).abs().max().item() < 5e-2


# -- Hutchinson -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_probe_is_unbiased(probe):
    target, process, t, m = toy_data.load("aniso"), VP(), 0.3, 4000
    x = _points(target, process, 3)
    fn = lambda y: target.score(y, process, t)  # noqa: E731
    _, exact = divergence(fn, x)
    g = torch.Generator(device=DEVICE).manual_seed(1)
    xr = x.repeat_interleave(m, 0)
    if probe == "rademacher":
        eps = torch.randint(0, 2, xr.shape, generator=g, device=DEVICE).to(xr) * 2 - 1
    else:
        eps = torch.randn(xr.shape, generator=g, **F64)
    _, est = divergence(fn, xr, eps)
    est = est.reshape(3, m)
    se = est.std(1) / math.sqrt(m)
    assert (se > 0).all()
    assert ((est.mean(1) - exact).abs() < 4 * se).all(), (est.mean(1), exact, se)


@functools.cache
def _aniso_exact():
    """4 aniso points under VP and their exact-divergence log-likelihood: the same for both probes (made once, only
    read)."""
    target, process = toy_data.load("aniso"), VP()
    x = _points(target, process, 4, seed=2)
    return target, process, x, log_likelihood(target.score_fn(process), process, x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_log_likelihood_agrees_with_exact(probe):
    target, process, x, exact = _aniso_exact()
    score = target.score_fn(process)

    def run(seed):
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        return log_likelihood(score, process, x, divergence="hutchinson", n_probes=48, probe=probe, generator=g,
                              rtol=1e-6, atol=1e-6)

    res = run(7)
    assert res.std_err.shape == (4,) and (res.std_err > 0).all()
    assert ((res.log_p - exact.log_p).abs() < 4 * res.std_err + 1e-3).all(), (res.log_p, exact.log_p, res.std_err)
    assert torch.allclose(res.z, exact.z, atol=1e-4)  # the same x trajectory, up to the solver's steps
    assert torch.equal(run(7).log_p, res.log_p)  # probes come from the generator only


@pytest.mark.parametrize("div", ["exact", "hutchinson"])
def test_gaussian_in_16_dimensions(div):
    target, process = _gaussian16(event_shape=(1, 4, 4)), VP()
    x = _points(target, process, 6, seed=4)
    assert x.shape == (6, 1, 4, 4)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    res = log_likelihood(target.score_fn(process), process, x, divergence=div, n_probes=32, generator=g,
                         rtol=1e-6, atol=1e-6)
    exact = _exact(target, process, x, process.t_min)
    # the mean is off the origin: at t_max the prior misses alpha(1) mu by ~0.01 nats; replacing it with the exact
    # density of p_{t_max} leaves only the ODE's error
    ode_only = res.delta_logp + _exact(target, process, res.z, process.t_max)
    slack = 0.0 if div == "exact" else 4 * res.std_err
    assert ((res.log_p - exact).abs() < slack + 3e-2).all()
    assert ((ode_only - exact).abs() < slack + 1e-3).all(), (ode_only - exact, slack)


# -- fixed steps and NFE ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, stages", [("euler", 1), ("midpoint", 2), ("heun3", 3), ("rk4", 4)])
def test_fixed_step_nfe_is_measured_and_deterministic(method, stages):
    target, process, steps = toy_data.load("ring8"), VP(), 25
    x = _points(target, process, 16)
    counted = CountEvals(target.score_fn(process))
    res = log_likelihood(counted, process, x, method=method, steps=steps)
    assert res.nfe == counted.nfe == stages * steps
    again = log_likelihood(counted, process, x, method=method, steps=steps)
    assert again.nfe == res.nfe and torch.equal(again.log_p, res.log_p)
    if method == "rk4":
        assert (res.log_p - _exact(target, process, x, process.t_min)).abs().max().item() < 5e-2


# -- bits per dimension -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("data_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_bits_per_dim_of_the_uniform_density_is_log2_levels(levels, data_range):
    d = 64
    log_p = torch.full((3,), -d * math.log(data_range[1] - data_range[0]), **F64)  # uniform on data_range^D
    bpd = bits_per_dim(log_p, d, n_levels=levels, data_range=data_range)
    assert torch.allclose(bpd, torch.full_like(bpd, math.log2(levels)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("levels", [17, 256])
def test_bits_per_dim_is_exact_for_a_density_constant_on_bins(levels):
    # p(y) = prod_d P(k_d) / delta on the bins: the dequantisation bound is tight, bits/dim = -sum log2 P(k) / D.
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(levels, generator=g, dtype=torch.float64) + 0.1
    probs = probs / probs.sum()
    d, delta = 12, 2.0 / levels
    k = torch.randint(0, levels, (5, d), generator=g)
    x = (2.0 * k / (levels - 1) - 1).to(**F64)
    y = dequantize(x, levels, generator=torch.Generator(device=DEVICE).manual_seed(1))
    k_of_y = torch.floor((y + 1) / delta).long().cpu()
    log_p = (probs.log()[k_of_y] - math.log(delta)).sum(1)
    expect = -(probs.log()[k] / math.log(2)).sum(1) / d
    assert torch.allclose(bits_per_dim(log_p, d, n_levels=levels).cpu(), expect, atol=1e-12)


@pytest.mark.parametrize("levels", [17, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantize_lands_in_the_bin_of_each_level(levels, dtype):
    k = torch.arange(levels).repeat(50)
    x = (k.to(torch.float64) / (levels - 1) * 2 - 1).to(device=DEVICE, dtype=dtype)
    y = dequantize(x, levels, generator=torch.Generator(device=DEVICE).manual_seed(0))
    assert y.dtype == dtype and y.shape == x.shape
    assert bool(((y >= -1) & (y < 1)).all())
    assert torch.equal(torch.floor((y.double() + 1) * levels / 2).long().cpu(), k)
    u = ((y.double() + 1) * levels / 2 - k.to(y.device)).cpu()  # position inside the bin: uniform on [0, 1)
    assert abs(u.mean().item() - 0.5) < 0.05 and u.min() < 0.05 and u.max() > 0.95
    img = (torch.arange(256, dtype=torch.float64) / 255).reshape(1, 1, 16, 16)  # data_range (0, 1)
    yi = dequantize(img, 256, data_range=(0.0, 1.0))
    assert torch.equal(torch.floor(yi * 256).long(), torch.arange(256).reshape(1, 1, 16, 16))


def test_eight_bit_offset_matches_score_sde():
    log_p = torch.tensor([-3000.0, 500.0], dtype=torch.float64)
    expect = -log_p / (3072 * math.log(2)) + 7.0  # score_sde: bpd + 7 for 8-bit data centred on [-1, 1]
    assert torch.allclose(bits_per_dim(log_p, 3072), expect, atol=1e-12)


# -- bad input --------------------------------------------------------------------------------------------------------


def _ll(**kw):
    target, process = toy_data.load("ring8"), VP()
    x = kw.pop("x", torch.zeros(2, 2, **F64))
    return log_likelihood(target.score_fn(process), process, x, **kw)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: _ll(divergence="exakt"), "divergence 'exakt'"),
        (lambda: _ll(probe="normal"), "probe 'normal'"),
        (lambda: _ll(method="rk5"), "method 'rk5'"),
        (lambda: _ll(n_probes=0), "n_probes.*0"),
        (lambda: _ll(n_probes=2.5), "n_probes.*2.5"),
        (lambda: _ll(method="rk4"), "'rk4' needs steps.*steps=None"),
        (lambda: _ll(method="rk4", steps=0), "steps=0"),
        (lambda: _ll(steps=10), "steps=10.*'dopri5'"),
        (lambda: _ll(rtol=-1e-5), "rtol.*-1e-05"),
        (lambda: _ll(t_min=0.5, t_max=0.2), "t_min=0.5, t_max=0.2"),
        (lambda: _ll(t_min=-0.1), r"t = -0.1"),
        (lambda: _ll(x=torch.tensor([[0.0, float("nan")]], **F64)), "x is not finite"),
        (lambda: _ll(x=torch.zeros(2, 2, dtype=torch.long)), "torch.int64"),
        (lambda: bits_per_dim(torch.zeros(2), 64, n_levels=1), "n_levels.*1"),
        (lambda: bits_per_dim(torch.zeros(2), 0), "dim.*0"),
        (lambda: bits_per_dim(torch.zeros(2), 2, data_range=(1.0, -1.0)), r"\(1.0, -1.0\)"),
        (lambda: dequantize(torch.tensor([-1.0, 0.3]), 3), "x = 0.3"),
        (lambda: dequantize(torch.tensor([1.5]), 3), "x = 1.5"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_rademacher_probes_of_a_sample_are_distinct():
    from scoresde.likelihood import _probes

    y0 = torch.zeros(400 * 16, 5, dtype=torch.float64)  # 400 samples x 16 probes in 5-D (32 sign patterns)
    p = _probes(y0, 16, "rademacher", torch.Generator().manual_seed(0)).reshape(400, 16, 5)
    same = (p[:, :, None] == p[:, None]).all(-1).sum((1, 2)) - 16  # off-diagonal coincidences per sample
    assert int(same.max()) == 0
    assert set(p.unique().tolist()) == {-1.0, 1.0}
    # more probes than patterns: distinct within each block of 2^D (here all 4 patterns, twice)
    q = _probes(torch.zeros(50 * 8, 2), 8, "rademacher", torch.Generator().manual_seed(1)).reshape(50, 8, 2)
    for block in (q[:, :4], q[:, 4:]):
        assert int((block[:, :, None] == block[:, None]).all(-1).sum((1, 2)).max()) == 4


def test_gaussian_probes_have_identity_second_moment():
    """E[eps epsᵀ] = I is what makes the Gaussian-probe estimate unbiased; the agreement test above is too noisy in
    2-D to see a few per cent of scale (the Rademacher probes, whose code is shared, are checked exactly below)."""
    from scoresde.likelihood import _probes

    n = 100_000
    p = _probes(torch.zeros(n, 3, dtype=torch.float64), 1, "gaussian", torch.Generator().manual_seed(0))
    second = p.T @ p / n
    se = math.sqrt(2 / n)  # of a diagonal entry; off-diagonal ones have sqrt(1 / n)
    assert (second - torch.eye(3, dtype=torch.float64)).abs().max() < 4 * se, second
    assert p.mean(0).abs().max() < 4 / math.sqrt(n)


def test_hutchinson_over_all_four_sign_patterns_is_exact_in_2d():
    """With 4 distinct Rademacher probes in 2-D (every pattern, +-v pairs) the estimate is the exact trace, so
    the log-likelihood equals the exact divergence's; duplicated probes (drawn with replacement) would not."""
    target, process = toy_data.load("aniso"), VP()
    x = target.sample(48, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    exact = log_likelihood(target.score_fn(process), process, x, rtol=1e-8, atol=1e-8)
    hutch = log_likelihood(target.score_fn(process), process, x, divergence="hutchinson", n_probes=4,
                           rtol=1e-8, atol=1e-8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(hutch.log_p, exact.log_p, atol=1e-6)


def test_likelihood_refuses_a_tolerance_below_the_dtype_precision():
    target, process = toy_data.load("ring8"), VP()
    x = target.sample(8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="rtol = 1e-10 is below torch.float32's precision"):
        log_likelihood(target.score_fn(process), process, x, rtol=1e-10)
