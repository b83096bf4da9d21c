"""Issue 20: which sampler, how many steps, on a trained digits model: the smallest NFE at which each scoresde
sampler (through compare_images, what `scoresde compare --checkpoint RUN` runs) reaches 99 % class accuracy and a
Fréchet distance within 1.5x its floor, beside diffusers' schedulers driving the same network in diffusers' loop.

    python -m benchmarks.digits_samplers --checkpoint runs/digits_f32
    python -m benchmarks.digits_samplers --checkpoint runs/digits_f32 --side diffusers --name digits_samplers_peers

Both sides sample the same class-conditional model (CFG w = 1: labels 0..9 in turn), n images per run, seed 0, and
are measured by the same evaluator (evaluation.digits.digits_metrics: the cached digits CNN's accuracy, the Fréchet
distance on its features to the 359 held-out test digits, the floor of n real train digits). The diffusers side
builds each scheduler from the model's DDPM betas (trained_betas, timestep_spacing "trailing": integer timesteps,
the last at alpha_bar_1) and feeds it the network's eps prediction at t = (k + 1) / N (scoresde.score.predict); NFE
= its number of timesteps. For each sampler the budgets rise until one passes (the table's cell) or run out (">").
Writes benchmarks/results/<--name>.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from scoresde.evaluation.digits import digits_metrics, load_digits_classifier
from scoresde.evaluation.images import compare_images
from scoresde.score import CountEvals, predict
from scoresde.training import load_model

from ._common import write_json

SAMPLERS = "ancestral,dpm_solver_pp_sde,ddim,dpm_solver_pp,unipc,euler,heun"
SCHEDULERS = {  # diffusers scheduler -> its options (no clipping; the last step to alpha_bar = 1 where it has one)
    "DDPMScheduler": {"clip_sample": False},
    "DDIMScheduler": {"clip_sample": False, "set_alpha_to_one": True},
    "DPMSolverMultistepScheduler": {"algorithm_type": "dpmsolver++", "solver_order": 2},
    "UniPCMultistepScheduler": {},
    "EulerDiscreteScheduler": {},
}


def passes(record: dict, accuracy: float = 0.99, fd_ratio: float = 1.5) -> bool:
    return record["accuracy"] >= accuracy and record["fd_ratio"] <= fd_ratio


@torch.no_grad()
def diffusers_run(model, name: str, steps: int, n: int, seed: int, classifier) -> dict:
    """n digits from diffusers' `name` scheduler loop on the model's eps network, measured by digits_metrics."""
    import diffusers

    process = model.process
    sched = getattr(diffusers, name)(num_train_timesteps=process.N, trained_betas=process.betas.numpy(),
                                     timestep_spacing="trailing", **SCHEDULERS[name])
    sched.set_timesteps(steps)
    labels = torch.arange(n) % model.num_classes
    eps = predict(model.score_fn(labels), process, "eps")
    g = torch.Generator().manual_seed(seed)
    kw = {"generator": g} if "generator" in sched.step.__code__.co_varnames else {}
    t0 = time.perf_counter()
    x = torch.randn(n, *model.event_shape, generator=g) * sched.init_noise_sigma
    for k in sched.timesteps:
        t = torch.full((n,), (float(k) + 1) / process.N, dtype=torch.float64)
        x = sched.step(eps(sched.scale_model_input(x, k), t), k, x, return_dict=False, **kw)[0]
    seconds = time.perf_counter() - t0
    return {"sampler": name, "nfe": len(sched.timesteps), "seconds": seconds, "seconds_per_image": seconds / n,
            **digits_metrics(x, labels, classifier=classifier, seed=seed)}


@torch.no_grad()
def trailing_run(model, name: str, nfe: int, n: int, seed: int, classifier) -> dict:
    """n digits from a scoresde sampler on diffusers' grid: the `nfe` "trailing" timesteps, t = (k + 1) / N from
    t = 1 down (interop.grid_from_timesteps), and the final Tweedie step there; measured by digits_metrics."""
    import diffusers

    from scoresde import interop
    from scoresde.samplers.registry import get_sampler

    process = model.process
    sched = diffusers.DDIMScheduler(num_train_timesteps=process.N, trained_betas=process.betas.numpy(),
                                    timestep_spacing="trailing")
    sched.set_timesteps(nfe)
    ts = interop.grid_from_timesteps(process, sched.timesteps)
    labels = torch.arange(n) % model.num_classes
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    counted = CountEvals(model.score_fn(labels))
    x = get_sampler(name)(counted, process, torch.randn(n, *model.event_shape, generator=g), ts, generator=g,
                          progress=False)
    seconds = time.perf_counter() - t0
    return {"sampler": f"{name} (trailing grid)", "nfe": counted.nfe, "seconds": seconds, "seconds_per_image": seconds / n,
            **digits_metrics(x, labels, classifier=classifier, seed=seed)}


def ladder(run, budgets: list[int]) -> list[dict]:
    """run(nfe) -> record at rising budgets until one passes."""
    records = []
    for nfe in budgets:
        try:
            records.append(run(nfe))
        except ValueError as e:  # a budget the sampler refuses (heun below 15)
            print(f"  skip NFE {nfe}: {e}", flush=True)
            continue
        r = records[-1]
        print(f"  {r['sampler']:28s} NFE {r['nfe']:4d} accuracy {r['accuracy']:.4f} FD/floor {r['fd_ratio']:.2f} "
              f"{r['seconds_per_image'] * 1e3:.2f} ms/image{'  PASS' if passes(r) else ''}", flush=True)
        if passes(r):
            break
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a scoresde digits run (benchmarks.train_digits --keep)")
    p.add_argument("--nfe", default="5,10,15,20,30,50,100,200", help="rising budgets")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--side", default="both", choices=["both", "scoresde", "diffusers", "trailing"],
                   help="trailing: scoresde's samplers on diffusers' trailing timesteps instead of their default grids")
    p.add_argument("--samplers", default=SAMPLERS, help="scoresde's samplers (--side trailing: one evaluation per "
                   "grid time, e.g. ancestral,ddim,dpm_solver_pp,unipc,euler)")
    p.add_argument("--schedulers", default=",".join(SCHEDULERS))
    p.add_argument("--name", default="digits_samplers", help="results file name")
    args = p.parse_args()
    budgets = [int(b) for b in args.nfe.split(",")]
    model, clf = load_model(args.checkpoint), load_digits_classifier()
    rows: dict[str, list[dict]] = {}
    if args.side in ("both", "scoresde"):
        for name in args.samplers.split(","):
            def run(nfe, name=name):
                result = compare_images(model, [name], [nfe], n=args.n, seed=args.seed, progress=False)
                if not result.records:  # a budget the sampler refuses (heun below 15)
                    raise ValueError("; ".join(result.skipped))
                return {**result.records[0], "sampler": name}
            rows[name] = ladder(run, budgets)
    if args.side == "trailing":
        for name in args.samplers.split(","):
            rows[f"{name} (trailing grid)"] = ladder(
                lambda nfe, name=name: trailing_run(model, name, nfe, args.n, args.seed, clf), budgets)
    if args.side in ("both", "diffusers"):
        for name in args.schedulers.split(","):
            rows[name] = ladder(lambda nfe, name=name: diffusers_run(model, name, nfe, args.n, args.seed, clf), budgets)
    print(f"\n{args.checkpoint} (step {model.step}), n = {args.n}: smallest NFE with accuracy >= 0.99 and FD <= 1.5 "
          f"floor")
    print(f"{'sampler':28s} {'NFE':>5s} {'accuracy':>8s} {'FD/floor':>8s} {'ms/image':>8s}")
    for name, records in rows.items():
        r = records[-1]
        cell = f"{r['nfe']:5d}" if passes(r) else f">{r['nfe']:4d}"
        print(f"{name:28s} {cell} {r['accuracy']:8.4f} {r['fd_ratio']:8.2f} {r['seconds_per_image'] * 1e3:8.2f}")
    print(f"wrote {write_json(args.name, {'config': vars(args), 'step': model.step, 'rows': rows})}")


if __name__ == "__main__":
    main()
