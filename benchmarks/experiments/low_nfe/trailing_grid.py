"""Study (issues 17/20): diffusers' "trailing" grid (uniform in t, the last point at t_max / NFE, then Tweedie's x0)
beats scaled_log_snr at NFE 5-10 on the digits model for first-order and stochastic samplers; does it on the toys?

    python -m benchmarks.experiments.low_nfe.trailing_grid

VP, n = 20 000, prior seed 0; cells: log-density gap in standard errors / sliced W2 in floors, [measured NFE].
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks._common import quality, reference, write_json
from benchmarks.robustness import target
from scoresde import CountEvals
from scoresde.processes import VP
from scoresde.samplers.registry import get_sampler


def main(targets=("ring8", "aniso"), samplers=("ancestral", "ddim", "dpm_solver_pp"), budgets=(10, 20), n=20000):
    torch.set_num_threads(1)
    process, rows = VP(), []
    for tname in targets:
        tgt = target(tname)
        ref, floor, _, _ = reference(tgt, n)
        score = tgt.score_fn(process)
        for name in samplers:
            spec = get_sampler(name)
            for nfe in budgets:
                cells = []
                for grid in ("default", "trailing"):
                    ts = spec.grid_for(process, nfe, score=score) if grid == "default" else \
                        torch.linspace(process.t_max, process.t_max / nfe, nfe, dtype=torch.float64)
                    g = torch.Generator().manual_seed(0)
                    x = process.prior((n, *tgt.event_shape), generator=g, dtype=torch.float64)
                    counted = CountEvals(score)
                    q = quality(tgt, spec.fn(counted, process, x, ts, generator=g, progress=False), ref, floor)
                    rows.append({"target": tname, "sampler": name, "budget": nfe, "grid": grid, "nfe": counted.nfe,
                                 **q})
                    cells.append(f"{grid} {q['gap_z']:+.0f}/{q['sw_ratio']:.2f} [{counted.nfe}]")
                print(f"{tname:6s} {name:14s} NFE {nfe:3d}  " + "  ".join(cells), flush=True)
    print(f"wrote {write_json('trailing_grid', {'rows': rows}, Path(__file__).parent / 'results')}")


if __name__ == "__main__":
    main()
