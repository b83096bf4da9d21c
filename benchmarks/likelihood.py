"""Issue 7 targets: the probability-flow NLL of a learned ring8 model against ring8's exact entropy, and
bits/dim of an image model.

    python -m benchmarks.likelihood --steps 15000 --batch 1024           # ring8: sigma² and likelihood weighting
    python -m benchmarks.likelihood --digits runs/digits                 # also bits/dim of a trained digits model
    python -m benchmarks.likelihood --weightings "" --digits runs/digits # digits only: likelihood_digits.json

ring8: trains MLPs with lambda = sigma² and with the likelihood weighting lambda = g² (importance-sampled t), then
computes log p of n held-out exact samples by the probability-flow ODE (exact divergence, dopri5) and compares
the mean NLL with the exact mean -log p of the same samples (an estimate of the entropy; the difference is paired,
so its standard error is small). Digits: bits/dim of --digits-n held-out test digits, uniformly dequantised over
their levels, by the probability-flow ODE with Hutchinson's divergence estimator. Writes
benchmarks/results/likelihood.json (likelihood_digits.json without ring8 models).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import toy_data
from scoresde.likelihood import bits_per_dim, dequantize, log_likelihood
from scoresde.training import Model, TrainConfig, load_model, train

from ._common import write_json


def nll_ring8(model: Model, n: int, rtol: float) -> dict:
    target = toy_data.load("ring8")
    x = target.sample(n, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    t0 = time.perf_counter()
    res = log_likelihood(model.score_fn(), model.process, x, rtol=rtol, atol=rtol)
    seconds = time.perf_counter() - t0
    exact = target.log_prob(x)
    gap = exact - res.log_p  # NLL - exact -log p, per sample
    return {"nll": float(-res.log_p.mean()), "nll_se": float(res.log_p.std() / math.sqrt(n)),
            "exact_entropy_estimate": float(-exact.mean()), "gap": float(gap.mean()),
            "gap_se": float(gap.std() / math.sqrt(n)), "nfe": res.nfe, "seconds": seconds}


def bpd_digits(run: str, n: int, probes: int) -> dict:
    model = load_model(run)
    data = toy_data.load(model.config.data, root=model.config.data_root, split="test")
    g = torch.Generator().manual_seed(0)
    x = dequantize(data.sample(n, generator=g), data.n_levels, generator=g)
    t0 = time.perf_counter()
    res = log_likelihood(model.score_fn(), model.process, x, divergence="hutchinson", n_probes=probes,
                         generator=torch.Generator().manual_seed(1))
    seconds = time.perf_counter() - t0
    bpd = bits_per_dim(res.log_p, x[0].numel(), n_levels=data.n_levels)
    return {"run": run, "n": n, "probes": probes, "bpd": float(bpd.mean()),
            "bpd_se": float(bpd.std() / math.sqrt(n)), "nfe": res.nfe, "seconds": seconds,
            "n_levels": data.n_levels}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--weightings", default="sigma2,likelihood", help="sigma2 and/or likelihood (importance-sampled); empty: "
                   "no ring8 models (digits only)")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--digits", default=None, help="a trained digits run directory: also report bits/dim")
    p.add_argument("--digits-n", type=int, default=200)
    p.add_argument("--probes", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for weighting in filter(None, args.weightings.split(",")):
        importance = weighting == "likelihood"
        cfg = TrainConfig(data="ring8", net={"name": "mlp", "width": args.width, "depth": 3, "sigma_data": 1.42},
                          steps=args.steps, batch=args.batch, lr=3e-3, weighting=weighting, importance=importance)
        r = train(cfg, progress=False)
        row = {"weighting": weighting, "importance": importance, "train_seconds": r.seconds, "steps": r.step,
               **nll_ring8(Model(r.ema.eval(), r.process, cfg, r.step), args.n, args.rtol)}
        rows.append(row)
        print(f"ring8 {weighting:10s} trained {r.seconds:5.1f} s: NLL {row['nll']:.4f} ± {row['nll_se']:.4f}, "
              f"exact {row['exact_entropy_estimate']:.4f}, NLL - exact {row['gap']:.4f} ± {row['gap_se']:.4f} nats "
              f"(NFE {row['nfe']}, {row['seconds']:.1f} s)", flush=True)
    digits = None
    if args.digits:
        digits = bpd_digits(args.digits, args.digits_n, args.probes)
        print(f"digits {args.digits}: {digits['bpd']:.4f} ± {digits['bpd_se']:.4f} bits/dim "
              f"({digits['n_levels']} levels; Hutchinson, {args.probes} probes; NFE {digits['nfe']}, "
              f"{digits['seconds']:.1f} s)")
    name = "likelihood" if rows else "likelihood_digits"
    print(f"wrote {write_json(name, {'ring8': rows, 'digits': digits})}")


if __name__ == "__main__":
    main()
