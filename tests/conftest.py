import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Deterministic property tests: the same examples every run, no time limits on slow CPUs.
settings.register_profile(
    "scoresde",
    derandomize=True,
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
    print_blob=True,
)
settings.load_profile("scoresde")

DEVICE = torch.device(os.environ.get("SCORESDE_TEST_DEVICE", "cpu"))

# The tests' tensors are small: on a shared 2-core machine a second intra-op thread only adds waiting (3-10x
# slower under load), and one thread makes CPU reductions run in one fixed order.
if DEVICE.type == "cpu":
    torch.set_num_threads(1)


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
