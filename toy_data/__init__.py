"""Toy distributions: Gaussian mixtures with exact diffused scores, sample-only 2D sets and image sets.

`load(name, ...)` returns a distribution object with `sample(n, generator=, device=, dtype=)` and `event_shape`.
"""

from __future__ import annotations

from pathlib import Path

from .images import IMAGE_SETS, ImageSet, get_images
from .mixture import GaussianMixture
from .targets import MIXTURES, SETS, ToySet

__all__ = ["load", "NAMES", "MIXTURES", "SETS", "IMAGE_SETS", "GaussianMixture", "ToySet", "ImageSet"]

NAMES: tuple[str, ...] = (*MIXTURES, *SETS, *IMAGE_SETS)


def load(name: str, *, root: str | Path | None = None, split: str | None = None, **options):
    """A distribution by name: a Gaussian mixture (ring8, grid25, aniso; options such as radius, std go to its
    constructor), a sample-only 2D set (moons, ...; options such as noise go to its sampler) or an image set
    (digits built in; mnist, cifar10, folder read from local files in root; split None, "train" or "test")."""
    if name in MIXTURES:
        return MIXTURES[name](**options)
    if name in SETS:
        return ToySet(name, SETS[name], **options)
    if name in IMAGE_SETS:
        return get_images(name, root, split=split, **options)
    raise ValueError(f"unknown data {name!r}; choose from {', '.join(NAMES)}")
