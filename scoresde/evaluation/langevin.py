"""Boltzmann sampling and annealing measured against exact answers: the logic of `scoresde langevin` and
`scoresde anneal` (the CLI only parses, calls these and prints).

langevin_report: chains of ULA, MALA or BAOAB on a landscape at kT, started from exact draws (d <= 2), and per
statistic (mean energy, E[x_i], E[x_i²], well occupancies) the estimate, the exact value, the bias and its standard
error from the independent chains' means; bulk ESS, ESS per second, R-hat, acceptance; PNGs of the sampled
histogram over the exact density and of traces.
anneal_report: simulated annealing from uniform starts in the landscape's search domain; the share of chains whose
best energy is within tol of the global minimum.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import Tensor

from .. import energies as E
from ..samplers import mcmc
from .mcmc import ess_bulk, rhat

__all__ = ["SAMPLERS", "curvature", "default_tau", "sample_landscape", "moment_rows", "langevin_report",
           "anneal_report", "format_langevin", "format_anneal"]

SAMPLERS = ("ula", "mala", "baoab")
MAX_KEPT = 20_000_000  # recorded numbers (draws x chains x d) before thinning kicks in


def curvature(landscape: E.Landscape) -> float:
    """The largest Hessian eigenvalue of U over its known minima (sets default time steps)."""
    top = 0.0
    for m in landscape.minima:
        h = torch.autograd.functional.hessian(lambda y: landscape(y[None])[0], m.clone())
        top = max(top, float(torch.linalg.eigvalsh(h.reshape(len(m), len(m))).max()))
    return top


def default_tau(landscape: E.Landscape, sampler: str, gamma: float = 1.0, mass: float = 1.0) -> float:
    """A stable time step: tau curv / gamma = 0.2 for ULA and MALA's starting step (then adapted); tau omega = 0.5
    for BAOAB (omega² = curv / mass)."""
    c = curvature(landscape)
    return 0.5 * math.sqrt(mass / c) if sampler == "baoab" else 0.2 * gamma / c


def _sync(x: Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def sample_landscape(landscape: E.Landscape, kT: float, sampler: str, x0: Tensor, steps: int, *, tau: float,
                     gamma: float = 1.0, mass: float = 1.0, warmup: int | None = None,
                     generator: torch.Generator | None = None) -> tuple[mcmc.Chains, float, int]:
    """Run one sampler from x0; returns the chains, the wall time (s) and the first recorded step."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    burn = steps // 5 if warmup is None else warmup
    thin = max(1, math.ceil((steps - burn) * x0.numel() / MAX_KEPT))
    common = dict(burn_in=burn, thin=thin, generator=generator)
    _sync(x0)
    t0 = time.perf_counter()
    if sampler == "ula":
        out = mcmc.overdamped(landscape, x0, steps, kT=kT, tau=tau, gamma=gamma, **common)
    elif sampler == "mala":
        out = mcmc.mala(landscape, x0, steps, kT=kT, step=kT * tau / gamma, warmup=burn, **common)
    else:
        out = mcmc.baoab(landscape, x0, steps, kT=kT, tau=tau, gamma=gamma, mass=mass, **common)
    _sync(out.x)
    return out, time.perf_counter() - t0, burn


def moment_rows(landscape: E.Landscape, ref: E.Reference, trace: Tensor) -> tuple[list[dict], dict[str, Tensor]]:
    """Per exact statistic: estimate, exact, bias, standard error (from chain means), z; and the scalar traces
    (draws, chains) they came from."""
    k, b = trace.shape[:2]
    flat = trace.reshape(k * b, -1)
    with torch.no_grad():
        u = torch.cat([landscape(c) for c in flat.split(1 << 18)]).reshape(k, b)
    traces = {"mean_energy": u}
    for i in range(landscape.dim):
        traces[f"mean[{i}]"] = trace[..., i]
        traces[f"x2[{i}]"] = trace[..., i].square()
    exact = ref.stats()
    if any(key.startswith("well[") for key in exact):
        well = torch.cat([landscape.well(c) for c in flat.split(1 << 18)]).reshape(k, b)
        for j in range(len(landscape.minima)):
            traces[f"well[{j}]"] = (well == j).to(trace.dtype)
    rows = []
    for name, t in traces.items():
        m = t.double().mean(0)
        est, se = float(m.mean()), float(m.std() / math.sqrt(b)) if b > 1 else float("nan")
        bias = est - exact[name]
        rows.append({"stat": name, "estimate": est, "exact": exact[name], "bias": bias, "se": se,
                     "z": bias / se if se > 0 else float("nan")})
    return rows, traces


def langevin_report(energy: str = "double_well", kT: float = 0.5, sampler: str = "mala", chains: int = 1000,
                    steps: int = 5000, *, dim: int | None = None, tau: float | None = None, gamma: float = 1.0,
                    mass: float = 1.0, warmup: int | None = None, seed: int = 0, device: str = "cpu",
                    dtype: torch.dtype = torch.float64, out: str | Path | None = None) -> dict:
    """Sample a landscape's Boltzmann law at kT and measure it against the exact answer (see the module doc)."""
    E.check_kT(kT)
    for name, v in (("chains", chains), ("steps", steps)):
        if not isinstance(v, int) or v < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {v!r}")
    landscape = E.get(energy, dim)
    ref = E.reference(landscape, kT)
    tau = default_tau(landscape, sampler, gamma, mass) if tau is None else tau
    g = torch.Generator(device=device).manual_seed(seed)
    if ref.density is not None:
        x0 = ref.sample(chains, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)
    else:
        x0 = landscape.x_min.to(device=device, dtype=dtype) + math.sqrt(kT / curvature(landscape)) * torch.randn(
            chains, landscape.dim, generator=g, device=device, dtype=dtype)
    out_chains, wall, burn = sample_landscape(landscape, kT, sampler, x0, steps, tau=tau, gamma=gamma, mass=mass,
                                              warmup=warmup, generator=g)
    rows, traces = moment_rows(landscape, ref, out_chains.trace)
    ess = {name: ess_bulk(t) for name, t in traces.items() if not name.startswith("well")}
    ess_min = min(ess.values())
    report = {
        "energy": energy, "dim": landscape.dim, "kT": kT, "sampler": sampler, "chains": chains, "steps": steps,
        "burn_in": burn, "tau": tau, "gamma": gamma, "step_mean": float(out_chains.step.mean()),
        "wall_s": wall, "ess_bulk": ess, "ess_min": ess_min, "ess_per_s": ess_min / wall,
        "rhat_max": max(rhat(t) for name, t in traces.items() if not name.startswith("well")),
        "accept": None if out_chains.accept is None else float(out_chains.accept.mean()), "rows": rows,
        "files": [],
    }
    if out is not None and landscape.dim <= 2 and ref.density is not None:
        from ..plotting import plot_boltzmann, plot_traces

        outdir = Path(out)
        tr = out_chains.trace.reshape(-1, landscape.dim)
        title = f"{sampler} on {energy}, kT = {kT:g}"
        report["files"] = [
            str(plot_boltzmann(tr, ref.axes, ref.density, outdir / f"{energy}_{sampler}_histogram.png", title)),
            str(plot_traces({k: v for k, v in traces.items() if not k.startswith("x2")},
                            outdir / f"{energy}_{sampler}_traces.png")),
        ]
    return report


def format_langevin(report: dict) -> str:
    """The report as a table: one row per statistic, then ESS, ESS/s, R-hat and acceptance."""
    lines = [f"{report['sampler']} on {report['energy']} (d = {report['dim']}) at kT = {report['kT']:g}: "
             f"{report['chains']} chains x {report['steps']} steps (burn-in {report['burn_in']}), "
             f"mean step eta = {report['step_mean']:.4g}, {report['wall_s']:.2f} s",
             f"{'statistic':>12} {'estimate':>12} {'exact':>12} {'bias':>11} {'se':>10} {'z':>7} {'ESS':>10}"]
    for r in report["rows"]:
        ess = report["ess_bulk"].get(r["stat"])
        lines.append(f"{r['stat']:>12} {r['estimate']:12.5g} {r['exact']:12.5g} {r['bias']:11.3e} {r['se']:10.2e} "
                     f"{r['z']:7.2f} {'' if ess is None else f'{ess:10.0f}'}")
    acc = "" if report["accept"] is None else f", acceptance {report['accept']:.3f}"
    lines.append(f"min bulk ESS {report['ess_min']:.0f}, ESS/s {report['ess_per_s']:.0f}, "
                 f"max R-hat {report['rhat_max']:.4f}{acc}")
    return "\n".join(lines)


def anneal_report(energy: str = "rastrigin", dim: int | None = None, schedule: str = "geometric",
                  chains: int = 1000, steps: int = 5000, *, kT0: float = 10.0, kT1: float = 0.01,
                  tau: float | None = None, gamma: float = 1.0, restarts: int = 1, adapt: float = 0.05,
                  tol: float = 0.1, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float64) -> dict:
    """Simulated annealing from uniform starts in the search domain: success = best energy < U_min + tol."""
    landscape = E.get(energy, dim)
    tau = default_tau(landscape, "mala", gamma) if tau is None else tau
    g = torch.Generator(device=device).manual_seed(seed)
    lo, hi = (torch.tensor(v, device=device, dtype=dtype) for v in zip(*landscape.bounds()))
    x0 = lo + (hi - lo) * torch.rand(chains, landscape.dim, generator=g, device=device, dtype=dtype)
    _sync(x0)
    t0 = time.perf_counter()
    out = mcmc.anneal(landscape, x0, steps, kT0=kT0, kT1=kT1, tau=tau, schedule=schedule, gamma=gamma,
                      restarts=restarts, adapt=adapt, generator=g)
    _sync(out.x)
    wall = time.perf_counter() - t0
    best = out.u_best.double().cpu()
    return {"energy": energy, "dim": landscape.dim, "schedule": schedule, "chains": chains, "steps": steps,
            "kT0": kT0, "kT1": kT1, "tau": tau, "restarts": restarts, "evals": out.evals, "u_min": landscape.u_min,
            "tol": tol, "success": float((best < landscape.u_min + tol).double().mean()),
            "best": float(best.min()), "median_best": float(best.median()), "accept": float(out.accept.mean()),
            "wall_s": wall}


def format_anneal(r: dict) -> str:
    return (f"{r['schedule']} annealing on {r['energy']} (d = {r['dim']}), kT {r['kT0']:g} -> {r['kT1']:g}, "
            f"{r['chains']} chains x {r['steps']} steps ({r['evals']} energy+gradient evaluations per chain), "
            f"{r['restarts']} cycle(s), {r['wall_s']:.2f} s\n"
            f"success rate (best U < U_min + {r['tol']:g} = {r['u_min'] + r['tol']:.6g}): {r['success']:.3f}\n"
            f"best energy {r['best']:.6g} (global minimum {r['u_min']:.6g}), median best {r['median_best']:.6g}, "
            f"acceptance {r['accept']:.3f}")
