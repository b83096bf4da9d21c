"""Our samplers and the peers' same algorithms side by side on the exact ring8 score under DDPM's linear schedule.

    python -m benchmarks.peers_quality                       # n = 20000, NFE 10, 20, 50, 100, 250
    python -m benchmarks.peers_quality --target grid25 --nfe 10,20,50
    python -m benchmarks.peers_quality --rows scoresde --grid optimized --nfe 10,20,50   # ours on optimised grids
    python -m benchmarks.peers_quality --rows ancestral,ddpm --nfe 10,20,50 --seeds 0,1,2,3 --ref-seeds 0,1,2,3

Every sampler starts from the same x_T ~ N(0, I) and is scored with the same exact score (peers through the
adapters of benchmarks/_peers.py). Cells: log-density gap in standard errors / sliced W2 in units of its floor;
* marks both within (3 se, 1.5x). A second table gives the gap in nats (an effect size: the se above includes the
generated samples' own spread, so a more dispersed sampler gets a larger se and a smaller |gap/se|). With several
--seeds (seed k: x_T drawn with seed 2k, the samplers' noise with 2k + 1; k = 0 is the default run) or
--ref-seeds (other exact reference sets, each with its own SW2 floor) cells are mean +- sd over seeds x references,
followed by the first row's paired differences from each other row. The `exact samples` row (the target's own
samples) shows what a perfect sampler reads. Writes benchmarks/results/<--json>.json.
Peers: pip install diffusers torchsde && pip install --no-deps k-diffusion (see _peers.py).
"""

from __future__ import annotations

import argparse
import sys

import torch

import toy_data
from scoresde import CountEvals, DiscreteVP
from scoresde.metrics import sliced_wasserstein

from . import _peers as peers
from ._common import quality, reference, sampler, write_json

# rows: (label, runner); ours first, then the peers' implementations of the same algorithm
ROWS = [
    ("scoresde dpm_solver_pp", ("ours", "dpm_solver_pp")),
    ("diffusers dpmpp_2m", ("diffusers", "dpmpp_2m")),
    ("k-diffusion dpmpp_2m", ("k-diffusion", "dpmpp_2m")),
    ("scoresde dpm_solver_pp order=3", ("ours", "dpm_solver_pp:order=3")),  # DPM-Solver++ 3M
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
    ("scoresde ancestral_analytic", ("ours", "ancestral_analytic")),
    ("diffusers ddpm", ("diffusers", "ddpm")),
    ("k-diffusion euler_ancestral", ("k-diffusion", "euler_ancestral")),
    ("scoresde dpm_solver_pp_sde", ("ours", "dpm_solver_pp_sde")),  # SDE-DPM-Solver++(3M)
    ("scoresde dpm_solver_pp_sde order=2", ("ours", "dpm_solver_pp_sde:order=2")),
    ("k-diffusion dpmpp_3m_sde", ("k-diffusion", "dpmpp_3m_sde")),
    ("k-diffusion dpmpp_2m_sde", ("k-diffusion", "dpmpp_2m_sde")),
    ("k-diffusion dpmpp_sde", ("k-diffusion", "dpmpp_sde")),  # SDE-DPM-Solver++ with a midpoint: 2 evaluations a step
    ("exact samples", ("exact", "")),  # a perfect sampler: what the cells read at the floor
]


_GRIDS: dict = {}  # (sampler, NFE, grid) -> time grid: an optimised grid is computed once, whatever the seeds


def run(kind, name, target, process, x_T, nfe, grid=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "ours":
        spec = sampler(name)
        if grid == "optimized" and not spec.deterministic:
            grid = None  # the optimised grid is for deterministic samplers; the stochastic ones keep their own
        # pilot batches (optimised grid, analytic x0 variance) use tuning.PILOT_SEED, independent of x_T
        if (name, nfe, grid) not in _GRIDS:
            _GRIDS[name, nfe, grid] = spec.grid_for(process, nfe, grid, score=target.score_fn(process),
                                                    shape=target.event_shape)
        ts = _GRIDS[name, nfe, grid]
        score = CountEvals(target.score_fn(process))
        out = spec(score, process, x_T.clone(), ts, nfe=nfe, generator=g)
        return out, score.nfe
    if kind == "exact":  # seeds apart from the references' (1, 2 and 100 + 2j, 101 + 2j)
        return target.sample(x_T.shape[0], generator=torch.Generator().manual_seed(10_000 + seed),
                              dtype=torch.float64), 0
    fn = peers.run_diffusers if kind == "diffusers" else peers.run_kdiffusion
    return fn(name, target.score_fn(process), process, x_T.clone(), nfe, generator=g)


def references(target, n: int, ref_seeds: list[int]) -> dict:
    """Reference j: (ref, SW2 floor); j = 0 is _common.reference's (seeds 1, 2), j > 0 draws with 100 + 2j, 101 + 2j."""
    out = {}
    for j in ref_seeds:
        if j == 0:
            ref, floor, _, _ = reference(target, n)
        else:
            ref = target.sample(n, generator=torch.Generator().manual_seed(100 + 2 * j), dtype=torch.float64)
            ref2 = target.sample(n, generator=torch.Generator().manual_seed(101 + 2 * j), dtype=torch.float64)
            floor = float(sliced_wasserstein(ref2, ref))
        out[j] = (ref, floor)
    return out


def paired(records: list, first: str, budgets: list) -> list[str]:
    """Per later row and budget: mean +- se over (seed, reference) of first row minus that row, in SW2 floors and
    in |gap| nats (negative: the first row is closer to the target)."""
    by = {(r["sampler"], r["budget"], r["seed"], r["ref"]): r for r in records}
    lines = []
    for label in dict.fromkeys(r["sampler"] for r in records):
        if label == first:
            continue
        cells = []
        for b in budgets:
            keys = [(k[2], k[3]) for k in by if k[0] == label and k[1] == b and (first, b, k[2], k[3]) in by]
            if len(keys) < 2:
                cells.append(f"{'-':>27s}")
                continue
            dsw = torch.tensor([by[first, b, *k]["sw_ratio"] - by[label, b, *k]["sw_ratio"] for k in keys])
            dgap = torch.tensor([abs(by[first, b, *k]["gap"]) - abs(by[label, b, *k]["gap"]) for k in keys])
            se = len(keys) ** 0.5
            cells.append(f"{float(dsw.mean()):+.3f}±{float(dsw.std()) / se:.3f} / {float(dgap.mean()):+.3f}±"
                         f"{float(dgap.std()) / se:.3f}".rjust(27))
        lines.append(f"{label:42s} " + " ".join(cells))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="ring8")
    ap.add_argument("--nfe", default="10,20,50,100,250")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid", default=None, help="time grid of our deterministic samplers (default: each one's own), "
                    "e.g. optimized")
    ap.add_argument("--rows", default=None, help="only the rows whose label contains one of these comma-separated "
                    "strings, e.g. scoresde or ancestral,ddpm")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds k (x_T seed 2k, noise seed 2k + 1)")
    ap.add_argument("--ref-seeds", default="0", help="comma-separated reference sets j (0: the default one)")
    ap.add_argument("--json", default="peers_quality", help="results file name in benchmarks/results/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.nfe.split(",")]
    target = toy_data.load(args.target)
    process = DiscreteVP.linear(1000)
    _, sw_floor, gap_floor, gap_se = reference(target, args.n)
    seeds = [int(k) for k in args.seeds.split(",")]
    refs = references(target, args.n, [int(j) for j in args.ref_seeds.split(",")])
    x_Ts = {k: torch.randn(args.n, 2, generator=torch.Generator().manual_seed(2 * k), dtype=torch.float64)
            for k in seeds}
    print(f"{args.target} under {process!r}, n = {args.n}: SW2 floor {sw_floor:.4f}, gap floor {gap_floor:+.4f} "
          f"(se {gap_se:.4f}); seeds {seeds}, references {list(refs)} (SW2 floors "
          f"{', '.join(f'{f:.4f}' for _, f in refs.values())}); versions {peers.peer_versions()}")
    many = len(seeds) * len(refs) > 1
    print(f"{'sampler':42s} " + " ".join(f"{b:>15d}" for b in budgets) + "  first passing NFE")
    records, nats, first_label = [], [], None
    for label, (kind, name) in ROWS:
        if args.rows is not None and not any(r in label for r in args.rows.split(",")):
            continue
        if kind == "ours" and args.grid is not None:
            spec = sampler(name)
            used = spec.grid if args.grid == "optimized" and not spec.deterministic else args.grid
            label = f"{label} ({used})"  # run() gives stochastic samplers their own grid only instead of 'optimized'
        first_label = first_label or label
        cells, ncells, first = [], [], None
        for b in budgets:
            qs, refused = [], False
            for k in seeds:
                try:
                    out, nfe = run(kind, name, target, process, x_Ts[k], b, args.grid if kind == "ours" else None,
                                   seed=2 * k + 1)
                except (ValueError, RuntimeError) as e:
                    print(f"  {label} at NFE {b}: {e}", file=sys.stderr)
                    refused = "needs NFE >=" in str(e)  # a budget the registry refuses, not a failure
                    break
                for j, (ref, floor) in refs.items():
                    q = quality(target, out.double(), ref, floor)
                    records.append({"sampler": label, "budget": b, "nfe": nfe, "seed": k, "ref": j, **q})
                    qs.append(q)
            if len(qs) < len(seeds) * len(refs):
                cells.append(f"{'skip' if refused else 'err':>15s}")
                ncells.append(f"{'skip' if refused else 'err':>15s}")
                continue
            z, sw, gap = (torch.tensor([q[key] for q in qs]) for key in ("gap_z", "sw_ratio", "gap"))
            ok = all(q["gap_ok"] and q["sw_ok"] for q in qs)
            if ok and first is None:
                first = nfe
            if not many:
                cells.append(f"{float(z):+7.0f}/{float(sw):4.2f}{'*' if ok else ' '}".rjust(15))
                ncells.append(f"{float(gap):+8.3f}({qs[0]['gap_se']:.3f})".rjust(15))
            else:
                zc = f"{float(z.mean()):+.0f}±{float(z.std()):.0f}"
                cells.append(f"{zc}/{float(sw.mean()):.2f}±{float(sw.std()):.2f}".rjust(15))
                ncells.append(f"{float(gap.mean()):+.3f}±{float(gap.std()):.3f}".rjust(15))
        print(f"{label:42s} " + " ".join(cells) + f"  {first if first else '>' + str(budgets[-1])}", flush=True)
        nats.append(f"{label:42s} " + " ".join(ncells))
    print("cells: log-density gap in standard errors / sliced W2 in floors (measured NFE may be below the budget)"
          + ("; mean±sd over seeds x references" if many else ""))
    print("\nlog-density gap in nats: " + ("mean±sd over seeds x references" if many else "value(se)"))
    print("\n".join(nats))
    if many:
        print(f"\npaired over seeds x references, {first_label} minus each row: SW2 in floors / |gap| in nats, "
              "mean±se (negative: the first row is closer)")
        print("\n".join(paired(records, first_label, budgets)))
    path = write_json(args.json, {"target": args.target, "n": args.n, "budgets": budgets, "seeds": seeds,
                                  "refs": list(refs), "versions": peers.peer_versions(), "records": records})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
