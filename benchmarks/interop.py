"""Issue 20: scoresde's samplers against diffusers' schedulers driving the same eps network (a UNet2DModel through
scoresde.interop), seconds per step side by side; and what training the digits model costs each.

    python -m benchmarks.interop                         # loop overhead: zero model, digits UNet, 32 x 32 UNet
    python -m benchmarks.interop --models zero --repeats 15
    python -m benchmarks.interop --train-steps 20        # + training throughput, scoresde's recipe vs diffusers'
    python -m benchmarks.interop --models "" --peer-steps 20000   # diffusers' recipe to the 99 % digits target

Loop: each pair walks the same timesteps (the scheduler's, 20 by default; scoresde's grid from
interop.grid_from_timesteps), both from the first network evaluation to the return, divided by the number of
evaluations (scoresde: its steps + the final Tweedie evaluation = the scheduler's timesteps). diffusers runs its own
loop (scale_model_input, the network, step); scoresde runs the network through the interop adapter (timestep,
alpha, sigma, prediction conversion). "zero" is a network that returns zeros: the loops alone. Runs are interleaved
repeat by repeat, so machine noise hits them alike; medians. The network's own time per call is measured apart, so
overhead = seconds per step - network seconds per call.

Train (--train-steps): images per second of one training step at batch 128 on the digits, scoresde's recipe
(its 24-channel UNet, DDPM-cosine, v-prediction, Adam, EMA; the RESULTS.md digits model) against diffusers'
standard one (examples/unconditional_image_generation: UNet2DModel with class embeddings, DDPMScheduler 1000 linear,
eps MSE, AdamW 1e-4, EMA), both float32. Writes benchmarks/results/interop.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from scoresde import interop
from scoresde.samplers import ancestral, ddim, dpm_solver_pp, euler, unipc

from ._common import write_json

# scoresde sampler, diffusers scheduler, its options (no clipping; last step to alpha_bar = 1 where there is one)
PAIRS = [
    (ancestral, "DDPMScheduler", {"timestep_spacing": "trailing", "clip_sample": False}),
    (ddim, "DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False, "set_alpha_to_one": True}),
    (dpm_solver_pp, "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    (unipc, "UniPCMultistepScheduler", {}),
    (euler, "EulerDiscreteScheduler", {}),
]
MODELS = {  # name -> (event shape, batch, UNet2DModel options or None for the zero network)
    "zero": ((1, 8, 8), 64, None),
    "unet8": ((1, 8, 8), 64, {"block_out_channels": (32, 64), "down_block_types": ("DownBlock2D", "DownBlock2D"),
                              "up_block_types": ("UpBlock2D", "UpBlock2D")}),
    "unet32": ((3, 32, 32), 4, {"block_out_channels": (32, 64), "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
                                "up_block_types": ("AttnUpBlock2D", "UpBlock2D")}),
}


class ZeroUNet(nn.Module):
    """A UNet2DModel stand-in that costs nothing: eps = 0."""

    def __init__(self, shape):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # device and dtype for the adapter
        self.config = {"in_channels": shape[0], "sample_size": shape[1]}

    def forward(self, x, timestep, return_dict=False, **kw):
        return (torch.zeros_like(x),)


def make_net(name: str) -> nn.Module:
    import diffusers

    shape, _, options = MODELS[name]
    if options is None:
        return ZeroUNet(shape)
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=shape[1], in_channels=shape[0], out_channels=shape[0],
                                 layers_per_block=1, **options).eval().requires_grad_(False)


def _timed_eps(net, mark: list):
    def eps(x, k):
        if not mark:
            mark.append(time.perf_counter())
        return net(x, k, return_dict=False)[0]
    return eps


def time_diffusers(net, sched, x: torch.Tensor, steps: int) -> float:
    """Seconds per evaluation of diffusers' own loop, from the first network evaluation."""
    sched.set_timesteps(steps)
    g, mark = torch.Generator().manual_seed(1), []
    eps = _timed_eps(net, mark)
    kw = {"generator": g} if "generator" in sched.step.__code__.co_varnames else {}
    x = x * sched.init_noise_sigma
    for k in sched.timesteps:
        x = sched.step(eps(sched.scale_model_input(x, k), k), k, x, return_dict=False, **kw)[0]
    return (time.perf_counter() - mark[0]) / len(sched.timesteps)


def time_scoresde(sampler, net, sched, x: torch.Tensor, steps: int) -> float:
    """Seconds per evaluation of the scoresde sampler on the scheduler's timesteps, from the first evaluation."""
    sched.set_timesteps(steps)
    model = interop.from_diffusers(net, sched)
    ts = interop.grid_from_timesteps(model.process, sched.timesteps)
    score, mark, calls = model.score_fn(), [], [0]

    def timed(x, t):
        if not mark:
            mark.append(time.perf_counter())
        calls[0] += 1
        return score(x, t)

    sampler(timed, model.process, x, ts, generator=torch.Generator().manual_seed(1), progress=False)
    return (time.perf_counter() - mark[0]) / calls[0]


def net_seconds(net, x: torch.Tensor, calls: int = 20) -> float:
    k = torch.full((x.shape[0],), 500.0)
    net(x, k)
    t0 = time.perf_counter()
    for _ in range(calls):
        net(x, k)
    return (time.perf_counter() - t0) / calls


@torch.no_grad()
def loop_table(models: list[str], steps: int, repeats: int) -> list[dict]:
    import diffusers

    rows = []
    for name in models:
        shape, batch, _ = MODELS[name]
        net = make_net(name)
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
        scheds = {cls: getattr(diffusers, cls)(num_train_timesteps=1000, **opts) for _, cls, opts in PAIRS}
        times: dict = {(cls, side): [] for _, cls, _ in PAIRS for side in ("scoresde", "diffusers")}
        for _ in range(repeats + 1):  # the first round warms up and is dropped
            for sampler, cls, _ in PAIRS:
                times[cls, "scoresde"].append(time_scoresde(sampler, net, scheds[cls], x, steps))
                times[cls, "diffusers"].append(time_diffusers(net, scheds[cls], x, steps))
        per_call = net_seconds(net, x) if MODELS[name][2] is not None else 0.0
        for sampler, cls, _ in PAIRS:
            ours, theirs = (statistics.median(times[cls, s][1:]) for s in ("scoresde", "diffusers"))
            rows.append({"model": name, "batch": batch, "scoresde": sampler.__name__, "diffusers": cls,
                         "net_s": per_call, "scoresde_s": ours, "diffusers_s": theirs, "ratio": ours / theirs,
                         "scoresde_overhead_s": ours - per_call, "diffusers_overhead_s": theirs - per_call})
    return rows


def _train_step_rate(step, batch: int, steps: int) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


PEER_NETS = {  # UNet2DModel shapes for the peer recipe, class-conditional (num_class_embeds = 11)
    # the "equal parameter count": 396 697 parameters against scoresde's 410 017 (24 channels, (1, 2), one
    # block per level like scoresde's; attention at the second level as in the standard recipe)
    "equal": {"layers_per_block": 1, "block_out_channels": (24, 48), "norm_num_groups": 8},
    # train_unconditional's shape scaled to 8 x 8: 1 003 137 parameters
    "standard": {"layers_per_block": 2, "block_out_channels": (32, 64)},
}


def peer_recipe(batch: int, total_steps: int, seed: int = 0, net: str = "equal"):
    """diffusers' standard recipe (examples/unconditional_image_generation/train_unconditional.py defaults: DDPM
    1000 linear betas, eps MSE, AdamW lr 1e-4 betas (0.95, 0.999) weight decay 1e-6, 500 warm-up steps then cosine,
    EMA with decay 1 - (1 + step)^-3/4 up to 0.9999), a UNet2DModel of PEER_NETS[net] with attention at the
    second level, class-conditional by num_class_embeds = 11 (label 10: the CFG null class,
    dropped in for 10 % of the labels). Returns (net, ema, scheduler, step())."""
    import copy

    import diffusers
    import toy_data

    data = toy_data.load("digits", split="train")
    torch.manual_seed(seed)
    shape = PEER_NETS[net]
    net = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, num_class_embeds=11,
                                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                up_block_types=("AttnUpBlock2D", "UpBlock2D"), **shape)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr = diffusers.optimization.get_cosine_schedule_with_warmup(opt, 500, max(total_steps, 501))
    g, count = torch.Generator().manual_seed(seed), [0]

    def step():
        x0, y = data.sample(batch, generator=g, return_labels=True)
        y = torch.where(torch.rand(batch, generator=g) < 0.1, torch.full_like(y, 10), y)
        noise = torch.randn(x0.shape, generator=g)
        k = torch.randint(0, 1000, (batch,), generator=g)
        pred = net(sched.add_noise(x0, noise, k), k, class_labels=y, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr.step()
        count[0] += 1
        decay = min(0.9999, 1 - (1 + count[0]) ** -0.75)
        with torch.no_grad():
            for e, p in zip(ema.parameters(), net.parameters()):
                e.lerp_(p, 1 - decay)

    return net, ema, sched, step


def scoresde_recipe(batch: int, seed: int = 0):
    """scoresde's digits recipe (benchmarks.train_digits defaults, float32): UNet 24 channels (1, 2), DDPM-cosine,
    v-prediction, label dropout 0.1, Adam 2e-3. Returns (net, step())."""
    import toy_data
    from scoresde.losses import DSMLoss
    from scoresde.nets import build_net, net_config
    from scoresde.processes import from_config

    data = toy_data.load("digits", split="train")
    torch.manual_seed(seed)
    net = build_net(net_config("unet", (1, 8, 8), num_classes=10, width=24, channel_mult=[1, 2], prediction="v"))
    process, loss = from_config("ddpm-cosine"), DSMLoss(label_dropout=0.1)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)

    def step():
        x0, y = data.sample(batch, generator=g, return_labels=True)
        value = loss(net, process, x0, y, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return net, step


def train_table(steps: int, batch: int = 128) -> list[dict]:
    """Images per second of one training step (with its data draw), scoresde's recipe vs diffusers'."""
    ours, step_ours = scoresde_recipe(batch)
    peer, _, _, step_peer = peer_recipe(batch, steps)
    rows = []
    for name, net, step in (("scoresde", ours, step_ours), ("diffusers", peer, step_peer)):
        rows.append({"recipe": name, "parameters": sum(p.numel() for p in net.parameters()),
                     "images_per_s": _train_step_rate(step, batch, steps)})
    return rows


def peer_target(steps: int, n: int, out: str, batch: int = 128, evals: int = 1, net: str = "equal") -> list[dict]:
    """Train diffusers' recipe for `steps` steps (its cosine lr schedule over those steps), save it (save_pretrained:
    unet/, scheduler/) and measure its EMA weights as scoresde measures its own digits models: evaluate_digits
    through interop (ancestral NFE 100, CFG w = 1), at `evals` evenly spaced points (the last on n samples, the
    others on n // 2). Training seconds (wall and this process's CPU) exclude the evaluations."""
    from pathlib import Path

    from scoresde.evaluation.digits import evaluate_digits

    _, ema, sched, step = peer_recipe(batch, steps, net=net)
    rows, wall, cpu = [], 0.0, 0.0
    marks = {round(steps * (i + 1) / evals) for i in range(evals)}
    for k in range(1, steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
        if k in marks:
            ema.save_pretrained(Path(out) / "unet")
            sched.save_pretrained(Path(out) / "scheduler")
            model = interop.from_diffusers(out, null_label=10)
            res = evaluate_digits(model, n=n if k == steps else n // 2, sampler="ancestral", nfe=100)
            rows.append({"net": net, "parameters": sum(p.numel() for p in ema.parameters()), "steps": k,
                         "batch": batch, "train_s": wall, "train_cpu_s": cpu,
                         "images_per_s": k * batch / wall,
                         **{key: res[key] for key in ("accuracy", "fd", "fd_floor", "fd_ratio", "n")}})
            print(f"diffusers' recipe, step {k}/{steps}, {wall:.0f} s ({cpu:.0f} s CPU): accuracy "
                  f"{res['accuracy']:.4f}, FD / floor {res['fd_ratio']:.2f} (n = {res['n']})", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="scheduler timesteps (= network evaluations) per run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=0, help="also time this many training steps per recipe")
    p.add_argument("--peer-steps", type=int, default=0, help="also train diffusers' recipe this many steps and "
                   "measure its accuracy and FD (the 99 %% digits target)")
    p.add_argument("--peer-n", type=int, default=1000, help="samples for --peer-steps' evaluation")
    p.add_argument("--peer-out", default="runs/diffusers_digits", help="where --peer-steps saves its model")
    p.add_argument("--peer-net", default="equal", choices=list(PEER_NETS), help="the peer's UNet2DModel: equal "
                   "parameter count (default) or the standard recipe's shape")
    p.add_argument("--peer-evals", type=int, default=1, help="evaluations along --peer-steps (the last on --peer-n)")
    p.add_argument("--name", default="interop", help="results file name")
    p.add_argument("--models", default="zero,unet8,unet32", help=f"comma-separated: {', '.join(MODELS)}")
    args = p.parse_args()
    rows = loop_table([m for m in args.models.split(",") if m], args.steps, args.repeats)
    print(f"seconds per step (one network evaluation), {args.steps} timesteps, median of {args.repeats}")
    print(f"{'model':7s} {'batch':>5s} {'scoresde':14s} {'diffusers':28s} {'net ms':>7s} {'ours ms':>8s} "
          f"{'theirs ms':>9s} {'ratio':>6s} {'ours ovh ms':>11s} {'theirs ovh ms':>13s}")
    for r in rows:
        print(f"{r['model']:7s} {r['batch']:5d} {r['scoresde']:14s} {r['diffusers']:28s} {1e3 * r['net_s']:7.3f} "
              f"{1e3 * r['scoresde_s']:8.3f} {1e3 * r['diffusers_s']:9.3f} {r['ratio']:6.2f} "
              f"{1e3 * r['scoresde_overhead_s']:11.3f} {1e3 * r['diffusers_overhead_s']:13.3f}")
    train = train_table(args.train_steps) if args.train_steps else []
    for r in train:
        print(f"train {r['recipe']:10s} {r['parameters']:9d} parameters {r['images_per_s']:8.1f} images/s")
    peer = peer_target(args.peer_steps, args.peer_n, args.peer_out, evals=args.peer_evals,
                       net=args.peer_net) if args.peer_steps else []
    payload = {"steps": args.steps, "repeats": args.repeats, "loop": rows, "train": train, "peer_target": peer}
    print(f"wrote {write_json(args.name, payload)}")


if __name__ == "__main__":
    main()
