"""Samples of a trained model, batch by batch, and the preview picture drawn during and after training."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .. import guidance
from ..samplers.registry import get_sampler
from ..training import load_model
from ..score import ScoreFn


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
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> Tensor:
    """n samples (on the CPU) of a trained Model by `sampler` at an NFE budget, in batches of `batch`.

    score_for(labels) -> ScoreFn gives the score of a batch (default model.score_fn; guided scores go here);
    labels are one per sample, or None. The prior is drawn on the CPU from `generator`, and so is the sampler's
    noise when the model is on the CPU.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), one per sample; got {tuple(labels.shape)}")
    spec, process = get_sampler(sampler), model.process
    ts, score_for = spec.grid_for(process, nfe, grid), score_for or model.score_fn
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        x = process.prior((b, *model.event_shape), generator=generator).to(model.device)
        y = None if labels is None else labels[start:start + b].to(model.device)
        out.append(spec(score_for(y), process, x, ts, generator=generator if model.device.type == "cpu" else None,
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
    x = sample_model(model, n, labels=torch.arange(n) % k if k else None, generator=g, progress=False)
    ref = None if images else toy_data.load(model.config.data, root=model.config.data_root).sample(n, generator=g)
    return save_samples(x, out, reference=ref, title=title, nrow=k if images and k else None, arrays=arrays)[0]


def guided_score_for(model, guidance_kind: str = "none", label: int | None = None, *, w: float = 1.0,
                     classifier: str | None = None, scale: float = 1.0, device="cpu"):
    """labels -> ScoreFn: a Model's score, unguided ("none"), classifier-free ("cfg", weight w) or classifier-guided
    ("classifier": the noise-aware classifier run `classifier`, scale) toward `label` (guidance is composition)."""
    if guidance_kind not in ("none", "cfg", "classifier"):
        raise ValueError(f"unknown guidance {guidance_kind!r}; choose none, cfg or classifier")
    if guidance_kind != "none" and label is None:
        raise ValueError(f"--guidance {guidance_kind} needs --label")
    if guidance_kind == "none":
        return model.score_fn
    if guidance_kind == "cfg":
        if model.num_classes == 0:
            raise ValueError("--guidance cfg needs a class-conditional model (trained with --conditional)")
        return lambda labels: guidance.classifier_free(model.score_fn(labels), model.score_fn(None), w)
    if classifier is None:
        raise ValueError("--guidance classifier needs --classifier RUN (a noise-aware classifier checkpoint)")
    clf = load_model(classifier, device=device)
    if clf.process.config() != model.process.config():
        raise ValueError(f"the classifier was trained on {clf.process!r}, the model on {model.process!r}")
    if not 0 <= label < clf.num_classes:
        raise ValueError(f"--label {label} is outside the classifier's classes [0, {clf.num_classes - 1}]")
    return lambda labels: guidance.classifier(model.score_fn(None), clf.log_prob_fn(label), scale)
