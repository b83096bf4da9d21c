"""One training loop for every data type: DSM loss, warm-up, clipping, EMA, atomic and exactly resumable checkpoints.

A run directory holds `checkpoints/step_XXXXXXXX/` (each written to a temporary directory and renamed into place,
so a checkpoint is complete or absent), a `latest` file naming the newest one, and `log.jsonl`. A checkpoint is

    config.json        TrainConfig, network config, step (JSON: nothing executable)
    model.safetensors  weights: "model.*" (trained) and "ema.*" (exponential moving average)
    state.pt           optimiser state and RNG states, loaded with torch.load(weights_only=True)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .losses import WEIGHTINGS, ImportanceSampler, classifier_loss, dsm_loss
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
    importance: bool = False
    label_dropout: float = 0.0  # probability of the null label (classifier-free guidance training)
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 1000
    log_every: int = 50
    keep: int = 2  # checkpoints kept on disk

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
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout!r}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip!r}")
        for name in ("warmup", "checkpoint_every", "log_every", "keep"):
            if getattr(self, name) < (1 if name in ("log_every", "keep") else 0):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
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
    `data` overrides make_data(config.data); `eval_fn(step, ema_net) -> dict` runs every `eval_every` steps and
    is logged. `stop_at` ends the call early at that step (as an interruption would); `max_seconds` ends it
    after that much training time. A NaN or infinite loss raises NonFiniteLossError naming the step; the last
    checkpoint written is the last good one (losses are checked before every checkpoint).
    """
    config.validate()
    device = torch.device(config.device)
    process = make_process(config.process)
    data = make_data(config.data, config.data_root) if data is None else data
    out = Path(out) if out is not None else None

    torch.manual_seed(config.seed)
    net = build_net(config.net).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = _make_optimizer(config, net)
    gen = torch.Generator(device).manual_seed(config.seed + 1)
    step = 0
    if resume:
        if out is None:
            raise ValueError("resume needs the run directory (out)")
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise FileNotFoundError(f"nothing to resume: no checkpoint under {out}")
        saved_cfg, step = _load_into(ckpt, net, ema, opt, gen, device)
        if saved_cfg.net != config.net or saved_cfg.process != config.process or saved_cfg.data != config.data:
            raise ValueError(f"resume: {ckpt} was trained with a different data, process or network config")

    classify = is_classifier(net)
    conditional = getattr(net, "num_classes", 0) > 0
    if conditional and not getattr(data, "num_classes", 0):
        what = "a classifier" if classify else "a class-conditional network"
        raise ValueError(f"{what} needs labelled data; {config.data!r} has no labels")
    null = getattr(net, "num_classes", 0)
    output = getattr(net, "output", "eps")
    importance = ImportanceSampler(process) if config.importance else None
    if importance is not None and config.weighting != "likelihood":
        raise ValueError("importance sampling of t goes with weighting='likelihood'")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))

    params = [p for p in net.parameters()]
    ema_params = [p for p in ema.parameters()]
    bar = _progress(config.steps, step, progress)
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    pending: list[Tensor] = []  # losses not yet checked for finiteness (no per-step host sync on accelerators)
    losses: list[float] = []
    first_pending = step
    last_log_t, last_log_step = time.perf_counter(), step
    t_start = time.perf_counter()
    log_f = open(out / "log.jsonl", "a") if out is not None else None

    def flush() -> None:
        nonlocal pending, first_pending
        if not pending:
            return
        vals = torch.stack(pending).tolist()
        for k, v in enumerate(vals):
            if not math.isfinite(v):
                raise NonFiniteLossError(
                    f"loss is {v} at step {first_pending + k}; training stopped"
                    + (f", the last good checkpoint is {latest_checkpoint(out)}" if out is not None else "")
                )
        losses.extend(vals)
        pending, first_pending = [], first_pending + len(vals)

    try:
        while step < end:
            for group in opt.param_groups:
                group["lr"] = _lr_at(config, step)
            x0, y = _sample_batch(data, config.batch, gen, device, conditional)
            if classify:
                loss = classifier_loss(net, process, x0, y, generator=gen).mean()
            else:
                kwargs = {}
                if conditional:
                    if config.label_dropout > 0:
                        drop = torch.rand(y.shape, generator=gen, device=device) < config.label_dropout
                        y = torch.where(drop, torch.full_like(y, null), y)
                    kwargs["labels"] = y
                loss = dsm_loss(net, process, x0, output=output, weighting=config.weighting, generator=gen,
                                importance=importance, **kwargs).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip is not None:
                nn.utils.clip_grad_norm_(params, config.clip, foreach=True)
            opt.step()
            with torch.no_grad():
                # EMA with warm-up (decay grows from 0 to config.ema), so early averages are not dominated by init
                decay = min(config.ema, (1 + step) / (10 + step))
                torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
            pending.append(loss.detach())
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
            if eval_fn is not None and eval_every and step % eval_every == 0:
                flush()
                metrics = eval_fn(step, ema)
                if log_f is not None:
                    log_f.write(json.dumps({"step": step, "eval": metrics}) + "\n")
            if out is not None and (step == end or (config.checkpoint_every and step % config.checkpoint_every == 0)):
                flush()
                save_checkpoint(out, config, net, ema, opt, gen, step)
            if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                break
        flush()
    finally:
        if bar is not None:
            bar.close()
        if log_f is not None:
            log_f.close()
    return TrainResult(net, ema, process, config, losses, step, time.perf_counter() - t_start)


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
                    opt: torch.optim.Optimizer, gen: torch.Generator, step: int) -> Path:
    """Write checkpoints/step_XXXXXXXX atomically (temp directory + rename), point `latest` at it, prune old ones."""
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
    state = {"step": step, "optimizer": opt.state_dict(), "generator": gen.get_state(),
             "torch_rng": torch.get_rng_state()}
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


def _load_into(ckpt: Path, net, ema, opt, gen, device) -> tuple[TrainConfig, int]:
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
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return TrainConfig.from_dict(meta["config"]), int(meta["step"])


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
