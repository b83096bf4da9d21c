"""Denoising score matching against closed forms: a Gaussian target's optimal eps loss, weightings, t sampling."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import toy_data
from scoresde import VE, VP, DiscreteVP, SubVP
from scoresde.losses import (ImportanceSampler, classifier_loss, dsm_loss, guided_dsm_classifier_loss,
                             reference_posterior, reference_x0, sample_t)
from scoresde.score import convert

from .conftest import DEVICE
from .strategies import mixtures, processes, seeds


def _exact_net(mixture, process, kind):
    """A 'network' net(x, sigma) returning the exact prediction of the given kind (t recovered from sigma)."""

    def net(x, sigma):
        t = net.t  # set by the test: the times the loss was asked to use
        s = mixture.score(x, process, t)
        return convert(s, x, process._alpha(t), process._sigma(t), src="score", dst=kind)

    return net


@pytest.mark.parametrize("process", [VP(), VE(0.01, 10.0), SubVP()], ids=repr)
def test_eps_loss_of_the_exact_score_is_the_posterior_variance(process):
    """For x0 ~ N(0, s² I): the optimal eps loss at t is Var(eps | x_t) = alpha² s²/(alpha² s² + sigma²) per dim."""
    s2 = 0.7**2
    target = toy_data.GaussianMixture([1.0], torch.zeros(1, 3), s2 * torch.eye(3)[None])
    g = torch.Generator(DEVICE).manual_seed(0)
    n = 40000
    for t0 in (0.1, 0.5, 0.9):
        t = torch.full((n,), t0, dtype=torch.float64, device=DEVICE)
        x0 = target.sample(n, generator=g, dtype=torch.float64)
        net = _exact_net(target, process, "eps")
        net.t = t
        loss = dsm_loss(net, process, x0, t=t, generator=g)
        a, s = float(process.alpha(t0)), float(process.sigma(t0))
        expected = a**2 * s2 / (a**2 * s2 + s**2)
        se = float(loss.std()) / math.sqrt(n)
        assert abs(float(loss.mean()) - expected) < 4 * se + 1e-12, (t0, float(loss.mean()), expected)


@pytest.mark.parametrize("kind", ["score", "x0", "v"])
def test_every_output_kind_gives_the_same_loss(kind):
    process = VP()
    target = toy_data.ring8()
    g = torch.Generator(DEVICE).manual_seed(1)
    x0 = target.sample(256, generator=g, dtype=torch.float64)
    t = sample_t(process, 256, generator=g, device=DEVICE, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, device=DEVICE, dtype=torch.float64)
    ref_net, net = _exact_net(target, process, "eps"), _exact_net(target, process, kind)
    ref_net.t = net.t = t
    ref = dsm_loss(ref_net, process, x0, t=t, eps=eps)
    got = dsm_loss(net, process, x0, t=t, eps=eps, output=kind)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_weightings_are_sigma2_g2_min_snr_and_one():
    """lambda ||s + eps/sigma||²: sigma² gives the eps loss, g² the likelihood weighting, 1 the raw DSM loss,
    and Min-SNR-5 is sigma² min(SNR, 5) / SNR: the eps loss where SNR <= 5, the x0 loss times 5 above."""
    process = VP()
    g = torch.Generator(DEVICE).manual_seed(2)
    x0 = torch.randn(64, 2, generator=g, device=DEVICE, dtype=torch.float64)
    t = sample_t(process, 64, generator=g, device=DEVICE, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, device=DEVICE, dtype=torch.float64)
    zero = lambda x, sigma: torch.zeros_like(x)  # noqa: E731  score 0: ||eps/sigma||²
    snr = (process.alpha(t) / process.sigma(t)) ** 2
    assert bool((snr > 5).any()) and bool((snr < 5).any())  # both branches of min(SNR, 5) are exercised
    min_snr = process.sigma(t) ** 2 * torch.where(snr > 5, 5 / snr, torch.ones_like(snr))
    for w, lam in (("sigma2", process.sigma(t) ** 2), ("likelihood", process.g2(t)), ("none", torch.ones_like(t)),
                   ("min_snr", min_snr)):
        got = dsm_loss(zero, process, x0, t=t, eps=eps, output="score", weighting=w)
        expected = lam * (eps / process.sigma(t)[:, None]).square().mean(1)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)
    assert bool((snr > 0.5).any()) and bool((snr < 0.5).any())  # snr_gamma is used, not a fixed 5
    got = dsm_loss(zero, process, x0, t=t, eps=eps, output="score", weighting="min_snr", snr_gamma=0.5)
    expected = torch.clamp(0.5 / snr, max=1) * eps.square().mean(1)  # sigma² ||eps / sigma||² = ||eps||²
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)
    summed = dsm_loss(zero, process, x0, t=t, eps=eps, output="score", reduce="sum")
    torch.testing.assert_close(summed, eps.square().sum(1))


def test_sample_t_ranges_and_discrete_steps():
    g = torch.Generator(DEVICE).manual_seed(3)
    p = VP()
    t = sample_t(p, 10000, generator=g, device=DEVICE, dtype=torch.float64)
    assert float(t.min()) >= p.t_min and float(t.max()) <= p.t_max
    assert abs(float(t.mean()) - 0.5 * (p.t_min + p.t_max)) < 0.01
    d = DiscreteVP.linear(100)
    t = sample_t(d, 10000, generator=g, device=DEVICE, dtype=torch.float64)
    steps = t * 100
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-9)
    assert int(steps.min()) == 1 and int(steps.max()) == 100


def test_importance_sampling_is_unbiased_for_the_likelihood_weighting():
    """E_q[Z/T ||eps_hat - eps||²] = E_uniform[(g²/sigma²) ||eps_hat - eps||²] for a fixed predictor."""
    process = VP()
    imp = ImportanceSampler(process)
    g = torch.Generator(DEVICE).manual_seed(4)
    n = 200000
    half = lambda x, sigma: 0.5 * x  # noqa: E731  some fixed eps-predictor
    x0 = torch.randn(n, 2, generator=g, device=DEVICE, dtype=torch.float64) * 0.5
    a = dsm_loss(half, process, x0, weighting="likelihood", generator=g)
    b = dsm_loss(half, process, x0, weighting="likelihood", generator=g, importance=imp)
    se = math.sqrt(float(a.var()) / n + float(b.var()) / n)
    assert abs(float(a.mean()) - float(b.mean())) < 4 * se, (float(a.mean()), float(b.mean()), se)
    assert float(b.var()) < float(a.var()) / 10  # the point of importance sampling
    ts, _ = imp(n, generator=g, device=DEVICE, dtype=torch.float64)
    assert float(ts.min()) >= process.t_min - 1e-12 and float(ts.max()) <= process.t_max + 1e-12


def test_bad_input():
    p = VP()
    x0 = torch.zeros(4, 2, device=DEVICE)
    net = lambda x, sigma: x  # noqa: E731
    with pytest.raises(ValueError, match="'lambda2'"):
        dsm_loss(net, p, x0, weighting="lambda2")
    with pytest.raises(ValueError, match="-1"):
        dsm_loss(net, p, x0, weighting="min_snr", snr_gamma=-1.0)
    with pytest.raises(ValueError, match="'median'"):
        dsm_loss(net, p, x0, reduce="median")
    with pytest.raises(ValueError, match="shape"):
        dsm_loss(net, p, x0, t=torch.full((3,), 0.5, device=DEVICE))
    with pytest.raises(ValueError, match="t = 2.0"):
        dsm_loss(net, p, x0.cpu(), t=torch.full((4,), 2.0))
    with pytest.raises(ValueError, match="likelihood"):
        dsm_loss(net, p, x0, importance=ImportanceSampler(p))
    with pytest.raises(ValueError, match="DiscreteVP"):
        ImportanceSampler(DiscreteVP.linear(100))


@pytest.mark.parametrize("process", [VP(), SubVP(), VE(0.01, 10.0), DiscreteVP.linear(100)], ids=repr)
def test_the_fused_alpha_sigma_of_the_loss_matches_the_process(process):
    t = torch.linspace(process.t_min, process.t_max, 101, dtype=torch.float64, device=DEVICE)
    alpha, sigma = process._alpha_sigma(t)
    torch.testing.assert_close(alpha, process.alpha(t), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(sigma, process.sigma(t), rtol=1e-14, atol=1e-15)


@settings(max_examples=20)
@given(mixtures(labelled=True), processes(), seeds, st.floats(0.0, 3.0))
def test_guided_dsm_classifier_loss_of_the_exact_classifier_is_ce_plus_the_conditional_dsm(mixture, process, seed,
                                                                                           weight):
    """With the exact unconditional score as base and the exact log p_t(y | x) as the classifier, the guided score
    is the exact conditional score, so the loss is the cross-entropy plus weight times the DSM loss of the exact
    conditional score model (same t, same eps), term by term."""
    g = torch.Generator().manual_seed(seed)
    n = 32
    x0, y = mixture.sample(n, generator=g, dtype=torch.float64, return_labels=True)
    x0, y = x0.to(DEVICE), y.to(DEVICE)
    t = (process.t_min + (process.t_max - process.t_min) * torch.rand(n, generator=g, dtype=torch.float64)).to(DEVICE)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(DEVICE)
    base = mixture.score_fn(process)

    def clf(x, sigma):  # exact logits: log p_t(y | x) (t known to the test)
        return mixture.class_log_prob(x, process, t)

    def cond_net(x, sigma):  # exact conditional score of each row's own class, as an 'output=score' network
        return torch.stack([mixture.conditional(int(k)).score(x[i:i + 1], process, t[i:i + 1])[0]
                            for i, k in enumerate(y)])

    got = guided_dsm_classifier_loss(clf, base, process, x0, y, dsm_weight=weight, t=t, eps=eps)
    x_t = process.perturb(x0, t, eps)
    ce = torch.nn.functional.cross_entropy(clf(x_t, None), y.long(), reduction="none")
    want = ce + weight * dsm_loss(cond_net, process, x0, output="score", t=t, eps=eps)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_guided_dsm_classifier_loss_trains_only_the_classifier_and_checks_its_input():
    """The base score is frozen (no gradient reaches it); the classifier gets gradients through its input gradient
    (double backward); at dsm_weight 0 the loss is classifier_loss's cross-entropy."""
    p = VP()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, generator=g).to(DEVICE)
    y = (x0[:, 0] > 0).long()
    clf = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(DEVICE)
    base_w = torch.ones(1, device=DEVICE, requires_grad=True)
    base = lambda x, t: -x * base_w  # noqa: E731
    net = lambda x, sigma: clf(x)  # noqa: E731
    t = torch.full((64,), 0.3, device=DEVICE)
    loss = guided_dsm_classifier_loss(net, base, p, x0, y, t=t, generator=torch.Generator(DEVICE).manual_seed(1))
    loss.mean().backward()
    assert base_w.grad is None
    # only the DSM term reaches the first layer's bias through the input gradient's dependence on it... and the
    # CE term too; check the DSM term alone moves the weights: weight 0 and weight 1 give different gradients
    g1 = clf[0].weight.grad.clone()
    clf.zero_grad()
    ce_only = guided_dsm_classifier_loss(net, base, p, x0, y, dsm_weight=0.0, t=t,
                                         generator=torch.Generator(DEVICE).manual_seed(1))
    ce_only.mean().backward()
    assert not torch.allclose(g1, clf[0].weight.grad)
    ref = classifier_loss(net, p, x0, y, t=t, generator=torch.Generator(DEVICE).manual_seed(1))
    torch.testing.assert_close(ce_only, ref)
    with pytest.raises(ValueError, match=r"\(64,\)"):
        guided_dsm_classifier_loss(net, base, p, x0, y[:10])
    with pytest.raises(ValueError, match="-1"):
        guided_dsm_classifier_loss(net, base, p, x0, y, dsm_weight=-1.0)
    with pytest.raises(ValueError, match="t = 2.0"):
        guided_dsm_classifier_loss(net, base, p, x0.cpu(), y.cpu(), t=torch.full((64,), 2.0))


@pytest.mark.parametrize("process", [VP(), VE(0.01, 10.0)], ids=repr)
def test_reference_x0_with_the_own_point_is_unbiased_and_without_it_is_not(process):
    """Conditional importance sampling: with the sample's own x0 (a draw from p(x0 | x_t)) among the points, the
    estimate's mean is exactly E[x0 | x_t], even with a single other point; without it, the self-normalised estimate
    is pulled towards the data (tested through E[(x0_hat - m) . m], m = E[x0 | x_t] by Tweedie's formula)."""
    target = toy_data.ring8()
    g = torch.Generator(DEVICE).manual_seed(0)
    b, r, reps = 2, 2, 3000
    for exclude in (False, True):
        stats = []
        for _ in range(reps):
            x0 = target.sample(b, generator=g, dtype=torch.float64)
            ref = target.sample(r, generator=g, dtype=torch.float64)
            t = torch.full((b,), 0.3, dtype=torch.float64, device=DEVICE)
            a, s = process._alpha_sigma(t)
            xt = a[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=g, device=DEVICE, dtype=torch.float64)
            m = (xt + s[:, None] ** 2 * target.score(xt, process, t)) / a[:, None]
            xh = reference_x0(xt, a, s, x0, ref, exclude_own=torch.full((b,), exclude, device=DEVICE))
            stats.append(((xh - m) * m).sum(1))
        st = torch.cat(stats)
        mean, se = float(st.mean()), float(st.std()) / math.sqrt(st.numel())
        if exclude:
            assert mean < -10 * se, (mean, se)
        else:
            assert abs(mean) < 4 * se, (mean, se)


def test_the_reference_target_is_the_exact_score_for_a_large_reference():
    """With many reference points the eps target is close to the exact -sigma * score, in the data and (widened
    samples, own point left out) inside ring8's ring where p_t is small; the exact network's loss drops with it."""
    process, target = VP(), toy_data.ring8()
    g = torch.Generator(DEVICE).manual_seed(1)
    n = 512
    ref = target.sample(16384, generator=g, dtype=torch.float64)
    x0 = target.sample(n, generator=g, dtype=torch.float64)
    inside = (torch.rand(n, 2, generator=g, device=DEVICE, dtype=torch.float64) - 0.5) * 1.2
    # measured: 0 to 3.5e-4; weights with sigma off by 1/sqrt(0.7) (a wrong temperature) give 2e-3 to 7e-3
    for t0, xt, exclude in ((0.5, None, False), (0.05, None, False), (0.1, inside, True)):
        t = torch.full((n,), t0, dtype=torch.float64, device=DEVICE)
        a, s = process._alpha_sigma(t)
        if xt is None:
            xt = a[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=g, device=DEVICE, dtype=torch.float64)
        exact = -s[:, None] * target.score(xt, process, t)
        xh = reference_x0(xt, a, s, x0, ref, exclude_own=torch.full((n,), exclude, device=DEVICE))
        got = (xt - a[:, None] * xh) / s[:, None]
        rel = float((got - exact).square().sum(1).mean() / exact.square().sum(1).mean())
        assert rel < 1e-3, (t0, rel)
    net = _exact_net(target, process, "eps")
    t = torch.full((n,), 0.5, dtype=torch.float64, device=DEVICE)
    net.t = t
    eps = torch.randn(x0.shape, generator=g, device=DEVICE, dtype=torch.float64)
    plain = dsm_loss(net, process, x0, t=t, eps=eps).mean()
    with_ref = dsm_loss(net, process, x0, t=t, eps=eps, reference=ref).mean()
    assert with_ref < 0.05 * plain, (float(with_ref), float(plain))


def test_widened_noise_is_log_uniform_at_t_above_widen_t_min_and_weighted_one_over_c2():
    process, target = VP(), toy_data.ring8()
    g = torch.Generator(DEVICE).manual_seed(2)
    n, widen = 4000, 16.0
    x0 = target.sample(n, generator=g, dtype=torch.float64)
    ref = target.sample(64, generator=g, dtype=torch.float64)
    t = torch.linspace(0.01, 1.0, n, dtype=torch.float64, device=DEVICE)
    eps = torch.randn(x0.shape, generator=g, device=DEVICE, dtype=torch.float64)
    seen = {}

    def net(x, sigma):
        seen["x"] = x
        return torch.zeros_like(x)

    loss = dsm_loss(net, process, x0, t=t, eps=eps, reference=ref, widen=widen, widen_frac=0.5, widen_t_min=0.4,
                    generator=g)
    a, s = process._alpha_sigma(t)
    c = ((seen["x"] - a[:, None] * x0) / (s[:, None] * eps)).mean(1)  # the noise multiplier of each sample
    low, high = t < 0.4, t >= 0.4
    assert torch.allclose(c[low], torch.ones_like(c[low]))
    wide = high & (c > 1 + 1e-9)
    assert abs(float(wide.sum()) / float(high.sum()) - 0.5) < 0.05
    assert float(c.min()) >= 1 - 1e-9 and float(c.max()) <= widen
    assert abs(float(c[wide].log().mean()) - math.log(widen) / 2) < 0.1  # log-uniform on [0, log widen]
    # with a zero network the loss is ||target||² / c²: the target is the reference estimate's eps
    xh = reference_x0(seen["x"], a, s, x0, ref, exclude_own=wide)
    target_eps = (seen["x"] - a[:, None] * xh) / s[:, None]
    assert torch.allclose(loss, target_eps.square().mean(1) / c.square(), rtol=1e-9)


def test_reference_and_widen_bad_input():
    process, target = VP(), toy_data.ring8()
    x0 = target.sample(8, generator=torch.Generator(DEVICE).manual_seed(0))

    def net(x, sigma, **kw):
        return torch.zeros_like(x)

    with pytest.raises(ValueError, match="widen = 4.0 needs a reference"):
        dsm_loss(net, process, x0, widen=4.0)
    with pytest.raises(ValueError, match="widen must be a finite number >= 1, got 0.5"):
        dsm_loss(net, process, x0, reference=x0, widen=0.5)
    with pytest.raises(ValueError, match=r"widen_frac must lie in \[0, 1\], got 1.5"):
        dsm_loss(net, process, x0, reference=x0, widen=2.0, widen_frac=1.5)
    with pytest.raises(ValueError, match=r"reference points must have shape \(R, 2\), got \(8, 3\)"):
        dsm_loss(net, process, x0, reference=torch.zeros(8, 3, device=DEVICE))
    with pytest.raises(ValueError, match="for unconditional networks"):
        dsm_loss(net, process, x0, reference=x0, labels=torch.zeros(8, dtype=torch.long, device=DEVICE))


def test_reference_posterior_is_unbiased_for_the_class_and_the_class_conditional_mean():
    """With the own point (a draw from p(x0, y | x_t)) among the labelled points, p_hat has mean p(y | x_t) and
    x0_hat mean E[x0 | x_t, y] (Tweedie on the class's diffused score), even with two other points."""
    process, target = VP(), toy_data.ring8()
    g = torch.Generator(DEVICE).manual_seed(3)
    b, r, reps = 2, 2, 3000
    dp, dx = [], []
    for _ in range(reps):
        x0, y = target.sample(b, generator=g, dtype=torch.float64, return_labels=True)
        ref, ref_y = target.sample(r, generator=g, dtype=torch.float64, return_labels=True)
        t = torch.full((b,), 0.3, dtype=torch.float64, device=DEVICE)
        a, s = process._alpha_sigma(t)
        xt = a[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=g, device=DEVICE, dtype=torch.float64)
        p_hat, x0_hat = reference_posterior(xt, a, s, x0, y, ref, ref_y, 8)
        dp.append(p_hat - target.class_log_prob(xt, process, t).exp())
        m = torch.stack([(xt[i] + s[i] ** 2 * target.conditional(int(y[i])).score(xt[i:i + 1], process, t[i:i + 1])[0])
                         / a[i] for i in range(b)])
        dx.append(((x0_hat - m) * m).sum(1))
    for d in (torch.cat(dp), torch.cat(dx)):
        mean, se = d.mean(0), d.std(0) / math.sqrt(d.shape[0])
        assert (mean.abs() < 4 * se + 1e-12).all(), (mean, se)


def test_classifier_losses_with_a_reference_check_their_input_and_widen():
    """The soft cross-entropy is against reference_posterior's p_hat at the x_t the classifier saw (not the hard
    label), and the widened samples' own points are left out of it."""
    process, target = VP(), toy_data.ring8()
    g = torch.Generator(DEVICE).manual_seed(4)
    x0, y = target.sample(64, generator=g, return_labels=True)
    ref, ref_y = target.sample(256, generator=g, return_labels=True)
    t = torch.full((64,), 0.3, device=DEVICE)
    a, s = process._alpha_sigma(t)
    w = torch.randn(2, 8, generator=g, device=DEVICE)
    seen = {}

    def clf(x, sigma):
        seen["x"] = x
        return x @ w

    for widen in (1.0, 8.0):
        loss = classifier_loss(clf, process, x0, y, t=t, reference=ref, reference_labels=ref_y, widen=widen,
                               widen_frac=1.0, generator=g)
        x = seen["x"]
        wide = torch.full((64,), widen > 1, device=DEVICE)  # widen_frac 1: every sample widened (t >= 0)
        p_hat, _ = reference_posterior(x, a, s, x0, y, ref, ref_y, 8, exclude_own=wide)
        expected = -(p_hat * (x @ w).log_softmax(-1)).sum(-1)
        torch.testing.assert_close(loss, expected)
        hard = torch.nn.functional.cross_entropy(x @ w, y, reduction="none")
        assert not torch.allclose(loss, hard)
    with pytest.raises(ValueError, match=r"reference_labels of shape \(256,\), got None"):
        classifier_loss(clf, process, x0, y, reference=ref)
    with pytest.raises(ValueError, match="widen = 2.0 needs a reference"):
        guided_dsm_classifier_loss(clf, lambda x, t: torch.zeros_like(x), process, x0, y, widen=2.0)


def test_guided_dsm_with_a_reference_targets_the_class_conditional_score():
    """Exact base score and exact classifier: their guided score is the exact class-conditional score, so the DSM
    term against the reference target (close to it for a large reference) is far below the one against eps."""
    process, target = VP(), toy_data.ring8()
    g = torch.Generator(DEVICE).manual_seed(5)
    n = 512
    x0, y = target.sample(n, generator=g, dtype=torch.float64, return_labels=True)
    ref, ref_y = target.sample(16384, generator=g, dtype=torch.float64, return_labels=True)
    t = torch.full((n,), 0.3, dtype=torch.float64, device=DEVICE)
    eps = torch.randn(x0.shape, generator=g, device=DEVICE, dtype=torch.float64)

    def clf(x, sigma):
        return target.class_log_prob(x, process, t)

    x_t = process.perturb(x0, t, eps)
    log_p = clf(x_t, None)
    hard_ce = -log_p.gather(1, y[:, None])[:, 0]
    p_hat, _ = reference_posterior(x_t, *process._alpha_sigma(t), x0, y, ref, ref_y, 8)
    soft_ce = -(p_hat * log_p).sum(1)
    base = target.score_fn(process)
    plain = guided_dsm_classifier_loss(clf, base, process, x0, y, t=t, eps=eps) - hard_ce
    with_ref = guided_dsm_classifier_loss(clf, base, process, x0, y, t=t, eps=eps, reference=ref,
                                          reference_labels=ref_y) - soft_ce
    with_ref, plain = float(with_ref.detach().mean()), float(plain.detach().mean())
    assert with_ref < 0.05 * plain, (with_ref, plain)


def test_reference_estimates_are_untouched_by_bf16_autocast():
    """The estimates divide by sigma: under the trainer's bf16 autocast (amp) they must come out as without it."""
    if DEVICE.type not in ("cpu", "cuda"):
        pytest.skip("autocast is for CPU and CUDA")
    process, target = VP(), toy_data.ring8()
    g = torch.Generator(DEVICE).manual_seed(6)
    x0, y = target.sample(128, generator=g, return_labels=True)
    ref, ref_y = target.sample(512, generator=g, return_labels=True)
    t = torch.full((128,), 0.002, device=DEVICE)
    a, s = process._alpha_sigma(t)
    xt = process.perturb(x0, t, torch.randn(x0.shape, generator=g, device=DEVICE))
    plain = (reference_x0(xt, a, s, x0, ref), *reference_posterior(xt, a, s, x0, y, ref, ref_y, 8))
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        amp = (reference_x0(xt, a, s, x0, ref), *reference_posterior(xt, a, s, x0, y, ref, ref_y, 8))
    for p_, q in zip(plain, amp):
        assert q.dtype == p_.dtype == torch.float32 and torch.equal(p_, q)
