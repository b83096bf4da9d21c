"""Names -> samplers and grids, for the CLI and benchmarks only (a name is the function's name).

`SAMPLERS[name]` says how to spend an NFE budget: NFE = evals_per_step * steps + extra + 1 (the final denoising
evaluation), on the sampler's default grid from `GRIDS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..processes import Process
from ..schedules import ddpm_steps, jump_log_snr, karras, uniform_log_snr, uniform_t
from ..score import ScoreFn
from .langevin import annealed_langevin
from .ode import ddim, dpm_solver_pp, euler, heun, probability_flow
from .sde import ancestral, euler_maruyama, predictor_corrector
from .tuning import ancestral_analytic, optimized, pilot_batch
from .unipc import unipc

__all__ = ["SAMPLERS", "GRIDS", "SamplerSpec", "get_sampler"]

GRIDS: dict[str, Callable] = {g.__name__: g for g in (uniform_t, uniform_log_snr, karras, ddpm_steps, jump_log_snr,
                                                       optimized)}


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler with its default grid and its cost per step: NFE = evals_per_step * steps + extra + 1."""

    fn: Callable
    grid: str
    evals_per_step: int = 1
    extra: int = 0
    deterministic: bool = False
    options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.fn.__name__

    def steps_for(self, nfe: int) -> int:
        """The most steps whose NFE (with the final denoising evaluation) fits in the budget."""
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
            raise ValueError(f"NFE must be a positive integer, got {nfe!r}")
        steps = (nfe - 1 - self.extra) // self.evals_per_step
        if steps < 0:
            raise ValueError(f"NFE = {nfe} is too small for {self.name}: it needs at least {1 + self.extra}")
        return steps

    def nfe(self, steps: int) -> int:
        return self.evals_per_step * steps + self.extra + 1

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
        """The grid `grid` (default: this sampler's) for an NFE budget. "optimized" needs the score and fits the
        grid on `pilot` prior samples of event shape `shape` (tuning.pilot_batch); options go to tuning.optimized
        (and are an error with any other grid)."""
        name = grid or self.grid
        if name not in GRIDS:
            raise ValueError(f"unknown grid {name!r}; choose from {', '.join(GRIDS)}")
        if name != "optimized":
            if options:
                raise ValueError(f"options {sorted(options)} are for the 'optimized' grid, not {name!r}")
            return GRIDS[name](process, self.steps_for(nfe))
        if score is None:
            raise ValueError("the 'optimized' grid needs the score function (grid_for(..., score=score))")
        if not self.deterministic:
            raise ValueError(f"the 'optimized' grid is for deterministic samplers; {self.name} is stochastic")
        like = torch.empty((1, *shape), dtype=dtype, device=device or "cpu")
        return optimized(process, self.steps_for(nfe), score, self, pilot_batch(process, pilot, like), **options)

    def __call__(self, score, process, x, ts, **kw):
        return self.fn(score, process, x, ts, **{**self.options, **kw})


SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec(ancestral, "uniform_t"),
    SamplerSpec(ancestral_analytic, "jump_log_snr"),  # its pilot's evaluations count in the measured NFE
    SamplerSpec(euler_maruyama, "uniform_t"),
    SamplerSpec(predictor_corrector, "uniform_t", evals_per_step=2),
    SamplerSpec(annealed_langevin, "uniform_t", evals_per_step=5, extra=5, options={"langevin_steps": 5}),
    SamplerSpec(probability_flow, "uniform_log_snr", evals_per_step=4, deterministic=True),
    SamplerSpec(ddim, "uniform_log_snr", deterministic=True),
    SamplerSpec(euler, "karras", deterministic=True),
    SamplerSpec(heun, "karras", evals_per_step=2, deterministic=True),
    SamplerSpec(dpm_solver_pp, "uniform_log_snr", deterministic=True),
    SamplerSpec(unipc, "jump_log_snr", deterministic=True),
)}


def get_sampler(name: str) -> SamplerSpec:
    """Look a sampler up by name (CLI and benchmarks)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
