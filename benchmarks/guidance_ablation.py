"""Where classifier guidance loses accuracy on ring8: each learned piece swapped for the exact one.

    python benchmarks/guidance_ablation.py --steps 6000 --width 128      # the guidance benchmark's models
    python benchmarks/guidance_ablation.py --steps 20000 --width 256
    python benchmarks/guidance_ablation.py --keep runs/gab --intervals 0,0.02,0.05,0.1

--intervals T0,...: guidance only for t >= T0 (guidance.interval; the unconditional score below T0, where the exact
p_t(y | x) of a sample already in its component is 1 and its gradient 0), 0 meaning everywhere.

Trains an unconditional score MLP and a noise-aware MLP classifier on labelled ring8 (the library's trainer), then
samples label 3 with classifier guidance at scale 1 for each pairing of {learned, exact} unconditional score with
{learned, exact} classifier, and reports sliced W2 to the exact conditional in units of its noise floor (n = 20 000;
dpm_solver_pp at NFE budget 50 and euler_maruyama at 200). Writes benchmarks/results/guidance_ablation_<steps>_<width>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402
from guidance import fit, reference, sample  # noqa: E402

import toy_data  # noqa: E402
from scoresde import guidance  # noqa: E402
from scoresde.metrics import sliced_wasserstein  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--intervals", default="0", help="comma-separated lower ends T0 of the guidance interval")
    p.add_argument("--keep", default=None, help="train into (or reuse the models in) <keep>/uncond, <keep>/clf")
    args = p.parse_args()
    torch.set_num_threads(1)
    target, label, n = toy_data.ring8(), 3, 20000

    size = {"width": args.width, "depth": args.depth}
    keep = None if args.keep is None else Path(args.keep)
    train_kw = dict(batch=args.batch, lr=args.lr)
    uncond, s_u = fit(size, args.steps, keep and keep / "uncond", **train_kw)
    clf, s_c = fit({"name": "mlp_classifier", "num_classes": 8, **size}, args.steps, keep and keep / "clf", **train_kw)
    process = uncond.process
    print(f"trained {args.steps} steps, width {args.width}: unconditional {s_u:.0f} s, classifier {s_c:.0f} s",
          flush=True)

    def exact_log_prob(x, t):
        return target.class_log_prob(x, process, t)[:, label]

    scores = {"learned": uncond.score_fn(), "exact": target.score_fn(process)}
    clfs = {"learned": clf.log_prob_fn(label), "exact": exact_log_prob}
    ref, floor = reference(label, n)
    rows = []
    print(f"{'unconditional':>13s} {'classifier':>10s} {'T0':>5s} {'dpm_solver_pp 50':>17s} "
          f"{'euler_maruyama 200':>19s}")
    for su, sc, lo in ((su, sc, float(lo)) for su in ("learned", "exact") for sc in ("learned", "exact")
                       for lo in args.intervals.split(",")):
        score = guidance.classifier(scores[su], clfs[sc], 1.0)
        if lo > 0:
            score = guidance.interval(score, scores[su], lo, float("inf"))
        t0 = time.perf_counter()
        row = {"unconditional": su, "classifier": sc, "t_lo": lo}
        for key, (sampler, nfe) in (("dpm", ("dpm_solver_pp", 50)), ("em", ("euler_maruyama", 200))):
            x = sample(score, process, n, seed=99, sampler=sampler, nfe=nfe)
            row[key] = float(sliced_wasserstein(x, ref)) / floor
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"{su:>13s} {sc:>10s} {lo:5.2f} {row['dpm']:17.2f} {row['em']:19.2f}", flush=True)
    path = write_json(f"guidance_ablation_{args.steps}_{args.width}",
                      {"config": vars(args), "train_seconds": {"uncond": s_u, "classifier": s_c}, "sw_floor": floor,
                       "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
