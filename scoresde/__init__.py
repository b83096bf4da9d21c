"""scoresde: score-based generative modelling with one process, one score and one sampler interface."""

from . import guidance, likelihood, losses, metrics, nets, samplers, schedules
from .processes import VE, VP, DiscreteVP, Process, SubVP
from .samplers import (
    ancestral,
    ancestral_analytic,
    annealed_langevin,
    ddim,
    dpm_solver_pp,
    euler,
    euler_maruyama,
    heun,
    langevin,
    predictor_corrector,
    probability_flow,
    unipc,
)
from .score import CountEvals, ScoreFn, convert, predict, score_from, tweedie

__version__ = "0.1.0"

__all__ = [
    # processes
    "Process",
    "VE",
    "VP",
    "SubVP",
    "DiscreteVP",
    # scores
    "ScoreFn",
    "CountEvals",
    "score_from",
    "predict",
    "convert",
    "tweedie",
    # samplers
    "ancestral",
    "ancestral_analytic",
    "euler_maruyama",
    "predictor_corrector",
    "annealed_langevin",
    "langevin",
    "probability_flow",
    "ddim",
    "dpm_solver_pp",
    "unipc",
    "heun",
    "euler",
    # modules
    "schedules",
    "samplers",
    "guidance",
    "likelihood",
    "losses",
    "metrics",
    "nets",
]
