"""Our samplers and the peers' same algorithms side by side on the exact ring8 score under DDPM's linear schedule.

    python benchmarks/peers_quality.py                       # n = 20000, NFE 10, 20, 50, 100, 250
    python benchmarks/peers_quality.py --target grid25 --nfe 10,20,50
    python benchmarks/peers_quality.py --rows scoresde --grid optimized --nfe 10,20,50   # ours on optimised grids

Every sampler starts from the same x_T ~ N(0, I) and is scored with the same exact score (peers through the
adapters of benchmarks/peers.py). Cells: log-density gap in standard errors / sliced W2 in units of its floor;
* marks both within (3 se, 1.5x). Writes benchmarks/results/peers_quality.json.
Peers: pip install diffusers torchsde && pip install --no-deps k-diffusion (see peers.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
import toy_data  # noqa: E402
from _common import quality, reference, write_json  # noqa: E402

from scoresde import DiscreteVP, count_evals  # noqa: E402
from scoresde.samplers import SAMPLERS  # noqa: E402

# rows: (label, runner); ours first, then the peers' implementations of the same algorithm
ROWS = [
    ("scoresde dpm_solver_pp", ("ours", "dpm_solver_pp")),
    ("diffusers dpmpp_2m", ("diffusers", "dpmpp_2m")),
    ("k-diffusion dpmpp_2m", ("k-diffusion", "dpmpp_2m")),
    ("scoresde dpm_solver_pp_3m", ("ours", "dpm_solver_pp_3m")),
    ("diffusers unipc", ("diffusers", "unipc")),
    ("diffusers lms", ("diffusers", "lms")),
    ("k-diffusion lms", ("k-diffusion", "lms")),
    ("scoresde heun", ("ours", "heun")),
    ("diffusers heun", ("diffusers", "heun")),
    ("k-diffusion heun", ("k-diffusion", "heun")),
    ("k-diffusion dpm_2", ("k-diffusion", "dpm_2")),
    ("scoresde ddim", ("ours", "ddim")),
    ("diffusers ddim", ("diffusers", "ddim")),
    ("scoresde euler", ("ours", "euler")),
    ("k-diffusion euler", ("k-diffusion", "euler")),
    ("diffusers euler", ("diffusers", "euler")),
    ("scoresde ancestral", ("ours", "ancestral")),
    ("diffusers ddpm", ("diffusers", "ddpm")),
    ("k-diffusion euler_ancestral", ("k-diffusion", "euler_ancestral")),
]


def run(kind, name, target, process, x_T, nfe, grid=None):
    g = torch.Generator().manual_seed(1)
    if kind == "ours":
        spec = SAMPLERS[name]
        if grid == "optimized" and not spec.deterministic:
            grid = None  # the optimised grid is for deterministic samplers; the stochastic ones keep their own
        # the optimised grid's pilot batch is drawn with schedules.PILOT_SEED, independent of x_T (seed 0)
        ts = spec.grid_for(process, nfe, grid, score=target.score_fn(process), shape=target.event_shape)
        score = count_evals(target.score_fn(process))
        out = spec(score, process, x_T.clone(), ts, generator=g)
        return out, score.nfe
    fn = peers.run_diffusers if kind == "diffusers" else peers.run_kdiffusion
    return fn(name, target.score_fn(process), process, x_T.clone(), nfe, generator=g)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="ring8")
    ap.add_argument("--nfe", default="10,20,50,100,250")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid", default=None, help="time grid of our deterministic samplers (default: each one's own), "
                    "e.g. optimized")
    ap.add_argument("--rows", default=None, help="only the rows whose label contains this, e.g. scoresde")
    ap.add_argument("--json", default="peers_quality", help="results file name in benchmarks/results/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.nfe.split(",")]
    target = toy_data.get(args.target)
    process = DiscreteVP.linear(1000)
    ref, sw_floor, gap_floor, gap_se = reference(target, args.n)
    x_T = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    print(f"{args.target} under {process!r}, n = {args.n}: SW2 floor {sw_floor:.4f}, gap floor {gap_floor:+.4f} "
          f"(se {gap_se:.4f}); versions {peers.peer_versions()}")
    print(f"{'sampler':28s} " + " ".join(f"{b:>13d}" for b in budgets) + "  first passing NFE")
    records = []
    for label, (kind, name) in ROWS:
        if args.rows is not None and args.rows not in label:
            continue
        if kind == "ours" and args.grid is not None:
            used = SAMPLERS[name].grid if args.grid == "optimized" and not SAMPLERS[name].deterministic else args.grid
            label = f"{label} ({used})"  # run() gives stochastic samplers their own grid only instead of 'optimized'
        cells, first = [], None
        for b in budgets:
            try:
                out, nfe = run(kind, name, target, process, x_T, b, args.grid if kind == "ours" else None)
            except (ValueError, RuntimeError) as e:
                cells.append(f"{'err':>13s}")
                print(f"  {label} at NFE {b}: {e}", file=sys.stderr)
                continue
            q = quality(target, out.double(), ref, sw_floor)
            ok = q["gap_ok"] and q["sw_ok"]
            if ok and first is None:
                first = nfe
            records.append({"sampler": label, "budget": b, "nfe": nfe, **q})
            cells.append(f"{q['gap_z']:+7.0f}/{q['sw_ratio']:4.2f}{'*' if ok else ' '}".rjust(13))
        print(f"{label:28s} " + " ".join(cells) + f"  {first if first else '>' + str(budgets[-1])}", flush=True)
    print("cells: log-density gap in standard errors / sliced W2 in floors (measured NFE may be below the budget)")
    path = write_json(args.json, {"target": args.target, "n": args.n, "budgets": budgets,
                                        "versions": peers.peer_versions(), "records": records})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
