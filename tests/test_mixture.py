"""Gaussian-mixture ground truth: densities, scores and classes against independent computations,
and the score identities (Vincent, Stein) that everything else leans on."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import toy_data
from scoresde import VP, DiscreteVP
from scoresde.testing.strategies import mixtures, processes, seeds
from toy_data import GaussianMixture

from .conftest import DEVICE, times


def _noisy_samples(mixture, process, n, seed, t=None):
    g = torch.Generator().manual_seed(seed + 1)  # not the seed of the times: t must be independent of x0, eps
    t = times(process, n, seed) if t is None else t
    x0 = mixture.sample(n, generator=g, dtype=torch.float64).to(DEVICE)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(DEVICE)
    return process.perturb(x0, t, eps), t, x0, eps


@given(mixtures(), processes(reaches_prior=False), seeds)
def test_diffused_score_is_the_gradient_of_the_diffused_log_density(mixture, process, seed):
    x, t, _, _ = _noisy_samples(mixture, process, 16, seed)
    x = x.requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture.log_prob(x, process, t).sum(), x)
    score = mixture.score(x.detach(), process, t)
    scale = 1 + grad.abs()
    assert torch.allclose(score / scale, grad / scale, rtol=1e-8, atol=1e-8)


@given(mixtures(max_dim=6), processes(reaches_prior=False), seeds)
def test_diffused_density_matches_scipy(mixture, process, seed):
    """Independent check: scipy's multivariate normals with the noised parameters alpha mu, alpha² Sigma + sigma² I,
    at a time per sample and at one time for the batch (as samplers pass it: noised once); D up to 6 covers both
    ways the quadratic forms are summed (D <= 4 and above)."""
    x, t, _, _ = _noisy_samples(mixture, process, 6, seed)
    for tt in (t, t[:1].expand(len(t))):
        ours = mixture.log_prob(x, process, tt).cpu().numpy()
        a, s = process.alpha(tt).cpu().numpy(), process.sigma(tt).cpu().numpy()
        xs = x.cpu().numpy()
        for b in range(len(xs)):
            dens = [
                w * stats.multivariate_normal(a[b] * m, a[b] ** 2 * c + s[b] ** 2 * np.eye(mixture.dim)).pdf(xs[b])
                for w, m, c in zip(mixture.weights.numpy(), mixture.means.numpy(), mixture.covariances.numpy())
            ]
            total = sum(dens)
            if total > 1e-250:  # scipy's pdf underflows far out; ours is logsumexp-stable there
                assert math.isclose(ours[b], math.log(total), rel_tol=1e-8, abs_tol=1e-8)


@given(mixtures(labelled=True), processes(reaches_prior=False), seeds)
def test_class_posterior_is_bayes_rule(mixture, process, seed):
    x, t, _, _ = _noisy_samples(mixture, process, 16, seed)
    log_post = mixture.class_log_prob(x, process, t)
    assert torch.allclose(log_post.exp().sum(1), torch.ones(16, dtype=torch.float64, device=DEVICE))
    log_px = mixture.log_prob(x, process, t)
    for y in range(mixture.num_classes):
        cond = mixture.conditional(y)
        prior_y = mixture.weights[mixture.labels == y].sum().item()
        bayes = cond.log_prob(x, process, t) + math.log(prior_y) - log_px
        assert torch.allclose(log_post[:, y], bayes, rtol=1e-8, atol=1e-8)


@given(mixtures(), processes(reaches_prior=False), seeds)
def test_vincents_identity(mixture, process, seed):
    """DSM and explicit score matching differ by a constant, so two score models' loss differences agree."""
    n = 4000
    t = times(process, 1, seed).expand(n)
    x, t, _, eps = _noisy_samples(mixture, process, n, seed, t=t)
    sigma = process.sigma(t)[:, None]
    g = torch.Generator().manual_seed(seed + 7)
    d = mixture.dim
    a1, b1 = torch.randn(d, d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    a2 = torch.randn(d, d, generator=g, dtype=torch.float64)
    s1 = x @ a1.to(DEVICE) + b1.to(DEVICE)
    s2 = torch.tanh(x @ a2.to(DEVICE))
    exact = mixture.score(x, process, t)
    dsm = ((s1 + eps / sigma) ** 2).sum(1) - ((s2 + eps / sigma) ** 2).sum(1)
    esm = ((s1 - exact) ** 2).sum(1) - ((s2 - exact) ** 2).sum(1)
    diff = dsm - esm
    se = diff.std() / math.sqrt(n)
    assert diff.mean().abs() < 5 * se + 1e-12


@given(mixtures(), processes(reaches_prior=False), seeds, st.booleans())
def test_steins_identity(mixture, process, seed, clean):
    """E_p[s(x)·f(x) + div f(x)] = 0 for the exact score s of p (clean or diffused) and a bounded smooth f, here
    f(x) = tanh((W x + c) / r) with r the marginal's scale at the sample's time (a known constant per time, so the
    identity holds at each time): a wrong score is seen at every noise level, not only where tanh(W x + c) happens
    not to saturate."""
    n = 4000
    cov = mixture.covariances + mixture.means[:, :, None] * mixture.means[:, None, :]
    mean = mixture.weights @ mixture.means
    var = float(torch.einsum("k,kii->", mixture.weights, cov) - mean @ mean) / mixture.dim  # the data's mean variance
    if clean:
        g = torch.Generator().manual_seed(seed)
        x = mixture.sample(n, generator=g, dtype=torch.float64).to(DEVICE)
        score, r = mixture.score(x), torch.full((n, 1), math.sqrt(var), dtype=torch.float64, device=DEVICE)
    else:
        x, t, _, _ = _noisy_samples(mixture, process, n, seed)
        score = mixture.score(x, process, t)
        alpha, sigma = (v.to(DEVICE)[:, None] for v in (process.alpha(t), process.sigma(t)))
        r = torch.sqrt(alpha**2 * var + sigma**2)
    g = torch.Generator().manual_seed(seed + 3)
    d = mixture.dim
    w = torch.randn(d, d, generator=g, dtype=torch.float64).to(DEVICE)
    c = torch.randn(d, generator=g, dtype=torch.float64).to(DEVICE)
    h = torch.tanh((x @ w.T + c) / r)  # div f = sum_i (1 - h_i²) W_ii / r
    div = ((1 - h**2) * torch.diagonal(w)).sum(1) / r[:, 0]
    terms = (score * h).sum(1) + div
    se = terms.std() / math.sqrt(n)
    assert terms.mean().abs() < 5 * se + 1e-12


@pytest.mark.parametrize("name", list(toy_data.MIXTURES))
def test_named_targets_sample_their_moments(name):
    mixture = toy_data.load(name)
    x, labels = mixture.sample(40000, generator=torch.Generator().manual_seed(1), dtype=torch.float64, return_labels=True)
    assert x.shape == (40000, 2)
    assert torch.allclose(x.mean(0), mixture.mean(), atol=0.03)
    freq = torch.bincount(labels, minlength=mixture.num_components).double() / 40000
    assert torch.allclose(freq, mixture.weights, atol=0.01)
    for k in range(mixture.num_components):
        xk = x[labels == k]
        assert torch.allclose(torch.cov(xk.T), mixture.covariances[k], atol=0.02 + 0.05 * mixture.covariances[k].abs().max())


def test_image_shaped_mixture(device):
    """Mixtures in D = 64 with an image event shape: the sampler tests' image-shaped ground truth."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 64, generator=g, dtype=torch.float64)
    mixture = GaussianMixture.isotropic([0.2, 0.3, 0.5], means, 0.3, event_shape=(1, 8, 8))
    x = mixture.sample(10, generator=g, dtype=torch.float64).to(device)
    assert x.shape == (10, 1, 8, 8)
    t = torch.full((10,), 0.4, dtype=torch.float64, device=device)
    score = mixture.score(x, VP(), t)
    assert score.shape == x.shape
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture.log_prob(xr, VP(), t).sum(), xr)
    assert torch.allclose(score, grad, rtol=1e-8, atol=1e-8)


def test_scores_in_float32_on_the_device(device):
    mixture = toy_data.load("ring8")
    x = mixture.sample(100, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.full((100,), 0.01, device=device)
    s32 = mixture.score(x, DiscreteVP.linear(), t)
    s64 = mixture.score(x.double(), DiscreteVP.linear(), t.double())
    assert s32.dtype == torch.float32 and s32.device == x.device
    assert torch.allclose(s32.double(), s64, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", list(toy_data.SETS))
def test_sample_only_sets(name):
    target = toy_data.load(name)
    a = target.sample(5000, generator=torch.Generator().manual_seed(0))
    b = target.sample(5000, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5000, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert 0.2 < a.std(0).min() and a.abs().max() < 6  # about unit scale
