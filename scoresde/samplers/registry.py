"""Names -> samplers and grids, for the CLI and benchmarks only (a name is the function's name).

`SAMPLERS[name]` says how to spend an NFE budget: NFE = evals_per_step * steps + extra + 1 (the final denoising
evaluation), on the sampler's default grid from `GRIDS`. Two grids need the score: "scaled_log_snr" (the data's
scale, estimated by tuning.data_scale from one evaluation on a pilot batch) and "optimized" (fitted on a pilot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..processes import Process
from ..schedules import ddpm_steps, karras, scaled_log_snr, uniform_log_snr, uniform_t
from ..score import ScoreFn
from .langevin import annealed_langevin
from .ode import ddim, dpm_solver_pp, euler, heun, probability_flow
from .sde import ancestral, dpm_solver_pp_sde, euler_maruyama, predictor_corrector
from .tuning import ancestral_analytic, data_scale, optimized, pilot_batch
from .unipc import unipc

__all__ = ["SAMPLERS", "GRIDS", "SamplerSpec", "get_sampler"]

GRIDS: dict[str, Callable] = {g.__name__: g for g in (uniform_t, uniform_log_snr, karras, ddpm_steps, scaled_log_snr,
                                                       optimized)}


Plan = Callable[..., tuple[int, dict, int]]  # (NFE budget, **fixed options) -> (steps, options, NFE spent)


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler with its default grid and its cost per step: NFE = evals_per_step * steps + extra + 1, or, for a
    sampler whose options depend on the budget, `plan(budget, **options) -> (steps, options, NFE spent)` (an option
    fixed in `options` is kept, and the plan spends the budget around it). Budgets below `min_nfe` are refused: the
    samplers that spend several evaluations on a step (heun, predictor_corrector, probability_flow's rk4) are given
    at least 7 steps (on uniform_log_snr over a VP range, a factor of at most ~4 in sigma/alpha per step); with
    fewer, their quality was erratic in the budget rather than better with it on the scale-robustness targets
    (RESULTS_samplers.md, where the thresholds were measured). The functions themselves take any grid."""

    fn: Callable
    grid: str
    evals_per_step: int = 1
    extra: int = 0
    deterministic: bool = False
    options: dict = field(default_factory=dict)
    plan: Plan | None = None
    min_nfe: int = 1

    @property
    def name(self) -> str:
        return self.fn.__name__

    def budget(self, nfe: int) -> tuple[int, dict, int]:
        """(steps, options, NFE spent) for an NFE budget: the most steps whose NFE, with the final denoising
        evaluation, fits in it."""
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
            raise ValueError(f"NFE must be a positive integer, got {nfe!r}")
        if nfe < self.min_nfe:
            raise ValueError(f"{self.name} needs NFE >= {self.min_nfe}, got NFE = {nfe}: with fewer steps its quality "
                             f"is erratic in the budget rather than better with it; below it use a sampler of one "
                             f"evaluation per step (unipc, dpm_solver_pp, euler; stochastic: dpm_solver_pp_sde, "
                             f"ancestral)")
        if self.plan is not None:
            steps, options, spent = self.plan(nfe, **self.options)
        else:
            steps, options = (nfe - 1 - self.extra) // self.evals_per_step, {}
            spent = self.evals_per_step * steps + self.extra + 1
        if steps < 0:
            need = next(b for b in range(nfe + 1, nfe + 10_000) if self.budget(b)[0] >= 0)
            raise ValueError(f"NFE = {nfe} is too small for {self.name}: it needs at least {need}")
        return steps, {**self.options, **options}, spent

    def steps_for(self, nfe: int) -> int:
        """The steps an NFE budget buys."""
        return self.budget(nfe)[0]

    def spent(self, nfe: int) -> int:
        """The NFE a budget buys (at most the budget; what CountEvals measures)."""
        return self.budget(nfe)[2]

    def grid_for(
        self,
        process: Process,
        nfe: int,
        grid: str | None = None,
        *,
        score: ScoreFn | None = None,
        shape: tuple[int, ...] = (2,),
        pilot: int = 1000,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        **options,
    ) -> torch.Tensor:
        """The grid `grid` (default: this sampler's) for an NFE budget. "scaled_log_snr" takes `data_scale=` or
        estimates it from the score (tuning.data_scale: one evaluation on `pilot` prior samples of event shape
        `shape`, tuning.pilot_batch; without either it is uniform_log_snr); "optimized" needs the score and fits the grid on that pilot batch, options
        going to tuning.optimized. Options for any other grid are an error."""
        name = grid or self.grid
        if name not in GRIDS:
            raise ValueError(f"unknown grid {name!r}; choose from {', '.join(GRIDS)}")
        steps = self.steps_for(nfe)
        allowed = {"scaled_log_snr": {"data_scale"}, "optimized": set(options)}.get(name, set())
        if set(options) - allowed:
            raise ValueError(f"options {sorted(set(options) - allowed)} are not for the {name!r} grid")
        if name not in ("scaled_log_snr", "optimized"):
            return GRIDS[name](process, steps)
        if name == "scaled_log_snr" and options.get("data_scale") is not None:
            return scaled_log_snr(process, steps, options["data_scale"])
        if score is None and name == "scaled_log_snr":  # no score to read the data's scale from: the scale-free
            return uniform_log_snr(process, steps)       # uniform log-SNR grid, which converges for any data too
        if score is None:
            raise ValueError("the 'optimized' grid needs the score function (grid_for(..., score=score))")
        like = torch.empty((1, *shape), dtype=dtype, device=device or "cpu")
        x = pilot_batch(process, pilot, like)
        if name == "scaled_log_snr":
            return scaled_log_snr(process, steps, data_scale(score, process, x))
        if not self.deterministic:
            raise ValueError(f"the 'optimized' grid is for deterministic samplers; {self.name} is stochastic")
        return optimized(process, steps, score, self, x, **options)

    def __call__(self, score, process, x, ts, *, nfe: int | None = None, **kw):
        """Run the sampler on the grid ts with this spec's options; with nfe (the budget ts was made for, by
        grid_for) also the budget's options (heun's euler_first, annealed_langevin's langevin_steps)."""
        options = self.options
        if nfe is not None:
            steps, options, _ = self.budget(nfe)
            if len(ts) != steps + 1:
                raise ValueError(f"NFE = {nfe} buys {self.name} {steps} steps; the grid has {len(ts) - 1}")
        return self.fn(score, process, x, ts, **{**options, **kw})


def _heun_plan(nfe: int, euler_first: bool | None = None, **_) -> tuple[int, dict, int]:
    """Heun steps and the final evaluation; an even budget's spare evaluation makes the first step Euler's."""
    if euler_first is None:
        euler_first = nfe % 2 == 0
    steps = (nfe - 1 + euler_first) // 2
    return steps, {"euler_first": euler_first}, 2 * steps + 1 - (euler_first and steps > 0)


def _annealed_langevin_plan(nfe: int, langevin_steps: int | None = None, **_) -> tuple[int, dict, int]:
    """About 4 sqrt(NFE) noise levels with round(sqrt(NFE - 1) / 4) >= 1 Langevin steps each: both grow with the
    budget (a fixed number of steps per level leaves one level at NFE 10, and too few levels at large NFE)."""
    m = max(1, round(math.sqrt(nfe - 1) / 4)) if langevin_steps is None else langevin_steps
    levels = (nfe - 1) // m
    return levels - 1, {"langevin_steps": m}, levels * m + 1


SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec(ancestral, "scaled_log_snr"),
    SamplerSpec(ancestral_analytic, "scaled_log_snr"),  # its pilot's evaluations count in the measured NFE
    SamplerSpec(euler_maruyama, "scaled_log_snr"),
    SamplerSpec(predictor_corrector, "scaled_log_snr", evals_per_step=2, min_nfe=15),  # 7 steps
    SamplerSpec(annealed_langevin, "scaled_log_snr", plan=_annealed_langevin_plan),
    SamplerSpec(dpm_solver_pp_sde, "scaled_log_snr"),
    SamplerSpec(probability_flow, "uniform_log_snr", evals_per_step=4, deterministic=True, min_nfe=29),  # 7 rk4 steps
    SamplerSpec(ddim, "scaled_log_snr", deterministic=True),
    SamplerSpec(euler, "scaled_log_snr", deterministic=True),
    SamplerSpec(heun, "uniform_log_snr", deterministic=True, plan=_heun_plan, min_nfe=15),  # 7 Heun steps
    SamplerSpec(dpm_solver_pp, "scaled_log_snr", deterministic=True),
    SamplerSpec(unipc, "scaled_log_snr", deterministic=True),
)}


def get_sampler(name: str) -> SamplerSpec:
    """Look a sampler up by name (CLI and benchmarks)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
