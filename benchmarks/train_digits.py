"""Issue 6 target: a class-conditional UNet on the 8 x 8 digits, trained for at most 5 minutes on this CPU, reaches
>= 99% class accuracy (CFG w = 1) and a Fréchet distance within 1.5x its real-versus-real floor.

    python -m benchmarks.train_digits                   # the default recipe, 300 s, evaluated every 60 s
    python -m benchmarks.train_digits --budget 120 --eval-seconds 30 --no-amp --sampler dpm_solver_pp --nfe 20

Default recipe: UNet 24 channels (1, 2), DDPM-cosine with v-prediction, bf16 autocast (fast on CPUs with AMX), and
evaluation with DDPM's ancestral sampler at NFE 100 (on these models the stochastic samplers score higher than the
ODE ones; see RESULTS.md). --process takes a process name (vp, ve, subvp, ddpm, ddpm-cosine).

Training runs in chunks of --eval-seconds (each chunk resumes the previous one's checkpoint exactly); after each the
EMA weights are evaluated by scoresde.digits_classifier (n samples, --final-n at the end, labels 0..9 in turn;
accuracy by the cached digits classifier; Fréchet distance on its penultimate features to the 359 held-out test
digits; the floor is the same distance for n real train digits). Training time excludes evaluation. Prints a table
and writes benchmarks/results/<--name>.json. One intra-op thread by default (--threads; the machine is shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch

import toy_data
from scoresde.evaluation.digits import evaluate_digits, load_digits_classifier
from scoresde.processes import from_config
from scoresde.training import TrainConfig, load_model, train

from ._common import write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=300.0, help="training seconds in all")
    p.add_argument("--eval-seconds", type=float, default=60.0, help="training seconds between evaluations")
    p.add_argument("--steps", type=int, default=None,
                   help="steps of the lr schedule (default: what --budget allows at the measured speed)")
    p.add_argument("--channels", type=int, default=24)
    p.add_argument("--channel-mult", default="1,2")
    p.add_argument("--res-blocks", type=int, default=1)
    p.add_argument("--prediction", default="v", help="what the network predicts: eps, x0, v or score")
    p.add_argument("--process", default="ddpm-cosine")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--lr-final", type=float, default=0.05, help="final lr as a fraction of --lr (cosine)")
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast (default on: 1.25-1.3x faster on this CPU's AMX units)")
    p.add_argument("--weighting", default="sigma2", help="sigma2 (eps loss) or min_snr (with --snr-gamma)")
    p.add_argument("--snr-gamma", type=float, default=5.0)
    p.add_argument("--sampler", default="ancestral", help="DDPM's ancestral sampler by default: on these models the "
                   "stochastic samplers score higher than the ODE ones (RESULTS.md)")
    p.add_argument("--nfe", type=int, default=100)
    p.add_argument("--w", type=float, default=1.0)
    p.add_argument("--n", type=int, default=1000, help="samples per evaluation during training")
    p.add_argument("--final-n", type=int, default=5000, help="samples in the final evaluation (standard error of a "
                   "99 %% accuracy: 0.0014 at 5000, 0.003 at 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="train_digits", help="results file name")
    p.add_argument("--keep", default=None, help="keep the run directory here (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    data = toy_data.load("digits", split="train")
    sigma_data = round(float(data.images.std()), 3)
    net = {"name": "unet", "in_channels": 1, "image_size": 8, "channels": args.channels,
           "channel_mult": [int(m) for m in args.channel_mult.split(",")], "num_res_blocks": args.res_blocks,
           "prediction": args.prediction, "num_classes": 10, "sigma_data": sigma_data}
    process = from_config(args.process).config()  # e.g. {"name": "ddpm", "schedule": "cosine", ...}
    clf = load_digits_classifier(verbose=True)
    steps = args.steps
    if steps is None:  # calibrate: the cosine schedule should end when the budget does
        # 3 s to warm up, then a resumed 10 s chunk (as the chunks below are) whose rate is the one measured
        probe_cfg = TrainConfig(data="digits", process=process, net=net, steps=10**6, batch=args.batch,
                                seed=args.seed, checkpoint_every=0, amp=args.amp)
        with tempfile.TemporaryDirectory() as probe_dir:
            first = train(probe_cfg, probe_dir, progress=False, max_seconds=3)
            probe = train(probe_cfg, probe_dir, resume=True, progress=False, max_seconds=10)
        rate = (probe.step - first.step) / probe.seconds
        steps = int(rate * args.budget)
        print(f"~{rate:.2f} steps/s: lr schedule over {steps} steps")
    cfg = TrainConfig(data="digits", process=process, net=net, steps=steps, batch=args.batch, lr=args.lr,
                      warmup=args.warmup, ema=args.ema, lr_final_ratio=args.lr_final, label_dropout=args.label_dropout,
                      weighting=args.weighting, snr_gamma=args.snr_gamma, amp=args.amp,
                      seed=args.seed, checkpoint_every=0, log_every=25)
    rows = []
    trained, images, cpu = 0.0, 0, 0.0
    t_all = time.perf_counter()
    print(f"{'train s':>8s} {'step':>6s} {'img/s':>7s} {'loss':>7s} {'accuracy':>9s} {'FD':>7s} {'floor':>7s} "
          f"{'FD/floor':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        run = args.keep or tmp
        k = 0
        while trained < args.budget - 1 and (not rows or rows[-1]["step"] < steps):
            chunk = min(args.eval_seconds, args.budget - trained)
            c0 = time.process_time()
            res = train(cfg, run, resume=k > 0, max_seconds=chunk, progress=False)
            trained, cpu = trained + res.seconds, cpu + time.process_time() - c0
            images += len(res.losses) * args.batch
            k += 1
            model = load_model(run)
            last = trained >= args.budget - 1 or res.step >= steps
            ev = evaluate_digits(model, n=args.final_n if last else args.n, w=args.w, sampler=args.sampler,
                                 nfe=args.nfe, seed=args.seed, classifier=clf)
            row = {"train_seconds": trained, "train_cpu_seconds": cpu, "step": res.step, "images_per_s": images / trained,
                   "loss": sum(res.losses[-50:]) / max(1, len(res.losses[-50:])),
                   **{k2: v for k2, v in ev.items() if k2 != "classifier_test_accuracy"}}
            rows.append(row)
            print(f"{trained:8.0f} {res.step:6d} {row['images_per_s']:7.0f} {row['loss']:7.4f} "
                  f"{row['accuracy']:9.4f} {row['fd']:7.3f} {row['fd_floor']:7.3f} {row['fd_ratio']:8.2f}", flush=True)
    final = rows[-1]
    ok = final["accuracy"] >= 0.99 and final["fd_ratio"] <= 1.5
    print(f"classifier test accuracy {clf.test_accuracy:.4f}; {sum(q.numel() for q in model.net.parameters())} "
          f"parameters; {'PASS' if ok else 'FAIL'} (accuracy >= 0.99 and FD <= 1.5 x floor); wall "
          f"{time.perf_counter() - t_all:.0f} s")
    path = write_json(args.name, {"config": vars(args), "train_config": dataclasses.asdict(cfg),
                                  "classifier_test_accuracy": clf.test_accuracy,
                                  "parameters": sum(q.numel() for q in model.net.parameters()),
                                  "rows": rows, "pass": ok})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
