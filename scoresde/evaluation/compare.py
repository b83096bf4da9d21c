"""The sampler x NFE harness: samplers on one score at several NFE budgets, each run measured against exact samples
next to the noise floor (the same metrics between two independent exact sample sets of the same size).

    result = compare(toy_data.load("ring8"), VP(), ["ddim", "heun"], [15, 30])
    print(result.table()); save(result, "runs/compare")
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..metrics import METRICS, log_density_gap
from ..processes import Process
from .._utils import check_device, progress_range
from ..samplers.registry import GRIDS, SAMPLERS, get_sampler
from ..score import CountEvals, ScoreFn
from .bounds import check_compare

__all__ = ["Comparison", "compare", "trajectories", "save"]

PAIRWISE = ("mmd", "energy_distance")  # O(n²): measured on the first pairwise_n points


@dataclass
class Comparison:
    """compare()'s measurements: one record per (sampler, budget) run, the noise floors, samples and grids."""

    process: Process
    n: int
    pairwise_n: int
    seed: int
    device: torch.device
    metrics: tuple[str, ...]  # the record and floor keys measured (METRICS names, plus logp_gap for exact densities)
    floors: dict[str, float]
    reference: Tensor  # the exact samples every run is measured against
    records: list[dict] = field(default_factory=list)
    samples: dict[tuple[str, int], Tensor] = field(default_factory=dict)
    grids: dict[tuple[str, int], Tensor] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "sampler at NFE b: why", for runs that could not be made

    def table(self, title: str = "") -> str:
        """The results as a text table, the noise floor first."""
        cols, w = self.metrics, {c: max(10, len(c)) for c in self.metrics}
        first = f"{title}{', ' if title else ''}n = {self.n} ({', '.join(PAIRWISE)}: first {self.pairwise_n})"
        head = f"{'sampler':20s} {'grid':15s} {'NFE':>4s} " + " ".join(f"{c:>{w[c]}s}" for c in cols)
        se = f"   (logp_gap SE {self.floors['logp_gap_se']:.3g})" if "logp_gap_se" in self.floors else ""
        lines = [first, head + f" {'seconds':>8s}",
                 f"{'noise floor':20s} {'':15s} {'':>4s} " + " ".join(f"{self.floors[c]:{w[c]}.4g}" for c in cols) + se]
        lines += [f"{r['sampler']:20s} {r['grid']:15s} {r['nfe']:4d} " + " ".join(f"{r[c]:{w[c]}.4g}" for c in cols)
                  + f" {r['seconds']:8.2f}" for r in self.records]
        return "\n".join(lines)

    def to_json(self) -> dict:
        """Everything but the tensors, JSON-ready."""
        return {"process": repr(self.process), "n": self.n,
                "pairwise_n": self.pairwise_n, "seed": self.seed, "metrics": list(self.metrics),
                "floors": self.floors, "records": self.records, "skipped": self.skipped}


def _measure(x: Tensor, reference: Tensor, pairwise_n: int, log_prob) -> dict[str, float]:
    row = {name: float(fn(x, reference, **({"max_n": pairwise_n} if name in PAIRWISE else {})))
           for name, fn in METRICS.items()}
    if log_prob is not None:
        gap, se = log_density_gap(log_prob, x, reference)
        row.update(logp_gap=float(gap), logp_gap_se=float(se))
    return row


def _check(samplers: Sequence[str], budgets: Sequence[int], grid: str | None, n: int, pairwise_n: int) -> None:
    for name in samplers:
        get_sampler(name)
    if grid is not None and grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; choose from {', '.join(GRIDS)}")
    if not budgets:
        raise ValueError("no NFE budgets given")
    for nfe in budgets:
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
            raise ValueError(f"NFE must be a positive integer, got {nfe!r}")
    for what, value in (("n", n), ("pairwise_n", pairwise_n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{what} must be an integer >= 2, got {value!r}")


def compare(
    target,
    process: Process,
    samplers: Sequence[str] | None = None,
    budgets: Sequence[int] = (10, 20, 50),
    *,
    score: ScoreFn | None = None,
    n: int = 5000,
    seed: int = 0,
    grid: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    pairwise_n: int = 2000,
    progress: bool | None = None,
) -> Comparison:
    """Run each sampler (registry names; None: all) at each NFE budget on n prior samples and measure the result
    against n exact samples of `target` (a point distribution: sample(n, generator=, dtype=), event_shape).

    The score is `target.score_fn(process)` (exact, Gaussian mixtures) unless `score` is given (a learned model's).
    NFE is measured by CountEvals; `grid` (GRIDS name) replaces each sampler's default grid ("optimized" is fitted
    on a pilot batch per run). Metrics are METRICS (mmd and energy_distance on the first pairwise_n points) and,
    where the target has an exact density (log_prob), logp_gap. Runs a budget cannot buy are listed in `skipped`.
    """
    samplers = list(SAMPLERS) if samplers is None else list(samplers)
    _check(samplers, budgets, grid, n, pairwise_n)
    event_shape = tuple(target.event_shape)
    if len(event_shape) != 1:
        raise ValueError(f"compare measures point data; the target has event shape {event_shape}")
    if score is None:
        if not hasattr(target, "score_fn"):
            raise ValueError("the target has no exact score; pass score= (a learned model's)")
        score = target.score_fn(process)
    log_prob = getattr(target, "log_prob", None)
    dev = check_device(device)
    check_compare(math.prod(event_shape), n, pairwise_n, len(samplers) * len(budgets), budgets,
                  torch.finfo(dtype).bits // 8, dev)
    gen = torch.Generator().manual_seed(seed)
    reference = target.sample(n, generator=gen, dtype=dtype)
    floors = _measure(target.sample(n, generator=gen, dtype=dtype), reference, pairwise_n, log_prob)
    result = Comparison(process, n, pairwise_n, seed, dev, tuple(METRICS) + (("logp_gap",) if log_prob else ()),
                        floors, reference)
    runs = [(name, budget) for name in samplers for budget in budgets]
    for k in progress_range(len(runs), progress, "compare"):
        name, budget = runs[k]
        spec = SAMPLERS[name]
        try:
            ts = spec.grid_for(process, budget, grid, score=score, shape=event_shape, dtype=dtype, device=dev)
        except ValueError as e:
            result.skipped.append(f"{name} at NFE {budget}: {e}")
            continue
        counted = CountEvals(score)
        g = torch.Generator(dev).manual_seed(seed + 1)
        x = process.prior((n, *event_shape), generator=g, device=dev, dtype=dtype)
        t0 = time.perf_counter()
        out = spec(counted, process, x, ts, nfe=budget, generator=g, progress=False).cpu()
        seconds = time.perf_counter() - t0
        result.grids[name, budget], result.samples[name, budget] = ts, out
        result.records.append({"sampler": name, "budget": budget, "nfe": counted.nfe, "grid": grid or spec.grid,
                               "seconds": seconds, **_measure(out, reference, pairwise_n, log_prob)})
    return result


def trajectories(result: Comparison, score: ScoreFn, n: int = 64) -> dict[str, Tensor]:
    """Paths (steps + 1, n, D) of n prior samples for each sampler of `result`, at its smallest budget with a step,
    on the grid it was measured on; keys "sampler (NFE b)"."""
    paths = {}
    for name in dict.fromkeys(r["sampler"] for r in result.records):
        budgets = sorted(b for (s, b), ts in result.grids.items() if s == name and len(ts) > 1)
        if not budgets:
            continue
        pts: list[Tensor] = []
        g = torch.Generator(result.device).manual_seed(result.seed + 2)
        x = result.process.prior((n, *result.reference.shape[1:]), generator=g, device=result.device,
                                 dtype=result.reference.dtype)
        SAMPLERS[name](score, result.process, x, result.grids[name, budgets[0]], nfe=budgets[0], generator=g,
                       progress=False, callback=lambda info: pts.append(info["x"].cpu()))
        paths[f"{name} (NFE {budgets[0]})"] = torch.stack(pts)
    return paths


def save(result: Comparison, out: str | Path, *, meta: dict | None = None,
         paths: dict[str, Tensor] | None = None) -> list[Path]:
    """Write results.json (meta, then result.to_json()), samples.png, quality_vs_nfe.png and, given paths
    (trajectories()), trajectories.png into the folder `out` (results.json alone when every run was skipped);
    returns the files written."""
    from ..plotting import plot_quality_vs_nfe, plot_sample_grid, plot_trajectories

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**(meta or {}), **result.to_json()}, indent=2)
    (out / "results.json.tmp").write_text(text)
    os.replace(out / "results.json.tmp", out / "results.json")  # complete or absent
    written = [out / "results.json"]
    if not result.records:  # every run was refused (result.skipped says why): nothing to draw
        return written
    written += [plot_sample_grid(result.samples, result.reference, out / "samples.png"),
                plot_quality_vs_nfe(result.records, result.floors, result.metrics, out / "quality_vs_nfe.png")]
    if paths:
        written.append(plot_trajectories(paths, result.reference, out / "trajectories.png"))
    return written
