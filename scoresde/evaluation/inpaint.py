"""Inpainting with a score model, what `scoresde sample --inpaint` runs: built-in or PNG masks, observed images,
the inpainting methods of scoresde.guidance behind one call, a panel of observed and sampled images, and for the
8 x 8 digits the share of inpainted digits that keep their class (by the cached digits classifier).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from .. import guidance as G
from ..processes import Process
from ..samplers.registry import get_sampler
from ..score import CountEvals, ScoreFn

__all__ = ["MASKS", "METHODS", "inpaint_mask", "read_observed", "inpaint", "inpaint_panel", "sample_inpainting"]

MASKS = ("lower-half", "upper-half", "left-half", "right-half")  # the half that is inpainted
METHODS = ("repaint", "replacement", "pigdm")


def inpaint_mask(spec: str | Path, event_shape: Sequence[int]) -> G.Mask:
    """The known pixels of (C, H, W) images: a name in MASKS (that half is inpainted, the rest known) or a PNG of
    the images' height and width whose white pixels (>= 128) are inpainted."""
    c, h, w = event_shape
    if str(spec) in MASKS:
        rows, cols = torch.arange(h)[:, None].expand(h, w), torch.arange(w)[None, :].expand(h, w)
        hidden = {"lower-half": rows >= h // 2, "upper-half": rows < h // 2,
                  "left-half": cols < w // 2, "right-half": cols >= w // 2}[str(spec)]
    else:
        from toy_data.images import read_png

        path = Path(spec)
        if path.suffix.lower() != ".png":
            raise ValueError(f"--inpaint takes one of {', '.join(MASKS)} or a MASK.png, got {str(spec)!r}")
        img = read_png(path)
        if tuple(img.shape[1:]) != (h, w):
            raise ValueError(f"the mask {path} is {img.shape[1]}x{img.shape[2]} pixels; the images are {h}x{w}")
        hidden = img.mean(0) > 0
    return G.Mask(~hidden.expand(c, h, w))


def read_observed(path: str | Path, event_shape: Sequence[int]) -> Tensor:
    """An observed image as a (C, H, W) tensor in [-1, 1] of the model's shape (grayscale RGB taken as one channel)."""
    from toy_data.images import read_png

    img = read_png(path)
    c, h, w = event_shape
    if img.shape[0] == 3 and c == 1:
        if not bool((img == img[:1]).all()):
            raise ValueError(f"{path} is a colour image; the model makes grayscale images")
        img = img[:1]
    if tuple(img.shape) != (c, h, w):
        raise ValueError(f"{path} has shape {tuple(img.shape)}; the model's images have shape {(c, h, w)}")
    return img


def inpaint(score: ScoreFn, process: Process, observed: Tensor, mask: G.Mask, *, method: str = "repaint",
            sampler: str = "ancestral", nfe: int = 50, resample: int = 5, grid: str | None = None,
            generator: torch.Generator | None = None) -> tuple[Tensor, int]:
    """One sample of x0 given the known pixels of each observed image (B, C, H, W); (samples, measured NFE).

    repaint: `resample` tries per step, (nfe - 1) // resample steps; replacement and pigdm (noiseless ΠGDM): nfe on
    the sampler's registry grid made without the score (scaled_log_snr, the usual default, is then uniform_log_snr:
    the prior score's data scale is not read here), or on `grid` (a registry grid name; not "optimized", which is
    for unconditional sampling). The known pixels are kept exactly by repaint and replacement, approximately by pigdm.
    """
    if method not in METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; choose from {', '.join(METHODS)}")
    if grid == "optimized":
        raise ValueError("--grid optimized is fitted for unconditional sampling (scoresde compare), not inpainting")
    spec = get_sampler(sampler)
    y = mask.A(observed)
    counted = CountEvals(score)
    x = process.prior(observed.shape, generator=generator, dtype=observed.dtype).to(observed.device)
    g = generator if generator is None or generator.device == observed.device else None
    if method == "pigdm":
        out = spec(G.pigdm(counted, process, mask, y, 0.0), process, x, spec.grid_for(process, nfe, grid),
                   generator=g, progress=False)
    elif method == "replacement":
        out = G.replacement(spec, mask, y)(counted, process, x, spec.grid_for(process, nfe, grid), generator=g)
    else:
        steps = (nfe - 1) // resample
        ts = spec.grid_for(process, spec.evals_per_step * steps + spec.extra + 1, grid)  # a grid of `steps` steps
        out = G.repaint(spec, mask, y, resample)(counted, process, x, ts, generator=g)
    return out, counted.nfe


def inpaint_panel(observed: Tensor, mask: G.Mask, samples: Tensor, out: str | Path, title: str = "",
                  columns: int = 10) -> Path:
    """A PNG: the first `columns` observed images (unknown pixels grey) over their samples (samples[i] inpaints
    observed[i % len(observed)]), one column per observed image."""
    from ..plotting import plot_image_grid

    k = min(columns, len(observed))
    shown = mask.replace(torch.zeros_like(observed[:k]), mask.A(observed[:k]))
    per = [samples[j::len(observed)] for j in range(k)]  # the samples of observed image j
    rows = [shown] + [torch.stack([p[r] for p in per]) for r in range(min(len(p) for p in per))]
    return plot_image_grid(torch.cat(rows).cpu(), Path(out), title=title, nrow=k)


def _classes(classifier: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        return classifier(x.float().clamp(-1, 1)).argmax(1).cpu()


def sample_inpainting(score: ScoreFn, process: Process, event_shape: Sequence[int], inpaint_spec: str | Path,
                      observed: str | Path | None = None, *, n: int | None = None, method: str = "repaint",
                      sampler: str = "ancestral", nfe: int = 50, grid: str | None = None, seed: int = 0,
                      out: str | Path = "inpainted.png",
                      digits: bool = False, device: str | torch.device = "cpu",
                      classifier: Callable[[Tensor], Tensor] | None = None) -> dict:
    """Inpaint, write the panel (and the samples as .pt), and for digits measure the class kept.

    observed: a PNG (n samples of it, default 16) or None, which for digits means the first n (default 100)
    held-out test digits, one sample each. For digits (classifier: default the cached digits CNN), "class_kept" is
    the share of samples whose class is the digit's label (test digits) or the class of the whole observed image,
    with two references: "class_full" (the classifier on the whole observed images) and "class_masked" (on the
    observed images with the inpainted region set to the background, -1).
    """
    event_shape = tuple(event_shape)
    mask = inpaint_mask(inpaint_spec, event_shape)
    labels = None
    if observed is not None:
        n = 16 if n is None else n
        images = read_observed(observed, event_shape)[None].expand(n, *event_shape)
    elif digits:
        from toy_data.images import get_images

        test = get_images("digits", split="test")
        n = 100 if n is None else n
        if not 1 <= n <= len(test):
            raise ValueError(f"--n must lie in [1, {len(test)}] (the held-out test digits), got {n}")
        images, labels = test.images[:n], test.labels[:n]
    else:
        raise ValueError("--inpaint needs --observed IMAGE.png (held-out test images are built in for digits only)")
    images = images.to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    samples, used = inpaint(score, process, images, mask, method=method, sampler=sampler, nfe=nfe, grid=grid,
                            generator=g)
    title = f"{method}, {sampler}, NFE {used}"
    result = {"n": len(samples), "nfe": used, "method": method, "sampler": sampler, "samples": samples.cpu()}
    if digits:
        if classifier is None:
            from .digits import load_digits_classifier

            classifier = load_digits_classifier(device=device)
        full = _classes(classifier, images)
        target = full if labels is None else labels
        background = mask.replace(torch.full_like(images, -1.0), mask.A(images))
        result.update(class_kept=float((_classes(classifier, samples) == target).double().mean()),
                      class_full=float((full == target).double().mean()),
                      class_masked=float((_classes(classifier, background) == target).double().mean()))
        title += f"; class kept {result['class_kept']:.1%} (whole image {result['class_full']:.1%}, " \
                 f"masked {result['class_masked']:.1%})"
    png = inpaint_panel(images, mask, samples, out, title)
    torch.save(samples.cpu(), png.with_suffix(".pt"))
    result["files"] = [png, png.with_suffix(".pt")]
    return result
