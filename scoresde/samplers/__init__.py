"""Every sampler is f(score, process, x, ts, *, generator=None, callback=None, **options) -> x0.

x is the prior sample at ts[0], ts a decreasing float64 grid of process times. `SAMPLERS` (name -> spec) exists for
the CLI and benchmarks only: it maps an NFE budget to a grid for each sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..processes import Process
from ..score import ScoreFn, count_evals
from ..schedules import GRIDS, PILOT_SEED, optimized
from .langevin import annealed_langevin, langevin
from .ode import ddim, dpm_solver_pp, euler, heun, probability_flow
from .sde import analytic_x0_var, ancestral, euler_maruyama, predictor_corrector
from .unipc import unipc

__all__ = [
    "ancestral",
    "analytic_x0_var",
    "annealed_langevin",
    "ddim",
    "dpm_solver_pp",
    "euler",
    "euler_maruyama",
    "heun",
    "langevin",
    "predictor_corrector",
    "probability_flow",
    "unipc",
    "SAMPLERS",
    "SamplerSpec",
    "get_sampler",
]


@dataclass(frozen=True)
class SamplerSpec:
    """How to run a sampler at an NFE budget: NFE = evals_per_step * steps + extra (+1 for the final denoise).

    pilot: for samplers with options estimated once per model and grid (Analytic-DPM's x0 variance), a function
    (score, process, ts, x_pilot) -> {name: value for name in pilot_keys}; see `pilot_options`. A call that does
    not pass those options computes them first, with the score unwrapped from count_evals: like the optimised
    grid's search, the pilot's score evaluations are a one-off per model and grid, not counted in the NFE.
    """

    fn: Callable
    grid: str
    evals_per_step: int = 1
    extra: int = 0
    deterministic: bool = False
    options: dict = field(default_factory=dict)
    pilot: Callable | None = None
    pilot_keys: tuple[str, ...] = ()

    def steps_for(self, nfe: int) -> int:
        """The most steps whose NFE (with the final denoising evaluation) fits in the budget."""
        if not isinstance(nfe, int) or nfe < 1:
            raise ValueError(f"NFE must be a positive integer, got {nfe!r}")
        steps = (nfe - 1 - self.extra) // self.evals_per_step
        if steps < 0:
            raise ValueError(f"NFE = {nfe} is too small for {self.fn.__name__}: it needs at least {1 + self.extra}")
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
        """The grid `grid` (default: this sampler's) for an NFE budget. "optimized" needs the score; it draws a
        pilot batch of `pilot` prior samples of event shape `shape` (dtype, device) with seed PILOT_SEED; options go
        to schedules.optimized (and are an error with any other grid)."""
        name = grid or self.grid
        if name not in GRIDS:
            raise ValueError(f"unknown grid {name!r}; choose from {', '.join(GRIDS)}")
        if name != "optimized":
            if options:
                raise ValueError(f"options {sorted(options)} are for the 'optimized' grid, not {name!r}")
            return GRIDS[name](process, self.steps_for(nfe))
        if not isinstance(pilot, int) or pilot < 1:
            raise ValueError(f"pilot (the pilot batch size) must be a positive integer, got {pilot!r}")
        if score is None:
            raise ValueError("the 'optimized' grid needs the score function (grid_for(..., score=score))")
        if not self.deterministic:
            raise ValueError(f"the 'optimized' grid is for deterministic samplers; {self.fn.__name__} is stochastic")
        g = torch.Generator().manual_seed(PILOT_SEED)
        x = process.prior((pilot, *shape), generator=g, dtype=dtype).to(device or "cpu")
        return optimized(process, self.steps_for(nfe), score, self, x, **options)

    def pilot_options(
        self, score: ScoreFn, process: Process, ts: torch.Tensor, x: torch.Tensor, size: int = 1000
    ) -> dict:
        """The options `pilot` estimates (none without one), on `size` prior samples drawn with seed PILOT_SEED in
        x's event shape, dtype and device: like the optimised grid's, independent of x and of the sampler's noise."""
        if self.pilot is None:
            return {}
        g = torch.Generator().manual_seed(PILOT_SEED)
        xp = process.prior((size, *x.shape[1:]), generator=g, dtype=x.dtype).to(x.device)
        return self.pilot(score, process, ts, xp)

    def __call__(self, score, process, x, ts, **kw):
        opts = {**self.options, **kw}
        if self.pilot is not None and not any(k in opts for k in self.pilot_keys):
            base = score.score if isinstance(score, count_evals) else score
            opts.update(self.pilot_options(base, process, ts, x))
        return self.fn(score, process, x, ts, **opts)


SAMPLERS: dict[str, SamplerSpec] = {
    "ancestral": SamplerSpec(ancestral, "uniform_t"),
    # Analytic-DPM's reverse variance, its x0 variance estimated on a pilot batch (see analytic_x0_var)
    "ancestral_analytic": SamplerSpec(ancestral, "jump", pilot_keys=("x0_var",), pilot=lambda score, process, ts, x: {
        "x0_var": analytic_x0_var(score, process, ts, x)}),
    "euler_maruyama": SamplerSpec(euler_maruyama, "uniform_t"),
    "predictor_corrector": SamplerSpec(predictor_corrector, "uniform_t", evals_per_step=2),
    "annealed_langevin": SamplerSpec(annealed_langevin, "uniform_t", evals_per_step=5, extra=5, options={"n_steps": 5}),
    "probability_flow": SamplerSpec(probability_flow, "log_snr", evals_per_step=4, deterministic=True,
                                    options={"method": "rk4"}),
    "ddim": SamplerSpec(ddim, "log_snr", deterministic=True),
    "euler": SamplerSpec(euler, "karras", deterministic=True),
    "heun": SamplerSpec(heun, "karras", evals_per_step=2, deterministic=True),
    "dpm_solver_pp": SamplerSpec(dpm_solver_pp, "log_snr", deterministic=True),
    "dpm_solver_pp_3m": SamplerSpec(dpm_solver_pp, "log_snr", deterministic=True, options={"order": 3}),
    "unipc": SamplerSpec(unipc, "jump", deterministic=True),
}


def get_sampler(name: str) -> SamplerSpec:
    """Look a sampler up by name (CLI and benchmarks)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
