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
    uniform log-SNR and below the best of the initial grids (so Nelder-Mead, not the choice of start, does it)."""
    process = VP()
    target = toy_data.load("aniso")
    score = target.score_fn(process)
    n = 7  # NFE 8 with the final denoising step
    ts = optimized(process, n, score, unipc, _pilot(process, 300, 11), max_evals=200)  # the default (--grid optimized)
    x = _pilot(process, 500, 12)
    ref = probability_flow(score, process, x, uniform_log_snr(process, 1), method="dopri5", rtol=1e-9, atol=1e-9)

    def rms(grid):
        return float(((unipc(score, process, x, grid) - ref) ** 2).sum(1).mean().sqrt())

    base, opt = rms(uniform_log_snr(process, n)), rms(ts)
    assert opt < 0.5 * base, (opt, base)  # measured: 0.108 vs 0.281 (0.095 with 300 evaluations)
    scale = data_scale(score, process, _pilot(process, 300, 11))
    best_init = min([rms(GRIDS[g](process, n)) for g in ("uniform_log_snr", "karras", "uniform_t")]
                    + [rms(scaled_log_snr(process, n, scale))])
    assert opt < 0.8 * best_init, (opt, best_init)  # measured: 0.108 vs 0.175 (scaled_log_snr)


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
