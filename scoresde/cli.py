"""The `scoresde` command. Errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

import toy_data

from ._utils import check_writable
from .evaluation import (compare, compare_images, evaluate_nll, guided_score_for, preview, preview_eval_fn, sample_model,
                         save, save_images, trajectories)
from .evaluation.bounds import int_arg
from .evaluation.digits import cache_dir, evaluate_digits, load_digits_classifier
from .interop import from_diffusers
from .processes import PROCESSES, from_config
from .samplers.registry import GRIDS, SAMPLERS, get_sampler
from .training import (Model, TrainingInterrupted, config_from_options, latest_checkpoint, load_model, resume_config,
                       train)

EXIT_CODES = ("exit status: 0 done; 1 runtime error (an output could not be written, the run directory is in use, a "
              "non-finite loss, out of memory, ...); 2 usage error (a bad flag, value or input, refused before work "
              "starts); 130 or 143 training interrupted by SIGINT or SIGTERM after writing a checkpoint (continue "
              "with --resume). Errors are one line on stderr, without a traceback.")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2 (argparse prints the usage too)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


_count, _seed = int_arg(1, 2**63, "a positive integer below 2^63"), int_arg(0, 2**63, "in [0, 2^63)")


def _csv(text: str, what: str, kind: type = int) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        kinds = "integers" if kind is int else "numbers"
        raise ValueError(f"{what} must be comma-separated {kinds}, got {text!r}") from None
    if not values:
        raise ValueError(f"{what} is empty")
    return values


def _mixture(name: str):
    if name not in toy_data.MIXTURES:
        raise ValueError(f"{name!r} has no exact score; choose from {', '.join(toy_data.MIXTURES)}")
    return toy_data.load(name)


def _cmd_targets(args: argparse.Namespace) -> None:
    from .plotting import plot_score_fields  # matplotlib: imported by the commands that draw

    check_writable(args.out, directory=False, make=False)
    process = from_config(args.process)
    targets = {name: _mixture(name) for name in (args.targets.split(",") if args.targets else toy_data.MIXTURES)}
    times = _csv(args.times, "--times", float)
    for t in times:
        process.check_t(t)
    print(f"wrote {plot_score_fields(targets, process, times, args.out)}")


def _any_run(result) -> None:
    """A comparison in which every (sampler, budget) was refused is an error naming the reasons."""
    if not result.records:
        raise ValueError(f"nothing to run: {'; '.join(result.skipped)}")


def _cmd_compare(args: argparse.Namespace) -> None:
    from .plotting import plot_score_fields

    samplers = None if args.samplers == "all" else [s.strip() for s in args.samplers.split(",")]
    check_writable(args.out, directory=True, make=False)
    model = None if args.diffusers is None and args.checkpoint is None else _model(args)
    if model is not None and len(model.event_shape) == 3:  # images: seconds per image, sample grids, FD for digits
        if args.grid or args.float64 or args.score_field or args.trajectories:
            raise ValueError("--grid, --float64, --score-field and --trajectories are for point models, not images")
        result = compare_images(model, samplers, _csv(args.nfe, "--nfe"), n=args.n or 64, seed=args.seed)
        _any_run(result)
        print(result.table(f"{args.diffusers or args.checkpoint}"), *(f"skip {line}" for line in result.skipped),
              sep="\n")
        print(f"wrote {', '.join(map(str, save_images(result, args.out)))}")
        return
    if model is not None:
        process, name, score = model.process, model.config.data, model.score_fn()
        target = toy_data.load(name, root=model.config.data_root)
        source = f"learned score {model.config.net.get('name')} at step {model.step} ({args.checkpoint})"
    else:
        process, name, source = from_config(args.process), args.target, "exact score"
        target = _mixture(name)
        score = target.score_fn(process)
    if args.score_field and not isinstance(target, toy_data.GaussianMixture):
        raise ValueError("--score-field draws the exact score; it needs a Gaussian-mixture target")
    n = args.n or 5000
    result = compare(target, process, samplers, _csv(args.nfe, "--nfe"), score=score, n=n, seed=args.seed,
                     grid=args.grid, dtype=torch.float64 if args.float64 else torch.float32, device=args.device,
                     pairwise_n=min(n, args.pairwise_n))
    _any_run(result)
    for line in result.skipped:
        print(f"skip {line}", file=sys.stderr)
    print(result.table(f"{name} under {process!r}, {source}"))
    paths = trajectories(result, score) if args.trajectories else None
    written = save(result, args.out, meta={"target": name, "source": source}, paths=paths)
    if args.score_field:
        written.append(plot_score_fields({name: target}, process, [0.02, 0.1, 0.3], Path(args.out) / "score_field.png"))
    print(f"wrote {', '.join(map(str, written))}")


def _cmd_train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    given = {k: v for k, v in vars(args).items() if k not in ("command", "func", "out", "resume", "overwrite")}
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 prints and draws
    if args.resume:
        config, ckpt = resume_config(out, {k: v for k, v in given.items() if k not in ("preview", "preview_every")})
        data = None  # train() loads config.data
        if main_process:
            print(f"resuming {ckpt} to step {config.steps}")
    else:
        given.setdefault("data", "moons")
        data = toy_data.load(given["data"], root=given.get("data_root"), split="train")
        config = config_from_options(dict(given), data)
    previews = given.get("preview", True) and config.net.get("name") not in ("mlp_classifier", "encoder_classifier")
    every = given.get("preview_every", config.checkpoint_every if config.net.get("name") == "unet" else 0)
    result = train(config, out, resume=args.resume, overwrite=args.overwrite, data=data,
                   eval_fn=preview_eval_fn(config, out) if previews else None, eval_every=every)
    if not main_process:
        return
    if not result.losses:
        return print(f"{out} is at step {result.step} already; nothing to train (ask for more --steps)")
    tail = result.losses[-config.log_every:]
    print(f"trained {config.data} on {result.process!r} to step {result.step} in {result.seconds:.1f} s; "
          f"loss {sum(tail) / len(tail):.4f}; checkpoint {latest_checkpoint(out)}")
    if previews:
        model = Model(result.ema.eval(), result.process, result.config, result.step)
        print(f"wrote {preview(model, out / 'samples.png', config.seed, f'step {result.step}')}")


def _cmd_sample(args: argparse.Namespace) -> None:
    from .plotting import save_samples

    check_writable(args.out, directory=False, make=False)
    model = _model(args)
    if args.inpaint is not None:
        return _inpaint(args, model)
    args.sampler, args.nfe = args.sampler or "dpm_solver_pp", args.nfe or 20
    spec = get_sampler(args.sampler)
    n = args.n if args.n is not None else (10000 if len(model.event_shape) == 1 else 100)
    labels = None if args.label is None else torch.full((n,), args.label, dtype=torch.long)
    samples = sample_model(model, n, sampler=args.sampler, nfe=args.nfe, grid=args.grid, labels=labels,
                           score_for=guided_score_for(model, args.guidance, args.label, w=args.w, classifier=args.classifier,
                                                     scale=args.scale, device=args.device), batch=args.batch,
                           seed=args.seed)
    data = toy_data.load(model.config.data, root=model.config.data_root) if samples.ndim == 2 else None
    ref = None if data is None else data.sample(min(n, 5000), generator=torch.Generator().manual_seed(args.seed))
    title = f"{args.sampler}, NFE {spec.spent(args.nfe)}" + \
        (f", label {args.label}" if args.label is not None else "")
    print(f"wrote {', '.join(map(str, save_samples(samples, Path(args.out), reference=ref, title=title)))}")


def _model(args: argparse.Namespace):
    """The model of --checkpoint (a scoresde run) or --diffusers (a local diffusers folder)."""
    if getattr(args, "diffusers", None) is None:
        if getattr(args, "null_label", None) is not None:
            raise ValueError("--null-label is for --diffusers models (scoresde's own use their last label)")
        return load_model(args.checkpoint, device=args.device, ema=not getattr(args, "no_ema", False))
    if getattr(args, "no_ema", False):
        raise ValueError("--no-ema is for scoresde checkpoints; a diffusers folder holds one set of weights")
    return from_diffusers(args.diffusers, device=args.device, null_label=getattr(args, "null_label", None))


def _inpaint(args: argparse.Namespace, model) -> None:
    """sample --inpaint: the unconditional score (null label), the library's sample_inpainting, one line of results."""
    from .evaluation.inpaint import sample_inpainting

    res = sample_inpainting(model.score_fn(None), model.process, model.event_shape, args.inpaint, args.observed,
                            n=args.n, method=args.inpaint_method, sampler=args.sampler or "ancestral",
                            nfe=args.nfe or 50, grid=args.grid, seed=args.seed, out=args.out, device=args.device,
                            digits=getattr(getattr(model, "config", None), "data", None) == "digits")
    kept = f"; class kept {res['class_kept']:.1%} (whole image {res['class_full']:.1%}, masked " \
           f"{res['class_masked']:.1%})" if "class_kept" in res else ""
    print(f"inpainted {res['n']} images ({res['method']}, {res['sampler']}, NFE {res['nfe']}){kept}; wrote "
          f"{', '.join(str(f) for f in res['files'])}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .plotting import save_samples

    if args.out is not None:
        check_writable(args.out, directory=False, make=False)
    model = load_model(args.checkpoint, device=args.device, ema=not args.no_ema)
    if model.config.data != "digits":
        raise ValueError(f"evaluate measures models of the digits (its classifier is built in); this checkpoint "
                         f"was trained on {model.config.data!r}")
    clf = load_digits_classifier(device=args.device, verbose=True)
    res = evaluate_digits(model, n=args.n, w=args.w, sampler=args.sampler, nfe=args.nfe, seed=args.seed,
                          batch=args.batch, classifier=clf, return_samples=args.out is not None)
    print(f"digits model at step {model.step} ({'trained' if args.no_ema else 'EMA'} weights), n = {args.n}, "
          f"{args.sampler} NFE {res['nfe']}, {res['seconds']:.1f} s to sample")
    print(f"digits classifier: test accuracy {clf.test_accuracy:.4f} (cache {cache_dir()})")
    if "accuracy" in res:
        print(f"class accuracy (CFG w = {args.w:g}): {res['accuracy']:.4f}")
    print(f"Frechet distance {res['fd']:.3f}; real-vs-real floor {res['fd_floor']:.3f}; ratio {res['fd_ratio']:.2f}")
    if args.out is not None:
        written = save_samples(res["samples"], args.out, title=f"step {model.step}", nrow=model.num_classes or None)
        print(f"wrote {', '.join(map(str, written))}")


def _cmd_likelihood(args: argparse.Namespace) -> None:
    model = load_model(args.checkpoint, device=args.device)
    name = args.data or model.config.data
    data = toy_data.load(name, root=args.data_root or model.config.data_root, split="test")  # held out (images)
    res = evaluate_nll(model, data, args.n, batch=args.batch, seed=args.seed, divergence=args.divergence,
                       dtype=torch.float64 if args.float64 else torch.float32, n_probes=args.probes,
                       method=args.method, steps=args.steps, rtol=args.rtol, atol=args.atol)
    print(f"{name} under {model.process!r}, step {model.step}, n = {args.n}, divergence {args.divergence}, "
          f"NFE {res['nfe']}, {res['seconds']:.1f} s")
    print(f"mean NLL {res['nll']:.4f} ± {res['nll_se']:.4f} nats")
    if "bpd" in res:
        print(f"bits/dim {res['bpd']:.4f} ± {res['bpd_se']:.4f} ({res['n_levels']} levels, uniform dequantisation)")
    if "gap" in res:
        print(f"exact entropy estimate (mean -log p of the same samples) {res['entropy']:.4f}; "
              f"NLL - exact {res['gap']:.4f} ± {res['gap_se']:.4f} nats")


def _add(p: argparse.ArgumentParser, *specs: tuple) -> None:
    """Arguments from (flag, default or type, help) triples; a bool default makes a switch; an int default of a
    count (--n, --batch, --nfe, ...) must be positive, a seed in [0, 2^63)."""
    for flag, default, text in specs:
        if isinstance(default, bool):
            p.add_argument(flag, action="store_false" if default else "store_true", help=text)
        elif callable(default):
            p.add_argument(flag, type=default, help=text)
        else:
            kind = {"--seed": _seed}.get(flag, _count if flag in _COUNTS and isinstance(default, int) else
                                         type(default))
            p.add_argument(flag, default=default, type=kind if default is not None else None, help=text)


_COUNTS = ("--n", "--batch", "--nfe", "--pairwise-n", "--probes")


def _model_flags(p: argparse.ArgumentParser, checkpoint: str, required: bool) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--checkpoint", help=checkpoint)
    group.add_argument("--diffusers", help="a local diffusers folder (pipeline: unet/ + scheduler/) instead")


def _train_parser(sub, processes: str) -> None:
    p = sub.add_parser("train", argument_default=argparse.SUPPRESS,
                       help="train a score network by denoising score matching",
                       description="Train a score network by denoising score matching; a flag not given takes "
                       "TrainConfig's default (or the image recipe's, for --net unet). Data parallel: torchrun "
                       "--nproc_per_node=K -m scoresde.cli train ... (--batch is the global batch).")
    _add(p, ("--data", str, "2D toy data (default moons; ring8, ...) or images (digits, ...)"),
         ("--data-root", str, "folder of local image files (mnist, cifar10, folder)"),
         ("--process", str, f"{processes} (default vp; ddpm-cosine for --net unet)"),
         ("--net", str, "mlp (points; default), unet (images) or classifier (noise-aware, points)"),
         ("--width", int, "MLP width (default 128) or UNet base channels (default 32)"),
         ("--depth", int, "MLP residual layers (default 3)"), ("--emb-dim", int, "sigma embedding size (default 64)"),
         ("--embedding", str, "sinusoidal (default) or fourier features of log sigma"),
         ("--prediction", str, "what the network predicts: eps (default), x0, v (--net unet) or score"),
         ("--conditional", False, "class-conditional network (labelled data)"),
         ("--label-dropout", float, "null-label probability (with --conditional; default 0.15)"),
         ("--steps", int, "total training steps (default 2000)"), ("--batch", int, "global batch (default 512)"),
         ("--lr", float, "peak learning rate (default 3e-3)"), ("--optimizer", str, "adam (default) or adamw"),
         ("--warmup", int, "warm-up steps (default 50)"), ("--clip", float, "gradient-norm clip (default 1; 0: off)"),
         ("--ema", float, "EMA decay of the weights (default 0.995)"),
         ("--weighting", str, "sigma2 (default), likelihood, min_snr or none"),
         ("--snr-gamma", float, "gamma of --weighting min_snr (default 5)"),
         ("--importance", False, "importance-sample t (likelihood weighting)"),
         ("--seed", _seed, "default 0"), ("--device", str, "default cpu"), ("--checkpoint-every", int, "default 1000"),
         ("--preview-every", int, "previews/step_*.png every this many steps (default: each checkpoint for images, "
                                  "never for points; 0: never)"),
         ("--data-streams", int, "independent data streams making up a batch (default: one per process)"),
         ("--amp", False, "bf16 autocast (CUDA, or CPUs with AMX / AVX512-BF16)"),
         ("--init", str, "fine-tune: start from this run's EMA weights (same network options)"))
    p.add_argument("--channel-mult", type=lambda s: _csv(s, "--channel-mult"), help="UNet channel multipliers "
                   "(default 1,2)")
    p.add_argument("--res-blocks", dest="num_res_blocks", type=int, help="UNet residual blocks per resolution")
    p.add_argument("--no-preview", dest="preview", action="store_false", help="skip previews and samples.png")
    p.add_argument("--resume", action="store_true", default=False, help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", default=False, help="start afresh, removing a run in --out")
    p.add_argument("--out", default="runs/train", help="run directory")
    p.set_defaults(func=_cmd_train)


def _cmd_langevin(args: argparse.Namespace) -> None:
    from .evaluation.langevin import format_langevin, langevin_report

    check_writable(args.out, directory=True, make=False)
    report = langevin_report(args.energy, args.kT, args.sampler, args.chains, args.steps, dim=args.dim, tau=args.tau,
                             gamma=args.gamma, mass=args.mass, warmup=args.warmup, seed=args.seed,
                             device=args.device, out=args.out)
    print(format_langevin(report))
    for f in report["files"]:
        print(f"wrote {f}")


def _cmd_anneal(args: argparse.Namespace) -> None:
    from .evaluation.langevin import anneal_report, format_anneal

    print(format_anneal(anneal_report(args.energy, args.dim, args.schedule, args.chains, args.steps, kT0=args.kT0,
                                      kT1=args.kT1, tau=args.tau, restarts=args.restarts, adapt=args.adapt,
                                      tol=args.tol, seed=args.seed, device=args.device)))


def _energy_parsers(sub) -> None:
    p = sub.add_parser("langevin", help="Boltzmann sampling of an energy at kT against its exact moments; table, PNGs")
    p.add_argument("--energy", default="double_well", help="harmonic, double_well, muller_brown, rosenbrock, "
                   "rastrigin or a Gaussian mixture (ring8, grid25, aniso)")
    p.add_argument("--dim", type=int, default=None, help="dimension (harmonic, double_well, rastrigin)")
    p.add_argument("--kT", type=float, default=0.5)
    p.add_argument("--sampler", default="mala", help="ula, mala or baoab")
    p.add_argument("--chains", type=_count, default=1000)
    p.add_argument("--steps", type=_count, default=5000)
    p.add_argument("--tau", type=float, default=None, help="time step (default from the curvature at the minima); "
                   "ULA/MALA step eta = kT tau / gamma, MALA's start of adaptation")
    p.add_argument("--gamma", type=float, default=1.0, help="friction")
    p.add_argument("--mass", type=float, default=1.0, help="mass (baoab)")
    p.add_argument("--warmup", type=int, default=None, help="burn-in / MALA adaptation steps (default steps / 5)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/langevin", type=Path)
    p.set_defaults(func=_cmd_langevin)

    p = sub.add_parser("anneal", help="simulated annealing: success rate at reaching the global minimum")
    p.add_argument("--energy", default="rastrigin")
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--schedule", default="geometric", help="geometric, linear or logarithmic")
    p.add_argument("--chains", type=_count, default=1000)
    p.add_argument("--steps", type=_count, default=5000)
    p.add_argument("--kT0", type=float, default=10.0)
    p.add_argument("--kT1", type=float, default=0.01)
    p.add_argument("--tau", type=float, default=None, help="time step (default from the curvature at the minima)")
    p.add_argument("--restarts", type=int, default=1, help="cooling cycles, each reheating from the best state")
    p.add_argument("--adapt", type=float, default=0.05, help="per-chain step adaptation gain (0: fixed tau)")
    p.add_argument("--tol", type=float, default=0.1, help="success: best energy within tol of the global minimum")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_anneal)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scoresde", description=__doc__, epilog=EXIT_CODES)
    sub = parser.add_subparsers(dest="command", required=True)
    processes, run = f"one of {', '.join(PROCESSES)}", "run directory (or one checkpoint directory)"

    p = sub.add_parser("targets", help="draw the built-in targets and their exact diffused scores to a PNG")
    _add(p, ("--targets", "", "comma-separated names (default: all mixtures)"), ("--process", "vp", processes),
         ("--times", "0.02,0.08,0.2,0.4", "comma-separated process times"), ("--out", "runs/targets.png", ""))
    p.set_defaults(func=_cmd_targets)

    p = sub.add_parser("compare", help="run samplers on an exact score at several NFE budgets; table, JSON and PNGs")
    _add(p, ("--target", "ring8", "a Gaussian-mixture target: ring8, grid25, aniso"), ("--process", "vp", processes),
         ("--samplers", "all", f"comma-separated, or all: {', '.join(SAMPLERS)}"),
         ("--nfe", "10,20,50", "comma-separated NFE budgets (" + ", ".join(
             f"{s.name} needs >= {s.min_nfe}" for s in SAMPLERS.values() if s.min_nfe > 1) + ")"),
         ("--grid", None, f"replace each sampler's grid: {', '.join(GRIDS)} (optimized: deterministic samplers, "
                          "fitted on a pilot batch)"),
         ("--n", _count, "samples per run (default 5000 points, 64 images)"),
         ("--pairwise-n", 2000, "points used by mmd and energy_distance (O(n²))"),
         ("--seed", 0, ""), ("--float64", False, "sample in float64"),
         ("--score-field", False, "also plot the exact score field"),
         ("--trajectories", False, "also plot sample trajectories"),
         ("--device", "cpu", ""), ("--out", "runs/compare", ""))
    _model_flags(p, "compare on a trained model's score (run directory) instead", required=False)
    p.set_defaults(func=_cmd_compare)

    _train_parser(sub, processes)

    p = sub.add_parser("sample", help="sample a trained model: PNG plus .pt and .npy")
    _model_flags(p, run, required=True)
    p.add_argument("--null-label", type=int, help="--diffusers class-conditional models: the CFG null class")
    _add(p, ("--sampler", None, "default dpm_solver_pp (ancestral with --inpaint)"),
         ("--nfe", _count, "default 20 (50 with --inpaint)"), ("--grid", None, "replace the sampler's grid"),
         ("--n", _count, "samples (default 10000 points or 100 images)"),
         ("--batch", 10000, "samples per sampler call (memory only: samples do not depend on it)"),
         ("--inpaint", None, "inpaint images: lower-half, upper-half, left-half, right-half (the half to fill in) "
                             "or MASK.png (white = fill in)"),
         ("--observed", None, "with --inpaint: IMAGE.png (digits models: default the first --n held-out digits)"),
         ("--inpaint-method", "repaint", "repaint, replacement or pigdm"),
         ("--label", int, "class label (class-conditional models)"), ("--guidance", "none", "none, cfg or classifier"),
         ("--w", 1.0, "classifier-free guidance weight"), ("--classifier", None, "noise-aware classifier run"),
         ("--scale", 1.0, "classifier guidance scale"), ("--no-ema", False, "the trained weights, not the EMA"),
         ("--seed", 0, ""), ("--device", "cpu", ""), ("--out", "samples.png", ""))
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("evaluate", help="digits models: class accuracy and Frechet distance vs its real-data floor")
    p.add_argument("--checkpoint", required=True, help=run)
    _add(p, ("--n", 1000, "samples (labels 0..9 in turn)"), ("--w", 1.0, "classifier-free guidance weight (1: the "
         "conditional score)"), ("--sampler", "dpm_solver_pp", ""), ("--nfe", 20, ""),
         ("--batch", 1000, "samples per sampler call"), ("--no-ema", False, "the trained weights, not the EMA"),
         ("--seed", 0, ""), ("--device", "cpu", ""), ("--out", str, "also save the samples (PNG grid, .pt, .npy)"))
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("likelihood", help="mean negative log-likelihood by the probability-flow ODE")
    p.add_argument("--checkpoint", required=True, help=run)
    _add(p, ("--data", None, "data to score (default: the model's training data)"), ("--data-root", None, ""),
         ("--n", 1000, ""), ("--batch", 1000, ""), ("--divergence", "exact", "exact (low dimensions) or hutchinson"),
         ("--probes", 1, "Hutchinson probes per sample"),
         ("--method", "dopri5", "dopri5 (adaptive) or euler, midpoint, rk4 (with --steps)"),
         ("--steps", _count, "steps of a fixed-step method"), ("--rtol", 1e-5, ""), ("--atol", 1e-5, ""),
         ("--float64", False, "integrate in float64"), ("--seed", 0, ""), ("--device", "cpu", ""))
    p.set_defaults(func=_cmd_likelihood)

    _energy_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; -> the exit status (EXIT_CODES): errors are one line on stderr, never a traceback."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or argparse's usage error (2, its line already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        args.func(args)
        return 0
    except TrainingInterrupted as e:
        code, line = e.exit_code, f"scoresde {args.command}: {e}"
    except KeyboardInterrupt:
        code, line = 130, f"scoresde {args.command}: interrupted"
    except (ValueError, KeyError, FileNotFoundError) as e:  # bad values and inputs, refused before the work
        code, line = 2, f"scoresde {args.command}: error: {e.args[0] if isinstance(e, KeyError) else e}"
    except MemoryError:
        code, line = 1, f"scoresde {args.command}: error: out of memory (ask for less: --n, --batch, --width)"
    except Exception as e:  # runtime errors: unwritable output, a locked run, a non-finite loss, ...
        own = e.__class__.__module__.startswith("scoresde")
        code, line = 1, f"scoresde {args.command}: error: {'' if own else type(e).__name__ + ': '}{e}"
    print(" ".join(line.split())[:2000], file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
