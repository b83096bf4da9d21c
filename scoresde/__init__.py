"""scoresde: score-based generative modelling with one process, one score and one sampler interface."""

from .processes import VE, VP, DiscreteVP, Process, SubVP
from .score import (
    PREDICTIONS,
    ScoreFn,
    convert,
    count_evals,
    eps_from_score,
    from_eps,
    prediction_from_score,
    score_from_eps,
    score_from_prediction,
    score_from_v,
    score_from_x0,
    to_eps,
    tweedie,
    v_from_score,
    x0_from_score,
)

from . import metrics, samplers, schedules
from .samplers import (
    ancestral,
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

__version__ = "0.1.0"

__all__ = [
    "Process",
    "VE",
    "VP",
    "SubVP",
    "DiscreteVP",
    "ScoreFn",
    "PREDICTIONS",
    "convert",
    "count_evals",
    "eps_from_score",
    "from_eps",
    "prediction_from_score",
    "score_from_eps",
    "score_from_prediction",
    "score_from_v",
    "score_from_x0",
    "to_eps",
    "tweedie",
    "v_from_score",
    "x0_from_score",
    "metrics",
    "samplers",
    "schedules",
    "ancestral",
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
]
