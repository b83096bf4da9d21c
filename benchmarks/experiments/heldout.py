"""Held-out check of issue 17's third-session choices on targets none of them was tuned on.

    python -m benchmarks.experiments.heldout [--targets h3,h4h,h8,h8x8,h12x4]

The 3M default of dpm_solver_pp_sde, the fit objective of tuning.optimized (distance + log-density change) and the
7-step minimum budgets were all chosen on benchmarks.robustness's 14 targets. These five are random full-covariance
mixtures drawn with other seeds, dimensions, component counts and scales (`benchmarks.robustness.random_mixture`,
then means x c, covariances x c²), never run before the choices were made:
h3 (D 3, 5 components), h4h (D 4, 6, scale 1/2), h8 (D 8, 8), h8x8 (D 8, 4, scale 8), h12x4 (D 12, 6, scale 4).
Cells as in benchmarks.robustness: log-density gap in se / SW2 in floors, `*` both within. Nothing here is in the
library.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks._common import quality, reference, sampler, write_json
from benchmarks.experiments.low_nfe.fit_objective import fit
from benchmarks.robustness import ode_map, random_mixture, run, scaled
from scoresde import CountEvals
from scoresde.processes import VP
from scoresde.samplers.tuning import pilot_batch

HERE = Path(__file__).resolve().parent / "results"
TARGETS = {"h3": (3, 5, 103, 1.0), "h4h": (4, 6, 104, 0.5), "h8": (8, 8, 108, 1.0), "h8x8": (8, 4, 208, 8.0),
           "h12x4": (12, 6, 112, 4.0)}  # name -> (dim, components, seed, scale)
RUNS = [  # (sampler, grid, budgets)
    ("dpm_solver_pp_sde", None, (15, 20, 30, 50)),
    ("dpm_solver_pp_sde:order=2", None, (15, 20, 30, 50)),
    ("unipc", None, (10, 15, 20, 30, 50)),
    ("heun", None, (15, 20, 30, 50)),
    ("predictor_corrector", None, (15, 20, 30, 50)),
    ("probability_flow", None, (29, 41, 50)),
    ("unipc", "optimized", (10,)),
    ("dpm_solver_pp", "optimized", (10,)),
    ("dpm_solver_pp:order=3", "optimized", (10,)),
]
L2_FITS = ("unipc", "dpm_solver_pp", "dpm_solver_pp:order=3")  # the former objective, for comparison at NFE 10


def heldout_target(name: str):
    dim, k, seed, c = TARGETS[name]
    return scaled(random_mixture(dim, k=k, seed=seed), c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", default="heldout")
    args = ap.parse_args()
    torch.set_num_threads(1)
    process, records = VP(), []
    for tname in args.targets.split(","):
        tgt = heldout_target(tname)
        ref, sw_floor, _, _ = reference(tgt, args.n)
        q = quality(tgt, ode_map(tgt, process, args.n), ref, sw_floor)
        records.append({"target": tname, "sampler": "ode_map", **q})
        print(f"\n== {tname} (D = {tgt.means.shape[1]}): ode_map {q['gap_z']:+.0f}/{q['sw_ratio']:.2f}"
              f"{'*' if q['gap_ok'] and q['sw_ok'] else ''}", flush=True)
        for name, grid, budgets in RUNS:
            spec, cells = sampler(name), []
            for b in budgets:
                out, nfe, seconds = run(spec, tgt, process, b, args.n, grid)
                q = quality(tgt, out, ref, sw_floor)
                records.append({"target": tname, "sampler": name, "grid": grid or spec.grid, "budget": b, "nfe": nfe,
                                "grid_seconds": seconds, **q})
                cells.append(f"{b}: {q['gap_z']:+.0f}/{q['sw_ratio']:.2f}{'*' if q['gap_ok'] and q['sw_ok'] else ''}"
                             + (f" ({seconds:.1f} s fit)" if grid else ""))
            print(f"  {name:26s} {grid or spec.grid:15s} " + "  ".join(cells), flush=True)
        pilots = pilot_batch(process, 1000, torch.empty((1, *tgt.event_shape), dtype=torch.float64))
        for name in L2_FITS:  # the former fit (distance only) at NFE 10, for comparison
            spec = sampler(name)
            t0 = time.perf_counter()
            ts = fit(process, spec.steps_for(10), tgt.score_fn(process), spec, pilots, objective="l2")
            seconds = time.perf_counter() - t0
            g = torch.Generator().manual_seed(0)
            x = process.prior((args.n, *tgt.event_shape), generator=g, dtype=torch.float64)
            q = quality(tgt, spec(CountEvals(tgt.score_fn(process)), process, x, ts, nfe=10, generator=g), ref,
                        sw_floor)
            records.append({"target": tname, "sampler": name, "grid": "optimized (distance only)", "budget": 10,
                            "grid_seconds": seconds, **q})
            print(f"  {name:26s} {'optimized, l2':15s} 10: {q['gap_z']:+.0f}/{q['sw_ratio']:.2f}"
                  f"{'*' if q['gap_ok'] and q['sw_ok'] else ''} ({seconds:.1f} s fit)", flush=True)
    write_json(args.json, {"n": args.n, "targets": TARGETS, "records": records}, results=HERE)


if __name__ == "__main__":
    main()
