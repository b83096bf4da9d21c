"""scoresde.testing: a user's own process is checked by one call; every zoo mutant is caught, every correct model
passes (hypothesis), and every check fails on a broken version of what it checks."""

import ast
import importlib
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scoresde import VP, DiscreteVP, Process
from scoresde.testing import (EXACT_CHECKS, LEARNED_CHECKS, PROCESS_CHECKS, CheckFailed, check_exact_score,
                              check_learned, check_process, noisy_batch, sample_times, zoo)
from scoresde.testing.strategies import batches, devices, dtypes, mixtures, processes, seeds, times
from toy_data import GaussianMixture

from .conftest import DEVICE

ROOT = Path(__file__).resolve().parents[1]


class Cosine(Process):
    """A user's process, written by hand: alpha = cos(pi t / 2), sigma = sin(pi t / 2), with its SDE in closed form
    (f = d log alpha/dt = -(pi/2) tan(pi t/2), g² = d sigma²/dt - 2 f sigma² = pi tan(pi t/2))."""

    def __init__(self, bug: str | None = None):
        self.t_min, self.t_max, self.bug = 1e-3, 0.999, bug

    def __repr__(self) -> str:
        return f"Cosine(bug={self.bug!r})"

    def _alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def _sigma(self, t):
        return torch.sin(0.5 * math.pi * t)

    def _f(self, t):
        f = -0.5 * math.pi * torch.tan(0.5 * math.pi * t)
        return 2 * f if self.bug == "f" else f  # bug: the chain rule's 1/2 forgotten

    def _g2(self, t):
        g2 = math.pi * torch.tan(0.5 * math.pi * t)
        # bug: a typo in one branch of a piecewise closed form, wrong only for 0.3 < t < 0.4
        return torch.where((t > 0.3) & (t < 0.4), 1.01 * g2, g2) if self.bug == "g2" else g2


def test_a_users_process_is_checked_by_one_call():
    report = check_process(Cosine(), device=DEVICE)
    report.assert_ok()
    assert {c.key for c in report} == set(PROCESS_CHECKS) - {"ddpm_marginal", "ddpm_posterior"}


def test_a_wrong_derivative_names_the_identity_and_the_time():
    with pytest.raises(CheckFailed) as info:
        check_process(Cosine(bug="f")).assert_ok()
    message = str(info.value)
    assert "1 of 9 checks failed" in message and "d log alpha/dt = f" in message and "at t=" in message
    # a bug confined to 0.3 < t < 0.4 is reported there, and only the diffusion identity fails
    report = check_process(Cosine(bug="g2"))
    assert [c.key for c in report.failures] == ["diffusion"]
    where = report["diffusion"].where["t"]
    assert 0.3 < where < 0.4 and report["diffusion"].statistic > report["diffusion"].tolerance
    with pytest.raises(CheckFailed, match=r"d\(sigma²\)/dt = 2 f sigma² \+ g².* at t=0\.3\d*"):
        report.assert_ok()


@settings(max_examples=12)
@given(processes(), seeds)
def test_correct_processes_pass(process, seed):
    check_process(process, seed=seed, device=DEVICE).assert_ok()


@settings(max_examples=4)
@given(processes(), mixtures(), seeds)
def test_correct_scores_and_views_pass(process, mixture, seed):
    zoo.check_correct("score", process, mixture, seed=seed).assert_ok()
    zoo.check_correct("views", process, mixture, seed=seed).assert_ok()


# -- the zoo ---------------------------------------------------------------------------------------------------------
# processes to draw for each mutant: those it applies to
_KINDS = {"ddpm_betas_not_rescaled": ("ddpm",), "ddpm_off_by_one": ("ddpm", "ddpm-cosine", "ddpm-custom"),
          "alpha_bar_for_alpha": ("ddpm", "ddpm-cosine", "ddpm-custom"), "wrong_beta_schedule": ("vp", "subvp"),
          "unit_prior": ("ve",), "drift_sign_flip": ("vp", "subvp", "ddpm", "ddpm-cosine", "ddpm-custom"),
          "perturb_missing_alpha": ("vp", "subvp", "ddpm", "ddpm-cosine", "ddpm-custom"),
          "score_missing_alpha": ("vp", "subvp", "ddpm", "ddpm-cosine", "ddpm-custom")}


def _assert_caught(mutant, process, mixture, seed):
    assume(mutant.applies(process, mixture))
    report = mutant.check(process, mixture, seed=seed, likelihood=False)
    missed = [k for k in mutant.caught_by if k != "likelihood" and report[k].ok]
    assert not missed, f"{mutant.name} on {process!r} passed {missed}:\n{report}"


@pytest.mark.parametrize("mutant", [m for m in zoo.MUTANTS if m.target == "process"], ids=lambda m: m.name)
def test_every_process_mutant_is_caught(mutant):
    @settings(max_examples=4)
    @given(processes(kinds=_KINDS.get(mutant.name)), seeds)
    def run(process, seed):
        _assert_caught(mutant, process, None, seed)

    run()


@pytest.mark.parametrize("mutant", [m for m in zoo.MUTANTS if m.target != "process"], ids=lambda m: m.name)
def test_every_score_mutant_is_caught(mutant):
    @settings(max_examples=2)
    @given(processes(kinds=_KINDS.get(mutant.name)), mixtures(min_dim=2 if mutant.name == "non_conservative" else 1),
           seeds)
    def run(process, mixture, seed):
        _assert_caught(mutant, process, mixture, seed)

    run()


def test_the_zoo_covers_every_check():
    caught = {k for m in zoo.MUTANTS for k in m.caught_by}
    assert caught == set(PROCESS_CHECKS) | set(EXACT_CHECKS) | set(LEARNED_CHECKS)
    assert len({m.name for m in zoo.MUTANTS}) == len(zoo.MUTANTS)
    with pytest.raises(ValueError, match="'nope'"):
        zoo.get("nope")


def test_likelihood_solvers_agree_on_a_smooth_score_and_not_on_a_rough_one():
    process = VP()
    mixture = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[[0.25]], [[0.25]]])
    data = mixture.sample(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(checks=("likelihood",), likelihood_steps=16, likelihood_rtol=1e-3)
    check_learned(mixture.score_fn(process), process, data, **kw).assert_ok()
    rough = zoo.get("time_quantised").build(process, mixture)
    bad = check_learned(rough, process, data, **kw)["likelihood"]
    assert not bad.ok and bad.statistic > 3 * bad.tolerance


# -- reports and strategies ------------------------------------------------------------------------------------------
def test_learned_report_tracks_levels_and_names_the_worst():
    mixture = GaussianMixture([1.0], [[0.0, 0.0]], [torch.eye(2).tolist()])
    process = VP()
    data = mixture.sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    broken = zoo.get("wrong_temperature").build(process, mixture)
    report = check_learned(broken, process, data, checks=("fokker_planck", "views"), levels=3)
    fp = report["fokker_planck"]
    assert len(fp.details["value"]) == 3 and fp.statistic == max(fp.details["value"])
    assert fp.where["t"] in fp.details["t"] and not fp.ok
    assert report["views"].ok and set(report["views"].details) == {"t", "eps", "x0", "v"}
    assert report.to_dict()["checks"][0]["key"] == "fokker_planck"
    with pytest.raises(ValueError, match="unknown checks"):
        check_learned(broken, process, data, checks=("symmetry",))
    with pytest.raises(ValueError, match="'epsilon'"):
        check_learned(broken, process, data, views={"epsilon": broken})


@settings(max_examples=6)
@given(processes(), mixtures(), dtypes(), devices(), seeds, st.data())
def test_strategies_respect_range_dtype_and_device(process, mixture, dtype, device, seed, data):
    t = data.draw(times(process, 8, interior=True, device=device, dtype=dtype))
    x, tb = data.draw(batches(mixture, process, device=device, dtype=dtype))
    for v in (t, x, tb):
        assert v.dtype == dtype and v.device.type == torch.device(device).type
    process.check_t(t.cpu().double())
    assert x.shape == (tb.shape[0], mixture.dim)
    # float32 scores of the exact mixture pass at float32's precision
    xs, ts = noisy_batch(mixture, process, 8, seed, device=device, dtype=dtype)
    rtol = 1e-6 if dtype == torch.float64 else 3e-3
    check_exact_score(mixture.score_fn(process), process, mixture=mixture, x=xs, t=ts, rtol=rtol).assert_ok()


def test_discrete_interior_times_avoid_the_knots():
    process = DiscreteVP.linear(50)
    u = sample_times(process, 200, 3, interior=True) * 50
    frac = u - u.floor()
    assert (frac > 0.04).all() and (frac < 0.96).all() and (u > 1).all()


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of the modules a source file imports ("strategies" for `from . import strategies` too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {(node.module or "").split(".")[0]} | {a.name for a in node.names}
            names |= {node.module.split(".")[-1]} if node.module else set()
    return names


def test_hypothesis_stays_optional(monkeypatch):
    """Only scoresde/testing/strategies.py imports hypothesis, and nothing imports it; without hypothesis the checks
    import and run, and the strategies alone raise an ImportError that says what to install."""
    imports = {p.relative_to(ROOT).as_posix(): _imported_modules(p) for p in (ROOT / "scoresde").rglob("*.py")}
    assert [f for f, names in imports.items() if "hypothesis" in names] == ["scoresde/testing/strategies.py"]
    # nothing imports the strategies (strategies.py itself imports hypothesis.strategies)
    assert [f for f, names in imports.items() if "strategies" in names] == ["scoresde/testing/strategies.py"]
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # as if hypothesis were not installed
    for name in [n for n in sys.modules if n.startswith("scoresde.testing")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(sys.modules["scoresde"], "testing")
    fresh = importlib.import_module("scoresde.testing")
    fresh.check_process(VP()).assert_ok()
    with pytest.raises(ImportError, match=r"pip install 'scoresde\[test\]'"):
        importlib.import_module("scoresde.testing.strategies")


# README's example of this section ("Property-test your own model") runs in tests/test_readme.py with the other
# README blocks, which also checks that its printed check_learned report has no FAIL.
