"""Study (issue 17): a cheaper fit by fitting first on a quarter of the pilots, then polishing on all of them.

    python -m benchmarks.experiments.low_nfe.fit_fidelity [--nfe 8,10 --samplers unipc,dpm_solver_pp:order=3]

`tuning.optimized` runs the sampler ~200 times on 1000 pilots. Here: `--coarse-evals` runs on the first
`--coarse` pilots, then `--fine-evals` runs on all 1000 started from that grid (first simplex `--fine-step`),
against the library's single 200-run fit, side by side. Cost in score evaluations of one pilot (the unit that
carries over to a network) and seconds (noisy: the machine is shared). Nothing here is in the library.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._common import quality, reference, sampler, write_json
from benchmarks.experiments.low_nfe.dp_grid import HERE, REACHABLE
from benchmarks.robustness import target
from scoresde.processes import VP
from scoresde.samplers.tuning import optimized, pilot_batch


class PilotEvals:
    """A score that counts evaluations of single pilots (batch rows)."""

    def __init__(self, score):
        self.score, self.rows = score, 0

    def __call__(self, x, t):
        self.rows += x.shape[0]
        return self.score(x, t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default=REACHABLE)
    ap.add_argument("--samplers", default="unipc,dpm_solver_pp:order=3")
    ap.add_argument("--nfe", default="8,10")
    ap.add_argument("--coarse", type=int, default=250)
    ap.add_argument("--coarse-evals", type=int, default=120)
    ap.add_argument("--fine-evals", type=int, default=80)
    ap.add_argument("--fine-step", type=float, default=0.1)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", default="fit_fidelity")
    args = ap.parse_args()
    torch.set_num_threads(1)
    process, rows = VP(), []
    for tname in args.targets.split(","):
        tgt = target(tname)
        ref, sw_floor, _, _ = reference(tgt, args.n)
        pilots = pilot_batch(process, 1000, torch.empty((1, *tgt.event_shape), dtype=torch.float64))
        for name in args.samplers.split(","):
            spec = sampler(name)
            for b in [int(v) for v in args.nfe.split(",")]:
                steps = spec.steps_for(b)
                cells = []
                for kind in ("single", "two-stage"):
                    counted = PilotEvals(tgt.score_fn(process))
                    t0 = time.perf_counter()
                    if kind == "single":
                        ts = optimized(process, steps, counted, spec, pilots)
                    else:
                        g1 = optimized(process, steps, counted, spec, pilots[: args.coarse],
                                       max_evals=args.coarse_evals)

                        def first(process_, steps_, g1=g1):
                            return g1

                        ts = optimized(process, steps, counted, spec.fn, pilots, inits=(first,),
                                       max_evals=args.fine_evals, step=args.fine_step)
                    secs, evals = time.perf_counter() - t0, counted.rows / 1000
                    g = torch.Generator().manual_seed(0)
                    x = process.prior((args.n, *tgt.event_shape), generator=g, dtype=torch.float64)
                    q = quality(tgt, spec(tgt.score_fn(process), process, x, ts, nfe=b, generator=g), ref, sw_floor)
                    ok = q["gap_ok"] and q["sw_ok"]
                    cells.append(f"{kind}: {q['gap_z']:+5.0f}/{q['sw_ratio']:4.2f}{'*' if ok else ' '} "
                                 f"{secs:4.1f} s {evals:5.0f} ev")
                    rows.append({"target": tname, "sampler": name, "nfe": b, "fit": kind, "fit_seconds": secs,
                                 "fit_evals_per_pilot": evals, **q})
                print(f"{tname:10s} {name:22s} NFE {b:3d}  " + "  ".join(cells), flush=True)
    write_json(args.json, {"rows": rows}, results=HERE)


if __name__ == "__main__":
    main()
