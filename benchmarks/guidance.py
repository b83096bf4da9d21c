"""Issue 5 target: guidance on learned models of labelled ring8.

    python benchmarks/guidance.py    # about 1.5 hours, one thread; models kept in (and reused from) runs/guidance
    python benchmarks/guidance.py --uncond-steps 6000 --uncond-width 128 --ft-steps 0 --ref-steps 0 \
        --clf-objective ce --keep runs/guidance_small        # the small cross-entropy set-up of earlier sessions

Trains with the library's trainer:
- a class-conditional score MLP with label dropout (classifier-free guidance; 6000 steps, width 128) and an
  unconditional score MLP (20000 steps, width 256), both at batch 1024, then fine-tuned 5000 steps at batch 4096 (Adam
  3e-4, EMA 0.999, `init` from the first run);
- the unconditional model then 3000 steps with a reference-batch target (`reference_batch` 8192, `widen` 16 at
  t >= 0.03, Adam 3e-4, EMA 0.999): it learns the score between the modes, where p_t is small and plain DSM never
  samples, and where classifier-guided trajectories strayed;
- a noise-aware MLP classifier (classifier guidance on the unconditional model): 6000 steps of cross-entropy, then
  30000 steps of `classifier_objective="guided_dsm"` (cross-entropy plus DSM of the unconditional score plus the
  classifier's gradient, the unconditional model frozen; `init` from the cross-entropy run), then 3000 steps of the
  same with the reference target and widened noise (`--clf-ref-steps`; Adam 3e-4, EMA 0.999, no clipping).
Models go to (and are reused from) --keep. Then, for each guidance weight, samples
every label (n per label) and reports the share of samples whose exact nearest class (argmax of the exact p(y | x)) is
the requested one; at weight 1 it reports sliced W2 to the exact conditional of one label (n = 20000) in units of its
noise floor (mean over 5 independent exact sets), with dpm_solver_pp at NFE 50 and euler_maruyama at NFE 200. Writes
benchmarks/results/<--name>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402

import toy_data  # noqa: E402
from scoresde import guidance  # noqa: E402
from scoresde.metrics import sliced_wasserstein  # noqa: E402
from scoresde.samplers import get_sampler  # noqa: E402
from scoresde.train import Model, TrainConfig, latest_checkpoint, load_model, train  # noqa: E402

WEIGHTS = (0.0, 1.0, 2.0, 4.0)
SAMPLER, NFE = "dpm_solver_pp", 50
SDE_SAMPLER, SDE_NFE = "euler_maruyama", 200  # at w = 1 also: on learned scores the SDE sampler is the more accurate


def fit(net: dict, steps: int, run: str | Path | None = None, batch: int = 1024, lr: float = 3e-3,
        **kw) -> tuple[Model, float]:
    """A ring8 MLP (width 128, depth 3 unless `net` says otherwise) and its training seconds; with `run`, trained
    into that directory, or loaded from it (0 s) when it already holds a checkpoint."""
    if run is not None and latest_checkpoint(run) is not None:
        return load_model(run), 0.0
    cfg = TrainConfig(data="ring8", net={"name": "mlp", "width": 128, "depth": 3, "sigma_data": 1.42, **net},
                      steps=steps, batch=batch, lr=lr, checkpoint_every=0, **kw)
    r = train(cfg, run, progress=False)
    return Model(r.ema.eval(), r.process, cfg, r.step), r.seconds


def sample(score, process, n: int, seed: int, sampler: str = SAMPLER, nfe: int = NFE) -> torch.Tensor:
    spec = get_sampler(sampler)
    g = torch.Generator().manual_seed(seed)
    x = process.prior((n, 2), generator=g)
    return spec(score, process, x, spec.grid_for(process, nfe), generator=g)


def reference(label: int, n: int = 20000, seed: int = 1) -> tuple[torch.Tensor, float]:
    """n exact samples of ring8's class `label` and the SW2 noise floor at that n (mean over 5 independent sets)."""
    exact = toy_data.ring8().conditional(label)
    g = torch.Generator().manual_seed(seed)
    ref = exact.sample(n, generator=g)
    return ref, sum(float(sliced_wasserstein(exact.sample(n, generator=g), ref)) for _ in range(5)) / 5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", default="runs/guidance", help="train into, or reuse the models in, this directory")
    p.add_argument("--cond-steps", type=int, default=6000)
    p.add_argument("--cond-width", type=int, default=128)
    p.add_argument("--uncond-steps", type=int, default=20000)
    p.add_argument("--uncond-width", type=int, default=256)
    p.add_argument("--ft-steps", type=int, default=5000,
                   help="large-batch fine-tuning steps of both score models (0: none)")
    p.add_argument("--ft-batch", type=int, default=4096)
    p.add_argument("--ref-steps", type=int, default=3000, help="steps of the unconditional model's reference-target "
                   "phase after the large-batch one (0: none)")
    p.add_argument("--ref-batch", type=int, default=8192, help="its reference points (reference_batch)")
    p.add_argument("--widen", type=float, default=16.0, help="its widened noise (widen)")
    p.add_argument("--widen-t-min", type=float, default=0.03, help="its widen_t_min")
    p.add_argument("--clf-ref-steps", type=int, default=3000, help="steps of the classifier's reference-target phase "
                   "(guided_dsm, the same reference and widening; 0: none)")
    p.add_argument("--clf-objective", default="guided_dsm", help="ce or guided_dsm")
    p.add_argument("--clf-ce-steps", type=int, default=6000, help="cross-entropy steps (the whole training for ce; "
                   "for guided_dsm the classifier it fine-tunes, 0: guided_dsm from scratch)")
    p.add_argument("--clf-steps", type=int, default=30000, help="guided_dsm steps")
    p.add_argument("--clf-width", type=int, default=128)
    p.add_argument("--dsm-weight", type=float, default=2.0)
    p.add_argument("--name", default="guidance")
    args = p.parse_args()
    torch.set_num_threads(1)
    target = toy_data.ring8()
    n_per_label, label, n_sw = 1000, 3, 20000
    keep = Path(args.keep)

    def fit_and_tune(net: dict, steps: int, run: Path, **kw) -> tuple[Model, float, Path]:
        """`fit`, then (with --ft-steps) the large-batch phase from its EMA weights: Adam 3e-4 (cosine to 5 %),
        EMA 0.999, no warm-up. Returns the final model, the total training seconds and the final run."""
        model, secs = fit(net, steps, run, **kw)
        if args.ft_steps:
            tuned = run.with_name(f"{run.name}_ft{args.ft_steps}_b{args.ft_batch}")
            model, s_ft = fit(net, args.ft_steps, tuned, batch=args.ft_batch, lr=3e-4, ema=0.999, warmup=0,
                              init=str(run), **kw)
            run, secs = tuned, secs + s_ft
        return model, secs, run

    cond, s_cond, _ = fit_and_tune({"num_classes": 8, "width": args.cond_width}, args.cond_steps,
                                   keep / f"cond_{args.cond_steps}_{args.cond_width}", label_dropout=0.15)
    uncond, s_uncond, uncond_run = fit_and_tune({"width": args.uncond_width}, args.uncond_steps,
                                                keep / f"uncond_{args.uncond_steps}_{args.uncond_width}")
    # the reference-target phases (unconditional model, then classifier): Adam 3e-4 (cosine to 5 %), EMA 0.999, no
    # warm-up, batch 1024, from the previous run's EMA weights
    ref_phase = dict(lr=3e-4, ema=0.999, warmup=0, reference_batch=args.ref_batch, widen=args.widen,
                     widen_t_min=args.widen_t_min)

    def ref_name(run: Path, steps: int) -> Path:
        return run.with_name(f"{run.name}_ref{steps}_r{args.ref_batch}_w{args.widen:g}")

    if args.ref_steps:
        ref_run = ref_name(uncond_run, args.ref_steps)
        uncond, s_ref = fit({"width": args.uncond_width}, args.ref_steps, ref_run, init=str(uncond_run), **ref_phase)
        uncond_run, s_uncond = ref_run, s_uncond + s_ref
    clf_net = {"name": "mlp_classifier", "num_classes": 8, "width": args.clf_width}
    s_clf = 0.0
    init = None
    if args.clf_objective == "ce" or args.clf_ce_steps:
        ce_run = keep / f"clf_ce_{args.clf_ce_steps}_{args.clf_width}"
        clf, s_clf = fit(clf_net, args.clf_ce_steps, ce_run)
        init = str(ce_run)
    if args.clf_objective != "ce":  # fine-tuning (Adam 1e-3, EMA 0.999, no warm-up or clipping) or from scratch
        tune = dict(lr=1e-3, ema=0.999, warmup=0, clip=None, init=init) if init else {}
        clf_run = keep / f"clf_{args.clf_objective}_{args.clf_ce_steps}_{args.clf_steps}_{args.clf_width}" \
                         f"_on_{uncond_run.name}"
        clf, s_tuned = fit(clf_net, args.clf_steps, clf_run, classifier_objective=args.clf_objective,
                           classifier_base=str(uncond_run), dsm_weight=args.dsm_weight, **tune)
        s_clf += s_tuned
        if args.clf_ref_steps:  # soft labels and conditional-mean DSM targets from the reference, widened noise
            clf, s_tuned = fit(clf_net, args.clf_ref_steps, ref_name(clf_run, args.clf_ref_steps), clip=None,
                               init=str(clf_run), classifier_objective=args.clf_objective,
                               classifier_base=str(uncond_run), dsm_weight=args.dsm_weight, **ref_phase)
            s_clf += s_tuned
    process = cond.process
    print(f"trained: conditional {s_cond:.1f} s, unconditional {s_uncond:.1f} s, classifier {s_clf:.1f} s "
          "(0: reused from --keep)")

    def cfg_score(y, w):
        return guidance.classifier_free(cond.score_fn(y), cond.score_fn(None), w)

    def clf_score(y, w):
        return guidance.classifier(uncond.score_fn(), clf.log_prob_fn(y), w)

    def share(make, w):
        hits = 0
        for y in range(8):
            x = sample(make(y, w), process, n_per_label, seed=10 + y)
            hits += int((target.class_log_prob(x.double()).argmax(1) == y).sum())
        return hits / (8 * n_per_label)

    ref, floor = reference(label, n_sw)
    rows = []
    for kind, make in (("cfg", cfg_score), ("classifier", clf_score)):
        for w in WEIGHTS:
            t0 = time.perf_counter()
            row = {"guidance": kind, "weight": w, "share": share(make, w)}
            if w == 1.0:
                x = sample(make(label, w), process, n_sw, seed=99)
                row["sw_ratio"] = float(sliced_wasserstein(x, ref)) / floor
                row["share_label3_n20000"] = float((target.class_log_prob(x.double()).argmax(1) == label)
                                                   .double().mean())
                x = sample(make(label, w), process, n_sw, seed=99, sampler=SDE_SAMPLER, nfe=SDE_NFE)
                row["sw_ratio_sde"] = float(sliced_wasserstein(x, ref)) / floor
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
    print(f"{SAMPLER} at NFE budget {NFE} (CFG and classifier guidance cost two evaluations per step)")
    print(f"{'guidance':11s} {'w/scale':>7s} {'share':>7s} {'SW/floor (w=1, label 3)':>24s} "
          f"{SDE_SAMPLER + ' ' + str(SDE_NFE):>20s}")
    for r in rows:
        sw = f"{r['sw_ratio']:.2f}" if "sw_ratio" in r else ""
        sde = f"{r['sw_ratio_sde']:.2f}" if "sw_ratio_sde" in r else ""
        print(f"{r['guidance']:11s} {r['weight']:7.1f} {r['share']:7.3f} {sw:>24s} {sde:>20s}")
    # exact-score reference: the exact conditional's own share (ring8's components barely overlap)
    xe = target.conditional(label).sample(n_sw, generator=torch.Generator().manual_seed(2))
    exact_share = float((target.class_log_prob(xe.double()).argmax(1) == label).double().mean())
    print(f"exact conditional's own share: {exact_share:.4f}; SW floor {floor:.4g}")
    path = write_json(args.name, {"command": "python " + " ".join(sys.argv), "config": vars(args),
                                  "sampler": SAMPLER, "nfe_budget": NFE, "sde_sampler": SDE_SAMPLER,
                                  "sde_nfe": SDE_NFE,
                                  "train_seconds": {"cond": s_cond, "uncond": s_uncond, "classifier": s_clf},
                                  "sw_floor": floor, "exact_share": exact_share, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
