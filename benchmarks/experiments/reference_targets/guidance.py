"""The reference-target study's models, and the guidance benchmark on them.

    python -m benchmarks.experiments.reference_targets.guidance    # over an hour on one thread

Models (all MLPs of depth 3 on labelled ring8, all trained by the library's trainer, the study's phases with the
study's loss objects from losses.py; runs go to, and are reused from, --keep):
- score models (benchmarks.guidance.fit_and_tune): a class-conditional one (width 128, 6000 steps, label dropout
  0.15; classifier-free guidance) and an unconditional one (width 256, 20000 steps), both at batch 1024 and then
  fine-tuned 5000 steps at batch 4096 (Adam 3e-4, EMA 0.999);
- the unconditional model's reference phase (ReferenceDSMLoss): --ref-steps at batch 1024, the DSM target estimated
  from the batch plus --ref-batch fresh data points, and a --widen-frac share of the samples at t >= --widen-t-min
  drawn with widened noise c sigma, c log-uniform in [1, --widen] (Adam 3e-4, EMA 0.999, no warm-up);
- a noise-aware classifier (width 128): 6000 steps of cross-entropy, then --clf-steps of guided DSM
  (GuidedDSMClassifierLoss: cross-entropy plus --dsm-weight x DSM of the unconditional model plus the classifier's
  gradient, the unconditional model frozen; Adam 1e-3, EMA 0.999, no warm-up or clipping), then --clf-ref-steps of
  the same with the reference target and widened noise (Adam 3e-4, EMA 0.999, no warm-up or clipping);
- with --controls (default), the two controls of the score-error table, 3000 steps each from the fine-tuned
  unconditional model: ctrl_plain (plain DSM) and ctrl_stf (the reference target without widening).
Then benchmarks.guidance.evaluate (shares per weight, SW2 / floor at weight 1 with dpm_solver_pp 50 and
euler_maruyama 200) with classifier-free guidance on the conditional model and classifier guidance on the
unconditional model and the classifier. Writes results/<--name>.json in this folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import toy_data
from benchmarks._common import write_json
from benchmarks.guidance import evaluate, fit, fit_and_tune, print_table
from scoresde import guidance

from .losses import GuidedDSMClassifierLoss, ReferenceDSMLoss

RESULTS = Path(__file__).resolve().parent / "results"
FT = dict(ft_steps=5000, ft_batch=4096)  # the score models' large-batch phase
PHASE = dict(lr=3e-4, ema=0.999, warmup=0)  # the 3000-step phases (batch 1024, cosine decay to 5 %)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", default="runs/reference_targets", help="train into, or reuse the models in, this folder")
    p.add_argument("--ref-steps", type=int, default=3000, help="steps of the unconditional model's reference phase")
    p.add_argument("--ref-batch", type=int, default=8192, help="reference points per step")
    p.add_argument("--widen", type=float, default=16.0, help="widened noise: c log-uniform in [1, widen]")
    p.add_argument("--widen-frac", type=float, default=0.5, help="share of the samples at t >= widen-t-min widened")
    p.add_argument("--widen-t-min", type=float, default=0.03)
    p.add_argument("--clf-steps", type=int, default=30000, help="guided-DSM steps of the classifier")
    p.add_argument("--clf-ref-steps", type=int, default=3000, help="steps of the classifier's reference phase")
    p.add_argument("--dsm-weight", type=float, default=2.0)
    p.add_argument("--controls", action=argparse.BooleanOptionalAction, default=True,
                   help="also train the score-error table's two controls")
    p.add_argument("--name", default="guidance", help="results file name in this folder's results/")
    args = p.parse_args()
    torch.set_num_threads(1)
    keep = Path(args.keep)
    data = toy_data.load("ring8")
    widening = dict(widen=args.widen, widen_frac=args.widen_frac, widen_t_min=args.widen_t_min)

    def tag(run: Path, steps: int) -> Path:
        return run.with_name(f"{run.name}_ref{steps}_r{args.ref_batch}_w{args.widen:g}")

    cond, s_cond, _ = fit_and_tune({"num_classes": 8, "width": 128}, 6000, keep / "cond_6000_128", label_dropout=0.15,
                                   **FT)
    uncond, s_uncond, ft_run = fit_and_tune({"width": 256}, 20000, keep / "uncond_20000_256", **FT)
    uncond_run = tag(ft_run, args.ref_steps)
    uncond, s_ref = fit({"width": 256}, args.ref_steps, uncond_run, init=str(ft_run),
                        loss=ReferenceDSMLoss(data, args.ref_batch, **widening), **PHASE)
    s_uncond += s_ref
    if args.controls:
        fit({"width": 256}, 3000, keep / "ctrl_plain", init=str(ft_run), **PHASE)
        fit({"width": 256}, 3000, keep / "ctrl_stf", init=str(ft_run), loss=ReferenceDSMLoss(data, args.ref_batch),
            **PHASE)

    clf_net = {"name": "mlp_classifier", "num_classes": 8, "width": 128}
    ce_run = keep / "clf_ce_6000_128"
    clf, s_clf = fit(clf_net, 6000, ce_run)
    clf_run = keep / f"clf_guided_dsm_6000_{args.clf_steps}_128_on_{uncond_run.name}"
    guided = GuidedDSMClassifierLoss.from_run(str(uncond_run), dsm_weight=args.dsm_weight)
    clf, s_tuned = fit(clf_net, args.clf_steps, clf_run, lr=1e-3, ema=0.999, warmup=0, clip=None, init=str(ce_run),
                       loss=guided)
    s_clf += s_tuned
    if args.clf_ref_steps:
        guided = GuidedDSMClassifierLoss.from_run(str(uncond_run), dsm_weight=args.dsm_weight, data=data,
                                                  reference=args.ref_batch, **widening)
        clf, s_tuned = fit(clf_net, args.clf_ref_steps, tag(clf_run, args.clf_ref_steps), clip=None,
                           init=str(clf_run), loss=guided, **PHASE)
        s_clf += s_tuned
    print(f"trained: conditional {s_cond:.1f} s, unconditional {s_uncond:.1f} s, classifier {s_clf:.1f} s "
          "(0: reused from --keep)")
    result = evaluate(lambda y, w: guidance.classifier_free(cond.score_fn(y), cond.score_fn(None), w),
                      lambda y, w: guidance.classifier(uncond.score_fn(), clf.log_prob_fn(y), w), uncond.process)
    print_table(result)
    path = write_json(args.name, {"config": vars(args),
                                  "train_seconds": {"cond": s_cond, "uncond": s_uncond, "classifier": s_clf},
                                  **result}, results=RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
