"""Toy distributions: Gaussian mixtures with exact diffused scores, and sample-only 2D sets."""

from .images import IMAGE_SETS, ImageSet, cifar10, digits, get_images, image_folder, mnist
from .mixture import GaussianMixture
from .targets import (
    MIXTURES,
    REGISTRY,
    ToySet,
    aniso,
    checkerboard,
    get,
    grid25,
    moons,
    pinwheel,
    ring8,
    rings,
    spirals,
    swiss_roll,
)

__all__ = [
    "IMAGE_SETS",
    "ImageSet",
    "cifar10",
    "digits",
    "get_images",
    "image_folder",
    "mnist",
    "GaussianMixture",
    "MIXTURES",
    "REGISTRY",
    "ToySet",
    "aniso",
    "checkerboard",
    "get",
    "grid25",
    "moons",
    "pinwheel",
    "ring8",
    "rings",
    "spirals",
    "swiss_roll",
]
