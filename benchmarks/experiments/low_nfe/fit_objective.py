"""Study (issue 17): fit the grid to the error in log-density instead of the distance to the ODE map?

    python -m benchmarks.experiments.low_nfe.fit_objective [--targets ring8,aniso --nfe 8,10 --samplers unipc]

`tuning.optimized` places the steps to minimise (a Huber loss of) ||sampler(x) - ode_map(x)||² on 1000 pilot prior
samples. What the floors measure is the log-density of the samples; an error across a narrow component costs far
more log-density than the same error along a wide one, and L2 weighs them alike. This study fits the same grid
parametrisation, starts and Nelder-Mead to the squared log-density change per pilot, estimated from the score alone
by the trapezoid rule on the segment between the sampler's and the ODE map's end points:

    log p(x̂) - log p(x*) ≈ ½ (s(x̂, t_min) + s(x*, t_min)) · (x̂ - x*)

(one more score evaluation per fit evaluation). It is invariant to any invertible linear map of the data (L2 is
not). The "both" objective is what `tuning.optimized` now fits; the script keeps the other two for comparison.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from benchmarks._common import sampler, write_json
from benchmarks.experiments.low_nfe._study import HERE, judge, prior, setting
from scoresde import CountEvals
from scoresde.processes import VP
from scoresde.samplers import probability_flow
from scoresde.samplers.tuning import _grid_from_increments, _huber_log_loss, _nelder_mead, _scaled_grid, data_scale
from scoresde.schedules import check_grid, karras, uniform_log_snr, uniform_t


def fit(process, steps, score, spec, x, *, objective="logp", max_evals=200, step=0.3, huber=0.9):
    """tuning.optimized's fit with the per-pilot error `objective`: 'l2' (the library's), 'logp' or 'both' (this study's)."""
    inits = (_scaled_grid(data_scale(score, process, x)), uniform_log_snr, karras, uniform_t)
    lam_ends = tuple(process.log_snr(torch.tensor([process.t_max, process.t_min], dtype=torch.float64)).tolist())
    ref = probability_flow(score, process, x, uniform_log_snr(process, 1), method="dopri5", rtol=1e-6, atol=1e-6)
    t_min = torch.full((x.shape[0],), process.t_min, dtype=x.dtype)
    s_ref = score(ref, t_min)

    def errors(logits):
        """(squared distance, squared log-density change) per pilot, or None for an infeasible grid."""
        ts = _grid_from_increments(process, lam_ends, logits)
        try:
            out = spec.fn(score, process, x, ts, progress=False, **spec.options)
        except ValueError:
            return None
        d = out - ref
        if objective == "l2":
            return ((d**2).sum(1),)
        logp = (0.5 * ((score(out, t_min) + s_ref) * d).sum(1)) ** 2
        return (logp,) if objective == "logp" else ((d**2).sum(1), logp)

    cs = None

    def loss(logits, es=None):
        # "both": the sum of the two log-losses (each scale-free), so neither dominates by its units
        es = errors(logits) if es is None else es
        return math.inf if es is None else _huber_log_loss(es, cs)

    starts = []
    for grid in inits:
        lam = process.log_snr(grid(process, steps))
        dl = (lam[1:] - lam[:-1]).clamp_min(1e-12)
        logits = torch.log(dl[1:] / dl[0]).numpy()
        es = None
        if cs is None:
            es = errors(logits)
            cs = [float(e[torch.isfinite(e)].quantile(huber)) for e in es]
            cs = [c if c > 0 else math.inf for c in cs]
        starts.append((loss(logits, es), logits))
    best, logits = min(starts, key=lambda s: s[0])
    logits = _nelder_mead(loss, logits, best, max_evals - len(starts), step)
    return check_grid(process, _grid_from_increments(process, lam_ends, logits))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="ring8,ring8x4,ring8x16,grid25,grid25x4,grid25x16,aniso,anisoq,anisox4,"
                                         "mix5,mix16")
    ap.add_argument("--samplers", default="unipc")
    ap.add_argument("--nfe", default="8,10")
    ap.add_argument("--objectives", default="l2,logp")
    ap.add_argument("--max-evals", type=int, default=200)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", default="fit_objective")
    args = ap.parse_args()
    torch.set_num_threads(1)
    process = VP()
    rows = []
    for tname in args.targets.split(","):
        st = setting(tname, process, args.n)
        score, pilots = st.score, st.pilots
        for name in args.samplers.split(","):
            spec = sampler(name)
            for b in [int(v) for v in args.nfe.split(",")]:
                cells = []
                for objective in args.objectives.split(","):
                    t0 = time.perf_counter()
                    ts = fit(process, spec.steps_for(b), score, spec, pilots, objective=objective,
                             max_evals=args.max_evals)
                    seconds = time.perf_counter() - t0
                    counted = CountEvals(score)
                    x, g = prior(st, process, args.n)
                    q, cell = judge(st, spec(counted, process, x, ts, nfe=b, generator=g), objective)
                    cells.append(f"{cell} ({seconds:4.1f} s)")
                    rows.append({"target": tname, "sampler": name, "nfe": counted.nfe, "objective": objective,
                                 "fit_seconds": seconds, "grid": ts.tolist(), **q})
                print(f"{tname:10s} {name:14s} NFE {b:3d}  " + "  ".join(cells), flush=True)
    write_json(args.json, {"rows": rows}, results=HERE)


if __name__ == "__main__":
    main()
