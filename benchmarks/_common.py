"""Shared by the benchmark scripts: exact references, floors and the pass rule."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from scoresde.metrics import log_density_gap, sliced_wasserstein

RESULTS = Path(__file__).resolve().parent / "results"


def reference(target, n: int, dtype=torch.float64):
    """Two independent exact sample sets and the floors: (ref, sw_floor, gap_floor, gap_floor_se)."""
    ref = target.sample(n, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ref2 = target.sample(n, generator=torch.Generator().manual_seed(2), dtype=dtype)
    gap, se = log_density_gap(target.log_prob, ref2, ref)
    return ref, float(sliced_wasserstein(ref2, ref)), float(gap), float(se)


def quality(target, out, ref, sw_floor) -> dict:
    """Log-density gap (with its standard error) and sliced W2 against the exact reference; the pass rule:
    |gap| < 3 se and sliced W2 < 1.5 x its floor."""
    gap, se = log_density_gap(target.log_prob, out, ref)
    sw = float(sliced_wasserstein(out, ref))
    gap, se = float(gap), float(se)
    return {"gap": gap, "gap_se": se, "gap_z": gap / se, "sw": sw, "sw_ratio": sw / sw_floor,
            "gap_ok": abs(gap) < 3 * se, "sw_ok": sw < 1.5 * sw_floor}


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    payload = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1))
    return path
