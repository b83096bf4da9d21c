"""Shared by the benchmark scripts: exact references, floors, the pass rule, sampler variants and JSON output."""

from __future__ import annotations

import ast
import dataclasses
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from scoresde.metrics import log_density_gap, sliced_wasserstein
from scoresde.samplers.registry import SamplerSpec, get_sampler

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


def sampler(name: str) -> SamplerSpec:
    """A registry sampler, or a variant NAME:KEY=VALUE[:KEY=VALUE...] with options fixed, e.g. dpm_solver_pp:order=3
    (DPM-Solver++ 3M; the variant is also what the optimised grid is fitted to)."""
    base, *opts = name.split(":")
    spec = get_sampler(base)
    if not opts:
        return spec
    options = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep:
            raise ValueError(f"sampler option {opt!r} in {name!r} is not KEY=VALUE")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return dataclasses.replace(spec, options={**spec.options, **options})


def command() -> str:
    """The command line that is running, as `python -m benchmarks.NAME ARGS` (or `python FILE ARGS`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    prog = f"python -m {spec.name}" if spec is not None and spec.name else f"python {sys.argv[0]}"
    return " ".join([prog, *map(shlex.quote, sys.argv[1:])])


def write_json(name: str, payload: dict, results: Path = RESULTS) -> Path:
    """Write results/<name>.json with the machine, torch version, threads, date and command line."""
    results.mkdir(parents=True, exist_ok=True)
    payload = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"), "command": command(),
               **payload}
    path = results / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1))
    return path
