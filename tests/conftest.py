import gc

# Collection imports torch, scipy, diffusers, ...: half a million objects that live to the end, and no cyclic garbage
# worth the garbage collector's full passes over them (~10 of them, 0.3-0.5 s each). Off until pytest_collection_finish.
gc.disable()

import os  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from scoresde.testing import sample_times  # noqa: E402

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


def pytest_collection_finish(session):
    """Collected: one full collection, then freeze what is left (gc.freeze: the imported modules' objects) so that the
    full passes during the tests, and pytest's five at the end, no longer walk them (0.3-0.5 s each -> ~0.1 s).
    Frozen objects no longer count in CPython's "long-lived objects grew by 25 %" rule for a full pass, which would
    then run one every 10 middle-generation passes (21 in a run, measured): the third threshold, 100 instead of 10,
    keeps them rare (3). Cyclic garbage made by the tests is still collected, by the young generations' passes and
    those full ones."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(700, 10, 100)
    gc.enable()


def times(process, n: int, seed: int) -> torch.Tensor:
    """n seeded times uniform on [t_min, t_max] (float64, on the test device)."""
    return sample_times(process, n, seed, device=DEVICE)


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    # On the CPU, the CPU generator alone: torch.manual_seed also queues a lazy CUDA seeding that formats the caller's
    # whole stack (traceback.format_stack): ~1.5 ms under pytest's frames, before every test.
    if DEVICE.type == "cpu":
        torch.random.default_generator.manual_seed(0)
    else:
        torch.manual_seed(0)


@pytest.fixture(scope="session")
def ode_problem():
    """For measured orders of convergence: x at t0 = 0.7 (aniso under VP, 64 points, float64) and the
    probability-flow ODE's solution at t1 = 0.1 to rtol = atol = 1e-11 (dopri5)."""
    import toy_data
    from scoresde import VP
    from scoresde.samplers import probability_flow

    process = VP()
    target = toy_data.load("aniso")
    g = torch.Generator().manual_seed(5)
    t0, t1 = 0.7, 0.1
    x0 = target.sample(64, generator=g, dtype=torch.float64)
    x = process.perturb(x0, t0, torch.randn(x0.shape, generator=g, dtype=torch.float64)).to(DEVICE)
    score = target.score_fn(process)
    ref = probability_flow(
        score, process, x, torch.tensor([t0, t1], dtype=torch.float64), method="dopri5", rtol=1e-11, atol=1e-11,
        denoise=False
    )
    return process, score, x, t0, t1, ref
