"""The `scoresde` command. Errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .train import PROCESSES, make_process  # noqa: F401  (the name -> object tables live with the checkpoints)


def _cmd_targets(args: argparse.Namespace) -> None:
    import toy_data

    from .plotting import plot_score_fields

    names = args.targets.split(",") if args.targets else list(toy_data.MIXTURES)
    targets = {}
    for name in names:
        target = toy_data.get(name)
        if not isinstance(target, toy_data.GaussianMixture):
            raise ValueError(f"{name!r} has no exact score; choose from {', '.join(toy_data.MIXTURES)}")
        targets[name] = target
    process = make_process(args.process)
    times = [float(t) for t in args.times.split(",")]
    for t in times:
        process.check_t(t)
    out = plot_score_fields(targets, process, times, args.out)
    print(f"wrote {out}")


def _csv_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{what} is empty")
    return values


def _cmd_compare(args: argparse.Namespace) -> None:
    import json
    import time

    import torch

    import toy_data

    from . import count_evals
    from .metrics import log_density_gap, mmd, energy_distance, sliced_wasserstein
    from .plotting import plot_quality_vs_nfe, plot_sample_grid, plot_score_fields, plot_trajectories
    from .samplers import SAMPLERS, get_sampler
    from .samplers._common import steps as progress_steps

    if args.checkpoint is not None:
        from .train import load_model, make_data

        model = load_model(args.checkpoint, device=args.device)
        process, target_name = model.process, model.config.data
        target = make_data(model.config.data, model.config.data_root)
        if len(target.event_shape) != 1:
            raise ValueError(f"compare measures 2D/point data; {target_name!r} has event shape {target.event_shape}")
        make_score = model.score_fn
        source = f"learned score {model.config.net.get('name')} at step {model.step} ({args.checkpoint})"
        dev = torch.device(args.device)
    else:
        target = toy_data.get(args.target)
        if not isinstance(target, toy_data.GaussianMixture):
            raise ValueError(
                f"target {args.target!r} has no exact score; choose from {', '.join(toy_data.MIXTURES)} "
                "(learned scores come with --checkpoint)"
            )
        process, target_name = make_process(args.process), args.target
        make_score = lambda: target.score_fn(process)  # noqa: E731
        source = "exact score"
        dev = torch.device("cpu")
    exact_density = isinstance(target, toy_data.GaussianMixture)
    names = list(SAMPLERS) if args.samplers == "all" else [s.strip() for s in args.samplers.split(",")]
    specs = {name: get_sampler(name) for name in names}
    from .schedules import GRIDS

    if args.grid is not None and args.grid not in GRIDS:
        raise ValueError(f"unknown grid {args.grid!r}; choose from {', '.join(GRIDS)}")
    budgets = _csv_ints(args.nfe, "--nfe")
    for nfe in budgets:
        if nfe < 1:
            raise ValueError(f"NFE must be a positive integer, got {nfe}")
    if args.n < 2:
        raise ValueError(f"--n must be at least 2, got {args.n}")
    dtype = torch.float64 if args.float64 else torch.float32
    gen = torch.Generator().manual_seed(args.seed)
    ref = target.sample(args.n, generator=gen, dtype=dtype)
    ref2 = target.sample(args.n, generator=gen, dtype=dtype)
    pair_n = min(args.n, args.pairwise_n)  # MMD and energy distance are O(n²): they use the first pair_n points
    metric_fns = {
        "sliced_w2": sliced_wasserstein,
        "mmd": lambda x, y: mmd(x, y, max_n=pair_n),
        "energy": lambda x, y: energy_distance(x, y, max_n=pair_n),
    }

    def measure(x):
        row = {m: float(f(x, ref)) for m, f in metric_fns.items()}
        if exact_density:
            gap, se = log_density_gap(target.log_prob, x, ref)
            row.update(logp_gap=float(gap), logp_gap_se=float(se))
        return row

    floors = measure(ref2)
    runs = [(n, b) for n in names for b in budgets]
    records, samples, grids = [], {}, {}  # grids: an optimised grid is worth computing once
    for k in progress_steps(len(runs), None, "compare"):
        name, budget = runs[k]
        spec = specs[name]
        try:
            ts = grids[name, budget] = spec.grid_for(process, budget, args.grid, score=make_score(),
                                                     shape=target.event_shape, dtype=dtype, device=dev)
        except ValueError as e:
            print(f"skip {name} at NFE {budget}: {e}", file=sys.stderr)
            continue
        score = count_evals(make_score())
        g = torch.Generator().manual_seed(args.seed + 1)
        x = process.prior((args.n,) + target.event_shape, generator=g, dtype=dtype).to(dev)
        t0 = time.perf_counter()
        out = spec(score, process, x, ts, generator=None if dev.type != "cpu" else g).cpu()
        seconds = time.perf_counter() - t0
        row = {"sampler": name, "budget": budget, "nfe": score.nfe, "grid": args.grid or spec.grid,
               "seconds": seconds, **measure(out)}
        records.append(row)
        samples[(name, budget)] = out
    cols = ["sliced_w2", "mmd", "energy"] + (["logp_gap"] if exact_density else [])
    header = f"{'sampler':20s} {'grid':9s} {'NFE':>4s} " + " ".join(f"{c:>10s}" for c in cols) + f" {'seconds':>8s}"
    print(f"{target_name} under {process!r}, {source}, n = {args.n} (mmd, energy: first {pair_n})")
    print(header)
    print(f"{'noise floor':20s} {'':9s} {'':>4s} " + " ".join(f"{floors[c]:10.4g}" for c in cols)
          + (f"   (logp gap SE {floors['logp_gap_se']:.3g})" if exact_density else ""))
    for r in records:
        print(f"{r['sampler']:20s} {r['grid']:9s} {r['nfe']:4d} " + " ".join(f"{r[c]:10.4g}" for c in cols)
              + f" {r['seconds']:8.2f}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(
        {"target": target_name, "source": source, "process": repr(process), "n": args.n, "seed": args.seed, "floors": floors,
         "records": records}, indent=2))
    plot_sample_grid(samples, ref, out_dir / "samples.png")
    plot_quality_vs_nfe(records, floors, cols, out_dir / "quality_vs_nfe.png")
    written = ["results.json", "samples.png", "quality_vs_nfe.png"]
    if args.score_field:
        if not exact_density:
            raise ValueError("--score-field draws the exact score; it needs a Gaussian-mixture target")
        plot_score_fields({args.target: target}, process, [0.02, 0.1, 0.3], out_dir / "score_field.png")
        written.append("score_field.png")
    if args.trajectories:
        paths = {}
        for name in names:
            spec = specs[name]
            budget = min(b for b in budgets if b >= spec.nfe(1)) if any(b >= spec.nfe(1) for b in budgets) else None
            if budget is None:
                continue
            pts = []
            g = torch.Generator().manual_seed(args.seed + 2)
            x = process.prior((64,) + target.event_shape, generator=g, dtype=dtype).to(dev)
            ts = grids.get((name, budget))
            if ts is None:
                continue
            spec(make_score(), process, x, ts,
                 generator=None if dev.type != "cpu" else g, callback=lambda info: pts.append(info["x"].cpu()))
            paths[f"{name} (NFE {budget})"] = torch.stack(pts)
        plot_trajectories(paths, ref, out_dir / "trajectories.png")
        written.append("trajectories.png")
    print(f"wrote {', '.join(str(out_dir / w) for w in written)}")


# `scoresde train` defaults: points (mlp, classifier) and images (unet; the recipe of benchmarks/train_digits.py)
TRAIN_DEFAULTS = {
    "points": {"process": "vp", "output": "eps", "batch": 512, "lr": 3e-3, "warmup": 50, "ema": 0.995},
    "images": {"process": "ddpm-cosine", "output": "v", "batch": 128, "lr": 2e-3, "warmup": 100, "ema": 0.999},
}


def _fill_train_defaults(args: argparse.Namespace) -> None:
    for name, value in TRAIN_DEFAULTS["images" if args.net == "unet" else "points"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _net_config(args: argparse.Namespace, data) -> dict:
    """Network config from CLI flags and the data (its shape, classes and scale)."""
    import torch

    g = torch.Generator().manual_seed(args.seed)
    probe = data.sample(4096, generator=g)
    sigma_data = round(float(probe.std()), 3)
    num_classes = 0
    if args.net == "classifier":
        num_classes = int(getattr(data, "num_classes", 0) or 0)
        if num_classes < 2:
            raise ValueError(f"a classifier needs labelled data; {args.data!r} has no labels")
        if len(shape := tuple(data.event_shape)) != 1:
            raise ValueError(f"the classifier network takes vectors; {args.data!r} has event shape {shape}")
        return {"name": "mlp_classifier", "dim": shape[0], "num_classes": num_classes, "width": args.width,
                "depth": args.depth, "emb_dim": args.emb_dim, "embedding": args.embedding, "sigma_data": sigma_data}
    if args.conditional:
        num_classes = int(getattr(data, "num_classes", 0) or 0)
        if num_classes < 1:
            raise ValueError(f"--conditional needs labelled data; {args.data!r} has no labels")
    shape = tuple(data.event_shape)
    if args.net == "mlp":
        if len(shape) != 1:
            raise ValueError(f"the mlp network takes vectors; {args.data!r} has event shape {shape}: use --net unet")
        return {"name": "mlp", "dim": shape[0], "width": args.width or 128, "depth": args.depth,
                "emb_dim": args.emb_dim, "embedding": args.embedding, "output": args.output,
                "num_classes": num_classes, "sigma_data": sigma_data}
    if args.net == "unet":
        if len(shape) != 3:
            raise ValueError(f"the unet network takes images (C, H, W); {args.data!r} has event shape {shape}")
        if shape[1] != shape[2]:
            raise ValueError(f"the unet network takes square images; {args.data!r} has event shape {shape}")
        return {"name": "unet", "in_channels": shape[0], "image_size": shape[1], "channels": args.width or 32,
                "channel_mult": _csv_ints(args.channel_mult, "--channel-mult"), "num_res_blocks": args.res_blocks,
                "emb_dim": args.emb_dim, "embedding": args.embedding, "output": args.output,
                "num_classes": num_classes, "sigma_data": sigma_data}
    raise ValueError(f"unknown network {args.net!r}; choose mlp, unet or classifier")


MAX_GRID = 400  # images drawn in a sample grid (all of them go to the .pt and .npy files)


def _save_samples(x, out: Path, reference=None, title: str = "", nrow: int | None = None,
                  arrays: bool = True) -> list[Path]:
    """PNG (scatter for points, grid for images) plus (if arrays) .pt and .npy of the samples next to it."""
    import numpy as np
    import torch

    from .plotting import plot_image_grid, plot_points

    out.parent.mkdir(parents=True, exist_ok=True)
    x = x.detach().cpu()
    png = out if out.suffix == ".png" else out.with_suffix(".png")
    if x.ndim == 2:
        plot_points(x, png, reference=reference, title=title)
    else:
        plot_image_grid(x[:MAX_GRID], png, title=title + (f" (first {MAX_GRID} of {len(x)})" if len(x) > MAX_GRID
                                                            else ""), nrow=nrow)
    if not arrays:
        return [png]
    pt, npy = png.with_suffix(".pt"), png.with_suffix(".npy")
    torch.save(x, pt)
    np.save(npy, x.numpy())
    return [png, pt, npy]


def _preview(model, out: Path, seed: int, title: str, arrays: bool = True) -> Path:
    """Samples of a trained Model drawn to a PNG: 2000 points, or images (for a class-conditional model 6 per
    class, one class per column, classifier-free weight 1: the conditional score); dpm_solver_pp, NFE 20."""
    import torch

    from .samplers import get_sampler

    spec = get_sampler("dpm_solver_pp")
    process = model.process
    g = torch.Generator().manual_seed(seed)
    images = len(model.event_shape) > 1
    n = (6 * model.num_classes if model.num_classes else 64) if images else 2000
    x = process.prior((n,) + model.event_shape, generator=g).to(model.device)
    labels = torch.arange(n, device=model.device) % model.num_classes if model.num_classes else None
    samples = spec(model.score_fn(labels), process, x, spec.grid_for(process, 20),
                   generator=g if model.device.type == "cpu" else None, progress=False)
    ref = None
    if not images:
        from .train import make_data

        ref = make_data(model.config.data, model.config.data_root).sample(n, generator=g)
    nrow = model.num_classes if images and model.num_classes else None
    return _save_samples(samples, out, reference=ref, title=title, nrow=nrow, arrays=arrays)[0]


def _cmd_train(args: argparse.Namespace) -> None:
    import os

    from .train import TrainConfig, Model, latest_checkpoint, load_checkpoint, make_data, train

    out = Path(args.out)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 prints and draws
    if args.resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {out}")
        config = load_checkpoint(ckpt)["config"]
        if args.steps is not None:
            config.steps = args.steps
        if main_process:
            print(f"resuming {ckpt} to step {config.steps}")
    else:
        if (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
            raise ValueError(f"{out} already holds checkpoints; pass --resume to continue or choose another --out")
        _fill_train_defaults(args)
        data = make_data(args.data, args.data_root)
        config = TrainConfig(
            data=args.data, data_root=args.data_root, process=args.process, net=_net_config(args, data),
            steps=args.steps if args.steps is not None else 2000, batch=args.batch, lr=args.lr,
            optimizer=args.optimizer, warmup=args.warmup, clip=args.clip if args.clip > 0 else None, ema=args.ema,
            weighting=args.weighting, snr_gamma=args.snr_gamma, importance=args.importance,
            label_dropout=args.label_dropout if args.conditional else 0.0, seed=args.seed, device=args.device,
            checkpoint_every=args.checkpoint_every, data_streams=args.data_streams, amp=args.amp,
            classifier_objective=args.classifier_objective, classifier_base=args.base, dsm_weight=args.dsm_weight,
            init=args.init, reference_batch=args.reference_batch, widen=args.widen, widen_frac=args.widen_frac,
            widen_t_min=args.widen_t_min,
        )
    make_process(config.process)  # fail early on a bad name
    scores = config.net.get("name") not in ("mlp_classifier", "encoder_classifier")
    every = args.preview_every if args.preview_every is not None else \
        (config.checkpoint_every if config.net.get("name") == "unet" else 0)

    def preview(step, ema) -> dict:
        path = _preview(Model(ema.eval(), make_process(config.process), config, step),
                        out / "previews" / f"step_{step:08d}.png", config.seed, f"step {step}", arrays=False)
        return {"preview": str(path)}

    result = train(config, out, resume=args.resume, eval_fn=preview if args.preview and scores else None,
                   eval_every=every)
    if not main_process:
        return
    tail = result.losses[-config.log_every:] or [float("nan")]
    print(f"trained {config.data} on {config.process} to step {result.step} in {result.seconds:.1f} s; "
          f"loss {sum(tail) / len(tail):.4f}; checkpoint {latest_checkpoint(out)}")
    if args.preview and scores:
        model = Model(result.ema.eval(), result.process, result.config, result.step)
        print(f"wrote {_preview(model, out / 'samples.png', config.seed, f'step {result.step}')}")


def _cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from .samplers import get_sampler
    from .train import load_model

    model = load_model(args.checkpoint, device=args.device, ema=not args.no_ema)
    process = model.process
    spec = get_sampler(args.sampler)
    if args.n is None:
        args.n = 10000 if len(model.event_shape) == 1 else 100
    if args.n < 1:
        raise ValueError(f"--n must be positive, got {args.n}")
    if args.grid == "optimized":
        raise ValueError("--grid optimized is for `scoresde compare` (and schedules.optimized in Python), not sample")
    ts = spec.grid_for(process, args.nfe, args.grid)
    labels = None
    if args.label is not None and args.guidance != "classifier":
        if model.num_classes == 0:
            raise ValueError("--label needs a class-conditional model (trained with --conditional) "
                             "or --guidance classifier")
        if not 0 <= args.label < model.num_classes:
            raise ValueError(f"--label {args.label} is outside [0, {model.num_classes - 1}]")
    score_for = _guided_score(args, model)
    g = torch.Generator().manual_seed(args.seed)
    batches = []
    for start in range(0, args.n, args.batch):
        b = min(args.batch, args.n - start)
        x = process.prior((b,) + model.event_shape, generator=g).to(model.device)
        if args.label is not None:
            labels = torch.full((b,), args.label, dtype=torch.long, device=model.device)
        batches.append(spec(score_for(labels), process, x, ts, generator=g if model.device.type == "cpu" else None,
                            progress=None).cpu())
    samples = torch.cat(batches)
    ref = None
    if samples.ndim == 2:
        from .train import make_data

        ref = make_data(model.config.data, model.config.data_root).sample(min(args.n, 5000), generator=g)
    title = f"{args.sampler}, NFE {spec.nfe(len(ts) - 1)}" + (f", label {args.label}" if args.label is not None else "")
    written = _save_samples(samples, Path(args.out), reference=ref, title=title)
    print(f"wrote {', '.join(str(w) for w in written)}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .digits_classifier import cache_dir, evaluate_digits, load_digits_classifier
    from .train import load_model

    model = load_model(args.checkpoint, device=args.device, ema=not args.no_ema)
    if model.config.data != "digits":
        raise ValueError(f"evaluate measures models of the digits (its classifier is built in); this checkpoint "
                         f"was trained on {model.config.data!r}")
    if model.num_classes == 0 and args.w != 1:
        raise ValueError("--w (classifier-free guidance) needs a class-conditional model")
    clf = load_digits_classifier(device=args.device, verbose=True)
    res = evaluate_digits(model, n=args.n, w=args.w, sampler=args.sampler, nfe=args.nfe, seed=args.seed,
                          batch=args.batch, classifier=clf, return_samples=args.out is not None)
    print(f"digits model at step {model.step} ({'trained' if args.no_ema else 'EMA'} weights), n = {args.n}, "
          f"{args.sampler} NFE {res['nfe']}, {res['seconds']:.1f} s to sample")
    print(f"digits classifier: test accuracy {clf.test_accuracy:.4f} (cache {cache_dir()})")
    if "accuracy" in res:
        print(f"class accuracy (CFG w = {args.w:g}): {res['accuracy']:.4f}")
    print(f"Frechet distance {res['fd']:.3f}; real-vs-real floor {res['fd_floor']:.3f}; "
          f"ratio {res['fd_ratio']:.2f}")
    if args.out is not None:
        nrow = model.num_classes or None
        written = _save_samples(res["samples"], Path(args.out), title=f"step {model.step}", nrow=nrow)
        print(f"wrote {', '.join(str(w) for w in written)}")


def _guided_score(args: argparse.Namespace, model):
    """labels -> ScoreFn: the model's score, guided as the flags ask (guidance is score composition)."""
    from . import guidance
    from .train import load_model

    if args.guidance not in ("none", "cfg", "classifier"):
        raise ValueError(f"unknown guidance {args.guidance!r}; choose none, cfg or classifier")
    if args.guidance != "none" and args.label is None:
        raise ValueError(f"--guidance {args.guidance} needs --label")
    if args.guidance == "none":
        return model.score_fn
    if args.guidance == "cfg":
        if model.num_classes == 0:
            raise ValueError("--guidance cfg needs a class-conditional model (trained with --conditional)")
        return lambda labels: guidance.classifier_free(model.score_fn(labels), model.score_fn(None), args.w)
    if args.classifier is None:
        raise ValueError("--guidance classifier needs --classifier RUN (a noise-aware classifier checkpoint)")
    clf = load_model(args.classifier, device=args.device)
    if clf.process.__class__ is not model.process.__class__ or repr(clf.process) != repr(model.process):
        raise ValueError(f"the classifier was trained on {clf.process!r}, the model on {model.process!r}")
    if not 0 <= args.label < clf.num_classes:
        raise ValueError(f"--label {args.label} is outside the classifier's classes [0, {clf.num_classes - 1}]")
    return lambda labels: guidance.classifier(model.score_fn(None), clf.log_prob_fn(labels), args.scale)


def _cmd_likelihood(args: argparse.Namespace) -> None:
    import math
    import time

    import torch

    from .likelihood import bits_per_dim, dequantize, log_likelihood
    from .train import load_model, make_data

    model = load_model(args.checkpoint, device=args.device)
    name = args.data or model.config.data
    data = make_data(name, args.data_root or model.config.data_root)
    if tuple(data.event_shape) != model.event_shape:
        raise ValueError(f"data {name!r} has event shape {tuple(data.event_shape)}, the model {model.event_shape}")
    if args.n < 2:
        raise ValueError(f"--n must be at least 2, got {args.n}")
    g = torch.Generator().manual_seed(args.seed)
    source = make_data(name, args.data_root or model.config.data_root, split="test")  # held out (image sets)
    x = source.sample(args.n, generator=g)
    images = x.ndim > 2
    n_levels = getattr(data, "n_levels", None)
    if images and n_levels:
        x = dequantize(x, n_levels, generator=g)
    score = model.score_fn()
    logs, nfe, t0 = [], 0, time.perf_counter()
    for start in range(0, args.n, args.batch):
        xb = x[start:start + args.batch].to(model.device, torch.float64 if args.float64 else torch.float32)
        res = log_likelihood(score, model.process, xb, divergence=args.divergence, n_probes=args.probes,
                             rtol=args.rtol, atol=args.atol, method=args.method, steps=args.steps,
                             generator=torch.Generator(model.device).manual_seed(args.seed + start))
        logs.append(res.log_p.double().cpu())
        nfe += res.nfe
    seconds = time.perf_counter() - t0
    log_p = torch.cat(logs)
    nll, se = float(-log_p.mean()), float(log_p.std() / math.sqrt(len(log_p)))
    print(f"{name} under {model.process!r}, step {model.step}, n = {args.n}, divergence {args.divergence}, "
          f"NFE {nfe}, {seconds:.1f} s")
    print(f"mean NLL {nll:.4f} ± {se:.4f} nats")
    if images and n_levels:
        bpd = bits_per_dim(log_p, x[0].numel(), n_levels=n_levels)
        print(f"bits/dim {float(bpd.mean()):.4f} ± {float(bpd.std() / math.sqrt(len(bpd))):.4f} "
              f"({n_levels} levels, uniform dequantisation)")
    if hasattr(data, "log_prob") and not images:
        exact = data.log_prob(x.double())
        gap = -log_p - (-exact)
        print(f"exact entropy estimate (mean -log p of the same samples) {float(-exact.mean()):.4f}; "
              f"NLL - exact {float(gap.mean()):.4f} ± {float(gap.std() / math.sqrt(len(gap))):.4f} nats")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoresde", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("targets", help="draw the built-in targets and their exact diffused scores to a PNG")
    p.add_argument("--targets", default="", help="comma-separated names (default: all mixtures)")
    p.add_argument("--process", default="vp", help=f"one of {', '.join(PROCESSES)}")
    p.add_argument("--times", default="0.02,0.08,0.2,0.4", help="comma-separated process times")
    p.add_argument("--out", default="runs/targets.png", type=Path)
    p.set_defaults(func=_cmd_targets)

    p = sub.add_parser("compare", help="run samplers on an exact score at several NFE budgets; table, JSON and PNGs")
    p.add_argument("--target", default="ring8", help="a Gaussian-mixture target: ring8, grid25, aniso")
    p.add_argument("--process", default="vp", help=f"one of {', '.join(PROCESSES)}")
    p.add_argument("--samplers", default="all", help="comma-separated sampler names, or 'all'")
    p.add_argument("--nfe", default="10,20,50", help="comma-separated NFE budgets")
    p.add_argument("--grid", default=None, help="override each sampler's grid: uniform_t, log_snr, karras, ddpm, jump, "
                   "optimized (deterministic samplers: placed on a pilot batch, ~2000 pilot runs)")
    p.add_argument("--n", type=int, default=5000, help="samples per run")
    p.add_argument("--pairwise-n", type=int, default=2000, help="points used by the O(n²) metrics (mmd, energy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float64", action="store_true", help="sample in float64")
    p.add_argument("--score-field", action="store_true", help="also plot the exact score field")
    p.add_argument("--trajectories", action="store_true", help="also plot sample trajectories")
    p.add_argument("--checkpoint", default=None, help="compare on a trained model's score (run directory)")
    p.add_argument("--device", default="cpu", help="device for the learned model (with --checkpoint)")
    p.add_argument("--out", default="runs/compare", type=Path)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("train", help="train a score network by denoising score matching",
                       description="Train a score network by denoising score matching. Data parallel: "
                       "torchrun --nproc_per_node=K -m scoresde.cli train ... (gloo on CPU, NCCL on CUDA); "
                       "--batch is the global batch, split over the processes.")
    p.add_argument("--data", default="moons", help="2D toy data (ring8, moons, ...) or images (digits, ...)")
    p.add_argument("--data-root", default=None, help="folder of local image files (mnist, cifar10, folder)")
    p.add_argument("--process", default=None, help=f"one of {', '.join(PROCESSES)} (default: vp; ddpm-cosine "
                   "for --net unet)")
    p.add_argument("--net", default="mlp", help="mlp (points), unet (images) or classifier (noise-aware, points)")
    p.add_argument("--width", type=int, default=None, help="MLP width (default 128), or UNet base channels "
                   "(default 32)")
    p.add_argument("--depth", type=int, default=3, help="MLP residual layers")
    p.add_argument("--channel-mult", default="1,2", help="UNet channel multipliers, one per resolution")
    p.add_argument("--res-blocks", type=int, default=1, help="UNet residual blocks per resolution")
    p.add_argument("--emb-dim", type=int, default=64, help="sigma embedding size")
    p.add_argument("--embedding", default="sinusoidal", help="sinusoidal or fourier features of log sigma")
    p.add_argument("--output", default=None, help="what the network predicts: eps, x0, v or score (default: eps; "
                   "v for --net unet)")
    p.add_argument("--conditional", action="store_true", help="class-conditional network (labelled data)")
    p.add_argument("--label-dropout", type=float, default=0.15, help="null-label probability (with --conditional)")
    p.add_argument("--steps", type=int, default=None, help="total training steps (default 2000)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default 512; 128 for --net unet)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3; 2e-3 for --net unet)")
    p.add_argument("--optimizer", default="adam", help="adam or adamw")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 50; 100 for --net unet)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: off)")
    p.add_argument("--ema", type=float, default=None, help="EMA decay of the weights (default 0.995; 0.999 for "
                   "--net unet)")
    p.add_argument("--weighting", default="sigma2", help="sigma2 (eps loss), likelihood (g²), min_snr (Min-SNR-gamma: "
                   "the eps loss with levels of SNR > gamma down-weighted) or none")
    p.add_argument("--snr-gamma", type=float, default=5.0, help="gamma of --weighting min_snr (default 5)")
    p.add_argument("--importance", action="store_true", help="importance-sample t (likelihood weighting)")
    p.add_argument("--classifier-objective", default="ce", help="--net classifier: ce (cross-entropy) or guided_dsm "
                   "(CE + DSM of --base's score plus the classifier's gradient: trains the gradient guidance uses)")
    p.add_argument("--base", default=None, help="guided_dsm: run directory of the unconditional score model to guide")
    p.add_argument("--dsm-weight", type=float, default=1.0, help="guided_dsm: weight of the DSM term (default 1)")
    p.add_argument("--reference-batch", type=int, default=0, help="> 0: regress on a reference-batch estimate of "
                   "the score (the batch plus this many data points; unconditional nets; classifiers: soft labels) "
                   "instead of -eps / sigma")
    p.add_argument("--widen", type=float, default=1.0, help="> 1 (with --reference-batch): draw part of the batch "
                   "with noise c sigma, c log-uniform in [1, widen], to train the score between modes")
    p.add_argument("--widen-frac", type=float, default=0.5, help="the share of the batch with widened noise")
    p.add_argument("--widen-t-min", type=float, default=0.0, help="widened noise only at t >= this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--preview-every", type=int, default=None, help="write previews/step_*.png every this many "
                   "steps (default: at each checkpoint for images, never for points; 0: never)")
    p.add_argument("--data-streams", type=int, default=0, help="independent data streams making up a batch "
                   "(default: one per torchrun process); batch is the global batch")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA, or CPUs with AMX / AVX512-BF16)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--init", default=None, help="fine-tune: start from this run's EMA weights (same network "
                   "options), with a fresh optimiser and schedule")
    p.add_argument("--no-preview", dest="preview", action="store_false", help="skip previews and samples.png")
    p.add_argument("--out", default="runs/train", type=Path)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="sample a trained model: PNG plus .pt and .npy")
    p.add_argument("--checkpoint", required=True, help="run directory (or one checkpoint directory)")
    p.add_argument("--sampler", default="dpm_solver_pp")
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--grid", default=None, help="override the sampler's time grid")
    p.add_argument("--n", type=int, default=None, help="samples (default 10000 points or 100 images)")
    p.add_argument("--batch", type=int, default=10000, help="samples per sampler call")
    p.add_argument("--label", type=int, default=None, help="class label (class-conditional models)")
    p.add_argument("--guidance", default="none", help="none, cfg or classifier")
    p.add_argument("--w", type=float, default=1.0, help="classifier-free guidance weight")
    p.add_argument("--classifier", default=None, help="noise-aware classifier run directory")
    p.add_argument("--scale", type=float, default=1.0, help="classifier guidance scale")
    p.add_argument("--no-ema", action="store_true", help="use the trained weights instead of the EMA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="samples.png", type=Path)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("evaluate", help="digits models: class accuracy and Frechet distance vs its real-data floor")
    p.add_argument("--checkpoint", required=True, help="run directory (or one checkpoint directory)")
    p.add_argument("--n", type=int, default=1000, help="samples (labels 0..9 in turn)")
    p.add_argument("--w", type=float, default=1.0, help="classifier-free guidance weight (1: the conditional score)")
    p.add_argument("--sampler", default="dpm_solver_pp")
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--batch", type=int, default=1000, help="samples per sampler call")
    p.add_argument("--no-ema", action="store_true", help="use the trained weights instead of the EMA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, type=Path, help="also save the samples (PNG grid, .pt, .npy)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("likelihood", help="mean negative log-likelihood by the probability-flow ODE")
    p.add_argument("--checkpoint", required=True, help="run directory (or one checkpoint directory)")
    p.add_argument("--data", default=None, help="data to score (default: the model's training data)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--divergence", default="exact", help="exact (low dimensions) or hutchinson")
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes per sample")
    p.add_argument("--method", default="dopri5", help="dopri5 (adaptive) or euler, midpoint, rk4 (with --steps)")
    p.add_argument("--steps", type=int, default=None, help="steps of a fixed-step method")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--float64", action="store_true", help="integrate in float64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_likelihood)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .train import NonFiniteLossError

    try:
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError, NonFiniteLossError) as e:
        print(f"scoresde {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
