"""Langevin dynamics on energies against exact answers: closed-form stationary laws of ULA and BAOAB on a harmonic
well, quadrature of the Boltzmann law of an asymmetric double well (MALA), the exact stationary law of ULA's
Gaussian kernel (its bias, linear in the step), parametrisation identities, independence of chains, annealing,
MCMC diagnostics on AR(1) chains, and bad input."""

import math

import numpy as np
import pytest
import torch

import toy_data
from scoresde import energies as E
from scoresde.evaluation.mcmc import ess, ess_bulk, rhat
from scoresde.samplers import mcmc as M

from .conftest import DEVICE

F64 = dict(dtype=torch.float64, device=DEVICE)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _chain_means(f_trace: torch.Tensor) -> tuple[float, float]:
    """Mean over draws and chains of a (K, B) trace, and its standard error from the independent chains' means."""
    m = f_trace.double().mean(0)
    return float(m.mean()), float(m.std() / math.sqrt(m.numel()))


def _energy_trace(energy, trace: torch.Tensor) -> torch.Tensor:
    return energy(trace.reshape(-1, *trace.shape[2:])).reshape(trace.shape[:2])


class Table:
    """A fixed table of standard normals: noise(k, like) = row k (cut to like's batch), so a sub-batch of chains can
    be given exactly the noise its chains had in the full batch."""

    def __init__(self, n: int, shape: tuple, seed: int = 0, rows: torch.Tensor | None = None):
        self.z = torch.randn((n,) + shape, generator=_gen(seed), **F64)
        self.rows = rows

    def __call__(self, k: int, like: torch.Tensor) -> torch.Tensor:
        z = self.z[k] if self.rows is None else self.z[k][self.rows]
        return z[: like.shape[0]].reshape(like.shape[0], -1)[:, : like[0].numel()].reshape(like.shape)


# -- harmonic well: closed forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [0.5, 1.0])
def test_ula_stationary_variance_on_a_harmonic_well_is_its_closed_form_in_eta(c):
    # U = x² / 2s², score -x / (s² kT): x' = (1 - c) x + sqrt(2 eta) z with c = eta / (s² kT), so the stationary
    # variance is 2 eta / (1 - (1 - c)²) = s² kT / (1 - c / 2), the true s² kT inflated by 1 / (1 - c/2).
    s, kT, b = 1.5, 0.5, 20000
    eta = c * s**2 * kT
    exact, ula_var = s**2 * kT, s**2 * kT / (1 - c / 2)
    x = math.sqrt(exact) * torch.randn(b, 1, generator=_gen(1), **F64)
    out = M.ula(E.energy_score(E.harmonic(1, s), kT), x, 80, eta, burn_in=40, generator=_gen(2))
    v, se = _chain_means(out.trace[..., 0].square())
    assert abs(v - ula_var) < 4 * se, (v, ula_var, se)
    assert abs(v - exact) > 10 * se  # the bias is resolved


def test_mala_samples_the_exact_harmonic_variance_where_ula_is_biased():
    s, kT, b = 1.5, 0.5, 10000
    eta = 1.0 * s**2 * kT  # ULA's variance here is 2 s² kT
    x = s * math.sqrt(kT) * torch.randn(b, 2, generator=_gen(3), **F64)
    out = M.mala(E.harmonic(2, s), x, 60, kT=kT, step=eta, burn_in=10, generator=_gen(4))
    v, se = _chain_means(out.trace.square().mean(-1))
    assert abs(v - s**2 * kT) < 4 * se, (v, se)
    assert abs(2 * s**2 * kT - s**2 * kT) > 50 * se
    assert 0.3 < float(out.accept.mean()) < 0.9  # a real accept/reject at this step


@pytest.mark.parametrize("tau_omega", [1.5, 0.75])
def test_baoab_is_exact_in_x_on_a_harmonic_well_and_its_kinetic_error_is_second_order(tau_omega):
    # For U = x² / 2s², mass m, omega² = 1 / (m s²), BAOAB's stationary law (a linear recursion: solve the discrete
    # Lyapunov equation) has var x = kT s² exactly, at any friction, and var v = (kT / m)(1 - tau² omega² / 4):
    # error ∝ tau², a quarter when tau halves. OBABO swaps them: var x = kT s² / (1 - tau² omega² / 4), off by
    # a factor 2.29 at tau omega = 1.5 and 1.16 at 0.75, far outside the Monte Carlo error here.
    s, m, kT, gamma, b = 0.5, 2.0, 0.7, 0.8, 20000
    omega = 1 / (s * math.sqrt(m))
    tau = tau_omega / omega
    x = s * math.sqrt(kT) * torch.randn(b, 1, generator=_gen(5), **F64)
    out = M.baoab(E.harmonic(1, s), x, 140, kT=kT, tau=tau, gamma=gamma, mass=m, burn_in=40, generator=_gen(6))
    vx, se_x = _chain_means(out.trace[..., 0].square())
    assert abs(vx - kT * s**2) < 4 * se_x, (vx, se_x)
    assert kT * s**2 / (1 - tau_omega**2 / 4) - kT * s**2 > 10 * se_x  # OBABO's error would be caught
    v = out.v[:, 0]
    vv, se_v = float(v.square().mean()), float(v.square().std() / math.sqrt(b))
    assert abs(vv - kT / m * (1 - tau_omega**2 / 4)) < 4 * se_v, (vv, se_v)


# -- asymmetric double well: quadrature, ULA's exact kernel law ------------------------------------------------


@pytest.fixture(scope="module")
def well():
    landscape = E.double_well(1, tilt=0.25)
    return landscape, E.reference(landscape, 0.5)


def test_mala_matches_the_quadrature_of_an_asymmetric_double_well(well):
    # All chains start on the barrier; warm-up adapts each chain's step toward acceptance 0.574 and crosses the
    # barrier many times (relaxation ~ 10 steps), so occupancies, mean energy and E[x²] must come out exact.
    landscape, ref = well
    kT, b = 0.5, 4000
    x = torch.zeros(b, 1, **F64)
    out = M.mala(landscape, x, 450, kT=kT, step=0.3, warmup=150, thin=3, generator=_gen(7))
    u, se_u = _chain_means(_energy_trace(landscape, out.trace))
    occ, se_o = _chain_means((out.trace[..., 0] < 0).double())
    x2, se_x2 = _chain_means(out.trace[..., 0].square())
    assert abs(u - ref.mean_energy) < 4 * se_u, (u, ref.mean_energy, se_u)
    assert abs(occ - ref.occupancy[0]) < 4 * se_o, (occ, ref.occupancy, se_o)
    assert abs(x2 - ref.second_moment[0]) < 4 * se_x2, (x2, ref.second_moment, se_x2)
    assert abs(float(out.accept.mean()) - M.TARGET_ACCEPT) < 0.03  # adapted toward 0.574 per chain
    assert float(out.step.std()) > 0  # each chain its own step


def _ula_law_mean_energy(landscape, kT: float, eta: float, n: int = 900, half: float = 2.6) -> float:
    """The exact stationary law of ULA's Gaussian kernel N(x + eta s(x), 2 eta), discretised on a grid: the
    normalised null vector of Kᵀ - I; returns its mean energy."""
    x = np.linspace(-half, half, n)
    xt = torch.as_tensor(x, dtype=torch.float64)[:, None]
    mu = x + eta * E.energy_score(landscape, kT)(xt).numpy()[:, 0]
    k = np.exp(-((x[None, :] - mu[:, None]) ** 2) / (4 * eta))
    k /= k.sum(1, keepdims=True)
    a = k.T - np.eye(n)
    a[-1] = 1
    p = np.linalg.solve(a, np.eye(n)[-1])
    return float(p @ landscape(xt).numpy())


def test_ula_bias_on_the_double_well_is_its_exact_kernel_law_and_linear_in_eta(well):
    landscape, ref = well
    kT, b = 0.5, 6000
    bias, kernel_bias = [], []
    for i, eta in enumerate([0.02, 0.01]):
        law = _ula_law_mean_energy(landscape, kT, eta)
        x = ref.sample(b, generator=torch.Generator().manual_seed(10 + i)).to(DEVICE)
        out = M.ula(E.energy_score(landscape, kT), x, 220, eta, burn_in=60, thin=2, generator=_gen(20 + i))
        u, se = _chain_means(_energy_trace(landscape, out.trace))
        assert abs(u - law) < 4 * se, (eta, u, law, se)
        assert u - ref.mean_energy > 6 * se  # the bias is resolved
        bias.append(u - ref.mean_energy)
        kernel_bias.append(law - ref.mean_energy)
    assert 1.9 < kernel_bias[0] / kernel_bias[1] < 2.4  # first order: halving eta halves the bias
    assert 1.4 < bias[0] / bias[1] < 3.2, bias  # measured, within its Monte Carlo error


# -- identities: parametrisations, tempering, independence, reproducibility -------------------------------------


def test_physical_and_score_parametrisations_give_the_same_chain_given_the_same_noise():
    landscape = E.double_well(2, tilt=0.3)
    kT, gamma, tau, steps = 0.7, 2.5, 0.03, 25
    x0 = torch.randn(16, 2, generator=_gen(8), **F64)
    noise = Table(steps, (16, 2), seed=9)
    phys = M.overdamped(landscape, x0, steps, kT=kT, gamma=gamma, tau=tau, noise=noise)
    by_score = M.ula(E.energy_score(landscape, kT), x0, steps, kT * tau / gamma, noise=noise)
    x = x0
    for k in range(steps):  # gamma dx = -∇U dt + sqrt(2 gamma kT) dW, Euler-Maruyama by hand
        x = x - tau / gamma * E.value_and_grad(landscape, x)[1] + math.sqrt(2 * kT * tau / gamma) * noise(k, x)
        torch.testing.assert_close(phys.trace[k], x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(by_score.trace, phys.trace, rtol=1e-12, atol=1e-12)


def test_scores_of_other_kinds_plug_in_and_tempering_is_a_temperature():
    gm = toy_data.load("ring8")
    x0 = gm.sample(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    noise = Table(20, (32, 2), seed=11)
    U = E.mixture(gm, "ring8")
    ref = M.ula(E.energy_score(U, 2.0), x0, 20, 0.01, noise=noise).trace
    exact = E.fixed_time(lambda x, t: gm.score(x), 0.0)  # a ScoreFn (x, t) read at one time
    hot = M.ula(E.tempered(exact, 2.0), x0, 20, 0.01, noise=noise).trace  # p^(1/2) = Boltzmann at kT = 2
    torch.testing.assert_close(hot, ref, rtol=1e-10, atol=1e-10)
    cold = M.ula(E.tempered(E.energy_score(U, 1.0), 0.5), x0, 20, 0.01, noise=noise).trace
    torch.testing.assert_close(cold, M.ula(E.energy_score(U, 0.5), x0, 20, 0.01, noise=noise).trace)


@pytest.mark.parametrize("sampler", ["ula", "mala", "baoab", "anneal"])
def test_chains_do_not_depend_on_the_batch_and_the_generator_fixes_them(sampler):
    landscape = E.muller_brown()
    b, steps = 24, 30
    x0 = landscape.x_min.to(DEVICE) + 0.1 * torch.randn(b, 2, generator=_gen(12), **F64)
    step = torch.linspace(5e-5, 2e-4, b, **F64)  # per-chain steps
    run = {
        "ula": lambda x, s, **kw: M.ula(E.energy_score(landscape, 10.0), x, steps, s, **kw).trace,
        "mala": lambda x, s, **kw: M.mala(landscape, x, steps, kT=10.0, step=s * 20, warmup=10, **kw).trace,
        "baoab": lambda x, s, **kw: M.baoab(landscape, x, steps, kT=10.0, tau=s * 30, gamma=5.0, **kw).trace,
        "anneal": lambda x, s, **kw: M.anneal(landscape, x, steps, kT0=30.0, kT1=1.0, tau=s, restarts=2, **kw).x_best,
    }[sampler]
    full = run(x0, step, noise=Table(2 * steps + 1, (b, 2), seed=13))
    rows = torch.tensor([3, 17, 5, 20], device=DEVICE)
    part = run(x0[rows], step[rows], noise=Table(2 * steps + 1, (b, 2), seed=13, rows=rows))
    torch.testing.assert_close(part, full[..., rows, :], rtol=0, atol=0)
    a = run(x0, step, generator=_gen(14))
    torch.testing.assert_close(run(x0, step, generator=_gen(14)), a, rtol=0, atol=0)
    assert not torch.equal(run(x0, step, generator=_gen(15)), a)


def test_mala_step_is_frozen_after_warm_up():
    landscape = E.double_well(1)
    x0 = torch.zeros(64, 1, **F64)
    noise = Table(2 * 60, (64, 1), seed=16)
    full = M.mala(landscape, x0, 60, kT=0.5, step=0.5, warmup=30, noise=noise)
    head = M.mala(landscape, x0, 30, kT=0.5, step=0.5, warmup=30, noise=noise)
    tail = M.mala(landscape, head.x, 30, kT=0.5, step=head.step, noise=lambda k, like: noise(k + 60, like))
    torch.testing.assert_close(tail.x, full.x, rtol=0, atol=0)
    torch.testing.assert_close(full.step, head.step, rtol=0, atol=0)


# -- annealing ---------------------------------------------------------------------------------------------------


def test_slow_annealing_finds_the_lower_well_and_fast_annealing_less_often():
    # Double well with minima -0.254 (x = -1.03) and +0.236 (x = 0.97); every chain starts in the upper well.
    # Measured (1000 chains, 3 seeds): geometric 1 -> 0.01 over 600 steps reaches the lower well in 0.76-0.78 of
    # the chains, over 40 steps in 0.07-0.09. Asserted with margins of over 5 standard errors (500 chains).
    landscape = E.double_well(1, tilt=0.25)
    x0 = torch.full((500, 1), 0.97, **F64)
    rate = {}
    for n in (600, 40):
        out = M.anneal(landscape, x0, n, kT0=1.0, kT1=0.01, tau=0.05, schedule="geometric", generator=_gen(17))
        assert out.evals == n + 1
        torch.testing.assert_close(out.u_best, landscape(out.x_best))
        assert bool((out.u_best <= out.u).all())
        rate[n] = float((out.u_best < landscape.u_min + 0.1).double().mean())
    assert rate[600] > 0.65, rate
    assert rate[40] < 0.25, rate


def test_cooling_schedules_run_from_kT0_to_kT1():
    for name in M.SCHEDULES:
        kTs = M.cooling(name, 2.0, 0.01, 50)
        assert kTs[0] == pytest.approx(2.0) and kTs[-1] == pytest.approx(0.01) and len(kTs) == 50
        assert all(a >= b for a, b in zip(kTs, kTs[1:]))
    geo = M.cooling("geometric", 2.0, 0.02, 3)
    assert geo == pytest.approx([2.0, 0.2, 0.02])


# -- references and diagnostics ----------------------------------------------------------------------------------


def test_quadrature_references_match_closed_forms():
    ref = E.reference(E.rosenbrock(1.0, 5.0), 0.8, grid=1001)  # x ~ N(1, kT / 2), y | x ~ N(x², kT / 10)
    v = 0.8 / 2
    assert ref.mean_energy == pytest.approx(0.8, abs=1e-7)
    assert ref.log_z == pytest.approx(math.log(math.pi * 0.8 / math.sqrt(5.0)), abs=1e-7)  # ∫∫ e^{-U/kT}
    assert ref.mean == pytest.approx([1.0, 1 + v], abs=1e-7)
    assert ref.second_moment == pytest.approx([1 + v, 1 + 6 * v + 3 * v**2 + 0.08], abs=1e-6)
    dw = E.reference(E.double_well(2, tilt=0.25, stiffness=2.0), 0.5, grid=801)
    one = E.reference(E.double_well(1, tilt=0.25), 0.5)
    assert dw.mean_energy == pytest.approx(one.mean_energy + 0.25, abs=1e-7)  # + kT / 2 from the harmonic axis
    assert dw.occupancy == pytest.approx(one.occupancy, abs=2e-4)
    draws = one.sample(200000, generator=torch.Generator().manual_seed(0))
    assert float((draws[:, 0] < 0).double().mean()) == pytest.approx(one.occupancy[0], abs=4e-3)
    mb = E.muller_brown()
    assert mb.u_min == pytest.approx(-146.6995, abs=1e-3)
    assert mb.x_min.tolist() == pytest.approx([-0.5582, 1.4417], abs=1e-3)


def test_ess_and_rhat_on_ar1_chains_with_known_autocorrelation():
    rng = np.random.default_rng(0)
    n, m, phi = 2000, 100, 0.6
    z = rng.standard_normal((n, m))
    a = np.empty_like(z)
    a[0] = z[0] / math.sqrt(1 - phi**2)
    for t in range(1, n):
        a[t] = phi * a[t - 1] + z[t]
    expected = n * m * (1 - phi) / (1 + phi)  # integrated autocorrelation time (1 + phi) / (1 - phi)
    assert ess(a) == pytest.approx(expected, rel=0.06)
    assert ess_bulk(a) == pytest.approx(expected, rel=0.06)
    assert rhat(a) < 1.01
    shifted = a + np.linspace(0, 2, m)[None]  # chains that disagree: R-hat = sqrt(1 + (1/3) / 1.56)
    assert rhat(shifted) > 1.05


# -- bad input ---------------------------------------------------------------------------------------------------


def test_bad_input_names_the_value():
    U = E.harmonic(1)
    x = torch.zeros(4, 1, **F64)
    for kT in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="kT must be a positive finite number"):
            M.mala(U, x, 3, kT=kT, step=0.1)
        with pytest.raises(ValueError, match="kT must be a positive finite number"):
            E.energy_score(U, kT)
    with pytest.raises(ValueError, match="gamma must be a positive finite number, got 0"):
        M.baoab(U, x, 3, tau=0.1, gamma=0.0)
    with pytest.raises(ValueError, match="gamma must be a positive finite number, got -1"):
        M.overdamped(U, x, 3, kT=1.0, tau=0.1, gamma=-1.0)
    with pytest.raises(ValueError, match="step must be a positive finite number, got 0"):
        M.ula(E.energy_score(U), x, 3, 0.0)
    with pytest.raises(ValueError, match="step must be positive and finite"):
        M.mala(U, x, 3, step=torch.tensor([0.1, -0.1, 0.1, 0.1]))
    with pytest.raises(ValueError, match="tau must be a positive finite number, got -0.1"):
        M.baoab(U, x, 3, tau=-0.1)
    with pytest.raises(ValueError, match=r"the energy must return shape \(B,\) = \(4,\) .* got \(4, 1\)"):
        M.mala(lambda y: 0.5 * y.square(), x, 3, step=0.1)
    with pytest.raises(ValueError, match="unknown cooling schedule 'cubic'"):
        M.anneal(U, x, 3, kT0=1.0, kT1=0.1, tau=0.1, schedule="cubic")
    with pytest.raises(ValueError, match="kT1 = 2.0 must not exceed kT0 = 1.0"):
        M.anneal(U, x, 3, kT0=1.0, kT1=2.0, tau=0.1)
    with pytest.raises(ValueError, match="unknown energy 'nope'"):
        E.get("nope")


class _Poisoned:
    """0.5 x², except that evaluation number `at` returns `value` for chain `chain`."""

    def __init__(self, at: int, chain: int, value: float):
        self.calls, self.at, self.chain, self.value = 0, at, chain, value

    def __call__(self, x):
        u = 0.5 * x.square().sum(1)
        if self.calls == self.at:
            u = u + torch.zeros_like(u).index_fill(0, torch.tensor([self.chain], device=x.device), self.value)
        self.calls += 1
        return u


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_energies_name_the_chain_and_the_step(value):
    x = torch.zeros(8, 1, **F64)
    # evaluation 0 is the initial state (step 0); evaluation k + 1 the proposal or state of step k + 1
    message = rf"the energy or its gradient is NaN or inf at chain 5, step 4 \(value {value}"
    with pytest.raises(ValueError, match=message):
        M.mala(_Poisoned(4, 5, value), x, 10, step=0.1, generator=_gen(0))
    with pytest.raises(ValueError, match="at chain 2, step 7"):
        M.baoab(_Poisoned(7, 2, value), x, 10, tau=0.1, generator=_gen(0))
    poisoned = _Poisoned(3, 6, value)
    with pytest.raises(ValueError, match=rf"the score is NaN or inf at chain 6, step 3 \(value {value}"):
        M.ula(lambda y: -y + (poisoned(y) - 0.5 * y.square().sum(1))[:, None], x, 10, 0.1, generator=_gen(0))


# -- reports and the command line --------------------------------------------------------------------------------


def test_langevin_report_measures_against_the_exact_answer_and_writes_pngs(tmp_path):
    from scoresde.evaluation.langevin import anneal_report, format_anneal, format_langevin, langevin_report

    r = langevin_report("harmonic", 0.5, "mala", 400, 300, dim=1, seed=1, out=tmp_path)
    rows = {row["stat"]: row for row in r["rows"]}
    assert rows["mean_energy"]["exact"] == 0.25 and rows["x2[0]"]["exact"] == 0.5
    assert all(abs(row["z"]) < 4.5 for row in r["rows"]), r["rows"]
    assert r["ess_min"] > 400 and r["ess_per_s"] > 0 and 0.45 < r["accept"] < 0.7
    assert "mean_energy" in format_langevin(r)
    assert [p.rsplit("/", 1)[-1] for p in r["files"]] == ["harmonic_mala_histogram.png", "harmonic_mala_traces.png"]
    assert all((tmp_path / p.rsplit("/", 1)[-1]).stat().st_size > 1000 for p in r["files"])
    a = anneal_report("double_well", 1, "linear", chains=200, steps=300, kT0=1.0, seed=0)
    assert a["success"] > 0.8 and a["evals"] == 301 and "success rate" in format_anneal(a)
    with pytest.raises(ValueError, match="unknown sampler 'hmc'"):
        langevin_report("harmonic", 0.5, "hmc", 10, 10)


def test_cli_langevin_and_anneal_print_tables_and_fail_in_one_line(capsys, tmp_path):
    cli = pytest.importorskip("scoresde.cli", reason="scoresde.cli does not import on this tree (training rewrite)",
                              exc_type=ImportError)
    assert cli.main(["langevin", "--energy", "double_well", "--kT", "0.5", "--chains", "50", "--steps", "100",
                     "--out", str(tmp_path)]) == 0
    assert "mean_energy" in capsys.readouterr().out
    assert cli.main(["anneal", "--energy", "rastrigin", "--dim", "2", "--chains", "20", "--steps", "50"]) == 0
    assert "success rate" in capsys.readouterr().out
    assert cli.main(["langevin", "--kT", "0", "--out", str(tmp_path)]) == 2  # not the default runs/langevin
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kT must be a positive finite number, got 0.0" in err
