"""The sampler x NFE harness for image models (a trained Model, or a diffusers model from scoresde.interop):
measured NFE and seconds per image for every sampler at every budget, a grid of samples per sampler and, for an
8 x 8 digits model, the Fréchet distance to the held-out digits next to its real-data floor (digits.py).

    result = compare_images(interop.from_diffusers("ddpm-digits/"), ["ddim", "dpm_solver_pp"], [10, 20])
    print(result.table()); save_images(result, "runs/compare")
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .._utils import progress_range
from ..samplers.registry import SAMPLERS, get_sampler
from ..score import CountEvals
from .digits import evaluate_digits, load_digits_classifier
from .samples import sample_model

__all__ = ["ImageComparison", "compare_images", "save_images"]

DIGITS_SHAPE = (1, 8, 8)


@dataclass
class ImageComparison:
    """compare_images()'s measurements: one record per (sampler, budget) run, and its samples."""

    model: str  # repr of the model
    n: int
    seed: int
    records: list[dict] = field(default_factory=list)
    samples: dict[tuple[str, int], Tensor] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def table(self, title: str = "") -> str:
        """The results as a text table (Fréchet distance and floor where the model makes digits)."""
        fd = any("fd" in r for r in self.records)
        acc = any("accuracy" in r for r in self.records)
        head = f"{'sampler':20s} {'NFE':>4s} {'s/image':>9s}" + (f" {'FD':>8s} {'floor':>8s} {'ratio':>6s}" if fd else "") \
            + (f" {'accuracy':>8s}" if acc else "")
        lines = [f"{title}{', ' if title else ''}n = {self.n} images per run, seed {self.seed}", head]
        for r in self.records:
            row = f"{r['sampler']:20s} {r['nfe']:4d} {r['seconds_per_image']:9.4f}"
            row += f" {r['fd']:8.3f} {r['fd_floor']:8.3f} {r['fd_ratio']:6.2f}" if fd else ""
            lines.append(row + (f" {r['accuracy']:8.3f}" if acc else ""))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"model": self.model, "n": self.n, "seed": self.seed, "records": self.records, "skipped": self.skipped}


def _run(model, name: str, budget: int, n: int, seed: int, batch: int, classifier) -> tuple[dict, Tensor]:
    """One sampler at one budget: digits models through evaluate_digits (FD, floor, accuracy), others timed."""
    if classifier is not None:
        res = evaluate_digits(model, n=n, sampler=name, nfe=budget, seed=seed, batch=batch, classifier=classifier,
                              return_samples=True)
        x = res.pop("samples")
        keep = ("nfe", "seconds", "fd", "fd_floor", "fd_ratio", "accuracy")
        return {k: res[k] for k in keep if k in res}, x
    counted: list[CountEvals] = []

    def score_for(labels):
        counted.append(CountEvals(model.score_fn(labels)))
        return counted[-1]

    k = model.num_classes
    labels = torch.arange(n) % k if k else None
    t0 = time.perf_counter()
    x = sample_model(model, n, sampler=name, nfe=budget, labels=labels, score_for=score_for, batch=batch,
                     seed=seed, progress=False)
    return {"nfe": counted[0].nfe, "seconds": time.perf_counter() - t0}, x


def compare_images(
    model,
    samplers: Sequence[str] | None = None,
    budgets: Sequence[int] = (10, 20, 50),
    *,
    n: int = 64,
    seed: int = 0,
    batch: int = 1000,
    progress: bool | None = None,
) -> ImageComparison:
    """Run each sampler (registry names; None: all) at each NFE budget on n images of `model` (anything with
    .process, .score_fn(labels), .event_shape, .num_classes, .device: a trained Model or interop's
    DiffusersModel), on the sampler's default grid; a class-conditional model's labels cycle through its classes.
    A model of 8 x 8 one-channel images is measured as digits (evaluate_digits: Fréchet distance, its floor, class
    accuracy). Budgets a sampler cannot spend are listed in `skipped`."""
    samplers = list(SAMPLERS) if samplers is None else list(samplers)
    for name in samplers:
        get_sampler(name)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if len(model.event_shape) != 3:
        raise ValueError(f"compare_images measures image models; this one makes samples of shape {model.event_shape}")
    classifier = load_digits_classifier(device=model.device) if tuple(model.event_shape) == DIGITS_SHAPE else None
    result = ImageComparison(repr(model), n, seed)
    runs = [(name, budget) for name in samplers for budget in budgets]
    for i in progress_range(len(runs), progress, "compare_images"):
        name, budget = runs[i]
        try:
            get_sampler(name).grid_for(model.process, budget)
        except ValueError as e:
            result.skipped.append(f"{name} at NFE {budget}: {e}")
            continue
        record, x = _run(model, name, budget, n, seed, batch, classifier)
        result.records.append({"sampler": name, "budget": budget, **record,
                               "seconds_per_image": record["seconds"] / n})
        result.samples[name, budget] = x
    return result


def save_images(result: ImageComparison, out: str | Path, *, per_row: int = 8) -> list[Path]:
    """Write results.json, samples_<sampler>.png (a row of per_row samples per NFE budget) and, for digits models,
    fd_vs_nfe.png (Fréchet distance against measured NFE per sampler, its real-data floor dashed) into `out`."""
    from ..plotting import plot_image_grid, plot_quality_vs_nfe

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result.to_json(), indent=2))
    written = [out / "results.json"]
    for name in dict.fromkeys(s for s, _ in result.samples):
        runs = sorted(((b, x) for (s, b), x in result.samples.items() if s == name), key=lambda r: r[0])
        k = min(per_row, min(len(x) for _, x in runs))
        grid = torch.cat([x[:k] for _, x in runs])
        title = f"{name}: rows NFE budget {', '.join(str(b) for b, _ in runs)}"
        written.append(plot_image_grid(grid, out / f"samples_{name}.png", title=title, nrow=k))
    if any("fd" in r for r in result.records):
        floor = sorted(r["fd_floor"] for r in result.records)[len(result.records) // 2]  # one n, one seed: one floor
        written.append(plot_quality_vs_nfe(result.records, {"fd": floor}, ["fd"], out / "fd_vs_nfe.png"))
    return written
