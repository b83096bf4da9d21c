"""Score adapters: round trips are the identity, and Tweedie gives the exact posterior mean."""

import pytest
import torch
from hypothesis import given

from scoresde import VP, CountEvals, convert, predict, score_from, tweedie
from scoresde.testing.strategies import mixtures, processes, seeds

from .conftest import DEVICE, times


def _setup(process, seed, shape=(16, 3)):
    g = torch.Generator().manual_seed(seed)
    t = times(process, shape[0], seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE)
    value = torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE)
    return x, value, process.alpha(t), process.sigma(t), t


@given(processes(reaches_prior=False), seeds)
def test_adapter_round_trips_are_the_identity(process, seed):
    x, value, alpha, sigma, _ = _setup(process, seed)
    tol = dict(rtol=1e-10, atol=1e-10)
    for a, b in [("score", "eps"), ("x0", "score"), ("v", "eps"), ("x0", "v"), ("eps", "x0"), ("score", "v")]:
        back = convert(convert(value, x, alpha, sigma, src=a, dst=b), x, alpha, sigma, src=b, dst=a)
        scale = 1 + value.abs()
        assert torch.allclose(back / scale, value / scale, **tol), (a, b)


@given(processes(reaches_prior=False), seeds)
def test_conversions_agree_with_their_definitions(process, seed):
    x, eps, alpha, sigma, _ = _setup(process, seed)
    a, s = alpha[:, None], sigma[:, None]
    x0 = (x - s * eps) / a
    assert torch.allclose(convert(eps, x, alpha, sigma, src="eps", dst="score"), -eps / s, rtol=1e-12)
    assert torch.allclose(convert(eps, x, alpha, sigma, src="eps", dst="x0"), x0, rtol=1e-10, atol=1e-10)
    v = a * eps - s * x0
    assert torch.allclose(convert(eps, x, alpha, sigma, src="eps", dst="v"), v, rtol=1e-10, atol=1e-10)
    score = -eps / s
    assert torch.allclose(tweedie(x, score, alpha, sigma), (x + s**2 * score) / a, rtol=1e-10, atol=1e-10)


@given(processes(reaches_prior=False), seeds)
def test_network_adapters_round_trip(process, seed):
    """A net predicting kind K, wrapped as a ScoreFn and unwrapped back to K, is the net itself."""
    x, _, _, _, t = _setup(process, seed, shape=(8, 1, 2, 2))
    w = torch.randn(4, 4, dtype=torch.float64, device=DEVICE)

    def net(x, sigma):
        assert sigma.shape == (x.shape[0],)
        return torch.tanh(x.flatten(1) @ w * sigma[:, None]).reshape(x.shape)

    for kind in ("eps", "x0", "v", "score"):
        back = predict(score_from(net, process, kind), process, kind)(x, t)
        expected = net(x, process.sigma(t))
        assert torch.allclose(back, expected, rtol=1e-10, atol=1e-10), kind
    score = score_from(net, process)  # eps by default
    assert torch.allclose(predict(score, process, "eps")(x, t), net(x, process.sigma(t)), rtol=1e-10, atol=1e-12)
    x0 = predict(score, process, "x0")(x, t)
    v = predict(score, process, "v")(x, t)
    assert torch.allclose(convert(v, x, process.alpha(t), process.sigma(t), src="v", dst="x0"), x0, atol=1e-10)


@given(mixtures(), processes(reaches_prior=False), seeds)
def test_tweedie_gives_the_exact_posterior_mean(mixture, process, seed):
    g = torch.Generator().manual_seed(seed + 1)
    t = times(process, 32, seed)
    x0 = mixture.sample(32, generator=g, dtype=torch.float64).to(DEVICE)
    xt = process.perturb(x0, t, torch.randn_like(x0))
    denoised = predict(mixture.score_fn(process), process, "x0")(xt, t)
    exact = mixture.posterior_mean(xt, process, t)
    scale = 1 + exact.abs()
    assert torch.allclose(denoised / scale, exact / scale, rtol=1e-7, atol=1e-7)


def test_count_evals_counts_calls():
    calls = []
    counted = CountEvals(lambda x, t: calls.append(1) or x)
    x = torch.zeros(3, 2, device=DEVICE)
    for _ in range(5):
        counted(x, torch.zeros(3, device=DEVICE))
    assert counted.nfe == 5 == len(calls)
    counted.reset()
    assert counted.nfe == 0


def test_unknown_prediction_kind_is_named():
    with pytest.raises(ValueError, match="'epsilon'"):
        score_from(lambda x, s: x, VP(), "epsilon")
    with pytest.raises(ValueError, match="'epsilon'"):
        predict(lambda x, t: x, VP(), "epsilon")
    with pytest.raises(ValueError, match="'epsilon'"):
        convert(torch.zeros(2, 1), torch.zeros(2, 1), torch.ones(2), torch.ones(2), src="eps", dst="epsilon")
