"""Study (issue 17): the fitted grids' shape as a default? Steps on scaled_log_snr down to sigma/alpha = D e^-c only,
then one jump to t_min (D: the data scale tuning.data_scale estimates; c fixed).

    python -m benchmarks.experiments.low_nfe.jump_end [--c 5 --nfe 10,15 --samplers unipc]

The optimised grids (section 6 of the README) keep scaled_log_snr's log-uniform spacing, compressed to end near
sigma/alpha = D e^-5, and jump from there to t_min. Nothing here is in the library.
"""

from __future__ import annotations

import argparse
import math

import torch

from benchmarks._common import sampler, write_json
from benchmarks.experiments.low_nfe._study import HERE, judge, prior, setting
from benchmarks.robustness import TARGETS
from scoresde.processes import VP
from scoresde.schedules import scaled_log_snr


def jump_end(process, steps: int, scale: float, c: float) -> torch.Tensor:
    """steps - 1 steps of scaled_log_snr from t_max to sigma/alpha = scale e^-c (if above t_min), then t_min."""
    r_end = scale * math.exp(-c)
    r_min = float(torch.exp(-0.5 * process.log_snr(torch.tensor([process.t_min], dtype=torch.float64))))
    if steps < 2 or r_end <= r_min:
        return scaled_log_snr(process, steps, scale)
    t_end = float(process.t_from_log_snr(torch.tensor([-2 * math.log(r_end)], dtype=torch.float64)))
    head = scaled_log_snr(process, steps - 1, scale, t_min=t_end)
    return torch.cat([head, torch.tensor([process.t_min], dtype=torch.float64)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default=",".join(t for t in TARGETS if not t.endswith("q")))
    ap.add_argument("--samplers", default="unipc")
    ap.add_argument("--nfe", default="10,15")
    ap.add_argument("--c", default="4,5")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", default="jump_end")
    args = ap.parse_args()
    torch.set_num_threads(1)
    process, rows = VP(), []
    for tname in args.targets.split(","):
        st = setting(tname, process, args.n)
        big = st.scale
        for name in args.samplers.split(","):
            spec = sampler(name)
            for b in [int(v) for v in args.nfe.split(",")]:
                cells = []
                for c in ["default"] + [float(v) for v in args.c.split(",")]:
                    steps = spec.steps_for(b)
                    ts = scaled_log_snr(process, steps, big) if c == "default" else jump_end(process, steps, big, c)
                    x, g = prior(st, process, args.n)
                    q, cell = judge(st, spec(st.score, process, x, ts, nfe=b, generator=g), str(c))
                    cells.append(cell)
                    rows.append({"target": tname, "sampler": name, "nfe": b, "c": c, **q})
                print(f"{tname:10s} {name:8s} NFE {b:3d}  " + "  ".join(cells), flush=True)
    write_json(args.json, {"rows": rows}, results=HERE)


if __name__ == "__main__":
    main()
