"""Research studies: one-off investigations with their own scripts, results and README; not headline benchmarks.

    python -m benchmarks.experiments.check_peers            # consistency of the peer wrappers (benchmarks/_peers.py)
    benchmarks/experiments/reference_targets/               # reference-batch targets and guided DSM for guidance

Studies may keep code the library does not ship (reference_targets/losses.py); nothing outside this folder imports
from it.
"""
