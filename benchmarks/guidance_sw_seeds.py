"""Issue 5's SW2 target over several seeds: one SW2 ratio at n = 20 000 is noisy, so repeat it.

    python benchmarks/guidance_sw_seeds.py              # the models of `python benchmarks/guidance.py` (run it first)
    python benchmarks/guidance_sw_seeds.py --seeds 4 --ref-sets 3 --sampler euler_maruyama --nfe 200
    python benchmarks/guidance_sw_seeds.py --classifier exact --name guidance_sw_seeds_exact_clf

For classifier-free guidance at w = 1 and classifier guidance at scale 1 (label 3 of ring8), draws --seeds sample sets
(x_T and noise seeds 99, 100, ...) and scores each against --ref-sets independent exact reference sets, each with its
own floor (mean SW2 of 5 further exact sets against it). Prints every ratio and the mean ± standard error over the
sample seeds (each seed's ratio averaged over the reference sets). Two rows of references: the same sampler on the
exact conditional score (the sampler's own discretisation error), and the exact conditional's own samples (what a
perfect sampler gets). "strays" counts each set's samples more than 0.5 (5 standard deviations) from the
component's mean: the exact conditional puts about 4e-6 of its mass there, so 0.08 per set of 20 000; and the
ratio without them (the set less its strays, it and the reference cut to n - 10 points). Writes
benchmarks/results/<--name>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402
from guidance import reference, sample  # noqa: E402

import toy_data  # noqa: E402
from scoresde import guidance  # noqa: E402
from scoresde.metrics import sliced_wasserstein  # noqa: E402
from scoresde.train import load_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cond", default="runs/guidance/cond_6000_128_ft5000_b4096")
    p.add_argument("--uncond", default="runs/guidance/uncond_20000_256_ft5000_b4096_ref3000_r8192_w16")
    p.add_argument("--classifier",
                   default="runs/guidance/clf_guided_dsm_6000_30000_128_on_uncond_20000_256_ft5000_b4096_ref3000_r8192_w16"
                           "_ref3000_r8192_w16",
                   help="a classifier run, or 'exact' (ring8's exact p_t(y | x): isolates the unconditional model)")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--ref-sets", type=int, default=3)
    p.add_argument("--sampler", default="euler_maruyama")
    p.add_argument("--nfe", type=int, default=200)
    p.add_argument("--name", default="guidance_sw_seeds")
    args = p.parse_args()
    torch.set_num_threads(1)
    label, n = 3, 20000
    cond, uncond = load_model(args.cond), load_model(args.uncond)
    process = cond.process
    if args.classifier == "exact":
        def log_prob(x, t):
            return toy_data.ring8().class_log_prob(x, process, t)[:, label]
    else:
        log_prob = load_model(args.classifier).log_prob_fn(label)
    refs = [reference(label, n, seed=1 + 10 * r) for r in range(args.ref_sets)]
    exact = toy_data.ring8().conditional(label)
    centre = exact.sample(200000, generator=torch.Generator().manual_seed(7)).mean(0)
    rows = {
        "classifier-free (w = 1)": lambda k: sample(guidance.classifier_free(cond.score_fn(label), cond.score_fn(None),
                                                                             1.0), process, n, 99 + k, args.sampler,
                                                    args.nfe),
        "classifier (scale 1)": lambda k: sample(guidance.classifier(uncond.score_fn(), log_prob, 1.0),
                                                 process, n, 99 + k, args.sampler, args.nfe),
        "exact score, same sampler": lambda k: sample(exact.score_fn(process), process, n, 99 + k, args.sampler,
                                                      args.nfe),
        "exact samples": lambda k: exact.sample(n, generator=torch.Generator().manual_seed(1000 + k)),
    }
    out = {}
    print(f"{args.sampler} {args.nfe}; SW2 / floor, {args.seeds} sample seeds x {args.ref_sets} reference sets "
          f"(floors {', '.join(f'{f:.4g}' for _, f in refs)})")
    for name, draw in rows.items():
        per_seed, strays, without = [], [], []
        for k in range(args.seeds):
            x = draw(k)
            ratios = [float(sliced_wasserstein(x, ref)) / floor for ref, floor in refs]
            per_seed.append(ratios)
            keep = (x.double() - centre).norm(dim=1) <= 0.5
            strays.append(int((~keep).sum()))
            n_cut = n - 10  # strays dropped (at most 10), both sets cut to n_cut; the floor at n (equal within noise)
            kept = x[keep][:n_cut] if strays[-1] <= 10 else None
            cut = (sum(float(sliced_wasserstein(kept, ref[:n_cut])) / floor for ref, floor in refs) / len(refs)
                   if kept is not None else float("nan"))
            without.append(cut)
            print(f"  {name:24s} seed {k}: {' '.join(f'{r:.2f}' for r in ratios)}  strays {strays[-1]}, "
                  f"without them {cut:.2f}", flush=True)
        means = [sum(r) / len(r) for r in per_seed]
        m = statistics.mean(means)
        se = statistics.stdev(means) / len(means) ** 0.5 if len(means) > 1 else float("nan")
        mw = statistics.mean(without)
        sw = statistics.stdev(without) / len(without) ** 0.5 if len(without) > 1 else float("nan")
        out[name] = {"ratios": per_seed, "mean": m, "se": se, "strays": strays, "without_strays": without,
                     "without_strays_mean": mw, "without_strays_se": sw}
        print(f"{name:26s} mean {m:.2f} ± {se:.2f}; strays per seed {strays}; without them {mw:.2f} ± {sw:.2f}",
              flush=True)
    path = write_json(args.name, {"command": "python " + " ".join(sys.argv), "config": vars(args), "rows": out})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
