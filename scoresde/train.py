"""One training loop for every data type: DSM loss, warm-up, clipping, EMA, atomic and exactly resumable checkpoints,
DistributedDataParallel across processes and bf16 autocast on CUDA.

Data parallel: launched by torchrun (environment WORLD_SIZE > 1), train() joins the process group (gloo on CPU,
NCCL on CUDA, one GPU per LOCAL_RANK), wraps the network in DistributedDataParallel and gives each process its own
data. `batch` is the *global* batch: it is drawn as `data_streams` independent streams (each with its own
generator, seeded from seed and the stream's index) of batch / data_streams examples, and each process owns
data_streams / world_size of them, accumulating their gradients before the all-reduce. So a run is the same
computation (up to floating-point summation order) on any number of processes dividing data_streams, and a
one-process run with data_streams = 2 reproduces a two-process run. Process 0 alone writes checkpoints (with every
stream's generator state), logs, progress and previews; losses are all-reduced when they are checked for NaN (at
log, eval and checkpoint steps), so every process stops at the same step.

    torchrun --nproc_per_node=2 -m scoresde.cli train --data digits --net unet --conditional --out runs/digits

A run directory holds `checkpoints/step_XXXXXXXX/` (each written to a temporary directory and renamed into place,
so a checkpoint is complete or absent), a `latest` file naming the newest one, and `log.jsonl`. A checkpoint is

    config.json        TrainConfig, network config, step (JSON: nothing executable)
    model.safetensors  weights: "model.*" (trained) and "ema.*" (exponential moving average)
    state.pt           optimiser state, every data stream's generator state and the torch RNG state of every
                       process, loaded with torch.load(weights_only=True)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .losses import (CLASSIFIER_OBJECTIVES, WEIGHTINGS, ImportanceSampler, classifier_loss, dsm_loss,
                     guided_dsm_classifier_loss)
from .nets import build_net, is_classifier
from .processes import VE, VP, DiscreteVP, Process, SubVP
from .score import ScoreFn, score_from_prediction

__all__ = [
    "PROCESSES",
    "make_process",
    "make_data",
    "TrainConfig",
    "TrainResult",
    "train",
    "Model",
    "load_model",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "NonFiniteLossError",
]

PROCESSES = ("vp", "ve", "subvp", "ddpm", "ddpm-cosine")


def make_process(name: str) -> Process:
    """Process by name (CLI and checkpoint configs): vp, ve, subvp, ddpm, ddpm-cosine."""
    table: dict[str, Callable[[], Process]] = {
        "vp": VP,
        "ve": lambda: VE(0.01, 10.0),
        "subvp": SubVP,
        "ddpm": DiscreteVP.linear,
        "ddpm-cosine": DiscreteVP.cosine,
    }
    if name not in table:
        raise ValueError(f"unknown process {name!r}; choose from {', '.join(PROCESSES)}")
    return table[name]()


def make_data(name: str, root: str | None = None, split: str = "train"):
    """Data by name: a 2D toy distribution (toy_data; split ignored, samples are fresh) or an image set's
    "train" or held-out "test" split (toy_data.images).

    Every data object has sample(n, generator=, device=, dtype=, return_labels=) and event_shape.
    """
    import toy_data

    if name in toy_data.REGISTRY:
        return toy_data.get(name)
    if name in toy_data.IMAGE_SETS:
        return toy_data.get_images(name, root, split=split)
    known = list(toy_data.REGISTRY) + list(toy_data.IMAGE_SETS)
    raise ValueError(f"unknown data {name!r}; choose from {', '.join(known)}")


def _sample_batch(data, n: int, generator: torch.Generator, device, labelled: bool) -> tuple[Tensor, Tensor | None]:
    if labelled:
        x, y = data.sample(n, generator=generator, device=device, return_labels=True)
        return x, y
    return data.sample(n, generator=generator, device=device), None


@dataclass
class TrainConfig:
    """Everything a run needs, saved as JSON in every checkpoint."""

    data: str = "ring8"
    data_root: str | None = None
    process: str = "vp"
    net: dict = field(default_factory=lambda: {"name": "mlp"})
    steps: int = 2000
    batch: int = 512
    lr: float = 3e-3
    optimizer: str = "adam"  # adam or adamw
    weight_decay: float = 0.0
    warmup: int = 50
    lr_decay: str = "cosine"  # cosine (to lr_final_ratio * lr) or none
    lr_final_ratio: float = 0.05
    clip: float | None = 1.0
    ema: float = 0.995
    weighting: str = "sigma2"
    snr_gamma: float = 5.0  # gamma of the min_snr weighting
    importance: bool = False
    label_dropout: float = 0.0  # probability of the null label (classifier-free guidance training)
    classifier_objective: str = "ce"  # noise-aware classifiers: "ce", or "guided_dsm" (CE + DSM of base + ∇ log p)
    classifier_base: str | None = None  # guided_dsm: the frozen unconditional score model (run or checkpoint dir)
    dsm_weight: float = 1.0  # guided_dsm: weight of the DSM term
    reference_batch: int = 0  # > 0: the loss's target estimated from the batch plus this many reference points
    widen: float = 1.0  # > 1 (with reference_batch): widened noise, c log-uniform in [1, widen], for part of the batch
    widen_frac: float = 0.5  # the share of the batch drawn with widened noise
    widen_t_min: float = 0.0  # widened noise only for t >= this
    init: str | None = None  # fine-tuning: start from this run's (or checkpoint's) EMA weights, with a fresh optimiser
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 1000
    log_every: int = 50
    keep: int = 2  # checkpoints kept on disk
    data_streams: int = 0  # independent data/noise streams making up each batch; 0: one per process
    amp: bool = False  # bf16 autocast of the forward pass and loss (CUDA, or CPUs with bf16 units such as AMX)

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps!r}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose adam or adamw")
        if self.lr_decay not in ("cosine", "none"):
            raise ValueError(f"unknown lr_decay {self.lr_decay!r}; choose cosine or none")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema decay must lie in [0, 1), got {self.ema!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose from {', '.join(WEIGHTINGS)}")
        if not (self.snr_gamma > 0 and math.isfinite(self.snr_gamma)):
            raise ValueError(f"snr_gamma must be a positive number, got {self.snr_gamma!r}")
        if self.classifier_objective not in CLASSIFIER_OBJECTIVES:
            raise ValueError(f"unknown classifier_objective {self.classifier_objective!r}; choose from "
                             f"{', '.join(CLASSIFIER_OBJECTIVES)}")
        if self.classifier_objective == "guided_dsm" and not self.classifier_base:
            raise ValueError("classifier_objective 'guided_dsm' needs classifier_base, the unconditional score "
                             "model's run directory")
        if not (self.dsm_weight >= 0 and math.isfinite(self.dsm_weight)):
            raise ValueError(f"dsm_weight must be a finite number >= 0, got {self.dsm_weight!r}")
        if not isinstance(self.reference_batch, int) or self.reference_batch < 0:
            raise ValueError(f"reference_batch must be an integer >= 0, got {self.reference_batch!r}")
        if not (self.widen >= 1 and math.isfinite(self.widen)):
            raise ValueError(f"widen must be a finite number >= 1, got {self.widen!r}")
        if self.widen > 1 and not self.reference_batch:
            raise ValueError(f"widen = {self.widen} needs reference_batch > 0 (the widened samples' target is the "
                             "reference estimate of the score)")
        if not 0.0 <= self.widen_frac <= 1.0:
            raise ValueError(f"widen_frac must lie in [0, 1], got {self.widen_frac!r}")
        if not math.isfinite(self.widen_t_min):
            raise ValueError(f"widen_t_min must be a finite number, got {self.widen_t_min!r}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout!r}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip!r}")
        for name in ("warmup", "checkpoint_every", "log_every", "keep"):
            if getattr(self, name) < (1 if name in ("log_every", "keep") else 0):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not isinstance(self.data_streams, int) or self.data_streams < 0:
            raise ValueError(f"data_streams must be an integer >= 0 (0: one per process), got {self.data_streams!r}")
        if self.data_streams and self.batch % self.data_streams:
            raise ValueError(f"batch {self.batch} must be divisible by data_streams {self.data_streams}")
        if self.amp and str(self.device).split(":")[0] not in ("cuda", "cpu"):
            raise ValueError(f"amp (bf16 autocast) is for CUDA and CPU devices; device is {self.device!r} (train "
                             "without --amp)")
        if not isinstance(self.net, dict) or "name" not in self.net:
            raise ValueError(f"net must be a dict with a 'name', got {self.net!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


@dataclass
class TrainResult:
    net: nn.Module
    ema: nn.Module
    process: Process
    config: TrainConfig
    losses: list[float]  # per step, this call's steps only
    step: int
    seconds: float


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to lr_final_ratio * lr (or constant)."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_decay == "none" or cfg.steps <= cfg.warmup:
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.lr_final_ratio + (1 - cfg.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _make_optimizer(cfg: TrainConfig, net: nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _progress(total: int, initial: int, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)


@dataclass
class _Dist:
    """This process's place in a data-parallel run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    created: bool = False  # train() created the process group and destroys it when done

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> tuple[_Dist, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) or already in one; pick this rank's GPU."""
    import torch.distributed as dist

    in_group = dist.is_available() and dist.is_initialized()
    if not in_group and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Dist(), torch.device(device)
    created = False
    if not in_group:
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
        created = True
    ctx = _Dist(dist.get_rank(), dist.get_world_size(), created)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", ctx.rank % torch.cuda.device_count())))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return ctx, dev


def _stream_seed(seed: int, k: int) -> int:
    """Seed of data stream k (stream 0: seed + 1, as in one-stream runs)."""
    return seed + 1 + 1_000_003 * k


def train(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    data=None,
    eval_fn: Callable[[int, nn.Module], dict] | None = None,
    eval_every: int = 0,
    progress: bool | None = None,
    stop_at: int | None = None,
    max_seconds: float | None = None,
) -> TrainResult:
    """Train a score network by DSM; checkpoints go to `out` (None: no files).

    resume=True continues from out's latest checkpoint exactly (same loss sequence as an uninterrupted run).
    `data` overrides make_data(config.data); `eval_fn(step, ema_net) -> dict` runs every `eval_every` steps
    (on process 0) and is logged. `stop_at` ends the call early at that step (as an interruption would);
    `max_seconds` ends it after that much training time (checked every step, or at log steps across processes)
    and writes a checkpoint there. A NaN or infinite loss raises NonFiniteLossError naming the step; the last
    checkpoint written is the last good one (losses are checked before every checkpoint). Under torchrun the
    returned config has data_streams resolved and `losses` are the means over all processes.
    """
    config.validate()
    ctx, device = _init_distributed(config.device)
    try:
        return _train(config, ctx, device, out, resume, data, eval_fn, eval_every, progress, stop_at, max_seconds)
    finally:
        if ctx.created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(config, ctx: _Dist, device, out, resume, data, eval_fn, eval_every, progress, stop_at, max_seconds):
    import torch.distributed as dist

    process = make_process(config.process)
    data = make_data(config.data, config.data_root) if data is None else data
    out = Path(out) if out is not None else None

    torch.manual_seed(config.seed)
    net = build_net(config.net).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = _make_optimizer(config, net)
    step = 0
    streams = config.data_streams
    saved_states: list[Tensor] | None = None
    if config.init is not None and not resume:  # a resumed run's weights come from its own checkpoint
        start = load_checkpoint(config.init)
        theirs = start["ema"].config() if hasattr(start["ema"], "config") else start["config"].net
        mine = net.config() if hasattr(net, "config") else config.net
        if theirs != mine:
            raise ValueError(f"init: {start['path']} holds a different network ({theirs}) than the config asks "
                             f"for ({mine})")
        net.load_state_dict(start["ema"].state_dict())
        ema.load_state_dict(start["ema"].state_dict())
    if resume:
        if out is None:
            raise ValueError("resume needs the run directory (out)")
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise FileNotFoundError(f"nothing to resume: no checkpoint under {out}")
        saved_cfg, step, saved_states = _load_into(ckpt, net, ema, opt, device, ctx.rank)
        if saved_cfg.net != config.net or saved_cfg.process != config.process or saved_cfg.data != config.data:
            raise ValueError(f"resume: {ckpt} was trained with a different data, process or network config")
        if streams and streams != len(saved_states):
            raise ValueError(f"resume: {ckpt} has {len(saved_states)} data streams, the config asks for {streams}")
        streams = len(saved_states)
    streams = streams or ctx.world
    if streams % ctx.world:
        raise ValueError(f"data_streams = {streams} must be a multiple of the number of processes ({ctx.world})")
    if config.batch % streams:
        raise ValueError(f"batch {config.batch} must be divisible by the {streams} data streams")
    config = dataclasses.replace(config, data_streams=streams)
    mine = range(ctx.rank * streams // ctx.world, (ctx.rank + 1) * streams // ctx.world)  # this process's streams
    gens = [torch.Generator(device).manual_seed(_stream_seed(config.seed, k)) for k in mine]
    if saved_states is not None:
        for g, k in zip(gens, mine):
            g.set_state(saved_states[k])
    per_stream = config.batch // streams

    classify = is_classifier(net)
    conditional = getattr(net, "num_classes", 0) > 0
    if conditional and not getattr(data, "num_classes", 0):
        what = "a classifier" if classify else "a class-conditional network"
        raise ValueError(f"{what} needs labelled data; {config.data!r} has no labels")
    if config.widen > 1 and not config.widen_t_min < process.t_max:
        raise ValueError(f"widen_t_min = {config.widen_t_min} leaves no time for widened noise: the process ends at "
                         f"t = {process.t_max}")
    if config.reference_batch and conditional and not classify:
        raise ValueError("reference_batch is for unconditional score networks and noise-aware classifiers, not "
                         "class-conditional score networks")
    if not classify and config.classifier_objective != "ce":
        raise ValueError(f"classifier_objective {config.classifier_objective!r} is for noise-aware classifiers, "
                         f"not {config.net.get('name')!r}")
    base_score = None
    if config.classifier_objective == "guided_dsm":
        if ctx.world > 1:
            raise ValueError("classifier_objective 'guided_dsm' trains in one process: its double backward through "
                             "DistributedDataParallel is not supported; run without torchrun")
        base_score = _base_score(config, net, device)
    null = getattr(net, "num_classes", 0)
    output = getattr(net, "output", "eps")
    importance = ImportanceSampler(process) if config.importance else None
    if importance is not None and config.weighting != "likelihood":
        raise ValueError("importance sampling of t goes with weighting='likelihood'")
    writer = out if ctx.main else None  # only process 0 writes
    if writer is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))

    model = net
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if config.amp else nullcontext()

    def stream_loss(gen: torch.Generator) -> Tensor:
        """Mean loss of one stream's per_stream examples, all randomness from its generator."""
        x0, y = _sample_batch(data, per_stream, gen, device, conditional)
        ref = {}
        if config.reference_batch:
            ref_x, ref_y = _sample_batch(data, config.reference_batch, gen, device, classify)
            ref = dict(reference=ref_x, widen=config.widen, widen_frac=config.widen_frac,
                       widen_t_min=config.widen_t_min, **({"reference_labels": ref_y} if classify else {}))
        with autocast():
            if base_score is not None:
                return guided_dsm_classifier_loss(model, base_score, process, x0, y, dsm_weight=config.dsm_weight,
                                                  generator=gen, **ref).float().mean()
            if classify:
                return classifier_loss(model, process, x0, y, generator=gen, **ref).float().mean()
            kwargs = {}
            if conditional:
                if config.label_dropout > 0:
                    drop = torch.rand(y.shape, generator=gen, device=device) < config.label_dropout
                    y = torch.where(drop, torch.full_like(y, null), y)
                kwargs["labels"] = y
            kwargs.update(ref)
            return dsm_loss(model, process, x0, output=output, weighting=config.weighting, generator=gen,
                            snr_gamma=config.snr_gamma,
                            importance=importance, **kwargs).float().mean()

    params = [p for p in net.parameters()]
    ema_params = [p for p in ema.parameters()]
    bar = _progress(config.steps, step, progress) if ctx.main else None
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    pending: list[Tensor] = []  # losses not yet checked for finiteness (no per-step host sync on accelerators)
    losses: list[float] = []
    first_pending = step
    last_log_t, last_log_step = time.perf_counter(), step
    t_start = time.perf_counter()
    log_f = open(out / "log.jsonl", "a") if writer is not None else None
    saved_at = -1

    def flush() -> None:
        nonlocal pending, first_pending
        if not pending:
            return
        stacked = torch.stack(pending)
        if ctx.world > 1:  # every process sees the same mean loss, so all stop at the same step
            dist.all_reduce(stacked)
            stacked /= ctx.world
        vals = stacked.tolist()
        for k, v in enumerate(vals):
            if not math.isfinite(v):
                raise NonFiniteLossError(
                    f"loss is {v} at step {first_pending + k}; training stopped"
                    + (f", the last good checkpoint is {latest_checkpoint(out)}" if out is not None else "")
                )
        losses.extend(vals)
        pending, first_pending = [], first_pending + len(vals)

    def out_of_time() -> bool:
        if max_seconds is None:
            return False
        late = time.perf_counter() - t_start > max_seconds
        if ctx.world == 1:
            return late
        if step % config.log_every and step != end:
            return False  # across processes: decided together at log steps (one small all-reduce)
        flag = torch.tensor([float(late)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def checkpoint() -> None:
        nonlocal saved_at
        flush()
        states = [g.get_state() for g in gens]
        rngs = [torch.get_rng_state()]
        if ctx.world > 1:
            gathered: list = [None] * ctx.world
            dist.all_gather_object(gathered, (states, rngs[0]))
            states = [s for part, _ in gathered for s in part]
            rngs = [r for _, r in gathered]
        if writer is not None:
            save_checkpoint(out, config, net, ema, opt, states, step, torch_rng=rngs)
        if ctx.world > 1:
            dist.barrier()  # the checkpoint exists when any process returns
        saved_at = step

    try:
        while step < end:
            for group in opt.param_groups:
                group["lr"] = _lr_at(config, step)
            opt.zero_grad(set_to_none=True)
            loss = None
            for k, gen in enumerate(gens):  # gradient accumulation over this process's streams
                sync = ctx.world == 1 or k == len(gens) - 1
                with nullcontext() if sync else model.no_sync():
                    part = stream_loss(gen)
                    (part / len(gens) if len(gens) > 1 else part).backward()
                loss = part.detach() if loss is None else loss + part.detach()
            if len(gens) > 1:
                loss = loss / len(gens)
            if config.clip is not None:
                nn.utils.clip_grad_norm_(params, config.clip, foreach=True)
            opt.step()
            with torch.no_grad():
                # EMA with warm-up (decay grows from 0 to config.ema), so early averages are not dominated by init
                decay = min(config.ema, (1 + step) / (10 + step))
                torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
            pending.append(loss)
            step += 1
            if bar is not None:
                bar.update(1)
            if step % config.log_every == 0 or step == end:
                flush()
                now = time.perf_counter()
                rate = (step - last_log_step) / max(now - last_log_t, 1e-9)
                last_log_t, last_log_step = now, step
                recent = losses[-config.log_every:]
                mean_loss = sum(recent) / max(1, len(recent))
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}", steps_s=f"{rate:.0f}")
                if log_f is not None:
                    log_f.write(json.dumps({"step": step, "loss": mean_loss, "lr": _lr_at(config, step - 1),
                                            "steps_per_s": rate}) + "\n")
                    log_f.flush()  # readable as it grows (tail -f), not only when the buffer fills
            if eval_fn is not None and eval_every and step % eval_every == 0:
                flush()
                if ctx.main:
                    metrics = eval_fn(step, ema)
                    if log_f is not None:
                        log_f.write(json.dumps({"step": step, "eval": metrics}) + "\n")
                        log_f.flush()
            if out is not None and (step == end or (config.checkpoint_every and step % config.checkpoint_every == 0)):
                checkpoint()
            if out_of_time():
                if out is not None and saved_at != step:
                    checkpoint()
                break
        flush()
    finally:
        if bar is not None:
            bar.close()
        if log_f is not None:
            log_f.close()
    return TrainResult(net, ema, process, config, losses, step, time.perf_counter() - t_start)


def _base_score(config: TrainConfig, net: nn.Module, device) -> ScoreFn:
    """The frozen base score of the guided_dsm classifier objective, checked against the classifier's run."""
    path = str(config.classifier_base)
    base = load_model(path, device=device)  # FileNotFoundError naming the path when it holds no checkpoint
    if is_classifier(base.net):
        raise ValueError(f"classifier_base {path!r} is a classifier; it must be a score model")
    if base.config.process != config.process:
        raise ValueError(f"classifier_base {path!r} was trained on process {base.config.process!r}, the "
                         f"classifier on {config.process!r}")
    if tuple(base.event_shape) != tuple(net.event_shape):
        raise ValueError(f"classifier_base {path!r} models shape {tuple(base.event_shape)}, the classifier "
                         f"{tuple(net.event_shape)}")
    return base.score_fn()


# -- checkpoints ---------------------------------------------------------------------------------------------------
def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def latest_checkpoint(run: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run (or the path itself if it is a checkpoint)."""
    run = Path(run)
    if (run / "model.safetensors").exists():
        return run
    ckdir = run / "checkpoints"
    latest = run / "latest"
    if latest.exists():
        cand = ckdir / latest.read_text().strip()
        if (cand / "model.safetensors").exists():
            return cand
    done = sorted(p for p in ckdir.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")) \
        if ckdir.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(run: str | Path, config: TrainConfig, net: nn.Module, ema: nn.Module,
                    opt: torch.optim.Optimizer, generators: list, step: int,
                    torch_rng: list[Tensor] | None = None) -> Path:
    """Write checkpoints/step_XXXXXXXX atomically (temp directory + rename), point `latest` at it, prune old ones.

    `generators`: the data streams' generators (or their states), in stream order; `torch_rng`: each process's
    torch RNG state (default: this process's).
    """
    from safetensors.torch import save_file

    run = Path(run)
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = ckdir / (name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()})
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"step": str(step)})
    meta = {"step": step, "config": dataclasses.asdict(config), "net": net.config() if hasattr(net, "config")
            else config.net, "format": "scoresde-checkpoint-1"}
    (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    states = [g.get_state() if isinstance(g, torch.Generator) else g for g in generators]
    rngs = [torch.get_rng_state()] if torch_rng is None else list(torch_rng)
    state = {"step": step, "optimizer": opt.state_dict(), "generators": states, "torch_rng": rngs}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save(state, tmp / "state.pt")
    for f in tmp.iterdir():  # make the files durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    final = ckdir / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _atomic_write_bytes(run / "latest", name.encode())
    old = sorted(p for p in ckdir.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for p in old[:-config.keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _read_meta(ckpt: Path) -> dict:
    path = ckpt / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {ckpt} has no config.json")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt checkpoint config {path}: {e}") from None
    if not isinstance(meta, dict) or "config" not in meta or "net" not in meta or "step" not in meta:
        raise ValueError(f"corrupt checkpoint config {path}: missing config, net or step")
    return meta


def _read_weights(ckpt: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = ckpt / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {ckpt} has no model.safetensors")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"corrupt or truncated checkpoint weights {path}: {e}") from None


def _split(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_state_dict(module: nn.Module, sd: dict[str, Tensor], what: str, path: Path) -> None:
    try:
        module.load_state_dict(sd)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "mismatch"
        raise ValueError(f"checkpoint {path}: {what} weights do not fit the network config: {first}") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (run directory or step directory) without executing pickled code.

    Returns {"config": TrainConfig, "net": ..., "ema": ..., "process": Process, "step": int, "path": Path}.
    """
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint found at {path}")
    meta = _read_meta(ckpt)
    config = TrainConfig.from_dict(meta["config"])
    process = make_process(config.process)
    net = build_net(meta["net"])
    ema = build_net(meta["net"])
    tensors = _read_weights(ckpt)
    _load_state_dict(net, _split(tensors, "model."), "model", ckpt)
    _load_state_dict(ema, _split(tensors, "ema."), "EMA", ckpt)
    net.to(device).eval()
    ema.to(device).eval().requires_grad_(False)
    return {"config": config, "net": net, "ema": ema, "process": process, "step": int(meta["step"]), "path": ckpt}


def _load_into(ckpt: Path, net, ema, opt, device, rank: int = 0) -> tuple[TrainConfig, int, list[Tensor]]:
    """Restore weights, optimiser and this process's torch RNG; -> (config, step, every stream's generator state)."""
    meta = _read_meta(ckpt)
    tensors = _read_weights(ckpt)
    _load_state_dict(net, _split(tensors, "model."), "model", ckpt)
    _load_state_dict(ema, _split(tensors, "ema."), "EMA", ckpt)
    path = ckpt / "state.pt"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {ckpt} has no state.pt (optimiser and RNG state) to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"corrupt or truncated resume state {path}: {type(e).__name__}: {e}") from None
    if int(state.get("step", -1)) != int(meta["step"]):
        raise ValueError(f"checkpoint {ckpt}: state.pt is for step {state.get('step')}, config for {meta['step']}")
    opt.load_state_dict(state["optimizer"])
    states = state["generators"] if "generators" in state else [state["generator"]]  # older: one stream
    rngs = state["torch_rng"] if isinstance(state["torch_rng"], list) else [state["torch_rng"]]
    torch.set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    if "cuda_rng" in state and torch.cuda.is_available() and rank == 0:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return TrainConfig.from_dict(meta["config"]), int(meta["step"]), list(states)


# -- trained models as score functions ------------------------------------------------------------------------------
@dataclass
class Model:
    """A trained network with its process: `score_fn(labels)` is what samplers, guidance and likelihood take."""

    net: nn.Module
    process: Process
    config: TrainConfig
    step: int

    @property
    def num_classes(self) -> int:
        return getattr(self.net, "num_classes", 0)

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (2,) or (C, H, W)."""
        return tuple(self.net.event_shape)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def log_prob_fn(self, labels: Tensor | int) -> Callable[[Tensor, Tensor], Tensor]:
        """A noise-aware classifier as (x, t) -> log p_t(labels | x), shape (B,), for guidance.classifier."""
        if not is_classifier(self.net):
            raise ValueError("log_prob_fn needs a noise-aware classifier checkpoint (trained with --net classifier)")
        if isinstance(labels, int) and not 0 <= labels < self.num_classes:
            raise ValueError(f"label {labels!r} is outside [0, {self.num_classes - 1}]")
        net, process = self.net, self.process
        dtype = next(net.parameters()).dtype

        def log_prob(x: Tensor, t: Tensor) -> Tensor:
            logits = net(x.to(dtype), process.sigma(t).to(dtype)).log_softmax(-1).to(x.dtype)
            y = torch.full((x.shape[0],), labels, device=x.device) if isinstance(labels, int) else labels
            return logits.gather(1, y.long()[:, None])[:, 0]

        return log_prob

    def score_fn(self, labels: Tensor | int | None = None) -> ScoreFn:
        """The network as a ScoreFn; labels=None is the unconditional (null-label) score of a conditional net."""
        if is_classifier(self.net):
            raise ValueError("this checkpoint is a classifier, not a score model (use it with --guidance classifier)")
        if labels is not None and self.num_classes == 0:
            raise ValueError("this model is unconditional; it takes no label")
        if isinstance(labels, int) and not 0 <= labels < self.num_classes:
            raise ValueError(f"label {labels!r} is outside [0, {self.num_classes - 1}]")
        net = self.net
        dtype = next(net.parameters()).dtype
        kwargs = {"labels": labels} if self.num_classes else {}

        def call(x: Tensor, sigma: Tensor, **kw) -> Tensor:
            # no graph unless the caller differentiates through x (likelihood divergence, guidance)
            with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
                return net(x.to(dtype), sigma.to(dtype), **kw).to(x.dtype)

        return score_from_prediction(call, self.process, getattr(net, "output", "eps"), **kwargs)


def load_model(path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> Model:
    """Load a checkpoint's EMA (default) or trained weights as a Model."""
    ck = load_checkpoint(path, device)
    return Model(ck["ema"] if ema else ck["net"], ck["process"], ck["config"], ck["step"])
