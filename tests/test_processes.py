"""Processes: closed forms against their defining identities, DDPM against Bayes' rule and the VP SDE."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from scoresde import VE, VP, DiscreteVP, SubVP
from scoresde.testing import sample_times
from scoresde.testing.strategies import processes, seeds
from scoresde.processes import EDM, PROCESSES, from_config

from .conftest import DEVICE, times


@given(processes(reaches_prior=False), seeds)
def test_log_snr_and_its_inverse(process, seed):
    t = times(process, 64, seed)
    lam = process.log_snr(t)
    assert torch.allclose(process.t_from_log_snr(lam), t, atol=1e-9, rtol=1e-7)
    assert torch.allclose(lam, torch.log(process.alpha(t) ** 2 / process.sigma(t) ** 2), atol=1e-8, rtol=1e-8)


@given(processes(reaches_prior=False), seeds)
def test_drift_and_diffusion_reproduce_the_marginal(process, seed):
    t = sample_times(process, 32, seed, interior=True, device=DEVICE).requires_grad_(True)
    alpha, sigma = process.alpha(t), process.sigma(t)
    (dalpha,) = torch.autograd.grad(alpha.sum(), t)
    (dvar,) = torch.autograd.grad((sigma**2).sum(), t)
    t = t.detach()
    f, g2 = process.f(t), process.g2(t)
    alpha, sigma = alpha.detach(), sigma.detach()
    scale = 1 + dvar.abs()
    assert torch.allclose(dalpha, f * alpha, atol=1e-9, rtol=1e-7)
    assert torch.allclose(dvar / scale, (2 * f * sigma**2 + g2) / scale, atol=1e-9, rtol=1e-7)
    x = torch.randn(32, 3, dtype=torch.float64, device=DEVICE)
    assert torch.allclose(process.drift(x, t), f[:, None] * x)
    assert torch.allclose(process.diffusion(t) ** 2, g2, rtol=1e-10)


@given(st.integers(25, 400), st.booleans())
def test_ddpm_one_step_transitions_compose_to_the_marginal(n, cosine):
    process = DiscreteVP.cosine(n) if cosine else DiscreteVP.linear(n)
    betas = process.betas
    mean_coef, var = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    steps = process.step_to_t(torch.arange(1, n + 1)).to(DEVICE)
    a_marg, s_marg = process.alpha(steps).cpu(), process.sigma(steps).cpu()
    for i in range(n):  # x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z, composed from x_0
        mean_coef = mean_coef * math.sqrt(1 - betas[i])
        var = (1 - betas[i]) * var + betas[i]
        assert math.isclose(mean_coef, a_marg[i], rel_tol=1e-10)
        assert math.isclose(var, s_marg[i] ** 2, rel_tol=1e-9, abs_tol=1e-15)
    # and the process's own one-step transition is DDPM's q(x_i | x_{i-1})
    prev = torch.cat([torch.zeros(1, dtype=torch.float64, device=DEVICE), steps[:-1]])[1:]
    alpha_ts, sigma_ts = process.transition(prev, steps[1:])
    assert torch.allclose(alpha_ts.cpu(), (1 - betas[1:]).sqrt(), rtol=1e-10)
    assert torch.allclose(sigma_ts.cpu(), betas[1:].sqrt(), rtol=1e-6)


def _bayes_posterior(a_s, var_s, a_ts, var_ts, x0, xt):
    """q(x_s | x_t, x0) ∝ N(x_s; a_s x0, var_s) N(x_t; a_ts x_s, var_ts), by completing the square."""
    prec = 1 / var_s + a_ts**2 / var_ts
    mean = (a_s * x0 / var_s + a_ts * xt / var_ts) / prec
    return mean, 1 / prec


@given(st.integers(25, 1000), st.booleans(), seeds)
def test_ddpm_posterior_is_bayes_rule(n, cosine, seed):
    process = DiscreteVP.cosine(n) if cosine else DiscreteVP.linear(n)
    g = torch.Generator().manual_seed(seed)
    i = int(torch.randint(2, n + 1, (1,), generator=g)) if n > 1 else 2
    beta = process.betas[i - 1].item()
    ab_prev = process.alphas_cumprod[i - 2].item()
    x0, xt = torch.randn(2, 5, generator=g, dtype=torch.float64)
    mean, var = _bayes_posterior(math.sqrt(ab_prev), 1 - ab_prev, math.sqrt(1 - beta), beta, x0, xt)
    c_x0, c_xt, std = process.posterior_coefficients(process.step_to_t(i - 1), process.step_to_t(i))
    assert torch.allclose(c_x0 * x0 + c_xt * xt, mean, rtol=1e-9, atol=1e-12)
    assert math.isclose(std.item() ** 2, var, rel_tol=1e-8)
    # DDPM's closed form (Ho et al. 2020, eq. 7)
    ab = process.alphas_cumprod[i - 1].item()
    assert math.isclose(c_x0.item(), math.sqrt(ab_prev) * beta / (1 - ab), rel_tol=1e-9)
    assert math.isclose(c_xt.item(), math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab), rel_tol=1e-9)


@given(processes(reaches_prior=False), seeds)
def test_posterior_between_any_two_times_is_bayes_rule(process, seed):
    t = times(process, 2, seed).sort().values
    s, t = t[0], t[1]
    if not s < t:
        return
    a_s, sig_s = process.alpha(s), process.sigma(s)
    a_ts, sig_ts = process.transition(s, t)
    x0, xt = torch.randn(2, 4, dtype=torch.float64, device=DEVICE)
    mean, var = _bayes_posterior(a_s, sig_s**2, a_ts, sig_ts**2, x0, xt)
    c_x0, c_xt, std = process.posterior_coefficients(s, t)
    assert torch.allclose(c_x0 * x0 + c_xt * xt, mean, rtol=1e-7, atol=1e-9)
    assert torch.allclose(std**2, var, rtol=1e-6, atol=1e-14)


def test_ddpm_linear_is_the_discretised_vp_sde():
    """DiscreteVP.linear(N) matches VP(0.1, 20) at t_i = i/N, with an error that shrinks like 1/N."""
    vp = VP(0.1, 20.0)
    errors = []
    for n in (250, 1000, 4000):
        d = DiscreteVP.linear(n)
        t = d.step_to_t(torch.arange(1, n + 1))
        t = t[t >= vp.t_min].to(DEVICE)
        err = max((d.alpha(t) - vp.alpha(t)).abs().max().item(), (d.sigma(t) - vp.sigma(t)).abs().max().item())
        errors.append(err)
    assert errors[1] < 3e-3  # N = 1000, the DDPM default
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3  # first order in 1/N


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(7,), (7, 2), (7, 1, 8, 8)])
@pytest.mark.parametrize("process", [VE(), VP(), SubVP(), DiscreteVP.linear(), DiscreteVP.cosine(), EDM()], ids=repr)
def test_shapes_dtypes_and_devices(process, shape, dtype):
    x0 = torch.randn(shape, dtype=dtype, device=DEVICE)
    eps = torch.randn_like(x0)
    t = torch.linspace(process.t_min, process.t_max, shape[0], dtype=dtype, device=DEVICE)
    for tt in (t, t[3]):
        xt = process.perturb(x0, tt, eps)
        assert xt.shape == x0.shape and xt.dtype == dtype and xt.device == x0.device
        a = process.alpha(tt).reshape(-1, *[1] * (len(shape) - 1))
        s = process.sigma(tt).reshape(-1, *[1] * (len(shape) - 1))
        assert torch.allclose(xt, a * x0 + s * eps)
        assert process.drift(x0, tt).shape == x0.shape
    for name in ("alpha", "sigma", "log_snr", "f", "g2", "diffusion"):
        out = getattr(process, name)(t)
        assert out.shape == t.shape and out.dtype == dtype and out.device == x0.device, name
        assert torch.isfinite(out).all(), name


@pytest.mark.parametrize("process", [VE(0.01, 10.0), VP(), SubVP(), DiscreteVP.linear(), EDM(0.002, 10.0)], ids=repr)
def test_prior_sampling_and_log_density(process):
    g1 = torch.Generator(device=DEVICE).manual_seed(3)
    g2 = torch.Generator(device=DEVICE).manual_seed(3)
    z = process.prior((20000, 2), generator=g1, dtype=torch.float64)
    assert torch.equal(z, process.prior((20000, 2), generator=g2, dtype=torch.float64))
    assert z.device.type == DEVICE.type
    assert abs(z.std().item() / process.prior_std - 1) < 0.02
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), process.prior_std)
    assert torch.allclose(process.prior_logp(z), normal.log_prob(z).sum(1), rtol=1e-10)
    # at t_max the marginal of any bounded data is (close to) the prior
    s = process.sigma(torch.tensor(process.t_max, dtype=torch.float64))
    assert abs(s.item() / process.prior_std - 1) < 1e-3


@pytest.mark.parametrize("name", PROCESSES)
def test_every_named_process_round_trips_through_its_config(name):
    process = from_config(name)
    again = from_config(process.config())
    assert again.config() == process.config() and type(again) is type(process)
    t = torch.linspace(process.t_min, process.t_max, 17, dtype=torch.float64)
    assert torch.equal(again.alpha(t), process.alpha(t)) and torch.equal(again.sigma(t), process.sigma(t))


def test_edm_is_sigma_equals_t():
    """EDM (Karras et al. 2022): alpha = 1, sigma(t) = t on [sigma_min, sigma_max]; VE's marginals on another clock."""
    process, ve = EDM(0.002, 80.0), VE(0.002, 80.0)
    t = torch.linspace(0.002, 80.0, 101, dtype=torch.float64)
    assert torch.equal(process.sigma(t), t) and torch.equal(process.alpha(t), torch.ones_like(t))
    assert (process.t_min, process.t_max, process.prior_std) == (0.002, 80.0, 80.0)
    u = ve.t_from_log_snr(process.log_snr(t))  # the VE time of the same noise level
    assert torch.allclose(ve.sigma(u), t, rtol=1e-12)
    with pytest.raises(ValueError, match="sigma_min"):
        EDM(1.0, 0.5)
    with pytest.raises(ValueError, match="outside"):
        process.sigma(torch.tensor([0.001], dtype=torch.float64))
