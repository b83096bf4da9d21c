"""Quality versus NFE of every scoresde sampler on exact scores, and which time grid wins.

    python -m benchmarks.quality_vs_nfe                      # ring8, grid25, aniso under VP; n = 20000
    python -m benchmarks.quality_vs_nfe --targets ring8 --processes vp,ve,ddpm --n 20000
    python -m benchmarks.quality_vs_nfe --samplers unipc --grids jump_log_snr,optimized --nfe 6,8,10,15,20

Prints, per target and process, each sampler's log-density gap (in standard errors) and sliced W2 (in units of
its noise floor) at each NFE, with the smallest NFE that passes both (|gap| < 3 se, SW2 < 1.5 floor); then the
deterministic samplers on every grid of --grids. Samplers are registry names or variants NAME:KEY=VALUE (e.g.
dpm_solver_pp:order=3, DPM-Solver++ 3M); "all" is every registry sampler plus dpm_solver_pp:order=3. Writes
benchmarks/results/<--json>.json.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import toy_data
from scoresde import CountEvals
from scoresde.processes import from_config
from scoresde.samplers.registry import SAMPLERS

from ._common import quality, reference, sampler, write_json

VARIANTS = ["dpm_solver_pp:order=3"]  # measured beside the registry's samplers by --samplers all


def run(spec, target, process, nfe, n, grid=None, max_evals=2000):
    # the optimised grid's pilot batch is drawn with tuning.PILOT_SEED, independent of the evaluation batch (seed 0)
    extra = dict(max_evals=max_evals) if grid == "optimized" else {}
    ts = spec.grid_for(process, nfe, grid, score=target.score_fn(process), shape=target.event_shape, **extra)
    score = CountEvals(target.score_fn(process))
    g = torch.Generator().manual_seed(0)
    x = process.prior((n, 2), generator=g, dtype=torch.float64)
    out = spec(score, process, x, ts, nfe=nfe, generator=g)
    return out, score.nfe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="ring8,grid25,aniso")
    ap.add_argument("--processes", default="vp")
    ap.add_argument("--samplers", default="all")
    ap.add_argument("--nfe", default="6,8,10,15,20,30,50,100")
    ap.add_argument("--grids", default="uniform_t,uniform_log_snr,karras",
                    help="grids tried for the deterministic samplers (registry grid names)")
    ap.add_argument("--max-evals", type=int, default=2000, help="sampler runs on the pilot batch for --grids optimized")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="quality_vs_nfe", help="results file name in benchmarks/results/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [int(v) for v in args.nfe.split(",")]
    names = list(SAMPLERS) + VARIANTS if args.samplers == "all" else args.samplers.split(",")
    records = []
    for tname in args.targets.split(","):
        target = toy_data.load(tname)
        ref, sw_floor, gap_floor, gap_se = reference(target, args.n)
        for pname in args.processes.split(","):
            process = from_config(pname)  # a name: vp, ve, subvp, ddpm, ddpm-cosine
            print(f"\n== {tname} under {process!r}, n = {args.n}: SW2 floor {sw_floor:.4f}; "
                  f"gap floor {gap_floor:+.4f} (se {gap_se:.4f})")
            print(f"{'sampler':22s} {'grid':15s} " + " ".join(f"{b:>11d}" for b in budgets) + "   first NFE passing")
            for name in names:
                spec = sampler(name)
                grids = args.grids.split(",") if spec.deterministic else [spec.grid]
                for grid in grids:
                    if grid == "ddpm_steps" and not hasattr(process, "N"):
                        continue
                    cells, first = [], None
                    for b in budgets:
                        try:
                            t0 = time.perf_counter()
                            out, nfe = run(spec, target, process, b, args.n, grid, args.max_evals)
                            seconds = time.perf_counter() - t0
                        except ValueError as e:
                            print(f"  {name} on {grid} at NFE {b}: {e}", file=sys.stderr)
                            cells.append(f"{'-':>11s}")
                            continue
                        q = quality(target, out, ref, sw_floor)
                        records.append({"target": tname, "process": pname, "sampler": name, "grid": grid,
                                        "budget": b, "nfe": nfe, "seconds": seconds, **q})
                        mark = "*" if q["gap_ok"] and q["sw_ok"] else " "
                        if mark == "*" and first is None:
                            first = nfe
                        cells.append(f"{q['gap_z']:+6.0f}/{q['sw_ratio']:3.1f}{mark}")
                    default = "" if grid == spec.grid else " (alt)"
                    passing = first if first else ">" + str(budgets[-1])
                    print(f"{name:22s} {grid:15s} " + " ".join(cells) + f"   {passing}{default}",
                          flush=True)
    print("\ncells: log-density gap in standard errors / sliced W2 in floors; * = both within (3 se, 1.5x)")
    path = write_json(args.json, {"n": args.n, "budgets": budgets, "records": records})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
