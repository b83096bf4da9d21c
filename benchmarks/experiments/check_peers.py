"""Sanity check of the peer wrappers in benchmarks/_peers.py on ring8 under DiscreteVP.linear(1000).

For every peer sampler and NFE it prints the measured NFE and the mean log-density gap

    gap = mean log p(generated) - mean log p(exact samples)      (± its standard error)

with p the exact ring8 density, n generated and n exact samples. A correct wrapper gives gaps that shrink
towards 0 as the NFE grows (negative: mass spread into low-density regions; positive: over-concentrated).
Everything (x_T, states, score evaluations) runs in float32 by default (--dtype float64 to switch; diffusers'
own tables and several of its step() functions stay float32 whatever the input dtype).

    python -m benchmarks.experiments.check_peers --threads 1            # NFE 10 20 50 + the --extra runs
    python -m benchmarks.experiments.check_peers --timing-only --threads 1 --stat min   # µs/step table only

Expect a positive gap floor for DDPM (fixed_small variance) even at 1000 steps (+0.06..0.08 nats here; a
hand-written DDPM on scoresde's posterior_coefficients gives the same) and for schedules whose last model
evaluation sits at a coarse noise level before jumping to sigma = 0 (diffusers' default "linspace"/"trailing"
timesteps); ODE solvers on the Karras grid reach |gap| < 0.01 by NFE 200.

Not a headline benchmark: it checks the harness (diffusers' alphas_cumprod against ours, each wrapper's gap
converging with NFE, the adapters' own cost); benchmarks.peers_quality and benchmarks.overhead measure.
"""

from __future__ import annotations

import argparse
import ast
import math
import time

import torch

import toy_data
from benchmarks import _peers as peers
from scoresde.processes import DiscreteVP


def _literal(v: str):
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v


def gap(target, x, ref_lp) -> tuple[float, float]:
    lp = target.log_prob(x.double())
    if not bool(torch.isfinite(lp).all()):
        return float("nan"), float("nan")
    d = float(lp.mean() - ref_lp.mean())
    se = math.sqrt(float(lp.var()) / lp.numel() + float(ref_lp.var()) / ref_lp.numel())
    return d, se


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--extra", nargs="*",
                    default=["diffusers:ddpm:200", "diffusers:ddpm:1000",
                             "diffusers:ddpm:1000:variance_type=fixed_large", "diffusers:ddim:200",
                             "diffusers:dpmpp_2m:200", "diffusers:euler:200",
                             "diffusers:dpmpp_2m:20:use_karras_sigmas=True",
                             "diffusers:dpmpp_2m:50:use_karras_sigmas=True",
                             "kdiffusion:euler:200", "kdiffusion:heun:199", "kdiffusion:dpmpp_2m:200"],
                    help="extra LIB:NAME:NFE[:key=value...] runs (convergence check); key=value are diffusers "
                         "scheduler overrides or k-diffusion run_kdiffusion keywords (grid=ddpm)")
    ap.add_argument("--grid", choices=["karras", "ddpm"], nargs="+", default=["karras", "ddpm"],
                    help="k-diffusion sigma grids")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing", action="store_true", help="also time µs/step with a zero-cost score")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--timing-nfe", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--stat", choices=["median", "min"], default="median", help="statistic over the timing repeats")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads(N) first (default: leave torch's setting unchanged)")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print("versions:", peers.peer_versions())
    process = DiscreteVP.linear(1000)
    target = toy_data.load("ring8")

    if not args.timing_only:
        # the schedulers' alpha_bar (float32, built from trained_betas) against ours (float64)
        err = 0.0
        for name in peers.DIFFUSERS:
            ab = peers.make_diffusers_scheduler(name, process).alphas_cumprod.double()
            err = max(err, float((ab / process.alphas_cumprod - 1).abs().max()))
        assert err < 1e-5, err
        print(f"diffusers alphas_cumprod vs DiscreteVP.linear(1000): max rel. error {err:.2e} (float32 tables)")

        score = target.score_fn(process)
        gen = torch.Generator().manual_seed(args.seed)
        ref = target.sample(args.n, generator=gen, dtype=torch.float64)
        ref_lp = target.log_prob(ref)
        print(f"ring8, n = {args.n}, dtype {args.dtype}, reference mean log p = {float(ref_lp.mean()):.4f}")
        peers.load_k_sampling()
        print(f"k-diffusion sampling loaded from: {peers.KDIFFUSION_SOURCE}")

        runs = []
        for name in peers.DIFFUSERS:
            for nfe in args.nfe:
                runs.append(("diffusers", name, nfe, {}))
        for grid in args.grid:
            for name in peers.KDIFFUSION:
                for nfe in args.nfe:
                    runs.append(("kdiffusion", name, nfe, {"grid": grid}))
        for spec in args.extra:
            lib, name, nfe, *opts = spec.split(":")
            kw = {k: _literal(v) for k, v in (o.split("=", 1) for o in opts)}
            if lib == "kdiffusion":
                kw.setdefault("grid", "karras")
            runs.append((lib, name, int(nfe), kw))

        print(f"\n{'library':<11}{'sampler':<16}{'options':<26}{'NFE':>5}{'meas':>6}{'gap':>10}{'± se':>8}{'sec':>7}")
        for lib, name, nfe, kw in runs:
            gen = torch.Generator().manual_seed(args.seed + 1)
            x_T = torch.randn(args.n, 2, generator=gen, dtype=dtype)
            t0 = time.perf_counter()
            fn = peers.run_diffusers if lib == "diffusers" else peers.run_kdiffusion
            x, m = fn(name, score, process, x_T, nfe, generator=gen, **kw)
            sec = time.perf_counter() - t0
            d, se = gap(target, x, ref_lp)
            opt = ",".join(f"{k}={v}" for k, v in kw.items()) or "-"
            print(f"{lib:<11}{name:<16}{opt:<26}{nfe:>5}{m:>6}{d:>10.4f}{se:>8.4f}{sec:>7.2f}", flush=True)

    if args.timing or args.timing_only:
        print(f"\nzero-cost score, µs per step, loop only ({args.stat} of {args.repeats} after 1 warm-up), "
              f"{args.dtype}, torch threads = {torch.get_num_threads()}")
        print("adapter: zero_score through the ScoreFn adapter; raw: zero model, no adapter; setup: whole call, raw")
        print(f"{'library':<11}{'sampler':<12}{'batch':>8}{'NFE':>5}{'adapter':>10}{'raw':>10}{'setup':>10}")
        for lib, fn, name in [("kdiffusion", peers.run_kdiffusion, "euler"),
                              ("kdiffusion", peers.run_kdiffusion, "dpmpp_2m"),
                              ("diffusers", peers.run_diffusers, "dpmpp_2m")]:
            for batch in (1, 100_000):
                for nfe in args.timing_nfe:
                    kw = dict(repeats=args.repeats, dtype=dtype, stat=args.stat)
                    a = peers.time_per_step(fn, name, batch, nfe, adapter=True, **kw)
                    r = peers.time_per_step(fn, name, batch, nfe, adapter=False, **kw)
                    w = peers.time_per_step(fn, name, batch, nfe, adapter=False, include_setup=True, **kw)
                    print(f"{lib:<11}{name:<12}{batch:>8}{nfe:>5}{a * 1e6:>10.1f}{r * 1e6:>10.1f}{w * 1e6:>10.1f}",
                          flush=True)


if __name__ == "__main__":
    main()
