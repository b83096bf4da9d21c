"""Study (issue 17): fit three parameters of a grid family instead of every step, for a fit several times cheaper.

    python -m benchmarks.experiments.low_nfe.fit_family [--nfe 8,10 --samplers unipc,dpm_solver_pp:order=3]

The family, around the default scaled_log_snr (sigma/alpha = D / sinh²(u/2)): the data scale D' = D e^a (D from
tuning.data_scale); steps - 1 steps with u = u_0 + (u_1 - u_0) s^(e^g), s uniform on [0, 1], from t_max down to
sigma/alpha = r_min exp(j_0 e^rho), then one last step to t_min (r_min its sigma/alpha; j_0 the default grid's last
step in log r). (a, rho, g) = 0 is close to the default. The three are fitted with the library's objective and
Huber scales (tuning.optimized's, on the same 1000 pilots, the same reference) by Nelder-Mead in 3 dimensions
(`--max-evals` runs), side by side with the library's 200-run fit of every step. Cost in score evaluations per pilot
and seconds. Nothing here is in the library.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from benchmarks._common import sampler, write_json
from benchmarks.experiments.low_nfe._study import HERE, REACHABLE, judge, prior, setting
from benchmarks.experiments.low_nfe.fit_fidelity import PilotEvals
from scoresde.processes import VP
from scoresde.samplers import probability_flow
from scoresde.samplers.tuning import _end_point_errors, _huber_log_loss, data_scale, optimized
from scoresde.schedules import check_grid, scaled_log_snr, uniform_log_snr


def family(process, steps: int, scale: float, theta) -> torch.Tensor:
    """The grid of the module docstring at theta = (a, rho, g)."""
    a, rho, g = (float(v) for v in theta)
    ends = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
    r_max, r_min = torch.exp(-0.5 * process.log_snr(ends)).tolist()
    d = scale * math.exp(a)
    default = scaled_log_snr(process, steps, scale)
    r_def = torch.exp(-0.5 * process.log_snr(default)).tolist()
    j0 = math.log(r_def[-2] / r_def[-1])
    r_stop = min(r_min * math.exp(j0 * math.exp(rho)), 0.5 * r_max)
    u0, u1 = (2 * math.asinh(math.sqrt(d / r)) for r in (r_max, r_stop))
    s = torch.linspace(0, 1, steps, dtype=torch.float64) ** math.exp(g)
    u = u0 + (u1 - u0) * s
    log_sinh = 0.5 * u + torch.log(-torch.expm1(-u)) - math.log(2)
    lam = torch.cat([4 * log_sinh - 2 * math.log(d), torch.tensor([-2 * math.log(r_min)], dtype=torch.float64)])
    ts = process.t_from_log_snr(lam)
    ts[0], ts[-1] = process.t_max, process.t_min
    return ts


def fit_family(process, steps, score, spec, x, max_evals: int, step: float = 0.3):
    """Nelder-Mead on (a, rho, g) with tuning.optimized's objective."""
    from scipy.optimize import minimize

    scale = data_scale(score, process, x)
    lam_ends = tuple(process.log_snr(torch.tensor([process.t_max, process.t_min], dtype=torch.float64)).tolist())
    ref = probability_flow(score, process, x, uniform_log_snr(process, 1), method="dopri5", rtol=1e-6, atol=1e-6)
    errors = _end_point_errors(score, process, x, ref, lam_ends, spec, {})

    def errs(theta):
        ts = family(process, steps, scale, theta)
        try:
            check_grid(process, ts)
            lam = process.log_snr(ts)
        except ValueError:
            return None
        d = (lam[1:] - lam[:-1]).clamp_min(1e-12)
        return errors(torch.log(d[1:] / d[0]).numpy())

    es0 = errs(np.zeros(3))
    scales = []
    for e in es0:
        finite = e[torch.isfinite(e)]
        c = float(finite.quantile(0.9)) if finite.numel() else 0.0
        scales.append(c if c > 0 else math.inf)

    def loss(theta):
        es = errs(theta)
        return math.inf if es is None else _huber_log_loss(es, scales)

    best0 = loss(np.zeros(3))
    simplex = np.vstack([np.zeros(3), step * np.eye(3)])
    res = minimize(loss, np.zeros(3), method="Nelder-Mead", options=dict(
        maxfev=max_evals - 2, xatol=1e-4, fatol=1e-6, adaptive=True, initial_simplex=simplex))
    theta = res.x if res.fun < best0 else np.zeros(3)
    return family(process, steps, scale, theta), theta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default=REACHABLE)
    ap.add_argument("--samplers", default="unipc,dpm_solver_pp:order=3")
    ap.add_argument("--nfe", default="8,10")
    ap.add_argument("--max-evals", type=int, default=40)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", default="fit_family")
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
                for kind in ("default", "steps", "family"):
                    counted = PilotEvals(st.score)
                    t0 = time.perf_counter()
                    theta = None
                    if kind == "default":
                        ts = scaled_log_snr(process, steps, data_scale(counted, process, pilots))
                    elif kind == "steps":
                        ts = optimized(process, steps, counted, spec, pilots)
                    else:
                        ts, theta = fit_family(process, steps, counted, spec, pilots, args.max_evals)
                    secs, evals = time.perf_counter() - t0, counted.rows / 1000
                    x, g = prior(st, process, args.n)
                    q, cell = judge(st, spec(st.score, process, x, ts, nfe=b, generator=g), kind)
                    cells.append(f"{cell} {secs:4.1f} s {evals:5.0f} ev")
                    rows.append({"target": tname, "sampler": name, "nfe": b, "fit": kind, "fit_seconds": secs,
                                 "fit_evals_per_pilot": evals, "theta": None if theta is None else list(theta), **q})
                print(f"{tname:10s} {name:22s} NFE {b:3d}  " + "  ".join(cells) +
                      f"  theta {np.round(theta, 2).tolist()}", flush=True)
    write_json(args.json, {"rows": rows}, results=HERE)


if __name__ == "__main__":
    main()
