"""Study (issue 17): extrapolate the noise prediction instead of the data prediction (UniPC's and DPM-Solver's
noise-prediction forms, which their papers use for unconditional sampling).

    python -m benchmarks.experiments.low_nfe.eps_pred [--nfe 8,10,15]

In lam = log(alpha / sigma) the probability-flow ODE is exactly integrable in its linear part in two ways:
data prediction, x_t = (sigma_t / sigma_s) x_s + sigma_t ∫ e^u D(u) du (the library's samplers), or noise
prediction, x_t = (alpha_t / alpha_s) x_s - alpha_t ∫ e^-u eps(u) du. Each extrapolates its prediction by the
Lagrange polynomial through the last `order` nodes (lower orders first) and, with the corrector, redoes the step with
the new node (UniPC's corrector, no extra evaluation); weights by 32-point Gauss-Legendre. The data form with the
corrector is the library's unipc (checked: the same cells). NFE = steps + 1 (the final Tweedie step; after the
corrector, x0 = D_n + (x_n corrected - x_n) / alpha_n, as unipc). Nothing here is in the library.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks._common import sampler, write_json
from benchmarks.experiments.low_nfe._study import HERE, REACHABLE, judge, prior, setting
from benchmarks.experiments.low_nfe.ems import GL_W, GL_X, _lagrange
from scoresde.processes import VP
from scoresde.schedules import scaled_log_snr
from scoresde.score import convert, tweedie


TRANSFORMS = {"lam": lambda v: v, "1/r": np.exp, "r": lambda v: np.exp(-np.asarray(v))}


def _step(form: str, nodes: list, lam_s: float, lam_t: float, a_s, a_t, s_s, s_t, var: str = "lam"):
    u = 0.5 * (lam_t - lam_s) * GL_X + 0.5 * (lam_t + lam_s)
    half = 0.5 * (lam_t - lam_s)
    if form == "data":
        a, kernel = s_t / s_s, s_t * np.exp(u) * half
    else:
        a, kernel = a_t / a_s, -a_t * np.exp(-u) * half
    f = TRANSFORMS[var]
    return a, [float(np.sum(GL_W * kernel * b)) for b in _lagrange(list(f(np.array(nodes))), f(u))]


def multistep(score, process, x, ts, form: str = "eps", order: int = 2, corrector: bool = True, var: str = "lam"):
    """The sampler of the module docstring."""
    al, si = process.alpha(ts).tolist(), process.sigma(ts).tolist()
    lam = [float(np.log(a / s)) for a, s in zip(al, si)]
    n = len(ts) - 1
    tt = [torch.full((x.shape[0],), float(t), dtype=x.dtype) for t in ts]
    ps: list = []  # the predictions (D or eps), most recent first
    x_prev = x
    for i in range(n + 1):
        sc = score(x, tt[i])
        d = tweedie(x, sc, al[i], si[i])
        eps = convert(sc, x, x.new_tensor(al[i]), x.new_tensor(si[i]), src="score", dst="eps")
        ps.insert(0, d if form == "data" else eps)
        del ps[order + 1:]
        xc = x
        if corrector and i > 0:
            k = min(order, i)
            a, w = _step(form, [lam[i - j] for j in range(k + 1)], lam[i - 1], lam[i], al[i - 1], al[i],
                         si[i - 1], si[i], var)
            xc = x_prev * a + sum(wj * pj for wj, pj in zip(w, ps))
        if i == n:
            return d + (xc - x) / al[i]
        x_prev = xc
        k = min(order, i + 1)
        a, w = _step(form, [lam[i - j] for j in range(k)], lam[i], lam[i + 1], al[i], al[i + 1], si[i], si[i + 1],
                     var)
        x = xc * a + sum(wj * pj for wj, pj in zip(w, ps))
    return x


VARIANTS = {  # name -> (form, order, corrector[, the variable the prediction is a polynomial in])
    "data2c": ("data", 2, True), "eps2c": ("eps", 2, True), "eps3c": ("eps", 3, True), "eps2": ("eps", 2, False),
    "eps1": ("eps", 1, False),
    "data2c-r": ("data", 2, True, "r"), "data2c-1/r": ("data", 2, True, "1/r"), "eps2c-r": ("eps", 2, True, "r"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default=REACHABLE)
    ap.add_argument("--nfe", default="8,10,15")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", default="eps_pred")
    args = ap.parse_args()
    torch.set_num_threads(1)
    process, rows = VP(), []
    uni = sampler("unipc")
    for tname in args.targets.split(","):
        st = setting(tname, process, args.n)
        for b in [int(v) for v in args.nfe.split(",")]:
            ts = scaled_log_snr(process, uni.steps_for(b), st.scale)
            cells = []
            for vname in ["unipc"] + args.variants.split(","):
                x, _ = prior(st, process, args.n)
                out = uni(st.score, process, x, ts, nfe=b) if vname == "unipc" else \
                    multistep(st.score, process, x, ts, *VARIANTS[vname])
                q, cell = judge(st, out, vname)
                cells.append(cell)
                rows.append({"target": tname, "nfe": b, "sampler": vname, **q})
            print(f"{tname:10s} NFE {b:3d}  " + "  ".join(cells), flush=True)
    write_json(args.json, {"rows": rows}, results=HERE)


if __name__ == "__main__":
    main()
