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
import signal
import sys
import threading
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
from .._utils import check_memory
from ..nets import activation_count, param_count
from .checkpoint import (RunLock, clear_run, latest_checkpoint, load_checkpoint, load_training_state, previous_run,
                         save_checkpoint, tidy_checkpoints, truncate_log)
from .config import TrainConfig

__all__ = ["train", "TrainResult", "NonFiniteLossError", "TrainingInterrupted"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training: after the current step with a checkpoint written, or at once (a second
    signal) with the last complete checkpoint kept. exit_code is 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: Path | None = None):
        super().__init__(signum, step, checkpoint)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.step is None:
            return f"interrupted again by {name}: stopped at once; the last complete checkpoint is {self.checkpoint}"
        return f"interrupted by {name} after step {self.step}; checkpoint {self.checkpoint} (continue with resume)"


class _Signals:
    """While training: the first SIGINT or SIGTERM asks the loop to stop after the current step (it writes a
    checkpoint and raises TrainingInterrupted), a second raises TrainingInterrupted at once (writes are atomic, so
    nothing is torn). Installed only in the main thread; the previous handlers come back afterwards."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received = 0
        self.previous: dict = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received:
            raise TrainingInterrupted(signum)
        self.received = signum

    def __enter__(self) -> "_Signals":
        if self.enabled:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


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
    overwrite: bool = False,
    eval_fn: Callable[[int, nn.Module], dict] | None = None,
    eval_every: int = 0,
    progress: bool | None = None,
    stop_at: int | None = None,
    max_seconds: float | None = None,
    handle_signals: bool = True,
) -> TrainResult:
    """Train config.net on `data` by `loss`; checkpoints go to `out` (None: no files).

    `data` defaults to toy_data.load(config.data) (its "train" split); `loss` to DSMLoss of the config's weighting,
    snr_gamma, importance and label_dropout (ClassifierLoss for a noise-aware classifier). resume=True continues
    from out's latest checkpoint exactly (same loss sequence and log.jsonl as an uninterrupted run, given the same
    loss); a fresh run refuses a directory holding an earlier run unless overwrite=True, which removes it. One
    trainer owns `out` while it runs (RunLockedError for a second; a dead owner's lock is taken over). With
    handle_signals, SIGINT and SIGTERM stop training after the current step with a checkpoint written, raising
    TrainingInterrupted (a second signal: at once). The network's memory (parameters, optimiser state and one
    batch's activations) is checked against what the device has before training starts.
    `eval_fn(step, ema_net) -> dict` runs every `eval_every` steps (on process 0) and is logged. `stop_at` ends the
    call early at that step (as an interruption would); `max_seconds` ends it after that much training time
    (checked every step, or at log steps across processes) and writes a checkpoint there. A NaN or infinite loss
    raises NonFiniteLossError naming the step; the last checkpoint written is the last good one (losses are
    checked before every checkpoint). Under torchrun the returned config has data_streams resolved and `losses`
    are the means over all processes.
    """
    config.validate()
    if resume and overwrite:
        raise ValueError("resume continues the run in out and overwrite starts it afresh: ask for one of them")
    ctx, device = _init_distributed(config.device)
    out = None if out is None else Path(out)
    lock = RunLock(out) if out is not None and ctx.main else None

    def claim() -> None:  # after the checks, before anything is read from or written to out
        error = None
        if lock is not None:
            try:
                lock.acquire()
                _claim(out, resume, overwrite)
            except Exception as e:  # re-raised below, after the other processes have heard of it
                error = e
        if ctx.world > 1:  # every process learns whether process 0 took the directory, so none waits for it
            import torch.distributed as dist

            failed = torch.tensor([error is not None], dtype=torch.int32, device=device)
            dist.all_reduce(failed)
            if failed.item() and error is None:
                raise RuntimeError(f"process 0 could not take the run directory {out} (its error says why); "
                                   "this process stops too")
        if error is not None:
            raise error

    try:
        params = param_count(config.net)
        check_memory(4 * 5 * params, f"training this network ({params:,} parameters; weights, gradients, EMA and "
                     "Adam's two moments in float32)", device)
        run = _setup(config, ctx, device, out, resume, data, loss, claim)
        with _Signals(handle_signals) as signals:
            try:
                return _Loop(run, eval_fn, eval_every, progress, stop_at, max_seconds, signals).train()
            except TrainingInterrupted as e:
                if e.checkpoint is None and out is not None:
                    e.checkpoint = latest_checkpoint(out)
                raise
    finally:
        if lock is not None:
            lock.release()
        if ctx.created:
            import torch.distributed as dist

            dist.destroy_process_group()


# -- set-up ---------------------------------------------------------------------------------------------------------
def _claim(out: Path, resume: bool, overwrite: bool) -> None:
    """A fresh run starts in a directory without an earlier run (or removes it, told to overwrite)."""
    found = [] if resume else previous_run(out)
    if found and not overwrite:
        raise ValueError(f"{out} holds an earlier run ({', '.join(found)}); resume it (--resume) or start afresh, "
                         "removing it (--overwrite)")
    if found:
        clear_run(out)


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
    log_window: list[float]  # losses since the last log line (from the checkpoint when resuming)

    @property
    def per_stream(self) -> int:
        return self.config.batch // self.config.data_streams


def _setup(config: TrainConfig, ctx: _Dist, device: torch.device, out: Path | None, resume: bool, data: Any,
           loss: Loss | None, claim: Callable[[], None]) -> _Run:
    """Process, data, network, loss and memory checked; then `claim` takes the run directory; then EMA and optimiser
    (from init or a checkpoint) and the data streams."""
    import toy_data

    process = from_config(config.process)
    data = toy_data.load(config.data, root=config.data_root, split="train") if data is None else data
    torch.manual_seed(config.seed)
    net = build_net(config.net).to(device)
    labelled = getattr(net, "num_classes", 0) > 0
    if labelled and not getattr(data, "num_classes", 0):
        what = "a classifier" if is_classifier(net) else "a class-conditional network"
        raise ValueError(f"{what} needs labelled data; {config.data!r} has no labels")
    loss = _default_loss(config, net) if loss is None else loss
    loss.check(net, process)
    batch, params = config.batch // (config.data_streams or ctx.world), sum(p.numel() for p in net.parameters())
    check_memory(4 * (5 * params + 2 * activation_count(net) * batch), f"training this network ({params:,} "
                 f"parameters) on batches of {batch} (activations and their gradients)", device)
    claim()
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = (torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam)(
        net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, states, window = 0, None, []
    if config.init is not None and not resume:  # a resumed run's weights come from its own checkpoint
        _init_weights(config, net, ema)
    if resume:
        step, states, window = _resume(config, out, net, ema, opt, ctx.rank)
        if ctx.main:
            tidy_checkpoints(out, step, config.keep)
    config, gens = _streams(config, ctx, device, states)
    if out is not None and ctx.main:  # only process 0 writes
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    model = net
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    return _Run(config, ctx, device, out, process, data, loss, net, ema, model, opt, gens, step, labelled, window)


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
            rank: int) -> tuple[int, list[Tensor], list[float]]:
    """Restore out's latest checkpoint into net, ema and opt; -> (step, every data stream's generator state, the
    losses since its last log line)."""
    if out is None:
        raise ValueError("resume needs the run directory (out)")
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        raise FileNotFoundError(f"nothing to resume: no checkpoint under {out}")
    saved, step, states, window = load_training_state(ckpt, net, ema, opt, rank)
    if saved.net != config.net or saved.process != config.process or saved.data != config.data:
        raise ValueError(f"resume: {ckpt} was trained with a different data, process or network config")
    if config.steps < step:
        raise ValueError(f"resume: the run is at step {step} already; steps = {config.steps} is below it (ask for "
                         f"more than {step} steps to train further)")
    if config.data_streams and config.data_streams != len(states):
        raise ValueError(f"resume: {ckpt} has {len(states)} data streams, the config asks for {config.data_streams}")
    return step, states, window


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
                 max_seconds: float | None, signals: _Signals):
        self.run, self.eval_fn, self.eval_every, self.max_seconds = run, eval_fn, eval_every, max_seconds
        self.signals = signals
        cfg = run.config
        self.step = run.step
        self.params, self.ema_params = list(run.net.parameters()), list(run.ema.parameters())
        self.bar = _progress(cfg.steps, self.step, progress) if run.ctx.main else None
        self.end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        self.pending: list[Tensor] = []  # losses not yet checked for finiteness (no per-step host sync)
        self.losses: list[float] = []
        self.window = list(run.log_window)  # checked losses since the last log line
        self.first_pending = self.step
        self.last_log_t, self.last_log_step = time.perf_counter(), self.step
        self.t_start = time.perf_counter()
        self.log_f = None
        if run.out is not None and run.ctx.main:
            truncate_log(run.out / "log.jsonl", self.step)  # a resumed run's log: as far as its checkpoint
            self.log_f = open(run.out / "log.jsonl", "a")
        self.saved_at = -1

    def train(self) -> TrainResult:
        r, cfg = self.run, self.run.config
        try:
            while self.step < self.end:
                self.pending.append(self._train_step())
                self.step += 1
                if self.bar is not None:
                    self.bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:  # never at an interruption
                    self._log()
                if self.eval_fn is not None and self.eval_every and self.step % self.eval_every == 0:
                    self._evaluate()
                if r.out is not None and (self.step == self.end or (cfg.checkpoint_every
                                                                    and self.step % cfg.checkpoint_every == 0)):
                    self._checkpoint()
                late, signum = self._should_stop()
                if late or signum:
                    if r.out is not None and self.saved_at != self.step:
                        self._checkpoint()
                    if signum:
                        raise TrainingInterrupted(signum, self.step, latest_checkpoint(r.out) if r.out else None)
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
        self.window.extend(vals)
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
        mean_loss = sum(self.window) / max(1, len(self.window))  # the same steps as in an uninterrupted run
        self.window = []
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
            if self.log_f is not None:  # the log reaches the checkpoint's step before the checkpoint exists
                self.log_f.flush()
                os.fsync(self.log_f.fileno())
            save_checkpoint(r.out, r.config, r.net, r.ema, r.opt, states, self.step, torch_rng=rngs,
                            log_window=self.window)
        if r.ctx.world > 1:
            dist.barrier()  # the checkpoint exists when any process returns
        self.saved_at = self.step

    def _should_stop(self) -> tuple[bool, int]:
        """(out of time, the signal received or 0); across processes decided together at log steps."""
        r = self.run
        late = self.max_seconds is not None and time.perf_counter() - self.t_start > self.max_seconds
        if r.ctx.world == 1:
            return late, self.signals.received
        if self.step % r.config.log_every and self.step != self.end:
            return False, 0
        import torch.distributed as dist

        flag = torch.tensor([float(late), float(self.signals.received)], device=r.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # one small all-reduce per log step
        late_all, signum = flag.tolist()
        return bool(late_all), int(signum)
