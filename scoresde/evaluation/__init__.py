"""Measuring samplers and models: the sampler x NFE harness (compare), the digits metrics (digits), held-out NLL
(nll), samples of trained models (samples) and the image-model harness (images)."""

from .compare import Comparison, compare, save, trajectories
from .digits import evaluate_digits, load_digits_classifier
from .images import ImageComparison, compare_images, save_images
from .nll import evaluate_nll
from .samples import PerSampleNoise, guided_score_for, preview, preview_eval_fn, sample_model

__all__ = ["Comparison", "compare", "save", "trajectories", "evaluate_digits", "load_digits_classifier",
           "evaluate_nll", "preview", "sample_model", "guided_score_for", "ImageComparison", "compare_images",
           "save_images", "preview_eval_fn", "PerSampleNoise"]
