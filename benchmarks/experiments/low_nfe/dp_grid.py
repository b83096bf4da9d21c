"""Study (issue 17): a grid from one fine pilot solve and dynamic programming, as a cheap alternative to the
Nelder-Mead fit (in the spirit of Chen et al. 2024, "A geometric perspective on diffusion models" / GITS).

    python -m benchmarks.experiments.low_nfe.dp_grid [--nfe 8,10,15 --samplers unipc,dpm_solver_pp --fine 200]

The pilot batch (1000 prior samples, PILOT_SEED) is solved once on a fine uniform log-SNR grid of M steps (unipc),
keeping every state x_m and its data prediction D_m. A first-order exponential step (DDIM in data prediction) from
fine point i to j needs only D_i, so the cost of every pair (i, j) is known without another score evaluation:
c(i, j) = mean over pilots of ||x̂_j - x_j||^p. Dynamic programming picks the N-step path 0 -> M of least total cost;
that grid is then handed to the higher-order samplers. Fit cost: M evaluations of the pilot batch and the
O(N M²) path search. Cells: log-density gap in se / SW2 in floors, `*` both within. Nothing here is in the library.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from benchmarks._common import sampler, write_json
from benchmarks.experiments.low_nfe._study import HERE, REACHABLE, judge, prior, setting
from scoresde.processes import VP
from scoresde.samplers import unipc
from scoresde.schedules import scaled_log_snr, uniform_log_snr


def fine_trajectory(score, process, x: torch.Tensor, fine: int):
    """States, data predictions and times of unipc on a uniform log-SNR grid of `fine` steps from x."""
    ts = uniform_log_snr(process, fine)
    xs, ds = [], []

    def keep(info):
        xs.append(info["x"].clone())
        ds.append(info["x0"].clone())

    out = unipc(score, process, x, ts, callback=keep, denoise=False, progress=False)
    xs.append(out)
    return ts, torch.stack(xs), torch.stack(ds)


def pair_costs(process, ts, xs, ds, power: float) -> np.ndarray:
    """c[i, j] (i < j): mean ||x̂_j - x_j||^power of one first-order data-prediction step from the exact x_i."""
    a, s = process.alpha(ts), process.sigma(ts)
    lam = torch.log(a / s)
    m = len(ts) - 1
    c = np.full((m + 1, m + 1), np.inf)
    dims = tuple(range(2, xs.ndim))
    for i in range(m):
        j = torch.arange(i + 1, m + 1)
        h = lam[j] - lam[i]
        shape = (-1,) + (1,) * (xs.ndim - 1)
        xhat = (s[j] / s[i]).reshape(shape) * xs[i] + (a[j] * -torch.expm1(-h)).reshape(shape) * ds[i]
        e = ((xhat - xs[j]) ** 2).sum(dims).sqrt() ** power
        c[i, i + 1:] = e.mean(1).numpy()
    return c


def dp_path(c: np.ndarray, steps: int) -> list[int]:
    """The `steps`-edge path 0 -> M of least total cost c[i, j]."""
    m = c.shape[0] - 1
    best = np.full(m + 1, np.inf)
    best[0] = 0.0
    back = np.zeros((steps + 1, m + 1), dtype=int)
    for k in range(1, steps + 1):
        tot = best[:, None] + c  # tot[i, j]
        back[k] = tot.argmin(0)
        best = tot.min(0)
    path = [m]
    for k in range(steps, 0, -1):
        path.append(back[k][path[-1]])
    return path[::-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default=REACHABLE)
    ap.add_argument("--samplers", default="unipc,dpm_solver_pp,dpm_solver_pp:order=3")
    ap.add_argument("--nfe", default="8,10,15")
    ap.add_argument("--fine", type=int, default=200)
    ap.add_argument("--power", default="1,2")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", default="dp_grid")
    args = ap.parse_args()
    torch.set_num_threads(1)
    process, rows = VP(), []
    powers = [float(p) for p in args.power.split(",")]
    for tname in args.targets.split(","):
        st = setting(tname, process, args.n)
        t0 = time.perf_counter()
        ts_f, xs, ds = fine_trajectory(st.score, process, st.pilots, args.fine)
        costs = {p: pair_costs(process, ts_f, xs, ds, p) for p in powers}
        fit_s = (time.perf_counter() - t0) / len(powers)
        for name in args.samplers.split(","):
            spec = sampler(name)
            for b in [int(v) for v in args.nfe.split(",")]:
                steps = spec.steps_for(b)
                grids = {"default": scaled_log_snr(process, steps, st.scale)}
                for p in powers:
                    grids[f"dp{p:g}"] = ts_f[dp_path(costs[p], steps)]
                cells = []
                for gname, ts in grids.items():
                    x, g = prior(st, process, args.n)
                    q, cell = judge(st, spec(st.score, process, x, ts, nfe=b, generator=g), gname)
                    cells.append(cell)
                    r = -0.5 * process.log_snr(ts[1:]).numpy()
                    rows.append({"target": tname, "sampler": name, "nfe": b, "grid": gname, "fit_seconds": fit_s,
                                 "log_r_over_D": [round(math.log(math.exp(v) / st.scale), 2) for v in r], **q})
                print(f"{tname:10s} {name:22s} NFE {b:3d}  " + "  ".join(cells), flush=True)
        print(f"  {tname}: fine solve + pair costs {fit_s:.2f} s per power", flush=True)
    write_json(args.json, {"rows": rows}, results=HERE)


if __name__ == "__main__":
    main()
