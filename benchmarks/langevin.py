"""Langevin sampling and annealing on energies with exact answers, beside TorchEBM and scipy.

    python -m benchmarks.langevin                 # both parts (about 30 minutes on 2 busy cores)
    python -m benchmarks.langevin --part sample   # ESS/s and bias vs TorchEBM on the 2-D double well, Müller-Brown
    python -m benchmarks.langevin --part anneal   # success rate vs scipy.optimize.dual_annealing
    python -m benchmarks.langevin --part anneal --only muller_brown   # one case (the JSON keeps the others)

Part "sample": the same chains (the same exact Boltzmann draws as starting points, the same number of chains and
steps, float32, one thread) on the same energy at kT: TorchEBM's LangevinDynamics (energy U / kT, step eta,
noise_scale 1: x - eta ∇U / kT + sqrt(2 eta) z, the ULA chain; at 1, 4 and 16 times our ULA's step) and
HamiltonianMonteCarlo (5 leapfrog steps of eps = sqrt(2 eta_MALA), eta_MALA our MALA's adapted step: one leapfrog
step of that size is MALA's proposal), beside our ULA at the same eta, MALA (adapted from eta during the first
fifth) and BAOAB at tau omega = 0.5 and 1. Time is CPU seconds of this process, the least of 3 identical runs
taken round robin: the machine is shared, and with one thread CPU time is the wall time of an idle machine.
Every row reports the bias of the mean energy and the largest |z| over every exact statistic (quadrature), bulk
ESS (the smallest over the energy and the coordinates; rank-normalised split chains after the first fifth), ESS
per CPU second and its ratio to TorchEBM's Langevin at our ULA's step; ESS_U/s is the energy's alone. The claim
checked: our best ESS/s >= 2x TorchEBM's best, both among the rows without a resolved bias (max |z| < 4).

Part "anneal": our annealing (MALA moves, per-chain step adaptation, geometric and linear cooling kT0 -> 0.01,
kT0 per case, uniform starts in the landscape's search domain, 200 chains) against
scipy.optimize.dual_annealing given the same number of evaluations per run (its maxfun = our steps + 1; its
evaluations are energy-only in the global phase and energy (+ analytic gradient, uncounted by scipy) in the local
search, so the budget favours it); success = best energy within 0.1 of the global minimum, over independent runs.

TorchEBM is optional (`pip install --no-deps torchebm`); without it its rows are skipped. Writes
benchmarks/results/langevin.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scoresde import energies as E
from scoresde.evaluation.langevin import default_tau, moment_rows
from scoresde.evaluation.mcmc import ess_bulk
from scoresde.samplers import mcmc

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_CASES = [("double_well", 2, 0.5), ("muller_brown", None, 10.0)]
Z_UNBIASED = 4.0  # a row whose every statistic is within 4 standard errors of exact shows no resolved bias
ANNEAL_CASES = [("rastrigin", 2, 10.0), ("rastrigin", 5, 10.0), ("rastrigin", 10, 10.0),
                ("muller_brown", None, 30.0)]  # energy, dim, kT0 (about a third of the barriers: 20 and 106)


def _summarise(name: str, landscape, ref, trace: torch.Tensor, cpu_s: float, **extra) -> dict:
    """trace (K, B, d) after burn-in: bias rows, bulk ESS (min over energy and coordinates), ESS/s."""
    rows, traces = moment_rows(landscape, ref, trace)
    ess = {k: ess_bulk(t) for k, t in traces.items() if not k.startswith(("well", "x2"))}
    energy = rows[0]
    return {"sampler": name, "cpu_s": cpu_s, "energy_bias": energy["bias"], "energy_se": energy["se"],
            "max_abs_z": max(abs(r["z"]) for r in rows), "ess": min(ess.values()), "ess_energy": ess["mean_energy"],
            "ess_per_s": min(ess.values()) / cpu_s, "ess_energy_per_s": ess["mean_energy"] / cpu_s, "ess_all": ess,
            "rows": rows, **extra}


def _torchebm_model(landscape, kT: float):
    from torchebm.core import BaseModel

    class Scaled(BaseModel):
        def forward(self, x):
            return landscape(x) / kT

    return Scaled()


REPEATS = 3  # time = the least CPU time of this many identical runs, taken round robin


def _timed(fn):
    """fn() and the CPU time it took (seconds of this process's CPU: on a shared machine wall time measures the
    neighbours; with one thread, CPU time is what the wall time would be on an idle machine)."""
    t0 = time.process_time()
    try:
        out = fn()
    except ValueError as e:  # ours refuse to go on from non-finite states
        out = (torch.tensor([float("nan")]), None, None)
        print(f"  failed: {e}")
    return out, time.process_time() - t0


def _ours(chains: mcmc.Chains):
    return chains.trace, float(chains.step.median()), None if chains.accept is None else float(chains.accept.mean())


def sample_case(energy: str, dim, kT: float, chains: int, steps: int, seed: int = 0) -> list[dict]:
    landscape = E.get(energy, dim)
    ref = E.reference(landscape, kT)
    dtype = torch.float32
    x0 = ref.sample(chains, generator=torch.Generator().manual_seed(seed)).to(dtype)
    burn = steps // 5
    tau = default_tau(landscape, "ula")
    eta = kT * tau  # gamma = 1
    g = lambda: torch.Generator().manual_seed(seed + 1)  # noqa: E731
    runs: list[tuple[str, object, float | None]] = [  # name, fn() -> (trace (K, B, d), step, accept), step
        ("scoresde ula", lambda: _ours(mcmc.ula(E.energy_score(landscape, kT), x0, steps, eta, burn_in=burn,
                                                generator=g()))),
        ("scoresde mala", lambda: _ours(mcmc.mala(landscape, x0, steps, kT=kT, step=eta, warmup=burn,
                                                  generator=g()))),
    ] + [(f"scoresde baoab x{f}", lambda f=f: _ours(mcmc.baoab(  # tau omega = 0.5, 1 (omega² the top curvature)
        landscape, x0, steps, kT=kT, tau=f * default_tau(landscape, "baoab"), burn_in=burn, generator=g())))
        for f in (1, 2)]
    first = {name: _timed(fn) for name, fn in runs}  # (result, cpu s)
    try:
        from torchebm.samplers import HamiltonianMonteCarlo, LangevinDynamics
    except ImportError:
        print("torchebm is not installed: its rows are skipped (pip install --no-deps torchebm)")
    else:
        eta_mala = first["scoresde mala"][0][1]
        model = _torchebm_model(landscape, kT)
        peers = [(f"torchebm langevin x{f}", LangevinDynamics(model, step_size=f * eta, noise_scale=1.0, dtype=dtype),
                  f * eta) for f in (1, 4, 16)]
        peers.append(("torchebm hmc (L=5)", HamiltonianMonteCarlo(model, step_size=math.sqrt(2 * eta_mala),
                                                                  n_leapfrog_steps=5, dtype=dtype),
                      math.sqrt(2 * eta_mala)))
        for name, sampler, step in peers:
            fn = lambda sampler=sampler, step=step: (sampler.sample(  # noqa: E731
                x=x0.clone(), n_steps=steps, return_trajectory=True, generator=g()).detach().transpose(0, 1)[burn:],
                step, None)
            runs.append((name, fn))
            first[name] = _timed(fn)
    cpu = {name: [w] for name, (_, w) in first.items()}
    for _ in range(REPEATS - 1):  # round robin, so that a busy spell of the machine hits every sampler alike
        for name, fn in runs:
            cpu[name].append(_timed(fn)[1])
    out = []
    for name, _ in runs:
        (trace, step, accept), cpu_s = first[name][0], min(cpu[name])
        if not bool(torch.isfinite(trace).all()):
            out.append({"sampler": name, "step": step, "failed": "diverged (non-finite states)"})
            continue
        out.append(_summarise(name, landscape, ref, trace, cpu_s, step=step, accept=accept, cpu_s_runs=cpu[name]))
    base = next((r["ess_per_s"] for r in out if r["sampler"] == "torchebm langevin x1" and "ess_per_s" in r), None)
    for r in out:
        if "ess_per_s" in r:
            r["unbiased"] = r["max_abs_z"] < Z_UNBIASED
            r["ess_per_s_vs_torchebm_langevin"] = r["ess_per_s"] / base if base else float("nan")
    return out


def verdict(rows: list[dict]) -> dict:
    """Our best ESS/s over TorchEBM's best, each among the rows with no resolved bias (max |z| < Z_UNBIASED)."""
    ok = [r for r in rows if r.get("unbiased")]
    ours = max((r for r in ok if r["sampler"].startswith("scoresde")), key=lambda r: r["ess_per_s"], default=None)
    peer = max((r for r in ok if r["sampler"].startswith("torchebm")), key=lambda r: r["ess_per_s"], default=None)
    if ours is None or peer is None:
        return {"ratio": None}
    return {"ours": ours["sampler"], "peer": peer["sampler"], "ratio": ours["ess_per_s"] / peer["ess_per_s"],
            "ours_abs_bias": abs(ours["energy_bias"]), "peer_abs_bias": abs(peer["energy_bias"])}


def _print_sample(energy: str, kT: float, rows: list[dict]) -> None:
    print(f"\n{energy} at kT = {kT:g}")
    print(f"{'sampler':>20} {'step':>10} {'accept':>7} {'U bias':>10} {'± se':>9} {'max|z|':>7} {'ESS':>8} "
          f"{'cpu s':>7} {'ESS/s':>8} {'vs tebm':>8} {'ESS_U/s':>8}")
    for r in rows:
        if "failed" in r:
            print(f"{r['sampler']:>20} {r['step']:10.3g}   failed: {r['failed']}")
            continue
        acc = f"{r['accept']:.3f}" if r.get("accept") is not None else ""
        print(f"{r['sampler']:>20} {r['step']:10.3g} {acc:>7} {r['energy_bias']:10.2e} {r['energy_se']:9.1e} "
              f"{r['max_abs_z']:7.1f} {r['ess']:8.0f} {r['cpu_s']:7.2f} {r['ess_per_s']:8.0f} "
              f"{r.get('ess_per_s_vs_torchebm_langevin', float('nan')):8.2f} {r['ess_energy_per_s']:8.0f}")


def anneal_case(energy: str, dim, chains: int, steps: int, runs: int, seed: int = 0, kT0: float = 10.0,
                kT1: float = 0.01, tol: float = 0.1) -> dict:
    from scipy.optimize import dual_annealing

    landscape = E.get(energy, dim)
    bounds = landscape.bounds()
    lo, hi = (torch.tensor(v, dtype=torch.float64) for v in zip(*bounds))
    g = torch.Generator().manual_seed(seed)
    x0 = lo + (hi - lo) * torch.rand(chains, landscape.dim, generator=g, dtype=torch.float64)
    ours = {}
    for schedule in ("geometric", "linear"):
        res = mcmc.anneal(landscape, x0, steps, kT0=kT0, kT1=kT1, tau=default_tau(landscape, "mala"), adapt=0.05,
                          schedule=schedule, generator=torch.Generator().manual_seed(seed + 1))
        ours[schedule] = float((res.u_best < landscape.u_min + tol).double().mean())

    def f(p):
        return float(landscape(torch.as_tensor(p, dtype=torch.float64)[None])[0])

    def jac(p):
        return E.value_and_grad(landscape, torch.as_tensor(p, dtype=torch.float64)[None])[1][0].numpy()

    best, nfev = [], []
    t0 = time.perf_counter()
    for r in range(runs):
        d = dual_annealing(f, bounds, maxfun=res.evals, seed=seed + r, minimizer_kwargs={"jac": jac})
        best.append(d.fun)
        nfev.append(d.nfev)
    wall_da = time.perf_counter() - t0
    scipy_rate = float(np.mean(np.asarray(best) < landscape.u_min + tol))
    return {"energy": energy, "dim": landscape.dim, "evals": res.evals, "chains": chains, "runs": runs,
            "ours_success": ours, "ours_se": {k: math.sqrt(max(v * (1 - v), 1e-12) / chains) for k, v in ours.items()},
            "dual_annealing_success": scipy_rate, "dual_annealing_se": math.sqrt(max(scipy_rate * (1 - scipy_rate),
                                                                                       1e-12) / runs),
            "dual_annealing_median_best": float(np.median(best)), "dual_annealing_mean_nfev": float(np.mean(nfev)),
            "dual_annealing_wall_s": wall_da, "kT0": kT0, "kT1": kT1, "tol": tol}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", default="all", choices=["all", "sample", "anneal"])
    p.add_argument("--chains", type=int, default=1000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--anneal-chains", type=int, default=200)
    p.add_argument("--anneal-steps", type=int, default=3000)
    p.add_argument("--runs", type=int, default=50, help="dual_annealing runs per case")
    p.add_argument("--only", default="", help="anneal: comma-separated energies to run (default: all)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    payload: dict = {"command": "python -m benchmarks.langevin " + " ".join(sys.argv[1:] if argv is None else argv), "args": vars(args),
                     "machine": machine, "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.part in ("all", "sample"):
        payload["sample"] = {}
        for energy, dim, kT in SAMPLE_CASES:
            rows = sample_case(energy, dim, kT, args.chains, args.steps)
            _print_sample(energy, kT, rows)
            v = verdict(rows)
            payload["sample"][energy] = {"rows": rows, "verdict": v}
            if v["ratio"] is not None:
                print(f"best unbiased ESS/s: {v['ours']} / {v['peer']} = {v['ratio']:.2f}x "
                      f"(|U bias| {v['ours_abs_bias']:.2e} vs {v['peer_abs_bias']:.2e})")
    if args.part in ("all", "anneal"):
        payload["anneal"] = []
        print(f"\n{'energy':>14} {'d':>3} {'evals':>6} {'ours geometric':>15} {'ours linear':>15} "
              f"{'dual_annealing':>16} {'da s':>7}")
        for energy, dim, kT0 in ANNEAL_CASES:
            if args.only and energy not in args.only.split(","):
                continue
            r = anneal_case(energy, dim, args.anneal_chains, args.anneal_steps, args.runs, kT0=kT0)
            payload["anneal"].append(r)
            ours = " ".join(f"{r['ours_success'][k]:9.3f}±{r['ours_se'][k]:.3f}" for k in ("geometric", "linear"))
            print(f"{energy:>14} {r['dim']:3d} {r['evals']:6d} {ours} {r['dual_annealing_success']:10.3f}±"
                  f"{r['dual_annealing_se']:.3f} {r['dual_annealing_wall_s']:7.1f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "langevin.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    if "anneal" in payload and "anneal" in old:  # keep the cases not run now
        ran = {(r["energy"], r["dim"]) for r in payload["anneal"]}
        payload["anneal"] = [r for r in old["anneal"] if (r["energy"], r["dim"]) not in ran] + payload["anneal"]
    for part in ("sample", "anneal"):  # a part run alone keeps the other part's last figures
        if part in payload:
            old[part] = payload.pop(part)
            old[part + "_run"] = payload
    path.write_text(json.dumps(old, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
