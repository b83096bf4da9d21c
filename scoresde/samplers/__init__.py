"""Every sampler is f(score, process, x, ts, *, generator=None, callback=None, **options) -> x0.

x is the prior sample at ts[0], ts a decreasing float64 grid of process times (scoresde.schedules). Name tables
for the CLI and benchmarks are in samplers.registry; pilot-batch tuning in samplers.tuning.
"""

from .langevin import annealed_langevin, langevin
from .ode import ddim, dpm_solver_pp, euler, heun, probability_flow
from .sde import ancestral, dpm_solver_pp_sde, euler_maruyama, predictor_corrector
from .tuning import analytic_x0_var, ancestral_analytic, data_scale, optimized
from .unipc import unipc

__all__ = [
    "ancestral",
    "ancestral_analytic",
    "analytic_x0_var",
    "annealed_langevin",
    "data_scale",
    "ddim",
    "dpm_solver_pp",
    "dpm_solver_pp_sde",
    "euler",
    "euler_maruyama",
    "heun",
    "langevin",
    "optimized",
    "predictor_corrector",
    "probability_flow",
    "unipc",
]
