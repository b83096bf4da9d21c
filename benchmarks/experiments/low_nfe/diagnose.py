"""Study (issue 17): what the low-NFE log-density gap is made of.

    python -m benchmarks.experiments.low_nfe.diagnose [--targets ring8,grid25 --nfe 10,15,30]

unipc on its default grid against the exact ODE map (dopri5, the same prior samples, n = 20 000): the mean
log-density change per sample (nats, and in units of the gap's standard error), the share of samples that end in
another component than the exact map's (the component of highest density), their part of the change, and, over the
rest, the ratio of the mean squared whitened distance to their component's centre (sampler / exact map).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import sampler, write_json
from benchmarks.experiments.low_nfe._study import HERE
from benchmarks.robustness import ode_map, run, target
from scoresde.processes import VP


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="ring8,ring8x16,grid25,grid25x16,aniso,anisox4,mix5,mix16")
    ap.add_argument("--nfe", default="10,15,30")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", default="diagnose")
    args = ap.parse_args()
    torch.set_num_threads(1)
    process, rows, n = VP(), [], args.n
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    print("| target | NFE | mean log-density change (se) | samples in another component | their part | "
          "within-component variance ratio |\n|---|---|---|---|---|---|")
    for tname in args.targets.split(","):
        tg = target(tname)
        exact = ode_map(tg, process, n)
        k = tg._components(exact, one, zero)[0].argmax(1)
        mu, u, lam = tg.means[k], tg.eigvecs[k], tg.eigvals[k]

        def white(v):
            return torch.einsum("nij,ni->nj", u, v) / lam.sqrt()

        z_exact, lp_exact = white(exact - mu), tg.log_prob(exact)
        se = float(lp_exact.std() / n**0.5)
        for nfe in [int(v) for v in args.nfe.split(",")]:
            out, _, _ = run(sampler("unipc"), tg, process, nfe, n)
            d = tg.log_prob(out) - lp_exact
            moved = tg._components(out, one, zero)[0].argmax(1) != k
            z = white(out - mu)
            ratio = float((z[~moved] ** 2).sum(1).mean() / (z_exact[~moved] ** 2).sum(1).mean())
            r = dict(target=tname, nfe=nfe, dlogp=float(d.mean()), se=se, moved=float(moved.double().mean()),
                     moved_part=float(d[moved].sum() / n), var_ratio=ratio)
            rows.append(r)
            print(f"| {tname} | {nfe} | {r['dlogp']:+.3f} ({r['dlogp'] / se:+.0f} se) | {100 * r['moved']:.2f} % | "
                  f"{r['moved_part']:+.3f} | {ratio:.3f} |", flush=True)
    write_json(args.json, {"rows": rows}, results=HERE)


if __name__ == "__main__":
    main()
