"""Sample-quality metrics against closed forms, scipy, brute-force definitions and their own sampling error."""

import math
import os

import numpy as np
import pytest
import scipy.stats
import torch

import scoresde.metrics as metrics_module
from scoresde.metrics import METRICS, energy_distance, log_density_gap, mmd, noise_floor, sliced_wasserstein

DEVICE = os.environ.get("SCORESDE_TEST_DEVICE", "cpu")
F64 = torch.float64


def normal(seed: int, *shape: int, dtype: torch.dtype = F64) -> torch.Tensor:
    """Seeded standard normal draws (made on CPU, so identical on every device), moved to DEVICE."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).to(DEVICE)


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    """These tests run many small ops: on a shared 2-core CPU, intra-op threads only add barrier waits (5-10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_blocks(monkeypatch):
    """Force many ragged blocks of several rows (and of projections) so the blocking logic itself is exercised."""
    monkeypatch.setattr(metrics_module, "_block_elems", lambda device: 1500)  # n = 150: 10-row blocks, last shorter


# ------------------------------------------------------------------------------------------ sliced Wasserstein


def _w2_1d_sd(mu: float, s: float, n: int, m: int) -> float:
    """Delta-method sd of the empirical W2 between N(0,1) (n draws) and N(mu, s²) (m draws).

    W2² = (mean gap)² + (sd gap)² for Gaussians; the sample mean has var 1/n + s²/m and the sample sds
    var 1/(2n) + s²/(2m), so var(W2²) ~ 4 mu² (1/n + s²/m) + 4 (s-1)² (1/(2n) + s²/(2m)), and
    sd(W2) = sd(W2²)/(2 W2).
    (Checked against 20 seeds: this over-estimates the observed sd by ~15%, i.e. it is conservative.)
    """
    w = math.hypot(mu, s - 1)
    var = 4 * mu**2 * (1 / n + s**2 / m) + 4 * (s - 1) ** 2 * (1 / (2 * n) + s**2 / (2 * m))
    return math.sqrt(var) / (2 * w)


@pytest.mark.parametrize("n, m", [(200_000, 200_000), (200_000, 150_000)])
def test_sliced_w2_1d_matches_gaussian_closed_form(n, m):
    # In 1-D every direction is ±1, so the projections add no error: W2(N(0,1), N(mu, s²)) = sqrt(mu² + (s-1)²).
    mu, s = 0.5, 1.5
    x, y = normal(1, n), mu + s * normal(2, m)
    expected = math.hypot(mu, s - 1)  # 0.707..., far from its square 0.5
    got = sliced_wasserstein(x, y, n_projections=4)
    assert got.shape == () and got.dtype == F64
    assert abs(got.item() - expected) < 4 * _w2_1d_sd(mu, s, n, m)  # 4 sd ~ 0.014


def test_sliced_w2_shifted_gaussians_in_3d():
    # theta·X ~ N(0,1), theta·Y ~ N(theta·m, 1): W2² = (theta·m)², E (theta·m)² = |m|²/D, so SW2 -> |m|/sqrt(D).
    # Error sources (1 sd, relative to SW2):
    #   projections: (theta·m)²/|m|² ~ Beta(1/2, (D-1)/2), relative variance 2(D-1)/(D+2) = 0.8 for D = 3,
    #                so the mean of P of them is off by sqrt(0.8/P) and its square root by half that:
    #                0.014 for P = 1024;
    #   samples:     the mean difference is off by delta ~ N(0, 2/n I), so |m + delta| is off by
    #                sqrt(2/n)/|m| = 0.0033; the zero-shift floor (SW2² ~ 8/n ~ 4e-4, measured): 1e-4 bias.
    n, dim, n_proj = 20_000, 3, 1024
    shift = torch.tensor([1.0, 2.0, -2.0], dtype=F64, device=DEVICE)  # |m| = 3
    x, y = normal(3, n, dim), normal(4, n, dim) + shift
    expected = 3 / math.sqrt(dim)
    rel_sd = math.hypot(0.5 * math.sqrt(2 * (dim - 1) / (dim + 2) / n_proj), math.sqrt(2 / n) / 3)
    got = sliced_wasserstein(x, y, n_projections=n_proj).item()
    assert abs(got - expected) < 4 * rel_sd * expected  # 5.8% (mean W2 instead of RMS would be 13% low)


def test_sliced_w2_isotropic_scale_has_no_projection_error():
    # N(0, I) vs N(0, s² I): every projection has W2 = |s - 1|, so SW2 = |s - 1| for any set of directions.
    # Sample error: the projected sds are off by sqrt((1 + s²)/(2n)) = 0.005 (measured over 10 seeds: 0.0036).
    n, s = 100_000, 2.0
    x, y = normal(5, n, 3), s * normal(6, n, 3)
    got = sliced_wasserstein(x, y, n_projections=64).item()
    assert abs(got - (s - 1)) < 4 * math.sqrt((1 + s**2) / (2 * n))


def test_sliced_w2_exact_on_small_sets():
    # Unequal sizes: quantile functions of {0, 1} and {0, 0.5, 1} differ by 0.5 on (1/3, 2/3): W2² = 1/6 * 0.25 * 2.
    x = torch.tensor([0.0, 1.0], dtype=F64, device=DEVICE)
    y = torch.tensor([0.0, 0.5, 1.0], dtype=F64, device=DEVICE)
    assert sliced_wasserstein(x, y).item() == pytest.approx(math.sqrt(1 / 12), rel=1e-12)
    assert sliced_wasserstein(y, x).item() == pytest.approx(math.sqrt(1 / 12), rel=1e-12)
    # The same empirical measure with every point repeated: distance exactly 0 (n = 7, m = 21).
    z = normal(7, 7, 4)
    assert sliced_wasserstein(z, z.repeat(3, 1)).item() == pytest.approx(0.0, abs=1e-12)
    # A translate in 1-D: each sorted point moves by c, so W2 = |c| exactly.
    w = normal(8, 50)
    assert sliced_wasserstein(w, w - 0.3).item() == pytest.approx(0.3, rel=1e-12)


def test_sliced_w2_reproducible_symmetric_and_blocked(small_blocks):
    x, y = normal(9, 300, 5), normal(10, 200, 5) + 0.2
    a = sliced_wasserstein(x, y, n_projections=50, seed=3)
    assert torch.equal(a, sliced_wasserstein(x, y, n_projections=50, seed=3))
    assert a.item() != sliced_wasserstein(x, y, n_projections=50, seed=4).item()
    assert sliced_wasserstein(y, x, n_projections=50, seed=3).item() == pytest.approx(a.item(), rel=1e-12)


def test_sliced_w2_same_directions_regardless_of_blocking(monkeypatch):
    x, y = normal(11, 40, 3), normal(12, 40, 3)
    whole = sliced_wasserstein(x, y, n_projections=30)
    monkeypatch.setattr(metrics_module, "_block_elems", lambda device: 1500)  # 18 projections per block: 18 + 12
    assert sliced_wasserstein(x, y, n_projections=30).item() == pytest.approx(whole.item(), rel=1e-12)


# ------------------------------------------------------------------------------------------------- energy


@pytest.mark.parametrize("dtype, rtol", [(F64, 1e-10), (torch.float32, 1e-4)])
def test_energy_1d_is_scipy_squared(dtype, rtol, small_blocks):
    # scipy.stats.energy_distance returns sqrt(2E|X-Y| - E|X-X'| - E|Y-Y'|); ours is the square, same samples.
    x, y = normal(13, 300, dtype=dtype), 0.3 + 1.5 * normal(14, 200, dtype=dtype)
    ref = scipy.stats.energy_distance(x.cpu().double().numpy(), y.cpu().double().numpy()) ** 2
    got = energy_distance(x, y)
    assert got.dtype == dtype
    assert got.item() == pytest.approx(ref, rel=rtol)


@pytest.mark.parametrize("shape", [(2,), (2, 3)])  # D = 2 and D = 6 (the matmul form of |a - b|²)
def test_energy_matches_brute_force_in_d_dims(shape, small_blocks):
    x, y = normal(15, 120, *shape), normal(16, 90, *shape) + 0.1  # (n, *shape): flattened to (n, D)
    xf, yf = x.reshape(120, -1), y.reshape(90, -1)

    def mean_dist(a, b):  # the direct |a - b| (cdist's default matmul form is only accurate to ~1e-8 here)
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").mean()

    ref = 2 * mean_dist(xf, yf) - mean_dist(xf, xf) - mean_dist(yf, yf)
    assert energy_distance(x, y).item() == pytest.approx(ref.item(), rel=1e-10)
    assert energy_distance(x, x).item() == pytest.approx(0.0, abs=1e-9)  # matmul form: |a - a| ~ sqrt(rounding)


def test_energy_uses_first_max_n_rows():
    x, y = normal(17, 300, 2), normal(18, 250, 2)
    head = energy_distance(x[:100], y[:100]).item()
    assert energy_distance(x, y, max_n=100).item() == pytest.approx(head, rel=1e-12)


# ---------------------------------------------------------------------------------------------------- MMD


def _mmd_u_brute(x: torch.Tensor, y: torch.Tensor, hs) -> float:
    """The unbiased estimator written out: off-diagonal means of k(x, x'), k(y, y') minus twice the mean k(x, y)."""
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)

    def k(a, b):
        d2 = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").square()
        return sum(torch.exp(-d2 / (2 * h * h)) for h in hs)

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    off = lambda kk: (kk.sum() - kk.diagonal().sum()).item()  # noqa: E731
    return off(kxx) / (n * (n - 1)) + off(kyy) / (m * (m - 1)) - 2 * k(x, y).mean().item()


def test_mmd_is_the_unbiased_estimator(small_blocks):
    x, y = normal(19, 150, 3), 0.5 * normal(20, 110, 3) + 0.2
    hs = [0.3, 1.0, 2.5]
    assert mmd(x, y, bandwidths=hs).item() == pytest.approx(_mmd_u_brute(x, y, hs), rel=1e-10)


def test_mmd_default_bandwidths_are_median_heuristic():
    x, y = normal(21, 300, 2), normal(22, 200, 2) + 0.5  # pooled 500 <= 1000 points: the exact pooled median
    med = torch.pdist(torch.cat([x, y])).median().item()
    hs = [med * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert mmd(x, y).item() == pytest.approx(_mmd_u_brute(x, y, hs), rel=1e-10)


def test_mmd_null_is_zero_mean_and_can_be_negative_shift_is_positive():
    # Same distribution: the U-statistic has mean exactly 0, so over 20 seeds its mean lies within 4 standard
    # errors of 0, and some values are negative (the biased V-statistic is > 0, ~2 (K(0) - E k) / n above 0).
    n = 400
    null = torch.stack([mmd(normal(100 + s, n, 2), normal(200 + s, n, 2)) for s in range(20)]).cpu()
    se = null.std() / math.sqrt(len(null))
    assert abs(null.mean().item()) < 4 * se.item()
    assert (null < 0).any()
    shifted = mmd(normal(300, n, 2), normal(301, n, 2) + 0.5)
    assert shifted.item() > 0 and shifted.item() > 10 * null.std().item()


def test_mmd_uses_first_max_n_rows():
    x, y = normal(23, 300, 2), normal(24, 250, 2)
    assert mmd(x, y, max_n=100).item() == pytest.approx(mmd(x[:100], y[:100]).item(), rel=1e-12)


# ----------------------------------------------------------------------------------------- log density gap


def test_log_density_gap_gaussian_closed_form():
    # log N(x; 0, 1) = -x²/2 - log(2 pi)/2: E_{N(0,s²)} - E_{N(0,1)} = -(s² - 1)/2.
    s, n, m = 1.5, 20_000, 15_000
    x_gen, x_ref = s * normal(25, n), normal(26, m)

    def log_prob(x):
        return -0.5 * x.square() - 0.5 * math.log(2 * math.pi)

    gap, se = log_density_gap(log_prob, x_gen, x_ref)
    assert gap.shape == () and se.shape == () and gap.dtype == F64
    assert abs(gap.item() - (-(s**2 - 1) / 2)) < 4 * se.item()
    lg, lr = log_prob(x_gen).cpu().numpy(), log_prob(x_ref).cpu().numpy()
    assert gap.item() == pytest.approx(lg.mean() - lr.mean(), rel=1e-12)
    assert se.item() == pytest.approx(np.sqrt(lg.var(ddof=1) / n + lr.var(ddof=1) / m), rel=1e-12)
    # and the formula is the right size: population sd of the gap is sqrt((s⁴/2)/n + (1/2)/m) (var of x²/2).
    assert se.item() == pytest.approx(math.sqrt(s**4 / 2 / n + 0.5 / m), rel=0.05)


def test_log_density_gap_on_vectors_and_bad_log_prob():
    x_gen, x_ref = normal(27, 50, 3), normal(28, 40, 3)
    gap, se = log_density_gap(lambda x: -0.5 * x.square().sum(dim=1), x_gen, x_ref)
    gap2, se2 = log_density_gap(lambda x: -0.5 * x.square().sum(dim=1), x_ref, x_gen)
    assert gap2.item() == pytest.approx(-gap.item(), rel=1e-12) and se2.item() == pytest.approx(se.item(), rel=1e-12)
    with pytest.raises(ValueError, match=r"\(50,\).*\(50, 1\)"):
        log_density_gap(lambda x: x[:, :1], x_gen, x_ref)
    with pytest.raises(ValueError, match="non-finite"):
        log_density_gap(lambda x: torch.log(x[:, 0]), x_gen, x_ref)


# -------------------------------------------------------------------------------------------- noise floor


def _gaussian_sample(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n, 2, generator=g, dtype=F64).to(DEVICE)


@pytest.mark.parametrize("name", ["sliced_wasserstein", "energy_distance"])
def test_noise_floor_positive_reproducible_and_seeded(name):
    metric = METRICS[name]
    a = noise_floor(metric, _gaussian_sample, 500, seed=7)
    assert a.item() > 0
    assert torch.equal(a, noise_floor(name, _gaussian_sample, 500, seed=7))
    assert a.item() != noise_floor(metric, _gaussian_sample, 500, seed=8).item()
    x = _gaussian_sample(500, torch.Generator().manual_seed(7))
    y = _gaussian_sample(500, torch.Generator().manual_seed(8))
    assert torch.equal(a, metric(x, y))


def test_noise_floor_forwards_metric_options():
    got = noise_floor(sliced_wasserstein, _gaussian_sample, 200, seed=1, n_projections=3)
    x = _gaussian_sample(200, torch.Generator().manual_seed(1))
    y = _gaussian_sample(200, torch.Generator().manual_seed(2))
    assert torch.equal(got, sliced_wasserstein(x, y, n_projections=3))
    assert not torch.equal(got, sliced_wasserstein(x, y))


# ------------------------------------------------------------------------------------------ dtype, device


@pytest.mark.parametrize("name", sorted(METRICS))
def test_dtype_and_device_follow_x(name):
    metric = METRICS[name]
    x64, y64 = normal(29, 200, 3), normal(30, 150, 3) + 0.3
    out64 = metric(x64, y64)
    out32 = metric(x64.float(), y64)  # y is cast to x's dtype
    assert out64.dtype == F64 and out32.dtype == torch.float32
    assert out64.device.type == torch.device(DEVICE).type and out64.shape == ()
    assert out32.item() == pytest.approx(out64.item(), rel=1e-4)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metrics_are_differentiable(name):
    # Usable as losses: the autograd directional derivative matches a central difference (no ties: smooth at x).
    metric = METRICS[name]
    x, y, v = normal(35, 7, 2).requires_grad_(), normal(36, 5, 2), normal(37, 7, 2)
    (grad,) = torch.autograd.grad(metric(x, y), x)
    eps = 1e-6
    with torch.no_grad():
        fd = (metric(x + eps * v, y) - metric(x - eps * v, y)) / (2 * eps)
    assert torch.isfinite(grad).all()
    assert (grad * v).sum().item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-9)


def test_metrics_table():
    assert METRICS == {"sliced_wasserstein": sliced_wasserstein, "mmd": mmd, "energy_distance": energy_distance}


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", sorted(METRICS))
def test_bad_inputs_raise_with_the_offending_value(name):
    metric = METRICS[name]
    x = normal(31, 10, 2)
    with pytest.raises(ValueError, match=r"\(10, 2\).*D=2.*\(10, 3\).*D=3"):
        metric(x, normal(32, 10, 3))
    with pytest.raises(ValueError, match=r"at least 2 samples, got 1.*\(1, 2\)"):
        metric(x, x[:1])
    bad = x.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x has 1 non-finite.*\(4, 1\).*nan"):
        metric(bad, x)
    bad[4, 1] = float("inf")
    with pytest.raises(ValueError, match=r"y has 1 non-finite.*inf"):
        metric(x, bad)


def test_bad_options_raise_with_the_offending_value():
    x, y = normal(33, 10, 2), normal(34, 10, 2)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=rf"n_projections .*got {bad!r}"):
            sliced_wasserstein(x, y, n_projections=bad)
    with pytest.raises(ValueError, match="max_n .*got 1"):
        mmd(x, y, max_n=1)
    with pytest.raises(ValueError, match="max_n .*got 0"):
        energy_distance(x, y, max_n=0)
    with pytest.raises(ValueError, match=r"bandwidths .*\[1.0, -0.5\]"):
        mmd(x, y, bandwidths=[1.0, -0.5])
    with pytest.raises(ValueError, match="unknown metric 'fid'"):
        noise_floor("fid", _gaussian_sample, 10)
    with pytest.raises(ValueError, match="n must be an integer >= 2, got 1"):
        noise_floor("mmd", _gaussian_sample, 1)
