"""A clean-image classifier for the 8 x 8 digits, and the two image metrics it gives: class accuracy of
class-conditional samples, and the Fréchet distance on its penultimate features (FID's recipe at digit scale).

The classifier is trained by the library (seconds, fixed seed) on the digits *train* split and cached as
safetensors (never a pickle) in $SCORESDE_CACHE or ~/.cache/scoresde; its accuracy on the held-out *test* split
is stored with it. The Fréchet distance compares n generated digits with the held-out test digits; its floor is
the same distance for n real *train* digits, so a perfect model scores about the floor.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..metrics import frechet_distance

__all__ = [
    "DigitsClassifier",
    "cache_dir",
    "train_digits_classifier",
    "load_digits_classifier",
    "class_accuracy",
    "digits_metrics",
    "evaluate_digits",
]

VERSION = "digits-cnn-2"  # bump when the network or its training recipe changes: the cache is rebuilt
FEATURES = 128


class DigitsClassifier(nn.Module):
    """conv 32 - conv 64 - pool - conv 64 - pool - linear 128 (the features) - linear 10, ReLU; input (B, 1, 8, 8)
    in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 2 * 2, FEATURES)
        self.head = nn.Linear(FEATURES, 10)
        self.test_accuracy = float("nan")

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations, shape (B, 128): the space of the Fréchet distance."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"the digits classifier takes images of shape (B, 1, 8, 8), got {tuple(x.shape)}")
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (B, 10)."""
        return self.head(self.features(x))


def cache_dir() -> Path:
    """$SCORESDE_CACHE, else ~/.cache/scoresde."""
    env = os.environ.get("SCORESDE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "scoresde"


def _shift(x: Tensor, g: torch.Generator) -> Tensor:
    """Each image translated by up to one pixel in each direction (zero padding is the background, -1)."""
    b = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2, b), generator=g)
    rows = (dy[:, None] + torch.arange(8))[:, :, None].expand(b, 8, 8)
    cols = (dx[:, None] + torch.arange(8))[:, None, :].expand(b, 8, 8)
    idx = (rows * 10 + cols).reshape(b, 1, 64)
    return padded.reshape(b, 1, 100).gather(2, idx).reshape(b, 1, 8, 8)


@torch.no_grad()
def _accuracy(net: DigitsClassifier, x: Tensor, y: Tensor) -> float:
    return float((net(x).argmax(1) == y).double().mean())


def train_digits_classifier(seed: int = 0, epochs: int = 20, batch: int = 128, lr: float = 3e-3) -> DigitsClassifier:
    """Train on the digits train split (one-pixel shifts as augmentation, Adam, cosine decay); CPU, fixed seed.

    The returned network is in eval mode with `test_accuracy` set (on the held-out test split).
    """
    from toy_data.images import get_images

    train_set, test_set = get_images("digits", split="train"), get_images("digits", split="test")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = len(train_set)
    steps = epochs * ((n + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for k in range(0, n, batch):
            idx = perm[k:k + batch]
            x = _shift(train_set.images[idx], g)
            loss = F.cross_entropy(net(x), train_set.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval().requires_grad_(False)
    net.test_accuracy = _accuracy(net, test_set.images, test_set.labels)
    return net


def _cache_path(path: str | Path | None) -> Path:
    return Path(path) if path is not None else cache_dir() / "digits_classifier.safetensors"


def _read(path: Path) -> DigitsClassifier | None:
    """The cached classifier, or None if the file is absent, unreadable or from another VERSION."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    if meta.get("version") != VERSION:
        return None
    net = DigitsClassifier()
    try:
        net.load_state_dict(tensors)
        net.test_accuracy = float(json.loads(meta["info"])["test_accuracy"])
    except (RuntimeError, KeyError, ValueError, TypeError):
        return None
    return net.eval().requires_grad_(False)


def load_digits_classifier(path: str | Path | None = None, device: str | torch.device = "cpu",
                           verbose: bool = False) -> DigitsClassifier:
    """The cached digits classifier (safetensors at `path`, default cache_dir()/digits_classifier.safetensors);
    trained and written there first if it is missing, unreadable or from an older recipe."""
    from safetensors.torch import save_file

    path = _cache_path(path)
    net = _read(path)
    if net is None:
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            net = train_digits_classifier()
        if verbose:
            print(f"trained the digits classifier in {time.perf_counter() - t0:.1f} s "
                  f"(test accuracy {net.test_accuracy:.4f}); cached at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        info = json.dumps({"test_accuracy": net.test_accuracy, "trained": time.strftime("%Y-%m-%d %H:%M")})
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp),
                  metadata={"version": VERSION, "info": info})
        os.replace(tmp, path)  # atomic: concurrent readers see the old file or the new one
    return net.to(device)


@torch.no_grad()
def class_accuracy(classifier: DigitsClassifier, x: Tensor, labels: Tensor) -> float:
    """Fraction of images x (clamped to [-1, 1]) that the classifier assigns to `labels`."""
    dev = next(classifier.parameters()).device
    pred = classifier(x.to(dev, torch.float32).clamp(-1, 1)).argmax(1)
    return float((pred == labels.to(dev)).double().mean())


@torch.no_grad()
def _features(classifier: DigitsClassifier, x: Tensor) -> Tensor:
    dev = next(classifier.parameters()).device
    return classifier.features(x.to(dev, torch.float32).clamp(-1, 1)).double().cpu()


def digits_metrics(x: Tensor, labels: Tensor | None = None, *, classifier: DigitsClassifier | None = None,
                   seed: int = 0) -> dict:
    """Digits samples x (n, 1, 8, 8) in [-1, 1] measured as evaluate_digits measures them, whatever made them:
    {"fd", "fd_floor", "fd_ratio", "classifier_test_accuracy"} and, given the intended labels, "accuracy". The
    floor is the Fréchet distance of n real train digits (drawn with `seed`) to the same held-out test digits."""
    from toy_data.images import get_images

    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8) or x.shape[0] < 2:
        raise ValueError(f"x must hold at least 2 digits of shape (1, 8, 8); got {tuple(x.shape)}")
    classifier = load_digits_classifier() if classifier is None else classifier
    n = x.shape[0]
    train_set, test_set = get_images("digits", split="train"), get_images("digits", split="test")
    ref = _features(classifier, test_set.images)
    gr = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(len(train_set), generator=gr)[:n] if n <= len(train_set) else \
        torch.randint(len(train_set), (n,), generator=gr)
    fd = float(frechet_distance(_features(classifier, x), ref))
    floor = float(frechet_distance(_features(classifier, train_set.images[idx]), ref))
    out = {"fd": fd, "fd_floor": floor, "fd_ratio": fd / floor, "classifier_test_accuracy": classifier.test_accuracy}
    if labels is not None:
        out["accuracy"] = class_accuracy(classifier, x, labels)
    return out


def evaluate_digits(model, n: int = 1000, w: float = 1.0, sampler: str = "dpm_solver_pp", nfe: int = 20,
                    seed: int = 0, batch: int = 1000, classifier: DigitsClassifier | None = None,
                    return_samples: bool = False) -> dict:
    """Sample n digits from a trained digits Model (labels 0..9 in turn for a class-conditional model, guided by
    classifier-free guidance with weight w) and measure them against the held-out test digits.

    Returns {"accuracy" (conditional models only), "fd", "fd_floor", "fd_ratio", "classifier_test_accuracy",
    "n", "nfe", "seconds"}; fd_floor is the Fréchet distance of n real train digits to the same test digits.
    """
    from .. import guidance
    from ..score import CountEvals
    from .samples import sample_model

    if tuple(model.event_shape) != (1, 8, 8):
        raise ValueError(f"evaluate measures 8 x 8 digits; this model makes images of shape {model.event_shape}")
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if model.num_classes == 0 and w != 1:
        raise ValueError(f"w = {w} is classifier-free guidance; it needs a class-conditional model")
    classifier = load_digits_classifier() if classifier is None else classifier
    conditional = model.num_classes > 0
    nets: list = []

    def score_for(labels: Tensor | None):
        nets[:] = [CountEvals(model.score_fn(labels))] + ([CountEvals(model.score_fn(None))] if w != 1 else [])
        return nets[0] if w == 1 else guidance.classifier_free(nets[0], nets[1], w)

    t0 = time.perf_counter()
    labels = torch.arange(n) % model.num_classes if conditional else None
    x = sample_model(model, n, sampler=sampler, nfe=nfe, score_for=score_for, labels=labels, batch=batch, seed=seed,
                     progress=False)
    nfe = sum(c.nfe for c in nets)  # network evaluations of the last sampler call, measured
    seconds = time.perf_counter() - t0
    out = {"n": n, "sampler": sampler, "nfe": nfe, "w": w if conditional else None,
           **digits_metrics(x, labels, classifier=classifier, seed=seed), "seconds": seconds}
    if return_samples:
        out["samples"] = x
    return out
