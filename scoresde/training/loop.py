"""One training loop for every data type and loss: warm-up, clipping, EMA, atomic and exactly resumable checkpoints,
DistributedDataParallel across processes and bf16 autocast.

The loop knows no dataset names and no command line: data is any object with `sample(n, generator=, device=,
return_labels=)` and `event_shape` (default `toy_data.load(config.data)`), and the loss any `losses.Loss` (default
DSM for score networks, cross-entropy for noise-aware classifiers, built from the config's loss fields).

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
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..losses import ClassifierLoss, DSMLoss, Loss
from ..nets import build_net, is_classifier
from ..processes import Process, from_config
from .checkpoint import latest_checkpoint, load_checkpoint, load_training_state, save_checkpoint
from .config import TrainConfig

__all__ = ["train", "TrainResult", "NonFiniteLossError"]


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


def train(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    data: Any = None,
    loss: Loss | None = None,
    resume: bool = False,
    eval_fn: Callable[[int, nn.Module], dict] | None = None,
    eval_every: int = 0,
    progress: bool | None = None,
    stop_at: int | None = None,
    max_seconds: float | None = None,
) -> TrainResult:
    """Train config.net on `data` by `loss`; checkpoints go to `out` (None: no files).

    `data` defaults to toy_data.load(config.data) (its "train" split); `loss` to DSMLoss of the config's weighting,
    snr_gamma, importance and label_dropout (ClassifierLoss for a noise-aware classifier). resume=True continues
    from out's latest checkpoint exactly (same loss sequence as an uninterrupted run, given the same loss).
    `eval_fn(step, ema_net) -> dict` runs every `eval_every` steps (on process 0) and is logged. `stop_at` ends the
    call early at that step (as an interruption would); `max_seconds` ends it after that much training time
    (checked every step, or at log steps across processes) and writes a checkpoint there. A NaN or infinite loss
    raises NonFiniteLossError naming the step; the last checkpoint written is the last good one (losses are
    checked before every checkpoint). Under torchrun the returned config has data_streams resolved and `losses`
    are the means over all processes.
    """
    config.validate()
    ctx, device = _init_distributed(config.device)
    try:
        run = _setup(config, ctx, device, None if out is None else Path(out), resume, data, loss)
        return _Loop(run, eval_fn, eval_every, progress, stop_at, max_seconds).train()
    finally:
        if ctx.created:
            import torch.distributed as dist

            dist.destroy_process_group()


# -- set-up ---------------------------------------------------------------------------------------------------------
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


@dataclass
class _Run:
    """Everything one train() call works with, after set-up."""

    config: TrainConfig  # data_streams resolved
    ctx: _Dist
    device: torch.device
    out: Path | None
    process: Process
    data: Any
    loss: Loss
    net: nn.Module
    ema: nn.Module
    model: nn.Module  # net, or net inside DistributedDataParallel
    opt: torch.optim.Optimizer
    gens: list[torch.Generator]  # this process's data streams
    step: int
    labelled: bool  # the net takes labels: batches are drawn with them

    @property
    def per_stream(self) -> int:
        return self.config.batch // self.config.data_streams


def _setup(config: TrainConfig, ctx: _Dist, device: torch.device, out: Path | None, resume: bool, data: Any,
           loss: Loss | None) -> _Run:
    """Process, data, network, EMA, optimiser (from init or a checkpoint), data streams and loss, checked."""
    import toy_data

    process = from_config(config.process)
    data = toy_data.load(config.data, root=config.data_root, split="train") if data is None else data
    torch.manual_seed(config.seed)
    net = build_net(config.net).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = (torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam)(
        net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, states = 0, None
    if config.init is not None and not resume:  # a resumed run's weights come from its own checkpoint
        _init_weights(config, net, ema)
    if resume:
        step, states = _resume(config, out, net, ema, opt, ctx.rank)
    config, gens = _streams(config, ctx, device, states)
    labelled = getattr(net, "num_classes", 0) > 0
    if labelled and not getattr(data, "num_classes", 0):
        what = "a classifier" if is_classifier(net) else "a class-conditional network"
        raise ValueError(f"{what} needs labelled data; {config.data!r} has no labels")
    loss = _default_loss(config, net) if loss is None else loss
    loss.check(net, process)
    if out is not None and ctx.main:  # only process 0 writes
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    model = net
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    return _Run(config, ctx, device, out, process, data, loss, net, ema, model, opt, gens, step, labelled)


def _default_loss(config: TrainConfig, net: nn.Module) -> Loss:
    """Cross-entropy for a noise-aware classifier, else DSM with the config's weighting and label dropout."""
    if is_classifier(net):
        return ClassifierLoss()
    return DSMLoss(config.weighting, snr_gamma=config.snr_gamma, importance=config.importance,
                   label_dropout=config.label_dropout)


def _init_weights(config: TrainConfig, net: nn.Module, ema: nn.Module) -> None:
    """Fine-tuning: start net and EMA from config.init's EMA weights, refusing a different network."""
    start = load_checkpoint(config.init)
    theirs = start["ema"].config() if hasattr(start["ema"], "config") else start["config"].net
    mine = net.config() if hasattr(net, "config") else config.net
    if theirs != mine:
        raise ValueError(f"init: {start['path']} holds a different network ({theirs}) than the config asks "
                         f"for ({mine})")
    net.load_state_dict(start["ema"].state_dict())
    ema.load_state_dict(start["ema"].state_dict())


def _resume(config: TrainConfig, out: Path | None, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
            rank: int) -> tuple[int, list[Tensor]]:
    """Restore out's latest checkpoint into net, ema and opt; -> (step, every data stream's generator state)."""
    if out is None:
        raise ValueError("resume needs the run directory (out)")
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        raise FileNotFoundError(f"nothing to resume: no checkpoint under {out}")
    saved, step, states = load_training_state(ckpt, net, ema, opt, rank)
    if saved.net != config.net or saved.process != config.process or saved.data != config.data:
        raise ValueError(f"resume: {ckpt} was trained with a different data, process or network config")
    if config.data_streams and config.data_streams != len(states):
        raise ValueError(f"resume: {ckpt} has {len(states)} data streams, the config asks for {config.data_streams}")
    return step, states


def _stream_seed(seed: int, k: int) -> int:
    """Seed of data stream k (stream 0: seed + 1, as in one-stream runs)."""
    return seed + 1 + 1_000_003 * k


def _streams(config: TrainConfig, ctx: _Dist, device: torch.device,
             states: list[Tensor] | None) -> tuple[TrainConfig, list[torch.Generator]]:
    """The config with data_streams resolved, and this process's streams' generators (restored when resuming)."""
    streams = (len(states) if states is not None else config.data_streams) or ctx.world
    if streams % ctx.world:
        raise ValueError(f"data_streams = {streams} must be a multiple of the number of processes ({ctx.world})")
    if config.batch % streams:
        raise ValueError(f"batch {config.batch} must be divisible by the {streams} data streams")
    config = dataclasses.replace(config, data_streams=streams)
    mine = range(ctx.rank * streams // ctx.world, (ctx.rank + 1) * streams // ctx.world)
    gens = [torch.Generator(device).manual_seed(_stream_seed(config.seed, k)) for k in mine]
    if states is not None:
        for g, k in zip(gens, mine):
            g.set_state(states[k])
    return config, gens


# -- the loop -------------------------------------------------------------------------------------------------------
def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to lr_final_ratio * lr (or constant)."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_decay == "none" or cfg.steps <= cfg.warmup:
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.lr_final_ratio + (1 - cfg.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _progress(total: int, initial: int, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)


class _Loop:
    """The steps of one train() call, with their logging, evaluation, NaN checks and checkpoints."""

    def __init__(self, run: _Run, eval_fn, eval_every: int, progress: bool | None, stop_at: int | None,
                 max_seconds: float | None):
        self.run, self.eval_fn, self.eval_every, self.max_seconds = run, eval_fn, eval_every, max_seconds
        cfg = run.config
        self.step = run.step
        self.params, self.ema_params = list(run.net.parameters()), list(run.ema.parameters())
        self.bar = _progress(cfg.steps, self.step, progress) if run.ctx.main else None
        self.end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        self.pending: list[Tensor] = []  # losses not yet checked for finiteness (no per-step host sync)
        self.losses: list[float] = []
        self.first_pending = self.step
        self.last_log_t, self.last_log_step = time.perf_counter(), self.step
        self.t_start = time.perf_counter()
        self.log_f = open(run.out / "log.jsonl", "a") if run.out is not None and run.ctx.main else None
        self.saved_at = -1

    def train(self) -> TrainResult:
        r, cfg = self.run, self.run.config
        try:
            while self.step < self.end:
                self.pending.append(self._train_step())
                self.step += 1
                if self.bar is not None:
                    self.bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.end:
                    self._log()
                if self.eval_fn is not None and self.eval_every and self.step % self.eval_every == 0:
                    self._evaluate()
                if r.out is not None and (self.step == self.end or (cfg.checkpoint_every
                                                                    and self.step % cfg.checkpoint_every == 0)):
                    self._checkpoint()
                if self._out_of_time():
                    if r.out is not None and self.saved_at != self.step:
                        self._checkpoint()
                    break
            self._flush()
        finally:
            if self.bar is not None:
                self.bar.close()
            if self.log_f is not None:
                self.log_f.close()
        return TrainResult(r.net, r.ema, r.process, cfg, self.losses, self.step, time.perf_counter() - self.t_start)

    def _stream_loss(self, gen: torch.Generator) -> Tensor:
        """Mean loss of one stream's examples, all randomness from its generator."""
        r = self.run
        n = r.per_stream
        if r.labelled:
            x0, y = r.data.sample(n, generator=gen, device=r.device, return_labels=True)
        else:
            x0, y = r.data.sample(n, generator=gen, device=r.device), None
        with torch.autocast(r.device.type, dtype=torch.bfloat16) if r.config.amp else nullcontext():
            values = r.loss(r.model, r.process, x0, y, generator=gen)
            if values.shape != (n,):
                raise ValueError(f"{r.loss!r} returned a tensor of shape {tuple(values.shape)}; a loss returns "
                                 f"per-sample values, shape ({n},)")
            return values.float().mean()

    def _train_step(self) -> Tensor:
        """One optimiser step over this process's streams (gradients accumulated); -> the mean loss, on device."""
        r, cfg = self.run, self.run.config
        for group in r.opt.param_groups:
            group["lr"] = _lr_at(cfg, self.step)
        r.opt.zero_grad(set_to_none=True)
        n = len(r.gens)
        loss = None
        for k, gen in enumerate(r.gens):
            sync = r.ctx.world == 1 or k == n - 1
            with nullcontext() if sync else r.model.no_sync():
                part = self._stream_loss(gen)
                (part / n if n > 1 else part).backward()
            loss = part.detach() if loss is None else loss + part.detach()
        if n > 1:
            loss = loss / n
        if cfg.clip is not None:
            nn.utils.clip_grad_norm_(self.params, cfg.clip, foreach=True)
        r.opt.step()
        with torch.no_grad():
            # EMA with warm-up (decay grows from 0 to config.ema), so early averages are not dominated by init
            decay = min(cfg.ema, (1 + self.step) / (10 + self.step))
            torch._foreach_lerp_(self.ema_params, [p.detach() for p in self.params], 1.0 - decay)
        return loss

    def _flush(self) -> None:
        """Move the pending losses to the host (all-reduced across processes); raise on a NaN or infinite one."""
        if not self.pending:
            return
        r = self.run
        stacked = torch.stack(self.pending)
        if r.ctx.world > 1:  # every process sees the same mean loss, so all stop at the same step
            import torch.distributed as dist

            dist.all_reduce(stacked)
            stacked /= r.ctx.world
        vals = stacked.tolist()
        for k, v in enumerate(vals):
            if not math.isfinite(v):
                raise NonFiniteLossError(
                    f"loss is {v} at step {self.first_pending + k}; training stopped"
                    + (f", the last good checkpoint is {latest_checkpoint(r.out)}" if r.out is not None else "")
                )
        self.losses.extend(vals)
        self.pending, self.first_pending = [], self.first_pending + len(vals)

    def _write_log(self, record: dict) -> None:
        if self.log_f is not None:
            self.log_f.write(json.dumps(record) + "\n")
            self.log_f.flush()  # readable as it grows (tail -f), not only when the buffer fills

    def _log(self) -> None:
        cfg = self.run.config
        self._flush()
        now = time.perf_counter()
        rate = (self.step - self.last_log_step) / max(now - self.last_log_t, 1e-9)
        self.last_log_t, self.last_log_step = now, self.step
        recent = self.losses[-cfg.log_every:]
        mean_loss = sum(recent) / max(1, len(recent))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", steps_s=f"{rate:.0f}")
        self._write_log({"step": self.step, "loss": mean_loss, "lr": _lr_at(cfg, self.step - 1), "steps_per_s": rate})

    def _evaluate(self) -> None:
        self._flush()
        if self.run.ctx.main:
            self._write_log({"step": self.step, "eval": self.eval_fn(self.step, self.run.ema)})

    def _checkpoint(self) -> None:
        r = self.run
        self._flush()
        states = [g.get_state() for g in r.gens]
        rngs = [torch.get_rng_state()]
        if r.ctx.world > 1:
            import torch.distributed as dist

            gathered: list = [None] * r.ctx.world
            dist.all_gather_object(gathered, (states, rngs[0]))
            states = [s for part, _ in gathered for s in part]
            rngs = [rng for _, rng in gathered]
        if r.out is not None and r.ctx.main:
            save_checkpoint(r.out, r.config, r.net, r.ema, r.opt, states, self.step, torch_rng=rngs)
        if r.ctx.world > 1:
            dist.barrier()  # the checkpoint exists when any process returns
        self.saved_at = self.step

    def _out_of_time(self) -> bool:
        if self.max_seconds is None:
            return False
        r = self.run
        late = time.perf_counter() - self.t_start > self.max_seconds
        if r.ctx.world == 1:
            return late
        if self.step % r.config.log_every and self.step != self.end:
            return False  # across processes: decided together at log steps (one small all-reduce)
        import torch.distributed as dist

        flag = torch.tensor([float(late)], device=r.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
