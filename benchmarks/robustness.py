"""Scale and dimension robustness of the samplers' default grids on exact Gaussian-mixture scores.

    python -m benchmarks.robustness                                   # every target, default samplers, VP
    python -m benchmarks.robustness --targets ring8x16,mix5 --samplers unipc --nfe 5,8,10,15

Targets: ring8, grid25 and aniso, each also rescaled by 1/4, 4 and 16 (means x c, covariances x c²), and seeded
random mixtures in 5 and 16 dimensions with full covariances and unequal weights. For each sampler (registry name
or variant NAME:KEY=VALUE) on its default grid (or --grid) and each NFE budget: the log-density gap in standard
errors and sliced W2 in units of its noise floor (two exact sample sets), `*` when both are within the floors
(|gap| < 3 se, SW2 < 1.5 floor); then the smallest NFE passing both per (sampler, target). Writes
benchmarks/results/<--json>.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

import toy_data
from scoresde import CountEvals
from scoresde.processes import from_config
from toy_data import GaussianMixture

from ._common import quality, reference, sampler, write_json

SCALES = {"q": 0.25, "x4": 4.0, "x16": 16.0}  # target-name suffix -> scale factor c
DEFAULT_SAMPLERS = ("unipc,dpm_solver_pp,dpm_solver_pp:order=3,heun,euler,ddim,probability_flow,dpm_solver_pp_sde,"
                    "ancestral_analytic,ancestral,euler_maruyama,predictor_corrector,annealed_langevin")


def scaled(mixture: GaussianMixture, c: float) -> GaussianMixture:
    """The mixture of c x0: means x c, covariances x c²."""
    return GaussianMixture(mixture.weights, mixture.means * c, mixture.covariances * c**2)


def random_mixture(dim: int, k: int = 6, seed: int = 0) -> GaussianMixture:
    """k full-covariance components in `dim` dimensions: weights ~ Dirichlet(2), means ~ N(0, 1.5² I) shifted so that
    the mixture's mean is 0 (as data is usually centred; a far-off mean puts the prior N(0, I) of VP measurably off
    p_T), covariances Q diag(s²) Qᵀ with Q a random rotation and the standard deviations s log-uniform in
    [0.05, 0.5]."""
    g = torch.Generator().manual_seed(seed)
    w = -torch.log(torch.rand(k, 2, generator=g, dtype=torch.float64)).sum(1)  # Gamma(2, 1) from two exponentials
    means = 1.5 * torch.randn(k, dim, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(k, dim, dim, generator=g, dtype=torch.float64))
    s = torch.exp(math.log(0.05) + torch.rand(k, dim, generator=g, dtype=torch.float64) * math.log(10.0))
    means = means - (w / w.sum()) @ means
    cov = q @ torch.diag_embed(s**2) @ q.transpose(1, 2)
    return GaussianMixture(w / w.sum(), means, 0.5 * (cov + cov.transpose(1, 2)))


def target(name: str) -> GaussianMixture:
    """ring8 / grid25 / aniso [+ q | x4 | x16], mix5 or mix16."""
    if name.startswith("mix"):
        return random_mixture(int(name[3:]), seed=int(name[3:]))
    for suffix, c in SCALES.items():
        if name.endswith(suffix) and name[: -len(suffix)] in toy_data.MIXTURES:
            return scaled(toy_data.load(name[: -len(suffix)]), c)
    return toy_data.load(name)


TARGETS = [f"{b}{s}" for b in ("ring8", "grid25", "aniso") for s in ("", *SCALES)] + ["mix5", "mix16"]


def run(spec, target, process, budget: int, n: int, grid: str | None = None):
    """(samples, measured NFE, seconds to make the grid) of a registry spec at an NFE budget from n prior samples
    (seed 0, float64); the grid is made by spec.grid_for with the exact score (scaled_log_snr: one evaluation on
    1000 pilot samples for the data's scale; optimized: the fit on 1000 pilots; neither counted in the NFE;
    ancestral_analytic's pilot is counted)."""
    score = target.score_fn(process)
    t0 = time.perf_counter()
    ts = spec.grid_for(process, budget, grid, score=score, shape=target.event_shape)
    grid_seconds = time.perf_counter() - t0
    counted = CountEvals(score)
    g = torch.Generator().manual_seed(0)
    x = process.prior((n, *target.event_shape), generator=g, dtype=torch.float64)
    out = spec(counted, process, x, ts, nfe=budget, generator=g)
    return out, counted.nfe, grid_seconds


def ode_map(target, process, n: int, tol: float = 1e-7):
    """The exact probability-flow ODE map from the same prior samples (dopri5), with the final Tweedie step."""
    from scoresde.samplers import probability_flow
    from scoresde.schedules import uniform_log_snr

    x = process.prior((n, *target.event_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return probability_flow(target.score_fn(process), process, x, uniform_log_snr(process, 1), method="dopri5",
                            rtol=tol, atol=tol)


def _cell(q: dict) -> tuple[str, bool]:
    ok = q["gap_ok"] and q["sw_ok"]
    return f"{q['gap_z']:+6.0f}/{q['sw_ratio']:4.2f}{'*' if ok else ' '}", ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--samplers", default=DEFAULT_SAMPLERS)
    ap.add_argument("--nfe", default="5,8,10,15,20,30,50")
    ap.add_argument("--grid", default=None, help="a registry grid name for every sampler (default: each one's own)")
    ap.add_argument("--process", default="vp")
    ap.add_argument("--ode", action="store_true", help="also the exact ODE map (dopri5, rtol = atol = 1e-7)")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", default="robustness", help="results file name in benchmarks/results/")
    args = ap.parse_args()
    torch.set_num_threads(1)
    budgets = [int(v) for v in args.nfe.split(",")]
    names, targets = args.samplers.split(","), args.targets.split(",")
    process = from_config({"name": args.process})
    records, first = [], {}
    for tname in targets:
        tgt = target(tname)
        ref, sw_floor, _, gap_se = reference(tgt, args.n)
        print(f"\n== {tname} (D = {tgt.means.shape[1]}) under {process!r}, n = {args.n}: SW2 floor {sw_floor:.4g}, "
              f"gap se {gap_se:.4f}")
        print(f"{'sampler':24s} {'grid':15s} " + " ".join(f"{b:>12d}" for b in budgets) + "   first NFE passing")
        if args.ode:
            q = quality(tgt, ode_map(tgt, process, args.n), ref, sw_floor)
            records.append({"target": tname, "sampler": "ode_map", "grid": "dopri5", **q})
            first["ode_map", tname] = "yes" if _cell(q)[1] else "no"
            print(f"{'ode_map (dopri5)':40s} {_cell(q)[0]}   {'within' if _cell(q)[1] else 'OUTSIDE'} the floors")
        for name in names:
            spec = sampler(name)
            cells, passed, fits = [], None, []
            for b in budgets:
                t0 = time.perf_counter()
                try:
                    out, nfe, grid_seconds = run(spec, tgt, process, b, args.n, args.grid)
                except ValueError as e:
                    print(f"  {name} at NFE {b}: {e}", file=sys.stderr)
                    cells.append(f"{'-':>12s}")
                    continue
                q = quality(tgt, out, ref, sw_floor)
                records.append({"target": tname, "sampler": name, "grid": args.grid or spec.grid, "budget": b,
                                "nfe": nfe, "grid_seconds": grid_seconds, "seconds": time.perf_counter() - t0, **q})
                text, ok = _cell(q)
                cells.append(text)
                fits.append(grid_seconds)
                passed = b if ok and passed is None else passed
            first[name, tname] = passed
            fit = f"   (fits {min(fits):.1f}-{max(fits):.1f} s)" if args.grid == "optimized" and fits else ""
            print(f"{name:24s} {args.grid or spec.grid:15s} " + " ".join(cells)
                  + f"   {passed or '>' + str(budgets[-1])}{fit}", flush=True)
    print("\ncells: log-density gap in standard errors / sliced W2 in floors; * = both within (3 se, 1.5x)")
    print("\nsmallest NFE budget within both floors (ode_map: the exact ODE map itself within them?)")
    rows = (["ode_map"] if args.ode else []) + names
    print(f"{'sampler':24s} " + " ".join(f"{t:>10s}" for t in targets))
    for name in rows:
        print(f"{name:24s} " + " ".join(f"{str(first[name, t] or '>' + str(budgets[-1])):>10s}" for t in targets))
    path = write_json(args.json, {"n": args.n, "process": args.process, "budgets": budgets, "grid": args.grid,
                                  "first_passing": {f"{s} {t}": v for (s, t), v in first.items()},
                                  "records": records})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
