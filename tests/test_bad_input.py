"""Bad input fails early with a ValueError that names the offending value."""

import pytest
import torch

from scoresde import VE, VP, DiscreteVP, SubVP, convert
from toy_data import GaussianMixture, load


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VE(1.0, 0.5), "sigma_min=1.0"),
        (lambda: VE(0.0, 1.0), "sigma_min.*0.0"),
        (lambda: VE(0.1, float("nan")), "sigma_max.*nan"),
        (lambda: VP(20.0, 0.1), "beta_min=20.0"),
        (lambda: SubVP(-0.1, 20.0), "beta_min.*-0.1"),
        (lambda: VP(t_min=0.0), "t_min.*0.0"),
        (lambda: DiscreteVP([0.1, 1.5, 0.2]), r"beta\[1\] = 1.5"),
        (lambda: DiscreteVP([0.1, 0.0]), r"beta\[1\] = 0.0"),
        (lambda: DiscreteVP([]), "at least one"),
        (lambda: DiscreteVP.linear(10), r"beta\[\d+\] = "),
        (lambda: DiscreteVP.linear(0), "N.*0"),
    ],
)
def test_bad_process_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("process", [VE(), VP(), SubVP(), DiscreteVP.linear()], ids=repr)
@pytest.mark.parametrize("bad", [-0.5, 1.5])
def test_time_outside_the_process_range(process, bad):
    t = torch.tensor([0.5, bad], dtype=torch.float64)  # checked on the CPU, where it costs no device sync
    for method in (process.alpha, process.sigma, process.log_snr, process.f, process.g2):
        with pytest.raises(ValueError, match=f"t = {bad}"):
            method(t)
    with pytest.raises(ValueError, match=f"t = {bad}"):
        process.perturb(torch.zeros(2, 3), t, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=f"t = {bad}"):
        load("ring8").score(torch.zeros(2, 2), process, t)


def test_shape_mismatches():
    vp = VP()
    with pytest.raises(ValueError, match=r"eps has shape \(2, 3\)"):
        vp.perturb(torch.zeros(2, 2), 0.5, torch.zeros(2, 3))
    ring = load("ring8")
    with pytest.raises(ValueError, match="3 values per sample"):
        ring.score(torch.zeros(4, 3), vp, torch.full((4,), 0.5))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        ring.score(torch.zeros(4, 2), vp, torch.full((5,), 0.5))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        convert(torch.zeros(4, 2), torch.zeros(4, 2), torch.ones(3), torch.ones(3), src="eps", dst="score")


def test_bad_mixtures():
    with pytest.raises(ValueError, match=r"sum 0.9"):
        GaussianMixture([0.5, 0.4], [[0.0], [1.0]], [[[1.0]], [[1.0]]])
    with pytest.raises(ValueError, match=r"-0.5"):
        GaussianMixture([1.5, -0.5], [[0.0], [1.0]], [[[1.0]], [[1.0]]])
    with pytest.raises(ValueError, match=r"covariances\[1\] is not positive definite: smallest eigenvalue -1"):
        GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [torch.eye(2).tolist(), [[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]])
    with pytest.raises(ValueError, match=r"shape \(1, 2, 2\)"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0]]])
    with pytest.raises(ValueError, match="no component has label 5"):
        load("aniso").conditional(5)
    with pytest.raises(ValueError, match="'nope'"):
        load("nope")
