"""Study (issue 17): would a grid that also knows the data's *smallest* scale reach both floors at NFE <= 15?

    python -m benchmarks.experiments.low_nfe.two_scale_grid [--targets ring8,aniso --nfe 10,15 --samplers unipc]

scaled_log_snr spreads steps uniformly in log(sigma/alpha) below the data's largest scale D and sparser above it,
where an exponential integrator's local error falls as (D / r)², r = sigma/alpha. The same holds below the data's
smallest scale b (a component's width): the data prediction is nearly x / alpha there, and the local error falls
as (r / b)². The two-scale grid puts its steps at density (1 + r / D)^(-1/2) (1 + b / r)^(-1/2) in log r, with
b given by an oracle (the smallest standard deviation of any component of the exact mixture) or by a guess. A study:
nothing here is in the library; if the oracle grid passes at NFE <= 15, estimating b from the score is the work.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import sampler, write_json
from benchmarks.experiments.low_nfe._study import HERE, judge, prior, setting
from scoresde import CountEvals
from scoresde.processes import VP
from scoresde.schedules import time_range


def two_scale(process, steps: int, big: float, small: float, power: float = 0.5) -> torch.Tensor:
    lo, hi = time_range(process, None, None)
    lam = process.log_snr(torch.tensor([hi, lo], dtype=torch.float64))
    log_r = torch.linspace(float(-lam[0] / 2), float(-lam[1] / 2), 20001, dtype=torch.float64)  # log(sigma/alpha)
    r = log_r.exp()
    density = ((1 + r / big) * (1 + small / r)) ** -power
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(0.5 * (density[1:] + density[:-1]), 0)])
    q = torch.linspace(0, float(cdf[-1]), steps + 1, dtype=torch.float64)
    idx = torch.searchsorted(cdf, q).clamp(1, len(cdf) - 1)
    w = (q - cdf[idx - 1]) / (cdf[idx] - cdf[idx - 1])
    lr = log_r[idx - 1] + w * (log_r[idx] - log_r[idx - 1])
    ts = process.t_from_log_snr(-2 * lr)
    ts[0], ts[-1] = hi, lo
    return ts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="ring8,ring8x4,ring8x16,grid25,grid25x4,grid25x16,aniso,anisoq,anisox4,mix5,mix16")
    ap.add_argument("--samplers", default="unipc")
    ap.add_argument("--nfe", default="10,15")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--small", default="oracle", help="oracle, or a number (a fraction of D: 'f0.1')")
    ap.add_argument("--power", type=float, default=0.5, help="the density's fall-off exponent outside [b, D]")
    ap.add_argument("--json", default="two_scale_grid")
    args = ap.parse_args()
    torch.set_num_threads(1)
    process = VP()
    rows = []
    for tname in args.targets.split(","):
        st = setting(tname, process, args.n)
        tgt, score, big = st.target, st.score, st.scale
        oracle = float(torch.linalg.eigvalsh(tgt.covariances).clamp_min(0).min().sqrt())
        small = oracle if args.small == "oracle" else float(args.small[1:]) * big
        for name in args.samplers.split(","):
            spec = sampler(name)
            for b in [int(v) for v in args.nfe.split(",")]:
                cells = []
                for grid in ("default", "two_scale"):
                    steps = spec.steps_for(b)
                    ts = spec.grid_for(process, b, score=score, shape=tgt.event_shape) if grid == "default" \
                        else two_scale(process, steps, big, small, args.power)
                    counted = CountEvals(score)
                    x, g = prior(st, process, args.n)
                    q, cell = judge(st, spec(counted, process, x, ts, nfe=b, generator=g), grid)
                    cells.append(cell)
                    rows.append({"target": tname, "sampler": name, "nfe": counted.nfe, "grid": grid, "big": big,
                                 "small": small, **q})
                print(f"{tname:10s} D {big:7.3f} b {small:7.4f} {name:14s} NFE {b:3d}  " + "  ".join(cells), flush=True)
    print(f"wrote {write_json(args.json, {'rows': rows, 'args': vars(args)}, HERE)}")


if __name__ == "__main__":
    main()
