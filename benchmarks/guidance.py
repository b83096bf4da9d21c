"""Guidance on learned models of labelled ring8 (issue 5): classifier-free and classifier guidance.

    python -m benchmarks.guidance          # three 6000-step trainings (about 2 min each, one thread), then sampling
    python -m benchmarks.guidance --uncond-steps 20000 --uncond-width 256 --ft-steps 5000 --keep runs/guidance_big

Trains three MLPs (depth 3, batch 1024, Adam 3e-3) on labelled ring8 with the library's trainer: a class-conditional
score model with label dropout 0.15 (classifier-free guidance), an unconditional score model and a noise-aware
classifier trained by cross-entropy (classifier guidance on the unconditional model). With --ft-steps both score
models are then fine-tuned that many steps at batch --ft-batch (Adam 3e-4, EMA 0.999, no warm-up, from the first
run's EMA weights). Models go to (and are reused from) --keep.

Then, for each guidance weight, samples every label (1000 per label; dpm_solver_pp at NFE 50, which counts both
evaluations of a guided step) and reports the share of samples whose exact most likely class (argmax of the exact
p(y | x)) is the requested one; at weight 1 it reports sliced W2 to the exact conditional of label 3 (n = 20000) in
units of its noise floor (mean over 5 independent exact sets), with dpm_solver_pp at NFE 50 and euler_maruyama at
NFE 200. Writes benchmarks/results/<--name>.json.

The reference-batch target study (benchmarks/experiments/reference_targets) reuses `fit`, `fit_and_tune` and
`evaluate` from here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch

import toy_data
from scoresde import guidance
from scoresde.losses import Loss
from scoresde.metrics import sliced_wasserstein
from scoresde.samplers.registry import get_sampler
from scoresde.score import ScoreFn
from scoresde.training import Model, TrainConfig, latest_checkpoint, load_model, train

from ._common import write_json

WEIGHTS = (0.0, 1.0, 2.0, 4.0)
SAMPLER, NFE = "dpm_solver_pp", 50
SDE_SAMPLER, SDE_NFE = "euler_maruyama", 200  # at w = 1 also: on learned scores the SDE sampler is the more accurate
LABEL, N_PER_LABEL, N_SW = 3, 1000, 20000


def fit(net: dict, steps: int, run: str | Path | None = None, batch: int = 1024, lr: float = 3e-3,
        loss: Loss | None = None, **kw) -> tuple[Model, float]:
    """A ring8 MLP (width 128, depth 3 unless `net` says otherwise) and its training seconds; with `run`, trained
    into that directory, or loaded from it (0 s) when it already holds a checkpoint. `loss` replaces the trainer's
    default (DSM, or cross-entropy for a classifier); other keywords go to TrainConfig."""
    if run is not None and latest_checkpoint(run) is not None:
        return load_model(run), 0.0
    cfg = TrainConfig(data="ring8", net={"name": "mlp", "width": 128, "depth": 3, "sigma_data": 1.42, **net},
                      steps=steps, batch=batch, lr=lr, checkpoint_every=0, **kw)
    r = train(cfg, run, progress=False, loss=loss)
    return Model(r.ema.eval(), r.process, cfg, r.step), r.seconds


def fit_and_tune(net: dict, steps: int, run: Path, ft_steps: int = 0, ft_batch: int = 4096,
                 **kw) -> tuple[Model, float, Path]:
    """`fit`, then (ft_steps > 0) a large-batch phase from its EMA weights: Adam 3e-4 (cosine to 5 %), EMA 0.999, no
    warm-up, into <run>_ft<ft_steps>_b<ft_batch>. Returns the final model, the total training seconds and its run."""
    model, secs = fit(net, steps, run, **kw)
    if ft_steps:
        tuned = run.with_name(f"{run.name}_ft{ft_steps}_b{ft_batch}")
        model, s_ft = fit(net, ft_steps, tuned, batch=ft_batch, lr=3e-4, ema=0.999, warmup=0, init=str(run), **kw)
        run, secs = tuned, secs + s_ft
    return model, secs, run


def sample(score: ScoreFn, process, n: int, seed: int, sampler: str = SAMPLER, nfe: int = NFE) -> torch.Tensor:
    spec = get_sampler(sampler)
    g = torch.Generator().manual_seed(seed)
    x = process.prior((n, 2), generator=g)
    return spec(score, process, x, spec.grid_for(process, nfe, score=score), nfe=nfe, generator=g)


def reference(label: int, n: int = N_SW, seed: int = 1) -> tuple[torch.Tensor, float]:
    """n exact samples of ring8's class `label` and the SW2 noise floor at that n (mean over 5 independent sets)."""
    exact = toy_data.load("ring8").conditional(label)
    g = torch.Generator().manual_seed(seed)
    ref = exact.sample(n, generator=g)
    return ref, sum(float(sliced_wasserstein(exact.sample(n, generator=g), ref)) for _ in range(5)) / 5


def evaluate(cfg_score: Callable[[int, float], ScoreFn], clf_score: Callable[[int, float], ScoreFn],
             process) -> dict:
    """The benchmark's measurements for guided scores cfg_score(label, w) and clf_score(label, scale): the share per
    weight, SW2 / floor at weight 1 with both samplers, and the exact conditional's own share."""
    target = toy_data.load("ring8")

    def share(make, w):
        hits = 0
        for y in range(8):
            x = sample(make(y, w), process, N_PER_LABEL, seed=10 + y)
            hits += int((target.class_log_prob(x.double()).argmax(1) == y).sum())
        return hits / (8 * N_PER_LABEL)

    ref, floor = reference(LABEL, N_SW)
    rows = []
    for kind, make in (("cfg", cfg_score), ("classifier", clf_score)):
        for w in WEIGHTS:
            t0 = time.perf_counter()
            row = {"guidance": kind, "weight": w, "share": share(make, w)}
            if w == 1.0:
                x = sample(make(LABEL, w), process, N_SW, seed=99)
                row["sw_ratio"] = float(sliced_wasserstein(x, ref)) / floor
                row["share_label3_n20000"] = float((target.class_log_prob(x.double()).argmax(1) == LABEL)
                                                   .double().mean())
                x = sample(make(LABEL, w), process, N_SW, seed=99, sampler=SDE_SAMPLER, nfe=SDE_NFE)
                row["sw_ratio_sde"] = float(sliced_wasserstein(x, ref)) / floor
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
    # the exact conditional's own share (ring8's components barely overlap)
    xe = target.conditional(LABEL).sample(N_SW, generator=torch.Generator().manual_seed(2))
    exact_share = float((target.class_log_prob(xe.double()).argmax(1) == LABEL).double().mean())
    return {"sampler": SAMPLER, "nfe_budget": NFE, "sde_sampler": SDE_SAMPLER, "sde_nfe": SDE_NFE, "sw_floor": floor,
            "exact_share": exact_share, "rows": rows}


def print_table(result: dict) -> None:
    print(f"{SAMPLER} at NFE budget {NFE} (CFG and classifier guidance cost two evaluations per step)")
    print(f"{'guidance':11s} {'w/scale':>7s} {'share':>7s} {'SW/floor (w=1, label 3)':>24s} "
          f"{SDE_SAMPLER + ' ' + str(SDE_NFE):>20s}")
    for r in result["rows"]:
        sw = f"{r['sw_ratio']:.2f}" if "sw_ratio" in r else ""
        sde = f"{r['sw_ratio_sde']:.2f}" if "sw_ratio_sde" in r else ""
        print(f"{r['guidance']:11s} {r['weight']:7.1f} {r['share']:7.3f} {sw:>24s} {sde:>20s}")
    print(f"exact conditional's own share: {result['exact_share']:.4f}; SW floor {result['sw_floor']:.4g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", default="runs/guidance", help="train into, or reuse the models in, this directory")
    p.add_argument("--cond-steps", type=int, default=6000)
    p.add_argument("--cond-width", type=int, default=128)
    p.add_argument("--uncond-steps", type=int, default=6000)
    p.add_argument("--uncond-width", type=int, default=128)
    p.add_argument("--clf-steps", type=int, default=6000, help="the classifier's cross-entropy steps")
    p.add_argument("--clf-width", type=int, default=128)
    p.add_argument("--ft-steps", type=int, default=0,
                   help="large-batch fine-tuning steps of both score models (0: none)")
    p.add_argument("--ft-batch", type=int, default=4096)
    p.add_argument("--name", default="guidance", help="results file name in benchmarks/results/")
    args = p.parse_args()
    torch.set_num_threads(1)
    keep = Path(args.keep)
    tune = dict(ft_steps=args.ft_steps, ft_batch=args.ft_batch)
    cond, s_cond, _ = fit_and_tune({"num_classes": 8, "width": args.cond_width}, args.cond_steps,
                                   keep / f"cond_{args.cond_steps}_{args.cond_width}", label_dropout=0.15, **tune)
    uncond, s_uncond, _ = fit_and_tune({"width": args.uncond_width}, args.uncond_steps,
                                       keep / f"uncond_{args.uncond_steps}_{args.uncond_width}", **tune)
    clf, s_clf = fit({"name": "mlp_classifier", "num_classes": 8, "width": args.clf_width}, args.clf_steps,
                     keep / f"clf_ce_{args.clf_steps}_{args.clf_width}")
    print(f"trained: conditional {s_cond:.1f} s, unconditional {s_uncond:.1f} s, classifier {s_clf:.1f} s "
          "(0: reused from --keep)")
    result = evaluate(lambda y, w: guidance.classifier_free(cond.score_fn(y), cond.score_fn(None), w),
                      lambda y, w: guidance.classifier(uncond.score_fn(), clf.log_prob_fn(y), w), cond.process)
    print_table(result)
    path = write_json(args.name, {"config": vars(args),
                                  "train_seconds": {"cond": s_cond, "uncond": s_uncond, "classifier": s_clf},
                                  **result})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
