"""Issue 4 target: train on 2D toy data in at most 10 s, then sample the learned score with several samplers.

    python -m benchmarks.train_toy                      # ring8, grid25, moons, checkerboard; default recipe
    python -m benchmarks.train_toy --data ring8 --seed 1 --tag train_toy_ring8_seed1

Prints training seconds and, per sampler, sliced W2 in units of its noise floor (n = 20000, floor = the same
metric between the reference and an independent exact set, averaged over 5 such sets) and writes
benchmarks/results/<--tag>.json.
One intra-op thread (the machine is shared; two threads are slower under contention).
"""

from __future__ import annotations

import argparse

import torch

import toy_data
from scoresde.metrics import sliced_wasserstein
from scoresde.samplers.registry import get_sampler
from scoresde.training import Model, TrainConfig, train

from ._common import write_json

SAMPLERS = [("dpm_solver_pp", 20), ("dpm_solver_pp", 50), ("heun", 50), ("unipc", 20), ("euler_maruyama", 200)]


def run(data_name: str, args) -> dict:
    data = toy_data.load(data_name)
    g = torch.Generator().manual_seed(1)
    ref = data.sample(args.n, generator=g)
    # the floor: mean over 5 independent exact sets (one pair alone varies by about +-30%)
    floor = sum(float(sliced_wasserstein(data.sample(args.n, generator=g), ref)) for _ in range(5)) / 5
    sigma_data = round(float(data.sample(4096, generator=torch.Generator().manual_seed(0)).std()), 3)
    cfg = TrainConfig(data=data_name, steps=args.steps, batch=args.batch, lr=args.lr, ema=args.ema,
                      warmup=args.warmup, seed=args.seed,
                      net={"name": "mlp", "width": args.width, "depth": args.depth, "emb_dim": args.emb_dim,
                           "sigma_data": sigma_data})
    result = train(cfg, progress=False)
    model = Model(result.ema.eval(), result.process, cfg, result.step)
    rows = []
    for name, nfe in SAMPLERS:
        spec = get_sampler(name)
        gs = torch.Generator().manual_seed(2)
        x = result.process.prior((args.n, 2), generator=gs)
        score = model.score_fn()
        ts = spec.grid_for(result.process, nfe, score=score)
        out = spec(score, result.process, x, ts, nfe=nfe, generator=gs)
        sw = float(sliced_wasserstein(out, ref))
        rows.append({"sampler": name, "nfe": spec.spent(nfe), "sw": sw,
                     "sw_ratio": sw / floor})
    best = min(rows, key=lambda r: r["sw_ratio"])
    return {"data": data_name, "train_seconds": result.seconds, "steps": result.step, "config": vars(args),
            "final_loss": sum(result.losses[-50:]) / 50, "sw_floor": floor, "samplers": rows, "best": best}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="ring8,grid25,moons,checkerboard")
    p.add_argument("--steps", type=int, default=1800)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--emb-dim", type=int, default=64)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="train_toy")
    args = p.parse_args()
    torch.set_num_threads(1)
    records = []
    print(f"{'data':14s} {'train s':>8s} {'steps':>6s} {'loss':>7s}  " + "  ".join(f"{n}@{k}" for n, k in SAMPLERS)
          + "   (sliced W2 / floor)")
    for name in args.data.split(","):
        r = run(name, args)
        records.append(r)
        print(f"{name:14s} {r['train_seconds']:8.2f} {r['steps']:6d} {r['final_loss']:7.4f}  "
              + "  ".join(f"{row['sw_ratio']:{len(n) + len(str(k)) + 1}.2f}"
                          for (n, k), row in zip(SAMPLERS, r["samplers"])))
    path = write_json(args.tag, {"records": records})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
