"""Samples of a trained model, batch by batch, and the preview picture drawn during and after training.

A sample's randomness depends on the seed and its index alone, not on how many samples are drawn or in what
batches: sample j takes row j % CHUNK of the (CHUNK, ...) blocks drawn by the generator of its chunk j // CHUNK
(seeded from the seed and the chunk), the prior's block first, then one block per noise draw k. So `n = 10` gives
the first 10 of `n = 1000`, and `batch` only bounds memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .. import guidance
from ..nets import is_classifier
from ..samplers.registry import get_sampler
from ..processes import from_config
from ..training import Model, load_model
from ..score import ScoreFn
from .bounds import check_sampling

CHUNK = 128


def _chunk_seed(seed: int, chunk: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}/{chunk}".encode(), digest_size=8).digest(), "little") >> 1


class PerSampleNoise:
    """The prior and the sampler's noise(k, x) of samples start..stop-1: row j's values depend on (seed, j, k) only.

    Draws are made in order of k (as samplers make them); an earlier k replays its chunks from their seeds.
    """

    def __init__(self, seed: int, start: int, stop: int, process, event_shape: tuple[int, ...], device, dtype):
        first, last = start // CHUNK, (stop - 1) // CHUNK
        self.seeds = [_chunk_seed(seed, c) for c in range(first, last + 1)]
        self.rows = slice(start - first * CHUNK, stop - first * CHUNK)
        self.process, self.shape = process, (CHUNK, *event_shape)
        self.device, self.dtype = torch.device(device), dtype
        self._restart()

    def _restart(self) -> None:
        self.gens = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]
        self.next_k = -1  # the prior's block comes first

    def _block(self, prior: bool = False) -> Tensor:
        kw = dict(device=self.device, dtype=self.dtype)
        parts = [self.process.prior(self.shape, generator=g, **kw) if prior else torch.randn(self.shape, generator=g,
                                                                                             **kw)
                 for g in self.gens]
        return torch.cat(parts)[self.rows]

    def prior(self) -> Tensor:
        self._restart()
        self.next_k = 0
        return self._block(prior=True)

    def noise(self, k: int, x: Tensor) -> Tensor:
        """The k-th standard normal draw of these samples, like x."""
        if k < self.next_k:
            self.prior()
        while self.next_k < k:  # draws the sampler skipped keep their place
            self._block()
            self.next_k += 1
        self.next_k = k + 1
        return self._block().to(x.dtype)


def sample_model(
    model,
    n: int,
    *,
    sampler: str = "dpm_solver_pp",
    nfe: int = 20,
    grid: str | None = None,
    score_for: Callable[[Tensor | None], ScoreFn] | None = None,
    labels: Tensor | None = None,
    batch: int = 10000,
    seed: int = 0,
    progress: bool | None = None,
) -> Tensor:
    """n samples (on the CPU) of a trained Model by `sampler` at an NFE budget, in batches of `batch`.

    score_for(labels) -> ScoreFn gives the score of a batch (default model.score_fn; guided scores go here);
    labels are one per sample, or None. Sample j's prior and noise depend on (seed, j) alone (PerSampleNoise, on
    the model's device): the first n samples are the same for any larger n and any batch.
    """
    check_sampling(model, n, batch, nfe)
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), one per sample; got {tuple(labels.shape)}")
    if grid == "optimized":
        raise ValueError("--grid optimized is for `scoresde compare` (and samplers.tuning.optimized), not sample")
    spec, process = get_sampler(sampler), model.process
    score_for = score_for or model.score_fn
    like = dict(shape=tuple(model.event_shape), dtype=torch.float32, device=model.device)
    ts = spec.grid_for(process, nfe, grid, score=model.score_fn(None), **like)
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        source = PerSampleNoise(seed, start, start + b, process, model.event_shape, model.device, torch.float32)
        y = None if labels is None else labels[start:start + b].to(model.device)
        out.append(spec(score_for(y), process, source.prior(), ts, nfe=nfe, noise=source.noise,
                        progress=progress).cpu())
    return torch.cat(out)


def preview(model, out: str | Path, seed: int = 0, title: str = "", arrays: bool = True) -> Path:
    """A PNG of a trained Model's samples by dpm_solver_pp at NFE 20: 2000 points beside as many data points, or
    64 images (a class-conditional model: 6 per class, a class a column); with arrays, .pt and .npy beside it."""
    import toy_data

    from ..plotting import save_samples

    g, k = torch.Generator().manual_seed(seed), model.num_classes
    images = len(model.event_shape) > 1
    n = (6 * k if k else 64) if images else 2000
    x = sample_model(model, n, labels=torch.arange(n) % k if k else None, seed=seed, progress=False)
    ref = None if images else toy_data.load(model.config.data, root=model.config.data_root).sample(n, generator=g)
    return save_samples(x, out, reference=ref, title=title, nrow=k if images and k else None, arrays=arrays)[0]


def preview_eval_fn(config, out: str | Path) -> Callable:
    """An eval_fn for train(): a preview PNG of the EMA network at each call, out/previews/step_XXXXXXXX.png."""
    def eval_fn(step: int, ema) -> dict:
        model = Model(ema.eval(), from_config(config.process), config, step)
        path = Path(out) / "previews" / f"step_{step:08d}.png"
        return {"preview": str(preview(model, path, config.seed, f"step {step}", arrays=False))}

    return eval_fn


def guided_score_for(model, guidance_kind: str = "none", label: int | None = None, *, w: float = 1.0,
                     classifier: str | None = None, scale: float = 1.0, device="cpu"):
    """labels -> ScoreFn: a Model's score, unguided ("none"), classifier-free ("cfg", weight w) or classifier-guided
    ("classifier": the noise-aware classifier run `classifier`, scale) toward `label` (guidance is composition)."""
    if guidance_kind not in ("none", "cfg", "classifier"):
        raise ValueError(f"unknown guidance {guidance_kind!r}; choose none, cfg or classifier")
    if guidance_kind != "none" and label is None:
        raise ValueError(f"--guidance {guidance_kind} needs --label")
    if label is not None and guidance_kind != "classifier":
        if model.num_classes == 0:
            raise ValueError("--label needs a class-conditional model (trained with --conditional) "
                             "or --guidance classifier")
        if not 0 <= label < model.num_classes:
            raise ValueError(f"--label {label} is outside [0, {model.num_classes - 1}]")
    if guidance_kind == "none":
        return model.score_fn
    if guidance_kind == "cfg":
        if model.num_classes == 0:
            raise ValueError("--guidance cfg needs a class-conditional model (trained with --conditional)")
        return lambda labels: guidance.classifier_free(model.score_fn(labels), model.score_fn(None), w)
    if classifier is None:
        raise ValueError("--guidance classifier needs --classifier RUN (a noise-aware classifier checkpoint)")
    clf = load_model(classifier, device=device)
    if not is_classifier(clf.net):
        raise ValueError(f"--classifier {classifier} is a score model, not a noise-aware classifier (train one with "
                         "--net classifier)")
    if clf.process.config() != model.process.config():
        raise ValueError(f"the classifier was trained on {clf.process!r}, the model on {model.process!r}")
    if not 0 <= label < clf.num_classes:
        raise ValueError(f"--label {label} is outside the classifier's classes [0, {clf.num_classes - 1}]")
    return lambda labels: guidance.classifier(model.score_fn(None), clf.log_prob_fn(label), scale)
