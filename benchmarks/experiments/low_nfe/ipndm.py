"""Study (issue 17): iPNDM (Zhang & Chen 2023, DEIS's improved PNDM; strong at NFE 5-10 in AMED's and others'
comparisons) beside unipc at NFE <= 15?

    python -m benchmarks.experiments.low_nfe.ipndm [--targets ring8,aniso --nfe 8,10,15]

iPNDM: Adams-Bashforth of order up to 4 with fixed coefficients (lower orders on the first steps) on EDM's ODE
dy/dr = (y - D(y, r)) / r in y = x / alpha, r = sigma / alpha; iPNDM-v takes the variable step sizes into account
(here: order <= 3, the Adams-Bashforth weights of a variable grid). Both end with Tweedie's x0 at t_min like every
sampler here. Grids: scaled_log_snr (the default) and karras (rho 7, iPNDM's usual). Nothing here is in the library.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import sampler, write_json
from benchmarks.experiments.low_nfe._study import HERE, judge, prior, setting
from benchmarks.robustness import TARGETS
from scoresde import CountEvals
from scoresde.processes import VP
from scoresde.schedules import karras, scaled_log_snr
from scoresde.score import tweedie

AB = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def _ab_weights(r: list, i: int, order: int) -> list:
    """Adams-Bashforth weights on the variable grid r for the step r[i] -> r[i+1] through r[i], r[i-1], ...:
    the integrals over the step of the Lagrange basis polynomials (numerically, 64-point Gauss-Legendre)."""
    import numpy as np

    nodes = [r[i - j] for j in range(order)]
    xg, wg = np.polynomial.legendre.leggauss(64)
    a, b = r[i], r[i + 1]
    u = 0.5 * (b - a) * xg + 0.5 * (a + b)
    out = []
    for j in range(order):
        basis = np.ones_like(u)
        for k in range(order):
            if k != j:
                basis *= (u - nodes[k]) / (nodes[j] - nodes[k])
        out.append(float(0.5 * (b - a) * (wg * basis).sum()))
    return out


def ipndm(score, process, x, ts, *, order: int = 4, variable: bool = False):
    alpha, sigma = process.alpha(ts).tolist(), process.sigma(ts).tolist()
    r = [s / a for a, s in zip(alpha, sigma)]
    y = x / alpha[0]
    ds = []
    for i in range(len(ts) - 1):
        t = torch.full((x.shape[0],), float(ts[i]), dtype=x.dtype)
        d0 = tweedie(y * alpha[i], score(y * alpha[i], t), alpha[i], sigma[i])
        ds.insert(0, (y - d0) / r[i])
        del ds[order:]
        k = len(ds)
        if variable:
            w = _ab_weights(r, i, min(k, 3))
            y = y + sum(wj * dj for wj, dj in zip(w, ds))
        else:
            y = y + (r[i + 1] - r[i]) * sum(c * dj for c, dj in zip(AB[k], ds))
    t = torch.full((x.shape[0],), float(ts[-1]), dtype=x.dtype)
    return tweedie(y * alpha[-1], score(y * alpha[-1], t), alpha[-1], sigma[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default=",".join(t for t in TARGETS if not t.endswith("q")))
    ap.add_argument("--nfe", default="8,10,15")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", default="ipndm")
    args = ap.parse_args()
    torch.set_num_threads(1)
    process, rows = VP(), []
    unipc = sampler("unipc")
    for tname in args.targets.split(","):
        st = setting(tname, process, args.n)
        big = st.scale
        for b in [int(v) for v in args.nfe.split(",")]:
            cells = []
            runs = [("unipc", lambda s, x, ts: unipc(s, process, x, ts), "scaled"),
                    ("ipndm", lambda s, x, ts: ipndm(s, process, x, ts), "scaled"),
                    ("ipndm", lambda s, x, ts: ipndm(s, process, x, ts), "karras"),
                    ("ipndm_v", lambda s, x, ts: ipndm(s, process, x, ts, variable=True), "scaled"),
                    ("ipndm_v", lambda s, x, ts: ipndm(s, process, x, ts, variable=True), "karras")]
            for name, fn, grid in runs:
                ts = scaled_log_snr(process, b - 1, big) if grid == "scaled" else karras(process, b - 1)
                counted = CountEvals(st.score)
                x, _ = prior(st, process, args.n)
                q, cell = judge(st, fn(counted, x, ts), f"{name}/{grid}")
                assert counted.nfe == b, (name, counted.nfe)
                cells.append(cell)
                rows.append({"target": tname, "nfe": b, "sampler": name, "grid": grid, **q})
            print(f"{tname:10s} NFE {b:3d}  " + "  ".join(cells), flush=True)
    write_json(args.json, {"rows": rows}, results=HERE)


if __name__ == "__main__":
    main()
