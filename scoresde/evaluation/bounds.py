"""Bounds on the work a command asks for, checked before it starts: NFE budgets, sample counts, batch sizes and the
memory they need on the device (the estimate is in the refusal), so a typo costs a message, not the machine."""

from __future__ import annotations

import argparse
import math

import torch

from .._utils import check_memory, format_bytes
from ..nets import activation_count

MAX_NFE = 100_000  # no sampler needs more; the grid alone takes a few KB of host memory per step
MAX_PAIRWISE = 50_000  # mmd and energy distance cost O(pairwise_n²) time
GRID_BYTES = 4096  # host memory per NFE: the grid's per-step tensors, coefficients and finiteness sums (~2 KB measured)


def int_arg(lo: int, hi: int, what: str):
    """An argparse type for the command line's counts and seeds: an integer in [lo, hi)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if not lo <= value < hi:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value
    return parse


def check_count(name: str, value, least: int = 1) -> int:
    """value as an int >= least, or ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


def check_nfe(budgets) -> None:
    """Every NFE budget is a positive integer no larger than MAX_NFE."""
    for nfe in budgets:
        check_count("NFE", nfe)
        if nfe > MAX_NFE:
            raise ValueError(f"NFE {nfe} is more than the {MAX_NFE:,} a command runs (its grid alone would need "
                             f"about {format_bytes(GRID_BYTES * nfe)})")


def model_activations(model) -> int:
    """Values every layer of a Model's (or DiffusersModel's) network outputs for one input through its score."""
    x = torch.zeros((1, *model.event_shape), device=model.device)
    t = torch.full((1,), float(model.process.t_max), device=model.device)
    score = model.score_fn(0 if getattr(model, "num_classes", 0) else None)
    return activation_count(model.net, lambda: score(x, t))


def check_sampling(model, n: int, batch: int, nfe: int) -> None:
    """n samples of a Model in batches at an NFE budget fit in memory: the samples on the host, one batch's
    activations (at most every layer's output) and noise blocks on the model's device."""
    check_count("n", n)
    check_count("batch", batch)
    check_nfe([nfe])
    d = math.prod(model.event_shape)
    b = min(batch, n)
    check_memory(2 * 4 * n * d + GRID_BYTES * nfe, f"{n:,} samples of shape {tuple(model.event_shape)} at NFE {nfe}")
    check_memory(4 * b * (model_activations(model) + 4 * d), f"sampling in batches of {b:,} (use a smaller "
                 "--batch)", model.device)


def check_likelihood(model, n: int, batch: int, exact: bool) -> None:
    """n held-out samples' likelihoods in batches fit in memory (activations kept for the divergence's
    vector-Jacobian products, times the dimension for the exact divergence's batched ones, at most 2^24 values)."""
    check_count("n", n, 2)
    check_count("batch", batch)
    d, b = math.prod(model.event_shape), min(batch, n)
    jacobian = min(d * b * d, 1 << 24) if exact else b * d
    check_memory(4 * (3 * b * model_activations(model) + 4 * jacobian), f"likelihoods in batches of {b:,} "
                 "(use a smaller --batch)", model.device)


def check_compare(d: int, n: int, pairwise_n: int, runs: int, budgets, itemsize: int, device) -> None:
    """The compare harness's samples (reference, floor and one set per run) fit in memory; NFE and pairwise_n
    are bounded."""
    check_nfe(budgets)
    if pairwise_n > MAX_PAIRWISE:
        raise ValueError(f"pairwise_n {pairwise_n} is more than {MAX_PAIRWISE:,} (mmd and energy distance take time "
                         "quadratic in it)")
    check_memory(itemsize * n * d * (runs + 3) + GRID_BYTES * max(budgets), f"comparing {runs} runs of {n:,} "
                 f"samples")
    check_memory(4 * itemsize * n * d, f"sampling {n:,} points at once", device)
