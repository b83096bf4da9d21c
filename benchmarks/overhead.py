"""Per-step loop overhead of our samplers against the peers' same algorithm, with a zero-cost score.

    python -m benchmarks.overhead                    # batch 1 and 100 000, 50 evaluations, 15 interleaved repeats
    python -m benchmarks.overhead --batches 1 --repeats 31

Each run is timed from its first score evaluation to its return (schedule set-up excluded, as for the peers),
divided by the measured number of evaluations. The peers run on a raw zero model (their loop alone: no adapter);
ours on `lambda x, t: zeros_like(x)` (its loop, with its conversions, alone). Runs of all samplers are interleaved
repeat by repeat, so machine noise hits them alike; medians are reported. Writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scoresde import DiscreteVP
from scoresde.samplers.registry import SAMPLERS

from . import _peers as peers
from ._common import write_json

# ours -> the peers' implementations of the same algorithm
PAIRS = {
    "euler": [("k-diffusion", "euler"), ("diffusers", "euler")],
    "heun": [("k-diffusion", "heun"), ("diffusers", "heun")],
    "dpm_solver_pp": [("k-diffusion", "dpmpp_2m"), ("diffusers", "dpmpp_2m")],
    "dpm_solver_pp_sde": [("k-diffusion", "dpmpp_3m_sde")],
    "ddim": [("diffusers", "ddim")],
    "ancestral": [("diffusers", "ddpm"), ("k-diffusion", "euler_ancestral")],
}


def time_ours(name: str, process, batch: int, nfe: int, dtype=torch.float32) -> float:
    """Seconds per score evaluation of our sampler, timed from its first score evaluation."""
    spec = SAMPLERS[name]
    ts = spec.grid_for(process, nfe, data_scale=1.0) if spec.grid == "scaled_log_snr" else spec.grid_for(process, nfe)
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    g = torch.Generator().manual_seed(1)
    state = {"n": 0, "t0": 0.0}

    def zero(x, t):
        if state["n"] == 0:
            state["t0"] = time.perf_counter()
        state["n"] += 1
        return torch.zeros_like(x)

    spec(zero, process, x, ts, nfe=nfe, generator=g)
    return (time.perf_counter() - state["t0"]) / state["n"]


def time_peer(lib: str, name: str, process, batch: int, nfe: int, dtype=torch.float32) -> float:
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    g = torch.Generator().manual_seed(1)
    mark: list[float] = []
    run = peers.run_kdiffusion if lib == "k-diffusion" else peers.run_diffusers
    _, n = run(name, None, process, x, nfe, generator=g, on_first_eval=lambda: mark.append(time.perf_counter()))
    return (time.perf_counter() - mark[0]) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,100000")
    ap.add_argument("--nfe", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    process = DiscreteVP.linear(1000)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        jobs = {("scoresde", ours): (lambda o=ours: time_ours(o, process, batch, args.nfe)) for ours in PAIRS}
        for ours, peer_list in PAIRS.items():
            for lib, peer in peer_list:
                jobs[(lib, peer)] = lambda lib=lib, peer=peer: time_peer(lib, peer, process, batch, args.nfe)
        samples = {k: [] for k in jobs}
        for f in jobs.values():  # warm up
            f()
        for _ in range(args.repeats):
            for k, f in jobs.items():
                samples[k].append(f())
        med = {k: statistics.median(v) for k, v in samples.items()}
        print(f"\nbatch {batch}: microseconds per step (median of {args.repeats}, zero-cost score, "
              f"{torch.get_num_threads()} thread(s))")
        print(f"{'ours':15s} {'us':>8s}   {'peer':28s} {'us':>8s}  {'ours/peer':>9s}")
        for ours, peer_list in PAIRS.items():
            for lib, peer in peer_list:
                o, p = med[("scoresde", ours)] * 1e6, med[(lib, peer)] * 1e6
                rows.append({"batch": batch, "ours": ours, "ours_us": o, "peer": f"{lib}:{peer}", "peer_us": p,
                             "ratio": o / p})
                print(f"{ours:15s} {o:8.1f}   {lib + ' ' + peer:28s} {p:8.1f}  {o / p:9.2f}")
    path = write_json("overhead", {"nfe": args.nfe, "repeats": args.repeats, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
