"""Issue 4 target: a DSM training step costs at most 1.05x a bare forward + backward + optimiser step of the same
network on the same batch.

    python -m benchmarks.train_overhead

Bare: out = net(x, sigma); mse(out, target); backward; Adam step, on a fixed batch with fixed sigma. DSM: the
same plus what dsm_loss adds (t ~ U, eps ~ N, alpha(t), sigma(t), x_t) on the same fixed clean batch. Also
measured alone: DSM's additions with the network replaced by the identity (a noise-free estimate of the
overhead, as a fraction of the bare step). Reported, not part of the target: the trainer's full step (EMA update,
gradient clipping, loss bookkeeping).
Interleaved repeats, medians, one thread; writes benchmarks/results/train_overhead.json.
"""

from __future__ import annotations

import statistics
import time

import torch

import toy_data
from scoresde import VP
from scoresde.losses import dsm_loss
from scoresde.nets import MLPScoreNet

from ._common import write_json


def bench(batch: int, width: int, depth: int, reps: int = 41, inner: int = 10) -> dict:
    torch.manual_seed(0)
    process = VP()
    net = MLPScoreNet(width=width, depth=depth)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    params = list(net.parameters())
    ema = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(0)
    x0 = toy_data.load("ring8").sample(batch, generator=g)
    sigma = torch.rand(batch, generator=g) * 0.9 + 0.05
    target = torch.randn(batch, 2, generator=g)

    def bare():
        loss = (net(x0, sigma) - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def dsm():
        loss = dsm_loss(net, process, x0, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def full():  # what train() does per step besides data sampling and the learning-rate schedule
        loss = dsm_loss(net, process, x0, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 0.005)
        return loss.detach()

    def prep():  # DSM's additions alone: t, eps, alpha, sigma, x_t (the network replaced by the identity)
        return dsm_loss(lambda x, s: x, process, x0, generator=g)

    fns = {"bare": bare, "dsm": dsm, "trainer_step": full, "dsm_extra": prep}
    times = {k: [] for k in fns}
    for f in fns.values():
        for _ in range(5):
            f()
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            times[k].append((time.perf_counter() - t0) / inner)
    med = {k: statistics.median(v) for k, v in times.items()}
    # the ratio per interleaved repeat, then its median: robust to the machine's load drifting between repeats
    ratio = statistics.median(d / b for d, b in zip(times["dsm"], times["bare"]))
    full_ratio = statistics.median(d / b for d, b in zip(times["trainer_step"], times["bare"]))
    return {"batch": batch, "width": width, "depth": depth, "bare_ms": med["bare"] * 1e3, "dsm_ms": med["dsm"] * 1e3,
            "dsm_extra_us": med["dsm_extra"] * 1e6, "extra_over_bare": med["dsm_extra"] / med["bare"],
            "trainer_step_ms": med["trainer_step"] * 1e3, "dsm_over_bare": ratio, "trainer_over_bare": full_ratio}


def main() -> None:
    torch.set_num_threads(1)
    rows = [bench(*c) for c in ((512, 64, 3), (512, 128, 3), (4096, 256, 4))]
    print(f"{'batch':>6s} {'width':>5s} {'depth':>5s} {'bare ms':>8s} {'DSM ms':>8s} {'DSM/bare':>9s} "
          f"{'trainer ms':>10s} {'trainer/bare':>12s} {'DSM extra us':>12s} {'extra/bare':>10s}")
    for r in rows:
        print(f"{r['batch']:6d} {r['width']:5d} {r['depth']:5d} {r['bare_ms']:8.3f} {r['dsm_ms']:8.3f} "
              f"{r['dsm_over_bare']:9.3f} {r['trainer_step_ms']:10.3f} {r['trainer_over_bare']:12.3f} "
              f"{r['dsm_extra_us']:12.1f} {r['extra_over_bare']:10.3f}")
    print(f"wrote {write_json('train_overhead', {'rows': rows})}")


if __name__ == "__main__":
    main()
