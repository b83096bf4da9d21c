"""Study (issue 17): a statistic of the model's linear part, in the spirit of DPM-Solver-v3's empirical model
statistics (Zheng et al. 2023), to remove the within-component contraction lag found in section 10.

    python -m benchmarks.experiments.low_nfe.ems [--nfe 8,10,15 --orders 2,3]

Write the data prediction as D(x, lam) = l(lam) x / alpha + N(x, lam) with l a scalar per log-SNR (lam = log alpha /
sigma): l = alpha tr(dD/dx) / d, averaged over pilot trajectories (for Gaussian data of variance w², l = alpha² w² /
(alpha² w² + sigma²) exactly, and N is then constant along a trajectory). The probability-flow ODE
dx/dlam = (d log sigma / dlam) x + alpha D becomes dx/dlam = (d log sigma / dlam + l) x + alpha N, whose linear part
is integrated exactly:
x_t = (sigma_t / sigma_s) e^{L(lam_t) - L(lam_s)} x_s + sigma_t ∫ e^{u + L(lam_t) - L(u)} N(u) du, L = ∫ l.
N is interpolated through the last `order` nodes (Adams-Bashforth, lower orders first) and, with the corrector,
redone with the new node (UniPC's corrector; no extra evaluation). With l = 0 it is exactly the library's
unipc. The statistic: 1000 pilot prior samples (PILOT_SEED) solved by unipc on a uniform log-SNR grid of `--fine`
steps; at each node one Rademacher probe of tr(dD/dx) by a forward difference (two evaluations as written). Cost:
3 x fine evaluations of the pilot batch, once per model (it serves every NFE and grid). Nothing here is in the library.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks._common import sampler, write_json
from benchmarks.experiments.low_nfe._study import HERE, REACHABLE, judge, prior, setting
from benchmarks.experiments.low_nfe.dp_grid import fine_trajectory
from scoresde.processes import VP
from scoresde.schedules import scaled_log_snr
from scoresde.score import tweedie

GL_X, GL_W = np.polynomial.legendre.leggauss(32)


def linear_part(score, process, pilots: torch.Tensor, fine: int, seed: int = 0):
    """(lam nodes ascending, l at them): l = alpha tr(dD/dx) / d along the pilots' fine unipc trajectories."""
    ts, xs, _ = fine_trajectory(score, process, pilots, fine)
    g = torch.Generator().manual_seed(seed)
    lams, ls = [], []
    d = pilots[0].numel()
    for m in range(fine + 1):
        t = ts[m]
        a, s = float(process.alpha(t.reshape(1))), float(process.sigma(t.reshape(1)))
        tt = torch.full((pilots.shape[0],), float(t), dtype=pilots.dtype)
        x = xs[m]
        v = torch.randint(0, 2, x.shape, generator=g, dtype=x.dtype) * 2 - 1
        delta = 1e-4 * s
        d0 = tweedie(x, score(x, tt), a, s)
        d1 = tweedie(x + delta * v, score(x + delta * v, tt), a, s)
        tr = ((d1 - d0) * v).flatten(1).sum(1).mean() / delta
        lams.append(float(np.log(a / s)))
        ls.append(a * float(tr) / d)
    order = np.argsort(lams)
    return np.array(lams)[order], np.array(ls)[order]


class Linear:
    """l(lam) by linear interpolation (constant beyond the nodes) and L = ∫ l from the first node."""

    def __init__(self, lam: np.ndarray, l: np.ndarray):
        self.lam, self.l = lam, l
        self.fine = np.linspace(lam[0] - 50, lam[-1] + 50, 40001)
        lf = np.interp(self.fine, lam, l)
        self.cum = np.concatenate([[0.0], np.cumsum(0.5 * (lf[1:] + lf[:-1]) * np.diff(self.fine))])

    def __call__(self, u):
        return np.interp(u, self.lam, self.l)

    def integral(self, u):
        return np.interp(u, self.fine, self.cum)


def _lagrange(nodes: list, u: np.ndarray) -> list:
    out = []
    for j, nj in enumerate(nodes):
        b = np.ones_like(u)
        for i, ni in enumerate(nodes):
            if i != j:
                b = b * (u - ni) / (nj - ni)
        out.append(b)
    return out


def _step(lin: Linear, nodes: list, lam_s: float, lam_t: float, sigma_s: float, sigma_t: float):
    """(A, [w_j]): x_t = A x_s + sum_j w_j N_j for N interpolated on `nodes`."""
    u = 0.5 * (lam_t - lam_s) * GL_X + 0.5 * (lam_t + lam_s)
    kernel = sigma_t * np.exp(u + lin.integral(lam_t) - lin.integral(u)) * 0.5 * (lam_t - lam_s)
    a = sigma_t / sigma_s * float(np.exp(lin.integral(lam_t) - lin.integral(lam_s)))
    return a, [float(np.sum(GL_W * kernel * b)) for b in _lagrange(nodes, u)]


def ems_unipc(score, process, x, ts, lin: Linear, order: int = 2, corrector: bool = True):
    """The sampler described in the module docstring; NFE = steps + 1 (the final Tweedie step)."""
    a_ = process.alpha(ts).tolist()
    s_ = process.sigma(ts).tolist()
    lam = [float(np.log(a / s)) for a, s in zip(a_, s_)]
    n = len(ts) - 1
    tt = [torch.full((x.shape[0],), float(t), dtype=x.dtype) for t in ts]
    ns: list = []  # N_i, N_{i-1}, ... most recent first
    x_prev = x
    for i in range(n + 1):
        d = tweedie(x, score(x, tt[i]), a_[i], s_[i])
        li = float(lin(lam[i]))
        ns.insert(0, d - li * x / a_[i])
        del ns[order + 1:]
        if corrector and i > 0:
            k = min(order, i)
            a, w = _step(lin, [lam[i - j] for j in range(k + 1)], lam[i - 1], lam[i], s_[i - 1], s_[i])
            xc = x_prev * a + sum(wj * nj for wj, nj in zip(w, ns))
        else:
            xc = x
        if i == n:  # the final Tweedie step at the corrected point (dD/dx ≈ 1 / alpha at t_min, as in unipc)
            return d + (xc - x) / a_[i]
        x_prev = xc
        k = min(order, i + 1)
        a, w = _step(lin, [lam[i - j] for j in range(k)], lam[i], lam[i + 1], s_[i], s_[i + 1])
        x = xc * a + sum(wj * nj for wj, nj in zip(w, ns))
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default=REACHABLE)
    ap.add_argument("--nfe", default="8,10,15")
    ap.add_argument("--orders", default="2,3")
    ap.add_argument("--fine", type=int, default=200)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", default="ems")
    args = ap.parse_args()
    torch.set_num_threads(1)
    process, rows = VP(), []
    uni = sampler("unipc")
    for tname in args.targets.split(","):
        st = setting(tname, process, args.n)
        score = st.score
        t0 = time.perf_counter()
        lin = Linear(*linear_part(score, process, st.pilots, args.fine))
        stat_s = time.perf_counter() - t0
        for b in [int(v) for v in args.nfe.split(",")]:
            steps = uni.steps_for(b)
            ts = scaled_log_snr(process, steps, st.scale)
            cells = []
            variants = [("unipc", None, 2)] + [(f"ems{o}", lin, o) for o in map(int, args.orders.split(","))] + \
                [("zero-l", Linear(lin.lam, 0 * lin.l), 2)]
            for vname, l_, o in variants:
                x, _ = prior(st, process, args.n)
                out = uni(score, process, x, ts, nfe=b) if l_ is None else ems_unipc(score, process, x, ts, l_, o)
                q, cell = judge(st, out, vname)
                cells.append(cell)
                rows.append({"target": tname, "nfe": b, "sampler": vname, "stat_seconds": stat_s, **q})
            print(f"{tname:10s} NFE {b:3d}  " + "  ".join(cells), flush=True)
        print(f"  {tname}: statistic {stat_s:.1f} s; l at lam = -4..6: " +
              " ".join(f"{lin(u):.2f}" for u in range(-4, 7, 2)), flush=True)
    write_json(args.json, {"rows": rows}, results=HERE)


if __name__ == "__main__":
    main()
