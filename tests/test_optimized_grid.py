"""schedules.optimized: a time grid placed on a pilot batch to minimise a sampler's error against a tight ODE solution."""

import pytest
import torch

import toy_data
from scoresde import VE, VP
from scoresde.samplers import dpm_solver_pp, probability_flow, unipc
from scoresde.samplers.registry import GRIDS, SAMPLERS
from scoresde.samplers.tuning import PILOT_SEED, data_scale, optimized
from scoresde.schedules import scaled_log_snr, uniform_log_snr

from .conftest import DEVICE


def _pilot(process, n, seed):
    return process.prior((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(DEVICE)


@pytest.mark.parametrize("process", [VP(), VE(0.01, 10.0)], ids=["vp", "ve"])
def test_grid_is_decreasing_between_the_ends_with_n_steps_and_deterministic(process):
    score = toy_data.load("ring8").score_fn(process)
    kw = dict(max_evals=20)
    ts = optimized(process, 5, score, dpm_solver_pp, _pilot(process, 50, 3), **kw)
    assert ts.dtype == torch.float64 and ts.shape == (6,)
    assert float(ts[0]) == process.t_max and float(ts[-1]) == process.t_min
    assert bool((ts[1:] < ts[:-1]).all())
    again = optimized(process, 5, score, dpm_solver_pp, (50, 2), generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(ts, again)  # a pilot shape with a seeded generator draws the same batch (float64, CPU)


def test_beats_uniform_log_snr_against_the_reference_ode_solution():
    """On an exact-score mixture, a grid placed on one pilot batch lowers the error on an independent batch, below
    uniform log-SNR and below the best of the initial grids (so Nelder-Mead, not the choice of start, does it), in
    distance and in the exact log-density of the end points."""
    process = VP()
    target = toy_data.load("aniso")
    score = target.score_fn(process)
    n = 7  # NFE 8 with the final denoising step
    ts = optimized(process, n, score, unipc, _pilot(process, 300, 11), max_evals=300)
    x = _pilot(process, 2000, 12)
    ref = probability_flow(score, process, x, uniform_log_snr(process, 1), method="dopri5", rtol=1e-9, atol=1e-9)
    log_p_ref = target.log_prob(ref)

    def errors(grid):  # (RMS distance, mean |log-density change|) to the ODE map
        out = unipc(score, process, x, grid)
        return float(((out - ref) ** 2).sum(1).mean().sqrt()), float((target.log_prob(out) - log_p_ref).abs().mean())

    (base, _), (opt, opt_logp) = errors(uniform_log_snr(process, n)), errors(ts)
    assert opt < 0.5 * base, (opt, base)  # measured: 0.112 vs 0.282
    scale = data_scale(score, process, _pilot(process, 300, 11))
    inits = [errors(GRIDS[g](process, n)) for g in ("uniform_log_snr", "karras", "uniform_t")]
    inits.append(errors(scaled_log_snr(process, n, scale)))
    best_init, best_init_logp = min(e[0] for e in inits), min(e[1] for e in inits)
    assert opt < 0.8 * best_init, (opt, best_init)  # measured: 0.112 vs 0.178 (scaled_log_snr)
    # measured: 0.126 vs 0.273 nats (scaled_log_snr); fitted to the distance alone: 0.167 (> 0.55 x 0.273 = 0.150)
    assert opt_logp < 0.55 * best_init_logp, (opt_logp, best_init_logp)


def test_float32_pilot_on_the_test_device_gives_a_float64_grid():
    process = VP()
    score = toy_data.load("ring8").score_fn(process)
    spec = SAMPLERS["ddim"]
    ts = spec.grid_for(process, 6, "optimized", score=score, pilot=100, dtype=torch.float32, device=DEVICE,
                       max_evals=40)
    assert ts.dtype == torch.float64 and ts.device.type == "cpu" and ts.shape == (spec.steps_for(6) + 1,)
    assert bool((ts[1:] < ts[:-1]).all()) and float(ts[0]) == process.t_max and float(ts[-1]) == process.t_min


def test_few_steps_and_samplerspec_grid_for():
    process = VP()
    score = toy_data.load("ring8").score_fn(process)
    assert torch.equal(optimized(process, 1, score, unipc, (10, 2)), uniform_log_snr(process, 1))
    spec = SAMPLERS["dpm_solver_pp"]
    ts = spec.grid_for(process, 6, "optimized", score=score, pilot=50, max_evals=30, order=3)
    assert ts.shape == (spec.steps_for(6) + 1,)
    assert "optimized" in GRIDS and isinstance(PILOT_SEED, int)


def test_bad_input_is_a_clear_error():
    process = VP()
    score = toy_data.load("ring8").score_fn(process)
    with pytest.raises(ValueError, match="-1"):
        optimized(process, -1, score, unipc, (10, 2))
    with pytest.raises(ValueError, match="max_evals"):
        optimized(process, 4, score, unipc, (10, 2), max_evals=0)
    with pytest.raises(ValueError, match="'nope'"):
        optimized(process, 4, score, unipc, (10, 2), inits=("nope",))
    with pytest.raises(ValueError, match="callable"):
        optimized(process, 4, score, "unipc", (10, 2))
    with pytest.raises(ValueError, match="needs the score"):
        SAMPLERS["unipc"].grid_for(process, 10, "optimized")
    with pytest.raises(ValueError, match="stochastic"):
        SAMPLERS["ancestral"].grid_for(process, 10, "optimized", score=score)
    with pytest.raises(ValueError, match="order must be 1, 2 or 3, got 7"):  # not swallowed as an infeasible grid
        optimized(process, 4, score, dpm_solver_pp, (10, 2), max_evals=5, order=7)
    with pytest.raises(ValueError, match="pilot.*got 0"):
        SAMPLERS["unipc"].grid_for(process, 10, "optimized", score=score, pilot=0)
    with pytest.raises(ValueError, match="max_evals.*'karras'"):  # options of the optimised grid, not ignored
        SAMPLERS["unipc"].grid_for(process, 10, "karras", max_evals=30)


def test_compare_takes_the_optimized_grid(tmp_path, capsys):
    import json

    from scoresde.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--samplers", "ddim", "--nfe", "3", "--n", "200", "--pairwise-n", "100", "--grid",
                 "optimized", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert [(r["sampler"], r["nfe"], r["grid"]) for r in data["records"]] == [("ddim", 3, "optimized")]


def test_a_non_finite_score_at_t_min_is_an_error_not_a_silent_start_grid():
    """The fit's log-density term evaluates the score at t_min on the ODE map's end points and on the first init
    grid's end points: a NaN there is a ValueError, not a loss of inf for every grid (which returned the start grid
    without a word)."""
    process = VP()
    exact = toy_data.load("ring8").score_fn(process)
    a_min = float(process.alpha(torch.tensor([process.t_min], dtype=torch.float64)))
    x = _pilot(process, 50, 3)
    ref = probability_flow(exact, process, x, uniform_log_snr(process, 1), method="dopri5", rtol=1e-6, atol=1e-6)
    first = unipc(exact, process, x, scaled_log_snr(process, 4, data_scale(exact, process, x)))  # the first init

    def nan_at(points):
        def score(y, t):
            s = exact(y, t)
            if bool((t == process.t_min).all()) and torch.allclose(y, a_min * points):
                s = s.clone()
                s[0] = float("nan")
            return s
        return score

    with pytest.raises(ValueError, match="NaN or inf at t_min = 0.001 on the pilots' ODE end points"):
        optimized(process, 4, nan_at(ref), unipc, x, max_evals=10)
    with pytest.raises(ValueError, match="NaN or inf at t_min = 0.001 on the sampler's end points"):
        optimized(process, 4, nan_at(first), unipc, x, max_evals=10)


def test_nelder_mead_starts_from_a_simplex_of_the_given_step():
    """scipy's default first simplex moves a zero coordinate by 0.00025 only; the fit's moves each by `step`."""
    import numpy as np

    from scoresde.samplers.tuning import _nelder_mead

    seen = []

    def loss(v):
        seen.append(np.array(v, dtype=float))
        return float(((np.asarray(v) - 1.0) ** 2).sum())

    start = np.zeros(3)
    best = _nelder_mead(loss, start, loss(start), maxfev=60, step=0.3)
    moves = sorted(float(np.abs(p - start).max()) for p in seen[1:5])  # the simplex's other three vertices
    assert moves[-3:] == pytest.approx([0.3, 0.3, 0.3])
    assert loss(best) < loss(start)
