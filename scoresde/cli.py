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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoresde", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("targets", help="draw the built-in targets and their exact diffused scores to a PNG")
    p.add_argument("--targets", default="", help="comma-separated names (default: all mixtures)")
    p.add_argument("--process", default="vp", help=f"one of {', '.join(PROCESSES)}")
    p.add_argument("--times", default="0.02,0.08,0.2,0.4", help="comma-separated process times")
    p.add_argument("--out", default="runs/targets.png", type=Path)
    p.set_defaults(func=_cmd_targets)
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
