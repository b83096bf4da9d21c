"""Training-step throughput of the digits UNet (forward + backward + Adam), float32 versus bf16 autocast.

    python -m benchmarks.unet_speed                 # one thread, batch 128, channels 16 / 24 / 32
    python -m benchmarks.unet_speed --threads 2 --batch 256 --device cuda

Interleaves float32 and bf16 steps of each network (so machine noise hits both alike) and prints images/s and the
ratio; writes benchmarks/results/unet_speed.json. bf16 autocast is fast on GPUs and on CPUs with AMX / AVX512-BF16.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scoresde.nets import build_net

from ._common import write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", default="16,24,32")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 8, 8, generator=g).to(dev)
    sigma = (torch.rand(args.batch, generator=g) + 0.05).to(dev)
    labels = torch.randint(0, 10, (args.batch,), generator=g).to(dev)
    rows = []
    print(f"{'channels':>8s} {'params':>8s} {'fp32 img/s':>11s} {'bf16 img/s':>11s} {'ratio':>6s}")
    for ch in (int(c) for c in args.channels.split(",")):
        net = build_net({"name": "unet", "in_channels": 1, "image_size": 8, "channels": ch, "channel_mult": [1, 2],
                         "num_res_blocks": 1, "prediction": "v", "num_classes": 10, "sigma_data": 0.6}).to(dev)
        opt = torch.optim.Adam(net.parameters(), 1e-4)

        def step(amp: bool) -> None:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                loss = (net(x, sigma, labels=labels).float() - x).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        rates: dict[bool, list[float]] = {False: [], True: []}
        for amp in (False, True):  # warm-up
            for _ in range(3):
                step(amp)
        for _ in range(args.repeats):
            for amp in (False, True):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(amp)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                rates[amp].append(args.batch * args.steps / (time.perf_counter() - t0))
        fp32, bf16 = statistics.median(rates[False]), statistics.median(rates[True])
        params = sum(q.numel() for q in net.parameters())
        rows.append({"channels": ch, "parameters": params, "fp32_images_per_s": fp32, "bf16_images_per_s": bf16})
        print(f"{ch:8d} {params:8d} {fp32:11.0f} {bf16:11.0f} {bf16 / fp32:6.2f}", flush=True)
    path = write_json("unet_speed", {"config": vars(args), "device": str(dev), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
