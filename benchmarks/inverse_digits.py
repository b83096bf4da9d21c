"""Issue 22 digits target: inpainting the lower half of the held-out test digits keeps the class (>= 95 %, by the
cached digits CNN), with the Fréchet distance of the inpainted digits to the test digits.

    python -m benchmarks.inverse_digits --checkpoint runs/digits_f32   # a library run (its null label: unconditional)
    python -m benchmarks.inverse_digits --keep runs/inverse_digits     # or train the minimal unconditional UNet here
    python -m benchmarks.inverse_digits --checkpoint runs/digits_f32 --nfe 500 --methods repaint,replacement

--checkpoint: a run of the library's trainer on the digits *train* split (benchmarks.train_digits --keep RUN: a
class-conditional UNet with label dropout, so model.score_fn(None), its null label, is an unconditional score);
the 359 test digits are unseen. --keep: an unconditional UNet (24 channels, (1, 2), DDPM-cosine, v-prediction)
trained by the minimal loop below (DSMLoss, Adam with warm-up and cosine decay, EMA, batch 128).

Every test digit is inpainted once per method at NFE <= --nfe (measured); "kept" is the share classified as the
digit's label. References: the classifier on the whole digits ("whole") and on the known upper half with the lower
half set to the background, -1 ("masked"). The ceiling: a sample of the exact posterior keeps the class with
probability p(class | upper half), so no posterior sampler keeps more than its mean, estimated by a classifier of the
upper halves alone (upper_half_ceiling). The same methods also run on an exact prior, Gaussian digits (one full-
covariance Gaussian per class fitted to the train split, ridge 0.01), whose exact posterior samples give the
"exact posterior" row. FD / floor: the inpainted digits against the 359 test digits (which share their upper
halves, so below the floor of independent real digits is possible). Writes benchmarks/results/<--name>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from benchmarks._common import write_json
from scoresde import CountEvals, DiscreteVP
from scoresde import guidance as G
from scoresde.evaluation.digits import digits_metrics, load_digits_classifier
from scoresde.evaluation.inpaint import inpaint, inpaint_mask
from scoresde.losses import DSMLoss
from scoresde.nets import build_net
from scoresde.processes import from_config
from scoresde.samplers.registry import get_sampler
from scoresde.score import score_from
from toy_data import GaussianMixture
from toy_data.images import get_images

NET = {"name": "unet", "in_channels": 1, "image_size": 8, "channels": 24, "channel_mult": [1, 2],
       "num_res_blocks": 1, "prediction": "v", "num_classes": 0, "sigma_data": 0.6}
ZETAS = (0.03, 0.1, 0.3, 1.0)  # DPS's ζ' (per DDPM step of 1000)


def fit(run: Path, steps: int, max_seconds: float, seed: int = 0) -> dict:
    """Train NET on the digits train split (the minimal loop) and save its EMA weights in run/; returns a summary."""
    from safetensors.torch import save_file

    train = get_images("digits", split="train").images
    process = DiscreteVP.cosine()
    torch.manual_seed(seed)
    net = build_net(NET)
    ema = build_net(NET).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    warmup, lr_final = 100, 0.05
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warmup) * (
        lr_final + (1 - lr_final) * 0.5 * (1 + math.cos(math.pi * min(1.0, k / steps)))))
    loss_fn, g = DSMLoss("sigma2"), torch.Generator().manual_seed(seed)
    t0, cpu0, losses, step = time.perf_counter(), time.process_time(), [], 0
    while step < steps and time.perf_counter() - t0 < max_seconds:
        x0 = train[torch.randint(len(train), (128,), generator=g)]
        loss = loss_fn(net, process, x0, None, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
    summary = {"steps": step, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
               "loss": sum(losses[-100:]) / len(losses[-100:]),
               "net": NET, "process": process.config(), "seed": seed}
    run.mkdir(parents=True, exist_ok=True)
    save_file(ema.state_dict(), str(run / "ema.safetensors"))
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def load(run: Path):
    """(ScoreFn, process, summary) of a model saved by fit, or of a library checkpoint (run directory)."""
    if (run / "ema.safetensors").is_file():
        from safetensors.torch import load_file

        summary = json.loads((run / "summary.json").read_text())
        net = build_net(summary["net"])
        net.load_state_dict(load_file(str(run / "ema.safetensors")))
        net.eval().requires_grad_(False)
        process = from_config(summary["process"])
        return score_from(net, process, net.prediction), process, summary
    from scoresde.training.checkpoint import load_model

    model = load_model(run)
    return model.score_fn(None), model.process, {"checkpoint": str(run), "step": model.step}


def gaussian_digits() -> GaussianMixture:
    """One full-covariance Gaussian per class, fitted to the digits train split (ridge 0.01), equal weights."""
    train = get_images("digits", split="train")
    x = train.images.flatten(1).double()
    means = torch.stack([x[train.labels == k].mean(0) for k in range(10)])
    covs = torch.stack([torch.cov(x[train.labels == k].T) + 0.01 * torch.eye(64, dtype=torch.float64)
                        for k in range(10)])
    return GaussianMixture(torch.full((10,), 0.1), means, covs, labels=range(10), event_shape=(1, 8, 8))


def upper_half_ceiling(mask, seed: int = 0) -> dict:
    """What an exact posterior sampler can keep: E[p(class | known pixels)] over the test digits, estimated by a
    classifier of the known pixels alone (an MLP on the train split, its weight decay chosen by 5-fold
    cross-validated log-loss on the train split). A sample of the exact posterior keeps the class with probability
    p(true class | known pixels), so its kept share is about the mean of that; the classifier's accuracy is what
    always answering the most probable class (no sampler) would keep."""
    train, test = get_images("digits", split="train"), get_images("digits", split="test")
    x, y, xt, yt = mask.A(train.images).flatten(1), train.labels, mask.A(test.images).flatten(1), test.labels

    def fit_mlp(x, y, wd):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        opt = torch.optim.Adam(net.parameters(), 1e-2, weight_decay=wd)
        for _ in range(800):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return net.requires_grad_(False)

    folds = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)) % 5
    cv = {}
    for wd in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2):
        cv[wd] = sum(float(torch.nn.functional.cross_entropy(fit_mlp(x[folds != f], y[folds != f], wd)(
            x[folds == f]), y[folds == f], reduction="sum")) for f in range(5)) / len(y)
    wd = min(cv, key=cv.get)
    p = fit_mlp(x, y, wd)(xt).softmax(1)
    return {"weight_decay": wd, "cv_log_loss": cv[wd], "accuracy": float((p.argmax(1) == yt).double().mean()),
            "mean_p_true": float(p[torch.arange(len(yt)), yt].double().mean())}


def kept(clf, x: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((clf(x.float().clamp(-1, 1)).argmax(1) == labels).double().mean())


def run_methods(score, process, images, mask, nfe: int, seed: int, keep,
                grid: str | None = None) -> dict[str, tuple[torch.Tensor, int, float]]:
    """name -> (samples, NFE, seconds) for every method (whose name passes keep) on every image, each sampler on
    its default grid or on `grid`."""
    out = {}
    y = mask.A(images)
    for name, method, sampler in [("repaint r=5, ancestral", "repaint", "ancestral"),
                                  ("replacement, ancestral", "replacement", "ancestral"),
                                  ("pigdm, ancestral", "pigdm", "ancestral"),
                                  ("pigdm, dpm_solver_pp", "pigdm", "dpm_solver_pp")]:
        if not keep(name):
            continue
        t0 = time.perf_counter()
        x, used = inpaint(score, process, images, mask, method=method, sampler=sampler, nfe=nfe, grid=grid,
                          generator=torch.Generator().manual_seed(seed))
        out[name] = (x, used, time.perf_counter() - t0)
    spec = get_sampler("ancestral")
    for zeta in ZETAS if keep("dps") else ():
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed)
        counted = CountEvals(score)
        x = process.prior(images.shape, generator=g, dtype=images.dtype)
        x = spec(G.dps(counted, process, mask, y, zeta), process, x, spec.grid_for(process, nfe, grid), generator=g)
        out[f"dps zeta={zeta:g}, ancestral"] = (x, counted.nfe, time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="a trained model (run directory) instead of training one")
    p.add_argument("--keep", default="runs/inverse_digits", help="train into (or reuse) this directory")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--max-seconds", type=float, default=900.0, help="training stops here at the latest")
    p.add_argument("--nfe", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", default=None, help="every sampler on this registry grid (default: each one's own)")
    p.add_argument("--methods", default="", help="comma-separated method-name prefixes (default: all)")
    p.add_argument("--name", default="inverse_digits")
    args = p.parse_args()
    torch.set_num_threads(1)
    run = Path(args.checkpoint or args.keep)
    trained = None
    if args.checkpoint is None and not (run / "ema.safetensors").is_file():
        trained = fit(run, args.steps, args.max_seconds, args.seed)
        print(f"trained {trained['steps']} steps in {trained['seconds']:.0f} s (loss {trained['loss']:.4f}) -> {run}")
    score, process, summary = load(run)
    prefixes = [m for m in args.methods.split(",") if m]

    def keep(name: str) -> bool:
        return not prefixes or any(name.startswith(m) for m in prefixes)

    clf = load_digits_classifier()
    test = get_images("digits", split="test")
    images, labels = test.images, test.labels
    mask = inpaint_mask("lower-half", (1, 8, 8))
    background = mask.replace(torch.full_like(images, -1.0), mask.A(images))
    rows = [{"prior": "-", "method": "whole test digits (reference)", "kept": kept(clf, images, labels)},
            {"prior": "-", "method": "upper half, lower half background", "kept": kept(clf, background, labels)}]
    prior = gaussian_digits()
    exact = torch.cat([prior.condition(mask, mask.A(images[i:i + 1])[0], 0.0).sample(
        1, generator=torch.Generator().manual_seed(args.seed + i)) for i in range(len(images))])
    rows.append({"prior": "Gaussian digits", "method": "exact posterior samples", "kept": kept(clf, exact, labels)})
    ceiling = upper_half_ceiling(mask, args.seed)
    rows.append({"prior": "-", "method": "ceiling: mean p(class | upper half), an upper-half classifier",
                 "kept": ceiling["mean_p_true"], **ceiling})
    for prior_name, prior_score, prior_process in [("Gaussian digits", prior.score_fn(process), process),
                                                   ("UNet", score, process)]:
        for name, (x, used, seconds) in run_methods(prior_score, prior_process, images, mask, args.nfe, args.seed,
                                                    keep, args.grid).items():
            error = float((mask.A(x) - mask.A(images)).abs().max())
            fd = digits_metrics(x.float().clamp(-1, 1), classifier=clf, seed=args.seed)
            rows.append({"prior": prior_name, "method": name, "nfe": used, "seconds": seconds,
                         "kept": kept(clf, x, labels), "known_max_error": error, "fd": fd["fd"],
                         "fd_ratio": fd["fd_ratio"]})
    print(f"Lower half of the {len(images)} held-out test digits inpainted; class kept by the digits CNN (test "
          f"accuracy {clf.test_accuracy:.4f})")
    print("| prior | method | NFE | kept | FD / floor | max error on known pixels |\n|---|---|---|---|---|---|")
    for r in rows:
        nfe = r.get("nfe", "-")
        err = f"{r['known_max_error']:.2g}" if "known_max_error" in r else "-"
        fd = f"{r['fd_ratio']:.2f}" if "fd_ratio" in r else "-"
        print(f"| {r['prior']} | {r['method']} | {nfe} | {r['kept']:.3f} | {fd} | {err} |")
    command = "python -m benchmarks.inverse_digits " + " ".join(sys.argv[1:])
    path = write_json(args.name, {"command": command.strip(), "model": summary, "trained_here": trained is not None,
                                  "classifier_test_accuracy": clf.test_accuracy, "n": len(images), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
