"""The `scoresde` command. Errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROCESSES = ("vp", "ve", "subvp", "ddpm", "ddpm-cosine")


def make_process(name: str):
    """Process by CLI name (the name -> object table lives here, at the edge)."""
    from . import VE, VP, DiscreteVP, SubVP

    table = {
        "vp": VP,
        "ve": lambda: VE(0.01, 10.0),
        "subvp": SubVP,
        "ddpm": DiscreteVP.linear,
        "ddpm-cosine": DiscreteVP.cosine,
    }
    if name not in table:
        raise ValueError(f"unknown process {name!r}; choose from {', '.join(PROCESSES)}")
    return table[name]()


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

    target = toy_data.get(args.target)
    if not isinstance(target, toy_data.GaussianMixture):
        raise ValueError(
            f"target {args.target!r} has no exact score; choose from {', '.join(toy_data.MIXTURES)} "
            "(learned scores come with --checkpoint)"
        )
    process = make_process(args.process)
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
        gap, se = log_density_gap(target.log_prob, x, ref)
        row.update(logp_gap=float(gap), logp_gap_se=float(se))
        return row

    floors = measure(ref2)
    runs = [(n, b) for n in names for b in budgets]
    records, samples = [], {}
    for k in progress_steps(len(runs), None, "compare"):
        name, budget = runs[k]
        spec = specs[name]
        try:
            ts = spec.grid_for(process, budget, args.grid)
        except ValueError as e:
            print(f"skip {name} at NFE {budget}: {e}", file=sys.stderr)
            continue
        score = count_evals(target.score_fn(process))
        g = torch.Generator().manual_seed(args.seed + 1)
        x = process.prior((args.n,) + target.event_shape, generator=g, dtype=dtype)
        t0 = time.perf_counter()
        out = spec(score, process, x, ts, generator=g)
        seconds = time.perf_counter() - t0
        row = {"sampler": name, "budget": budget, "nfe": score.nfe, "grid": args.grid or spec.grid,
               "seconds": seconds, **measure(out)}
        records.append(row)
        samples[(name, budget)] = out
    cols = ["sliced_w2", "mmd", "energy", "logp_gap"]
    header = f"{'sampler':20s} {'grid':9s} {'NFE':>4s} " + " ".join(f"{c:>10s}" for c in cols) + f" {'seconds':>8s}"
    print(f"{args.target} under {process!r}, n = {args.n} (mmd, energy: first {pair_n})")
    print(header)
    print(f"{'noise floor':20s} {'':9s} {'':>4s} " + " ".join(f"{floors[c]:10.4g}" for c in cols)
          + f"   (logp gap SE {floors['logp_gap_se']:.3g})")
    for r in records:
        print(f"{r['sampler']:20s} {r['grid']:9s} {r['nfe']:4d} " + " ".join(f"{r[c]:10.4g}" for c in cols)
              + f" {r['seconds']:8.2f}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(
        {"target": args.target, "process": repr(process), "n": args.n, "seed": args.seed, "floors": floors,
         "records": records}, indent=2))
    plot_sample_grid(samples, ref, out_dir / "samples.png")
    plot_quality_vs_nfe(records, floors, cols, out_dir / "quality_vs_nfe.png")
    written = ["results.json", "samples.png", "quality_vs_nfe.png"]
    if args.score_field:
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
            x = process.prior((64,) + target.event_shape, generator=g, dtype=dtype)
            spec(target.score_fn(process), process, x, spec.grid_for(process, budget, args.grid), generator=g,
                 callback=lambda info: pts.append(info["x"].clone()))
            paths[f"{name} (NFE {budget})"] = torch.stack(pts)
        plot_trajectories(paths, ref, out_dir / "trajectories.png")
        written.append("trajectories.png")
    print(f"wrote {', '.join(str(out_dir / w) for w in written)}")


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
    p.add_argument("--grid", default=None, help="override each sampler's grid: uniform_t, log_snr, karras, ddpm")
    p.add_argument("--n", type=int, default=5000, help="samples per run")
    p.add_argument("--pairwise-n", type=int, default=2000, help="points used by the O(n²) metrics (mmd, energy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float64", action="store_true", help="sample in float64")
    p.add_argument("--score-field", action="store_true", help="also plot the exact score field")
    p.add_argument("--trajectories", action="store_true", help="also plot sample trajectories")
    p.add_argument("--out", default="runs/compare", type=Path)
    p.set_defaults(func=_cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"scoresde {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
