"""Guidance as score composition, against exact answers: on a labelled Gaussian mixture, the score plus the
exact classifier's gradient is the conditional score, and so is classifier-free guidance at w = 1; sampling
with guided exact scores lands in the wanted class and matches the exact conditional."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import toy_data
from scoresde import VP, predict
from scoresde.guidance import classifier, classifier_free, interval, weighted_sum
from scoresde.metrics import sliced_wasserstein
from scoresde.samplers.registry import get_sampler
from scoresde.testing.strategies import mixtures, processes, seeds

from .conftest import DEVICE, times

EXAMPLES = settings(max_examples=25)


def _noisy(mixture, process, seed, n=16):
    """n samples of the mixture noised at n random times (float64, on the test device)."""
    g = torch.Generator().manual_seed(seed + 1)
    t = times(process, n, seed)
    x0 = mixture.sample(n, generator=g, dtype=torch.float64).to(DEVICE)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(DEVICE)
    return process.perturb(x0, t, eps), t


def _exact(mixture, process, y):
    """(uncond, cond, log p_t(y | x)) for the mixture's class y."""
    return (
        mixture.score_fn(process),
        mixture.conditional(y).score_fn(process),
        lambda x, t: mixture.class_log_prob(x, process, t)[:, y],
    )


def _close(a, b, *refs):
    scale = 1 + b.abs() + sum(r.abs() for r in refs)
    return torch.allclose(a / scale, b / scale, rtol=1e-9, atol=1e-9)


# -- identities on random labelled mixtures --------------------------------------------------------------------------


@EXAMPLES
@given(mixtures(labelled=True), processes(reaches_prior=False), seeds, st.integers(0, 1))
def test_exact_classifier_guidance_at_scale_one_is_the_conditional_score(mixture, process, seed, y):
    y = min(y, mixture.num_classes - 1)
    uncond, cond, log_prob = _exact(mixture, process, y)
    x, t = _noisy(mixture, process, seed)
    u, c = uncond(x, t), cond(x, t)
    assert _close(classifier(uncond, log_prob, 1.0)(x, t), c, u)
    assert _close(classifier(uncond, log_prob, 0.0)(x, t), u)
    # with the exact classifier, classifier guidance is classifier-free guidance at every (per-sample) weight
    w = 4 * torch.rand(x.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(DEVICE)
    assert _close(classifier(uncond, log_prob, w)(x, t), classifier_free(cond, uncond, w)(x, t), u, w[:, None] * c)


@EXAMPLES
@given(mixtures(labelled=True), processes(reaches_prior=False), seeds, st.integers(0, 1), st.floats(-3.0, 5.0))
def test_classifier_free_endpoints_and_linearity(mixture, process, seed, y, w):
    y = min(y, mixture.num_classes - 1)
    uncond, cond, _ = _exact(mixture, process, y)
    x, t = _noisy(mixture, process, seed)
    u, c = uncond(x, t), cond(x, t)
    assert _close(classifier_free(cond, uncond, 1.0)(x, t), c, u)
    assert _close(classifier_free(cond, uncond, 0)(x, t), u, c)
    assert _close(classifier_free(cond, uncond, w)(x, t), (1 - w) * u + w * c, u, c)
    # per-sample weights: row i is guided with w[i]
    ws = torch.linspace(-1, 3, x.shape[0], dtype=torch.float64, device=DEVICE)
    assert _close(classifier_free(cond, uncond, ws)(x, t), u + ws[:, None] * (c - u), u, c)


@EXAMPLES
@given(mixtures(labelled=True), processes(reaches_prior=False), seeds, st.floats(-2.0, 4.0), st.floats(-2.0, 4.0))
def test_weighted_sum_composes_conditions_and_negative_prompts(mixture, process, seed, w1, w2):
    uncond = mixture.score_fn(process)
    c1 = mixture.conditional(0).score_fn(process)
    c2 = mixture.conditional(mixture.num_classes - 1).score_fn(process)
    x, t = _noisy(mixture, process, seed)
    u, s1, s2 = uncond(x, t), c1(x, t), c2(x, t)
    assert _close(weighted_sum(c1, weights=[1.0])(x, t), s1)
    two = weighted_sum(uncond, c1, c2, weights=[1 - w1 - w2, w1, w2])(x, t)
    assert _close(two, u + w1 * (s1 - u) + w2 * (s2 - u), u, s1, s2)
    negative = weighted_sum(c1, c2, weights=[1 + w1, -w1])(x, t)  # guide towards c1 and away from c2
    assert _close(negative, classifier_free(c1, c2, 1 + w1)(x, t), s1, s2)
    # guidance nests: a guided score is a ScoreFn like any other
    nested = classifier_free(classifier_free(c1, uncond, w1), uncond, w2)(x, t)
    assert _close(nested, u + w2 * w1 * (s1 - u), u, s1)


@EXAMPLES
@given(mixtures(labelled=True), processes(reaches_prior=False), seeds, st.floats(-1.0, 3.0))
def test_guidance_in_score_space_is_guidance_of_eps_x0_and_v(mixture, process, seed, w):
    uncond, cond, _ = _exact(mixture, process, 0)
    x, t = _noisy(mixture, process, seed)
    for kind in ("eps", "x0", "v"):
        pu, pc = (predict(s, process, kind)(x, t) for s in (uncond, cond))
        guided = predict(classifier_free(cond, uncond, w), process, kind)(x, t)
        assert _close(guided, pu + w * (pc - pu), pu, pc, x), kind


@EXAMPLES
@given(mixtures(labelled=True), processes(reaches_prior=False), seeds)
def test_interval_switches_per_sample(mixture, process, seed):
    uncond, cond, _ = _exact(mixture, process, 0)
    x, t = _noisy(mixture, process, seed)
    lo, hi = torch.quantile(t, 0.25).item(), torch.quantile(t, 0.75).item()
    t = t.clone()
    t[:2] = torch.tensor([lo, hi], dtype=t.dtype)  # the bounds belong to the interval
    out = interval(cond, uncond, lo, hi)(x, t)
    inside = (t >= lo) & (t <= hi)
    assert inside.any() and (~inside).any()
    assert torch.equal(out[inside], cond(x, t)[inside])
    assert torch.equal(out[~inside], uncond(x, t)[~inside])
    assert torch.equal(interval(cond, uncond, -math.inf, lo)(x, t)[t <= lo], cond(x, t)[t <= lo])


# -- autograd modes, batches, dtypes ---------------------------------------------------------------------------------


def test_classifier_guidance_works_under_no_grad_and_inference_mode():
    process, mixture = VP(), toy_data.load("ring8")  # a fresh mixture: its caches are first built inside the mode
    x = process.prior((64, 2), generator=torch.Generator().manual_seed(0)).to(DEVICE)  # float32
    t = torch.full((64,), 0.4, device=DEVICE)
    uncond, cond, log_prob = _exact(mixture, process, 5)
    guided = classifier(uncond, log_prob, 1.0)
    with torch.inference_mode():
        a = guided(x, t)
    with torch.no_grad():
        b = guided(x, t)
    c = guided(x, t)
    for out in (a, b, c):
        assert out.dtype == torch.float32 and out.device.type == DEVICE.type and not out.requires_grad
        assert torch.allclose(out, cond(x, t), rtol=1e-4, atol=1e-4)
    # each sample's guidance is its own: no dependence on the rest of the batch
    assert torch.allclose(guided(x[:5], t[:5]), c[:5], rtol=1e-6, atol=1e-6)


def test_classifier_guidance_is_differentiable_when_x_is_tracked():
    """Likelihoods differentiate the score: the guided score's divergence is the conditional score's."""
    process, mixture = VP(), toy_data.load("aniso")
    x = process.prior((8, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEVICE)
    t = torch.full((8,), 0.3, dtype=torch.float64, device=DEVICE)
    uncond, cond, log_prob = _exact(mixture, process, 1)

    def divergence(score):
        xg = x.clone().requires_grad_(True)
        s = score(xg, t)
        return sum(torch.autograd.grad(s[:, i].sum(), xg, retain_graph=True)[0][:, i] for i in range(2))

    assert torch.allclose(divergence(classifier(uncond, log_prob, 1.0)), divergence(cond), rtol=1e-8, atol=1e-8)


# -- sampling with guided exact scores on ring8 --------------------------------------------------------------------

N = 4000
Y = 3


def _share(mixture, x):
    """Fraction of samples whose nearest component mean is class Y's."""
    d = ((x.double()[:, None, :] - mixture.means.to(x.device)[None]) ** 2).sum(-1)
    return (d.argmin(1) == Y).double().mean().item()


def _guided_samples(mixture, kind, w, process=VP(), nfe=20):
    uncond, cond, log_prob = _exact(mixture, process, Y)
    score = classifier_free(cond, uncond, w) if kind == "cfg" else classifier(uncond, log_prob, w)
    spec = get_sampler("dpm_solver_pp")
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = process.prior((N, 2), generator=g)
    with torch.no_grad():
        return spec(score, process, x, spec.grid_for(process, nfe, score=score), nfe=nfe, generator=g)


@pytest.mark.parametrize("kind", ["cfg", "classifier"])
def test_guided_sampling_at_w_one_samples_the_exact_conditional(kind):
    """DPM-Solver++ at 20 NFE (its default grid, scaled to the guided score): share 1.0000 and SW2 0.0037 against a
    noise floor of 0.0055 (N = 4000; 0.0038 on uniform log-SNR, where four seeds gave 0.7-1.3 floors)."""
    mixture = toy_data.load("ring8")
    out = _guided_samples(mixture, kind, 1.0)
    assert out.shape == (N, 2) and out.dtype == torch.float32 and out.device.type == DEVICE.type
    assert _share(mixture, out) > 0.99
    cond = mixture.conditional(Y)
    ref = cond.sample(N, generator=torch.Generator().manual_seed(101)).to(DEVICE)
    floor = sliced_wasserstein(ref, cond.sample(N, generator=torch.Generator().manual_seed(102)).to(DEVICE)).item()
    assert sliced_wasserstein(out, ref).item() < 2 * floor


@pytest.mark.parametrize("std", [0.1, 0.5], ids=["separated", "overlapping"])
def test_share_in_the_wanted_class_grows_with_the_guidance_weight(std):
    """Measured shares at w = 0, 0.5, 1, 2, 4 (both kinds, identical samples):
    std 0.1: 0.132, 0.556, 1.000, 1.000, 1.000;  std 0.5: 0.132, 0.431, 0.876, 1.000, 1.000
    (the exact conditional's share at std 0.5 is 0.877: at w = 1 guidance samples p(x | y), above 1 it sharpens)."""
    mixture = toy_data.load("ring8", std=std)
    ws = [0.0, 0.5, 1.0, 2.0, 4.0]
    runs = {kind: [_guided_samples(mixture, kind, w) for w in ws] for kind in ("cfg", "classifier")}
    for a, b in zip(runs["cfg"], runs["classifier"]):
        assert torch.allclose(a, b, atol=1e-3)
    shares = [_share(mixture, x) for x in runs["cfg"]]
    se = math.sqrt(0.125 * 0.875 / N)
    assert abs(shares[0] - 1 / 8) < 4 * se  # w = 0: the unconditional model
    exact = _share(mixture, mixture.conditional(Y).sample(N, generator=torch.Generator().manual_seed(3)))
    assert abs(shares[2] - exact) < 0.03  # w = 1: the conditional
    assert all(b > a for a, b in zip(shares, shares[1:]) if a < 0.999), shares
    assert all(b >= a - 0.001 for a, b in zip(shares, shares[1:])), shares
    assert shares[-1] > 0.99


# -- bad input -------------------------------------------------------------------------------------------------------


def test_bad_input_raises_value_error():
    process, mixture = VP(), toy_data.load("ring8")
    uncond, cond, log_prob = _exact(mixture, process, 0)
    for bad in (math.nan, math.inf, -math.inf, "2", None, True, torch.tensor([1.0, math.nan]), torch.ones(2, 2)):
        with pytest.raises(ValueError, match="scale"):
            classifier(uncond, log_prob, bad)
        with pytest.raises(ValueError, match="w"):
            classifier_free(cond, uncond, bad)
        with pytest.raises(ValueError, match=r"weights\[1\]"):
            weighted_sum(cond, uncond, weights=[1.0, bad])
    with pytest.raises(ValueError, match="nan"):
        classifier_free(cond, uncond, math.nan)
    with pytest.raises(ValueError, match="ScoreFn"):
        classifier_free(cond, "uncond", 1.0)
    with pytest.raises(ValueError, match="2 entries"):
        weighted_sum(cond, uncond, cond, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        weighted_sum(weights=[])
    for lo, hi in ((0.5, 0.5), (0.7, 0.2), (math.nan, 0.5), (0.1, "1")):
        with pytest.raises(ValueError, match="t_"):
            interval(cond, uncond, lo, hi)
    x, t = torch.zeros(3, 2, device=DEVICE), torch.full((3,), 0.5, device=DEVICE)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        classifier(uncond, lambda x, t: mixture.class_log_prob(x, process, t), 1.0)(x, t)  # all classes
    with pytest.raises(ValueError, match="batch has 3"):
        classifier_free(cond, uncond, torch.ones(4))(x, t)
