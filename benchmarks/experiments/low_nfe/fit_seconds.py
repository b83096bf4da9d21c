"""Study (issue 17): what the library's fit costs, timed apart (warm imports, the best of `--repeats` fits).

    python -m benchmarks.experiments.low_nfe.fit_seconds [--targets ring8,grid25 --nfe 8,10 --repeats 3]

`tuning.optimized` through the registry (`grid_for(..., "optimized")`, 1000 pilots, 200 runs) for unipc and
DPM-Solver++ 3M: seconds (the best and the median of the repeats: the machine is shared, and its noise only adds),
and score evaluations per pilot (exact; what carries over to a network).
One fit before the timings loads scipy and torchdiffeq.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._common import sampler, write_json
from benchmarks.experiments.low_nfe._study import HERE, REACHABLE
from benchmarks.experiments.low_nfe.fit_fidelity import PilotEvals
from benchmarks.robustness import target
from scoresde.processes import VP


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default=REACHABLE)
    ap.add_argument("--samplers", default="unipc,dpm_solver_pp:order=3")
    ap.add_argument("--nfe", default="8,10")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default="fit_seconds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    process, rows = VP(), []
    warm = target("ring8")
    sampler("unipc").grid_for(process, 8, "optimized", score=warm.score_fn(process), max_evals=5)
    print("| target | sampler | NFE | seconds: best / median of %d | evaluations per pilot |\n|---|---|---|---|---|"
          % args.repeats)
    for tname in args.targets.split(","):
        tgt = target(tname)
        for name in args.samplers.split(","):
            spec = sampler(name)
            for b in [int(v) for v in args.nfe.split(",")]:
                secs = []
                for _ in range(args.repeats):
                    counted = PilotEvals(tgt.score_fn(process))
                    t0 = time.perf_counter()
                    spec.grid_for(process, b, "optimized", score=counted, shape=tgt.event_shape)
                    secs.append(time.perf_counter() - t0)
                rows.append({"target": tname, "sampler": name, "nfe": b, "seconds": secs,
                             "evals_per_pilot": counted.rows / 1000})
                print(f"| {tname} | {name} | {b} | {min(secs):.2f} / {sorted(secs)[len(secs) // 2]:.2f} | "
                      f"{counted.rows / 1000:.0f} |", flush=True)
    write_json(args.json, {"rows": rows}, results=HERE)


if __name__ == "__main__":
    main()
