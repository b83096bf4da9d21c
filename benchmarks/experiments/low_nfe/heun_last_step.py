"""Study (issue 17): is heun's erratic quality below NFE 15 its last step? EDM's Heun ends with an Euler step (to
sigma = 0); ours corrects every step, the last one dividing the data prediction's error by sigma/alpha at t_min.

    python -m benchmarks.experiments.low_nfe.heun_last_step

For each NFE: heun as the registry runs it (uniform_log_snr, an even budget's spare evaluation an Euler first step),
heun whose last step is Euler's (with and without the Euler first step), and euler; cells: log-density gap in
standard errors / sliced W2 in floors (n = 20 000, VP, benchmarks._common.quality), [measured NFE].
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks._common import quality, reference, write_json
from benchmarks.robustness import target
from scoresde import CountEvals
from scoresde.processes import VP
from scoresde.samplers import euler, heun
from scoresde.samplers.registry import get_sampler
from scoresde.schedules import uniform_log_snr


def main(targets=("ring8", "ring8x16", "grid25x4"), budgets=(5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 20), n=20000) -> None:
    torch.set_num_threads(1)
    process, rows = VP(), []
    for name in targets:
        tgt = target(name)
        ref, floor, _, _ = reference(tgt, n)
        score = tgt.score_fn(process)
        for nfe in budgets:
            g = torch.Generator().manual_seed(0)
            x = process.prior((n, *tgt.event_shape), generator=g, dtype=torch.float64)
            runs = {}
            for variant in ("heun", "heun, Euler last", "heun, Euler first and last", "euler"):
                counted = CountEvals(score)
                if variant in ("heun", "euler"):
                    spec = get_sampler(variant)
                    out = spec(counted, process, x, spec.grid_for(process, nfe, score=score), nfe=nfe,
                               generator=torch.Generator().manual_seed(0))
                else:  # 2 (m - 1) - first + 1 (the Euler last step) + 1 (the final denoising) = nfe
                    first = "first" in variant
                    m = (nfe - 2 + first) // 2 + 1
                    ts = uniform_log_snr(process, m)
                    y = heun(counted, process, x, ts[:-1], euler_first=first, denoise=False) if m > 1 else x
                    out = euler(counted, process, y, ts[-2:])
                q = quality(tgt, out, ref, floor)
                runs[variant] = f"{q['gap_z']:+.0f}/{q['sw_ratio']:.2f} [{counted.nfe}]"
                rows.append({"target": name, "budget": nfe, "variant": variant, "nfe": counted.nfe, **q})
            print(f"{name:9s} NFE {nfe:3d}  " + "  ".join(f"{k}: {v}" for k, v in runs.items()), flush=True)
    print(f"wrote {write_json('heun_last_step', {'rows': rows}, Path(__file__).parent / 'results')}")


if __name__ == "__main__":
    main()
