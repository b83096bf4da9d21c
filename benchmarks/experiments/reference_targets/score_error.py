"""Where a learned ring8 score is wrong, by noise level: the diagnosis behind the study's reference phase.

    python -m benchmarks.experiments.reference_targets.score_error     # the README's table (runs of guidance.py)
    python -m benchmarks.experiments.reference_targets.score_error --runs runs/a runs/b --label 3 --name mine

The default runs are the fine-tuned unconditional model of `python -m benchmarks.experiments.reference_targets.guidance`
and the three 3000-step phases from it: plain DSM (ctrl_plain), the reference target (ctrl_stf) and the reference
target with widened noise (the study's model).

For each run and each t, draws x_t from the diffused exact conditional of --label (n points, x0 from class `label`,
the same points for every run) and reports the eps-weighted squared error E ||sigma(t) (s_theta(x_t) - s(x_t))||²
against the exact score: the unconditional score of the mixture for an unconditional network, the conditional score
of `label` for a class-conditional one (evaluated with that label). This is the DSM loss's excess over its minimum,
restricted to the region classifier-guided samples of `label` pass through. A second table scores the same error on
points drawn uniformly from the square |x_i| < 0.6 inside ring8's ring, at t <= 0.2: a region where p_t is small (so
DSM hardly trains there) but that stray sampler trajectories cross; the exact score there points out to the ring.
Writes results/<--name>.json in this folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import toy_data
from benchmarks._common import write_json
from scoresde.training import Model, load_model


RESULTS = Path(__file__).resolve().parent / "results"

TIMES = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
CENTRE_TIMES = (0.03, 0.05, 0.08, 0.1, 0.15, 0.2)
RUNS = ("runs/reference_targets/uncond_20000_256_ft5000_b4096", "runs/reference_targets/ctrl_plain",
        "runs/reference_targets/ctrl_stf", "runs/reference_targets/uncond_20000_256_ft5000_b4096_ref3000_r8192_w16")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=list(RUNS))
    p.add_argument("--label", type=int, default=3)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="guidance_score_error_controls")
    args = p.parse_args()
    target = toy_data.load("ring8")
    if not 0 <= args.label < target.num_classes:
        raise SystemExit(f"--label must lie in [0, {target.num_classes}), got {args.label}")
    conditional = target.conditional(args.label)
    models = [load_model(r) for r in args.runs]
    process = models[0].process

    def error(m: Model, x: torch.Tensor, t: float) -> float:
        """E ||sigma (s_theta - s)||² at time t on the points x, s the exact score the network should match."""
        tt = torch.full((x.shape[0],), t, dtype=torch.float64)
        score, exact = ((m.score_fn(args.label), conditional.score(x, process, tt)) if m.num_classes
                        else (m.score_fn(), target.score(x, process, tt)))
        with torch.no_grad():
            s = score(x.float(), tt.float()).double()
        return float((process.sigma(t) * (s - exact)).square().sum(1).mean())

    g = torch.Generator().manual_seed(args.seed)
    x0 = conditional.sample(args.n, generator=g).double()
    errors: dict[str, list[float]] = {r: [] for r in args.runs}
    sigmas = [float(process.sigma(t)) for t in TIMES]
    for t in TIMES:
        xt = process.perturb(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        for run, m in zip(args.runs, models):
            errors[run].append(error(m, xt, t))
    centre = (torch.rand(args.n, 2, generator=g, dtype=torch.float64) - 0.5) * 1.2
    centre_errors: dict[str, list[float]] = {r: [] for r in args.runs}
    centre_size = []
    for t in CENTRE_TIMES:
        for run, m in zip(args.runs, models):
            centre_errors[run].append(error(m, centre, t))
        tt = torch.full((args.n,), t, dtype=torch.float64)
        centre_size.append(float((process.sigma(t) * target.score(centre, process, tt)).square().sum(1).mean()))
    names = [Path(r).name for r in args.runs]
    print(f"E ||sigma (s_theta - s)||² on x_t from class {args.label} (n = {args.n})")
    w = max(10, *(len(n) for n in names))
    print(f"{'t':>6s} {'sigma':>7s} " + " ".join(f"{n:>{w}s}" for n in names))
    for i, t in enumerate(TIMES):
        print(f"{t:6.3f} {sigmas[i]:7.4f} " + " ".join(f"{errors[r][i]:{w}.2e}" for r in args.runs))
    print(f"\nthe same in the square |x_i| < 0.6 inside the ring (uniform, n = {args.n}); 'size' is "
          "E ||sigma s||² of the exact unconditional score there")
    print(f"{'t':>6s} {'size':>7s} " + " ".join(f"{n:>{w}s}" for n in names))
    for i, t in enumerate(CENTRE_TIMES):
        print(f"{t:6.3f} {centre_size[i]:7.2f} " + " ".join(f"{centre_errors[r][i]:{w}.3g}" for r in args.runs))
    path = write_json(args.name, {"config": vars(args), "t": list(TIMES),
                                  "sigma": sigmas, "errors": errors, "centre_t": list(CENTRE_TIMES),
                                  "centre_size": centre_size, "centre_errors": centre_errors}, results=RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
