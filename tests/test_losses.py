"""Training losses against closed forms: a Gaussian target's optimal eps loss, weightings, t sampling, importance
sampling; the loss objects the trainer takes."""

import math

import pytest
import torch
import toy_data
from scoresde import VE, VP, DiscreteVP, SubVP
from scoresde.losses import ClassifierLoss, DSMLoss, ImportanceSampler, classifier_loss, dsm_loss
from scoresde.score import convert

from .conftest import DEVICE


def _exact_net(mixture, process, kind):
    """A 'network' net(x, sigma) returning the exact prediction of the given kind (t recovered from sigma)."""

    def net(x, sigma):
        t = net.t  # set by the test: the times the loss was asked to use
        s = mixture.score(x, process, t)
        return convert(s, x, *process.alpha_sigma(t), src="score", dst=kind)

    return net


@pytest.mark.parametrize("process", [VP(), VE(0.01, 10.0), SubVP()], ids=repr)
def test_eps_loss_of_the_exact_score_is_the_posterior_variance(process):
    """x0 ~ N(0, s² I): the optimal eps loss at t is Var(eps | x_t) = alpha² s²/(alpha² s² + sigma²) (per dim)"""
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
def test_every_prediction_kind_gives_the_same_loss(kind):
    process = VP()
    target = toy_data.load("ring8")
    g = torch.Generator(DEVICE).manual_seed(1)
    x0 = target.sample(256, generator=g, dtype=torch.float64)
    t = process.train_times(256, generator=g, device=DEVICE, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, device=DEVICE, dtype=torch.float64)
    ref_net, net = _exact_net(target, process, "eps"), _exact_net(target, process, kind)
    ref_net.t = net.t = t
    ref = dsm_loss(ref_net, process, x0, t=t, eps=eps)
    got = dsm_loss(net, process, x0, t=t, eps=eps, prediction=kind)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_weightings_are_sigma2_g2_min_snr_and_one():
    """lambda ||s + eps/sigma||²: sigma² gives the eps loss, g² the likelihood weighting, 1 the raw DSM loss,
    and Min-SNR-5 is sigma² min(SNR, 5) / SNR: the eps loss where SNR <= 5, the x0 loss times 5 above."""
    process = VP()
    g = torch.Generator(DEVICE).manual_seed(2)
    x0 = torch.randn(64, 2, generator=g, device=DEVICE, dtype=torch.float64)
    t = process.train_times(64, generator=g, device=DEVICE, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, device=DEVICE, dtype=torch.float64)
    zero = lambda x, sigma: torch.zeros_like(x)  # noqa: E731  score 0: ||eps/sigma||²
    snr = (process.alpha(t) / process.sigma(t)) ** 2
    assert bool((snr > 5).any()) and bool((snr < 5).any())  # both branches of min(SNR, 5) are exercised
    min_snr = process.sigma(t) ** 2 * torch.where(snr > 5, 5 / snr, torch.ones_like(snr))
    for w, lam in (("sigma2", process.sigma(t) ** 2), ("likelihood", process.g2(t)), ("none", torch.ones_like(t)),
                   ("min_snr", min_snr)):
        got = dsm_loss(zero, process, x0, t=t, eps=eps, prediction="score", weighting=w)
        expected = lam * (eps / process.sigma(t)[:, None]).square().mean(1)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)
    assert bool((snr > 0.5).any()) and bool((snr < 0.5).any())  # snr_gamma is used, not a fixed 5
    got = dsm_loss(zero, process, x0, t=t, eps=eps, prediction="score", weighting="min_snr", snr_gamma=0.5)
    expected = torch.clamp(0.5 / snr, max=1) * eps.square().mean(1)  # sigma² ||eps / sigma||² = ||eps||²
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)
    summed = dsm_loss(zero, process, x0, t=t, eps=eps, prediction="score", reduce="sum")
    torch.testing.assert_close(summed, eps.square().sum(1))


def test_train_times_ranges_and_discrete_steps():
    g = torch.Generator(DEVICE).manual_seed(3)
    p = VP()
    t = p.train_times(10000, generator=g, device=DEVICE, dtype=torch.float64)
    assert float(t.min()) >= p.t_min and float(t.max()) <= p.t_max
    assert abs(float(t.mean()) - 0.5 * (p.t_min + p.t_max)) < 0.01
    d = DiscreteVP.linear(100)
    t = d.train_times(10000, generator=g, device=DEVICE, dtype=torch.float64)
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
def test_the_fused_alpha_sigma_of_the_loss_matches_alpha_and_sigma(process):
    t = torch.linspace(process.t_min, process.t_max, 101, dtype=torch.float64, device=DEVICE)
    alpha, sigma = process.alpha_sigma(t)
    torch.testing.assert_close(alpha, process.alpha(t), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(sigma, process.sigma(t), rtol=1e-14, atol=1e-15)


class _Recorder(torch.nn.Module):
    """A conditional eps-'network' 0.5 x that records the labels it was given."""

    num_classes, prediction = 8, "eps"

    def forward(self, x, sigma, labels=None):
        self.labels = labels
        return 0.5 * x


def test_the_dsm_loss_object_is_dsm_loss_with_label_dropout_to_the_null_label():
    """DSMLoss draws the dropout mask from the batch's generator, then is dsm_loss: dropped labels become the null
    label num_classes, at the rate asked; the prediction kind and importance sampling come along."""
    p, net = VP(), _Recorder()
    g = torch.Generator().manual_seed(0)
    n = 4000
    x0, y = torch.randn(n, 2, generator=g), torch.randint(0, 8, (n,), generator=g)
    got = DSMLoss(label_dropout=0.25)(net, p, x0, y, generator=torch.Generator().manual_seed(7))
    dropped = net.labels == 8
    assert abs(float(dropped.float().mean()) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    assert torch.equal(net.labels[~dropped], y[~dropped])
    g = torch.Generator().manual_seed(7)
    drop = torch.rand(y.shape, generator=g) < 0.25
    assert torch.equal(got, dsm_loss(net, p, x0, generator=g, labels=torch.where(drop, 8, y)))
    net.prediction = "x0"
    imp = DSMLoss("likelihood", importance=True)
    got = imp(net, p, x0, None, generator=torch.Generator().manual_seed(8))
    want = dsm_loss(net, p, x0, prediction="x0", weighting="likelihood", importance=ImportanceSampler(p),
                    generator=torch.Generator().manual_seed(8))
    assert net.labels is None and torch.equal(got, want)
    with pytest.raises(ValueError, match="discrete steps"):
        imp.check(net, DiscreteVP.linear(100))
    clf = torch.nn.Linear(2, 2)
    clf.kind = "classifier"
    with pytest.raises(ValueError, match="not noise-aware classifiers"):
        DSMLoss().check(clf, p)
    for kw, match in ((dict(weighting="w"), "'w'"), (dict(snr_gamma=-1.0), "snr_gamma.*-1"),
                      (dict(importance=True), "weighting='likelihood'"), (dict(label_dropout=1.0), r"\[0, 1\)")):
        with pytest.raises(ValueError, match=match):
            DSMLoss(**kw)


def test_classifier_loss_is_the_cross_entropy_at_the_noised_input():
    """classifier_loss(clf) = CE(clf(alpha x0 + sigma eps, sigma), y) at the given t and eps; ClassifierLoss draws t and
    eps from the generator as classifier_loss does."""
    p = VE(0.01, 10.0)
    g = torch.Generator(DEVICE).manual_seed(0)
    x0 = torch.randn(64, 2, generator=g, device=DEVICE, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g, device=DEVICE)
    t = p.train_times(64, generator=g, device=DEVICE, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, device=DEVICE, dtype=torch.float64)
    w = torch.randn(3, 3, generator=g, device=DEVICE, dtype=torch.float64)

    def clf(x, sigma):
        return torch.cat([x, sigma[:, None].log()], 1) @ w

    want = torch.nn.functional.cross_entropy(clf(p.perturb(x0, t, eps), p.sigma(t)), y, reduction="none")
    torch.testing.assert_close(classifier_loss(clf, p, x0, y, t=t, eps=eps), want, rtol=1e-12, atol=1e-12)
    got = ClassifierLoss()(clf, p, x0, y, generator=torch.Generator(DEVICE).manual_seed(1))
    assert torch.equal(got, classifier_loss(clf, p, x0, y, generator=torch.Generator(DEVICE).manual_seed(1)))
    with pytest.raises(ValueError, match=r"labels must have shape \(64,\)"):
        classifier_loss(clf, p, x0, y[:10])
    with pytest.raises(ValueError, match="needs the batch's labels"):
        ClassifierLoss()(clf, p, x0, None)
    with pytest.raises(ValueError, match="not score networks"):
        ClassifierLoss().check(_Recorder(), p)
