"""Property-test your own process, score or network: identity checks, a broken-model zoo, hypothesis strategies.

    from scoresde.testing import check_process, check_exact_score, check_learned
    check_process(MyProcess()).assert_ok()

Each check returns a Report (`.ok`, `.assert_ok()`, `report[key]` with the statistic, its tolerance and where it
was worst). `scoresde.testing.strategies` (needs hypothesis: pip install "scoresde[test]") draws processes, times,
mixtures, batches, dtypes and devices; `scoresde.testing.zoo` holds broken models that the checks must catch.
"""

from . import zoo
from .data import noisy_batch, sample_times
from .exact import EXACT_CHECKS, check_exact_score
from .learned import LEARNED_CHECKS, TOLERANCES, check_learned, noise_levels
from .process import PROCESS_CHECKS, check_process
from .report import Check, CheckFailed, Report

__all__ = [
    "check_process",
    "check_exact_score",
    "check_learned",
    "Report",
    "Check",
    "CheckFailed",
    "sample_times",
    "noisy_batch",
    "noise_levels",
    "PROCESS_CHECKS",
    "EXACT_CHECKS",
    "LEARNED_CHECKS",
    "TOLERANCES",
    "zoo",
]
