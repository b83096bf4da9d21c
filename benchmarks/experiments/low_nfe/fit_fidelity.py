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

from benchmarks._common import sampler, write_json
from benchmarks.experiments.low_nfe._study import HERE, REACHABLE, judge, prior, setting
from scoresde.processes import VP
from scoresde.samplers.tuning import optimized


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
        st = setting(tname, process, args.n)
        pilots = st.pilots
        for name in args.samplers.split(","):
            spec = sampler(name)
            for b in [int(v) for v in args.nfe.split(",")]:
                steps = spec.steps_for(b)
                cells = []
                for kind in ("single", "two-stage"):
                    counted = PilotEvals(st.score)
                    t0 = time.perf_counter()
                    if kind == "single":
                        ts = optimized(process, steps, counted, spec, pilots)
                    else:
                        g1 = optimized(process, steps, counted, spec, pilots[: args.coarse],
                                       max_evals=args.coarse_evals)

                        def first(process_, steps_, g1=g1):
                            return g1

                        ts = optimized(process, steps, counted, spec, pilots, inits=(first,),
                                       max_evals=args.fine_evals, step=args.fine_step)
                    secs, evals = time.perf_counter() - t0, counted.rows / 1000
                    x, g = prior(st, process, args.n)
                    q, cell = judge(st, spec(st.score, process, x, ts, nfe=b, generator=g), kind)
                    cells.append(f"{cell} {secs:4.1f} s {evals:5.0f} ev")
                    rows.append({"target": tname, "sampler": name, "nfe": b, "fit": kind, "fit_seconds": secs,
                                 "fit_evals_per_pilot": evals, **q})
                print(f"{tname:10s} {name:22s} NFE {b:3d}  " + "  ".join(cells), flush=True)
    write_json(args.json, {"rows": rows}, results=HERE)


if __name__ == "__main__":
    main()
