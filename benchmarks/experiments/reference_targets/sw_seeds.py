"""The study's SW2 target over several seeds: one SW2 ratio at n = 20 000 is noisy, so repeat it.

    python -m benchmarks.experiments.reference_targets.sw_seeds --seeds 8 --name guidance_sw_seeds_8
        ... the same with --seeds 8 --sampler dpm_solver_pp --nfe 50 --name guidance_sw_seeds_8_dpm50
    python -m benchmarks.experiments.reference_targets.sw_seeds --classifier exact --name guidance_sw_seeds_exact_clf

The models are those of `python -m benchmarks.experiments.reference_targets.guidance` (run it first); --cond,
--uncond and --classifier take other runs.

For classifier-free guidance at w = 1 and classifier guidance at scale 1 (label 3 of ring8), draws --seeds sample sets
(x_T and noise seeds 99, 100, ...) and scores each against --ref-sets independent exact reference sets, each with its
own floor (mean SW2 of 5 further exact sets against it). Prints every ratio and the mean ± standard error over the
sample seeds (each seed's ratio averaged over the reference sets). Two rows of references: the same sampler on the
exact conditional score (the sampler's own discretisation error), and the exact conditional's own samples (what a
perfect sampler gets). "strays" counts each set's samples more than 0.5 (5 standard deviations) from the
component's mean: the exact conditional puts about 4e-6 of its mass there, so 0.08 per set of 20 000; and the
ratio without them (the set less its strays, it and the reference cut to n - 10 points). Writes
results/<--name>.json in this folder.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

import toy_data
from benchmarks._common import write_json
from benchmarks.guidance import reference, sample
from scoresde import guidance
from scoresde.metrics import sliced_wasserstein
from scoresde.training import load_model


RESULTS = Path(__file__).resolve().parent / "results"
RUNS = "runs/reference_targets/"
UNCOND = "uncond_20000_256_ft5000_b4096_ref3000_r8192_w16"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cond", default=RUNS + "cond_6000_128_ft5000_b4096")
    p.add_argument("--uncond", default=RUNS + UNCOND)
    p.add_argument("--classifier", default=f"{RUNS}clf_guided_dsm_6000_30000_128_on_{UNCOND}_ref3000_r8192_w16",
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
            return toy_data.load("ring8").class_log_prob(x, process, t)[:, label]
    else:
        log_prob = load_model(args.classifier).log_prob_fn(label)
    refs = [reference(label, n, seed=1 + 10 * r) for r in range(args.ref_sets)]
    exact = toy_data.load("ring8").conditional(label)
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
        cut = [v for v in without if v == v]  # seeds with more than 10 strays have no cut ratio (nan)
        mw = statistics.mean(cut) if cut else float("nan")
        sw = statistics.stdev(cut) / len(cut) ** 0.5 if len(cut) > 1 else float("nan")
        out[name] = {"ratios": per_seed, "mean": m, "se": se, "strays": strays, "without_strays": without,
                     "without_strays_mean": mw, "without_strays_se": sw}
        print(f"{name:26s} mean {m:.2f} ± {se:.2f}; strays per seed {strays}; without them {mw:.2f} ± {sw:.2f}",
              flush=True)
    path = write_json(args.name, {"config": vars(args), "rows": out}, results=RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
