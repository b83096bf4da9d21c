"""Images through the same trainer and CLI: a tiny UNet learns on the digits, train -> sample -> evaluate from the
command line, the cached digits classifier and the Fréchet distance it feeds."""

import dataclasses
import json
import os

import pytest
import torch

from scoresde.metrics import frechet_distance, frechet_distance_gaussians
from scoresde.training import TrainConfig, load_checkpoint, train

from .conftest import DEVICE

TINY = {"name": "unet", "in_channels": 1, "image_size": 8, "channels": 8, "channel_mult": [1, 2], "emb_dim": 16,
        "sigma_data": 0.6}


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory):
    """One digits classifier for the session, trained into a temporary cache ($SCORESDE_CACHE)."""
    from scoresde.evaluation.digits import load_digits_classifier

    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("SCORESDE_CACHE")
    os.environ["SCORESDE_CACHE"] = str(path)
    try:
        torch.set_num_threads(1)
        clf = load_digits_classifier()
        yield path, clf
    finally:
        if old is None:
            os.environ.pop("SCORESDE_CACHE", None)
        else:
            os.environ["SCORESDE_CACHE"] = old


@pytest.mark.parametrize("conditional,amp", [(False, False), (True, False), (True, True)])
def test_a_few_steps_of_a_tiny_unet_lower_the_loss(conditional, amp):
    """Also under bf16 autocast (--amp), on CUDA or on the CPU."""
    net = {**TINY, "num_classes": 10 if conditional else 0}
    cfg = TrainConfig(data="digits", net=net, steps=30, batch=32, lr=3e-3, warmup=5, log_every=10,
                      label_dropout=0.2 if conditional else 0.0, device=str(DEVICE), amp=amp)
    result = train(cfg, progress=False)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert len(result.losses) == 30 and last < 0.6 * first, (first, last)  # measured: 0.97 -> 0.36
    if amp:  # autocast is really on: the same seeded run in float32 gives different (unrounded) losses once the
        fp32 = train(dataclasses.replace(cfg, amp=False, steps=3), progress=False).losses  # zero-init output moved
        assert fp32[2] != result.losses[2] and fp32[2] == pytest.approx(result.losses[2], rel=0.05)


def test_frechet_distance_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 4, generator=g, dtype=torch.float64), torch.randn(4, 4, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(4, dtype=torch.float64), b @ b.T + 0.1 * torch.eye(4, dtype=torch.float64)
    mu1, mu2 = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    # commuting (diagonal) covariances: |mu1 - mu2|² + Σ (sqrt(s1_i) - sqrt(s2_i))²
    d1, d2 = torch.tensor([1.0, 4.0, 0.25, 2.0], dtype=torch.float64), torch.tensor([9.0, 1.0, 1.0, 0.5],
                                                                                    dtype=torch.float64)
    expected = (mu1 - mu2).square().sum() + (d1.sqrt() - d2.sqrt()).square().sum()
    assert float(frechet_distance_gaussians(mu1, torch.diag(d1), mu2, torch.diag(d2))) == pytest.approx(
        float(expected), rel=1e-12)
    # general covariances: (S1 S2)^½ by scipy
    from scipy.linalg import sqrtm

    root = sqrtm((s1 @ s2).numpy()).real
    expected = float((mu1 - mu2).square().sum() + torch.trace(s1 + s2) - 2 * float(root.trace()))
    fd = frechet_distance_gaussians(mu1, s1, mu2, s2)
    assert float(fd) == pytest.approx(expected, rel=1e-10) and float(frechet_distance_gaussians(mu1, s1, mu1, s1)) \
        == pytest.approx(0.0, abs=1e-10)
    # from samples: converges to the closed form, and the covariances use ddof = 1
    x = torch.randn(200_000, 4, generator=g, dtype=torch.float64) @ a.T + mu1
    y = torch.randn(200_000, 4, generator=g, dtype=torch.float64) @ b.T + mu2
    assert float(frechet_distance(x, y)) == pytest.approx(float(frechet_distance_gaussians(mu1, a @ a.T, mu2, b @ b.T)),
                                                          rel=0.02)
    assert frechet_distance(x[:10].float(), y[:10].float()).dtype == torch.float32
    with pytest.raises(ValueError, match="features"):
        frechet_distance(x[:, :3], y)


def test_digits_classifier_cache_round_trip(classifier_cache, monkeypatch):
    import scoresde.evaluation.digits as dc
    from toy_data.images import get_images

    path, clf = classifier_cache
    assert clf.test_accuracy >= 0.98  # measured 0.9972 on the 359 held-out digits
    file = path / "digits_classifier.safetensors"
    assert file.is_file()

    def no_training(*a, **k):
        raise AssertionError("the cached classifier should have been loaded, not retrained")

    monkeypatch.setattr(dc, "train_digits_classifier", no_training)
    again = dc.load_digits_classifier()
    assert again.test_accuracy == clf.test_accuracy
    x = get_images("digits", split="test").images[:50]
    assert torch.equal(again(x), clf(x)) and again.features(x).shape == (50, 128)
    # a corrupt file, or a pickle planted in its place, is never executed: it is retrained (cheaply here)
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {path / 'pwned'}",))

    other = path / "planted.safetensors"
    other.write_bytes(pickle.dumps(Evil()))
    monkeypatch.setattr(dc, "train_digits_classifier", lambda: dc.DigitsClassifier().eval())
    fresh = dc.load_digits_classifier(other)
    assert not (path / "pwned").exists() and isinstance(fresh, dc.DigitsClassifier)
    assert dc._read(other) is not None  # rewritten as safetensors


def test_cli_train_sample_evaluate_digits(tmp_path, capsys, classifier_cache):
    from scoresde.cli import main

    run = tmp_path / "digits"
    assert main(["train", "--data", "digits", "--net", "unet", "--conditional", "--width", "8", "--emb-dim", "16",
                 "--steps", "20", "--batch", "32", "--checkpoint-every", "10", "--device", str(DEVICE),
                 "--out", str(run)]) == 0
    assert (run / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (run / "previews").glob("*.png")) == ["step_00000010.png", "step_00000020.png"]
    ck = load_checkpoint(run)
    assert ck["step"] == 20 and ck["net"].config()["channels"] == 8 and ck["net"].num_classes == 10
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(run), "--label", "7", "--guidance", "cfg", "--w", "2", "--nfe", "6",
                 "--n", "12", "--device", str(DEVICE), "--out", str(out)]) == 0
    x = torch.load(tmp_path / "grid.pt", weights_only=True)
    assert x.shape == (12, 1, 8, 8) and torch.isfinite(x).all() and out.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--n", "100", "--nfe", "6", "--device", str(DEVICE)]) == 0
    text = capsys.readouterr().out
    assert "class accuracy (CFG w = 1)" in text and "floor" in text and "test accuracy 0.9" in text
    assert "dpm_solver_pp NFE 6," in text  # measured by CountEvals: one network call per step at w = 1
    assert main(["compare", "--checkpoint", str(run), "--samplers", "ddim,ancestral", "--nfe", "3,6", "--n", "20",
                 "--device", str(DEVICE), "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "FD" in text and "accuracy" in text  # an image checkpoint goes to compare_images, measured as digits
    records = json.loads((tmp_path / "cmp" / "results.json").read_text())["records"]
    assert [(r["sampler"], r["nfe"]) for r in records] == [("ddim", 3), ("ddim", 6), ("ancestral", 3), ("ancestral", 6)]
    assert all(0 <= r["accuracy"] <= 1 and r["fd"] > 0 for r in records)
    for png in ("samples_ancestral.png", "fd_vs_nfe.png"):
        assert (tmp_path / "cmp" / png).read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate", "--checkpoint", str(run), "--n", "1"]) != 0
    assert "at least 2" in capsys.readouterr().err
    ring = tmp_path / "ring"
    assert main(["train", "--data", "ring8", "--steps", "5", "--batch", "16", "--width", "8", "--depth", "1",
                 "--no-preview", "--out", str(ring)]) == 0
    assert main(["evaluate", "--checkpoint", str(ring)]) != 0
    assert "digits" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--net", "mlp", "--out", str(tmp_path / "x")]) != 0
    assert "--net unet" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--net", "unet", "--amp", "--device", "meta",
                 "--out", str(tmp_path / "y")]) != 0
    assert "'meta'" in capsys.readouterr().err


def test_digits_metrics_measures_any_samples(classifier_cache):
    """digits_metrics (what evaluate_digits and the diffusers-loop benchmark share): the held-out digits with their
    labels are classified at the classifier's test accuracy and lie at Fréchet distance 0 from themselves."""
    from scoresde.evaluation.digits import digits_metrics
    from toy_data.images import get_images

    _, clf = classifier_cache
    test = get_images("digits", split="test")
    m = digits_metrics(test.images, test.labels, classifier=clf)
    assert m["accuracy"] == pytest.approx(clf.test_accuracy, abs=1e-12)
    assert abs(m["fd"]) < 1e-4 and m["fd_floor"] > 0.1 and m["fd_ratio"] == m["fd"] / m["fd_floor"]
    assert "accuracy" not in digits_metrics(test.images[:10], classifier=clf)
    with pytest.raises(ValueError, match=r"\(1, 8, 8\)"):
        digits_metrics(test.images.flatten(1), classifier=clf)
