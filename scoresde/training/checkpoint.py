"""Checkpoints and trained models.

A run directory holds `checkpoints/step_XXXXXXXX/` (each written to a temporary directory and renamed into place,
so a checkpoint is complete or absent), a `latest` file naming the newest one, and `log.jsonl`. A checkpoint is

    config.json        TrainConfig, network config, step (JSON: nothing executable)
    model.safetensors  weights: "model.*" (trained) and "ema.*" (exponential moving average)
    state.pt           optimiser state, every data stream's generator state and the torch RNG state of every
                       process, loaded with torch.load(weights_only=True)

Process 0 alone writes (one writer per run directory). `load_model` gives a trained network with its process as a
`Model`, whose `score_fn` is what samplers, guidance and likelihood take.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..nets import build_net, is_classifier
from ..processes import Process, from_config
from ..score import ScoreFn, score_from
from .config import TrainConfig

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "Model", "load_model"]

FORMAT = "scoresde-checkpoint-2"
# Format 1 (scoresde/train.py) named the process, "ve" meaning VE(0.01, 10), called a network's prediction `output`
# and held the reference-target study's fields (benchmarks/experiments/reference_targets), which describe how old
# weights were trained, not how to use them.
_V1_PROCESSES = {"ve": {"name": "ve", "sigma_min": 0.01, "sigma_max": 10.0}}
_V1_STUDY_FIELDS = ("classifier_objective", "classifier_base", "dsm_weight", "reference_batch", "widen", "widen_frac",
                    "widen_t_min")


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


def _write_step_dir(tmp: Path, config: TrainConfig, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                    generators: list, step: int, torch_rng: list[Tensor] | None) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()})
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"step": str(step)})
    meta = {"step": step, "config": dataclasses.asdict(config), "net": net.config() if hasattr(net, "config")
            else config.net, "format": FORMAT}
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


def save_checkpoint(run: str | Path, config: TrainConfig, net: nn.Module, ema: nn.Module,
                    opt: torch.optim.Optimizer, generators: list, step: int,
                    torch_rng: list[Tensor] | None = None) -> Path:
    """Write checkpoints/step_XXXXXXXX atomically (temp directory + rename), point `latest` at it, prune old ones.

    `generators`: the data streams' generators (or their states), in stream order; `torch_rng`: each process's
    torch RNG state (default: this process's).
    """
    run = Path(run)
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = ckdir / (name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _write_step_dir(tmp, config, net, ema, opt, generators, step, torch_rng)
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
    return _upgrade(meta)


def _upgrade(meta: dict) -> dict:
    """Format-1 metadata as format 2: the study's fields dropped, the process named by its config, a network's
    `output` called `prediction`."""
    if meta.get("format") != "scoresde-checkpoint-1":
        return meta

    def net(cfg: dict) -> dict:
        return {("prediction" if k == "output" else k): v for k, v in cfg.items()} if isinstance(cfg, dict) else cfg

    config = {k: v for k, v in meta["config"].items() if k not in _V1_STUDY_FIELDS}
    if isinstance(config.get("process"), str):
        config["process"] = _V1_PROCESSES.get(config["process"], config["process"])
    config["net"] = net(config.get("net"))
    return {**meta, "config": config, "net": net(meta["net"]), "format": FORMAT}


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


def _load_weights(ckpt: Path, net: nn.Module, ema: nn.Module) -> None:
    tensors = _read_weights(ckpt)
    for module, prefix, what in ((net, "model.", "model"), (ema, "ema.", "EMA")):
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sd)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "mismatch"
            raise ValueError(f"checkpoint {ckpt}: {what} weights do not fit the network config: {first}") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (run directory or step directory) without executing pickled code.

    Returns {"config": TrainConfig, "net": ..., "ema": ..., "process": Process, "step": int, "path": Path}.
    """
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint found at {path}")
    meta = _read_meta(ckpt)
    config = TrainConfig.from_dict(meta["config"])
    process = from_config(config.process)
    net, ema = build_net(meta["net"]), build_net(meta["net"])
    _load_weights(ckpt, net, ema)
    net.to(device).eval()
    ema.to(device).eval().requires_grad_(False)
    return {"config": config, "net": net, "ema": ema, "process": process, "step": int(meta["step"]), "path": ckpt}


def load_training_state(ckpt: Path, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                        rank: int = 0) -> tuple[TrainConfig, int, list[Tensor]]:
    """Restore weights, optimiser and this process's torch RNG; -> (config, step, every stream's generator state)."""
    meta = _read_meta(ckpt)
    _load_weights(ckpt, net, ema)
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

    def _check_label(self, labels: Tensor | int | None) -> None:
        if isinstance(labels, int) and not 0 <= labels < self.num_classes:
            raise ValueError(f"label {labels!r} is outside [0, {self.num_classes - 1}]")

    def log_prob_fn(self, labels: Tensor | int) -> Callable[[Tensor, Tensor], Tensor]:
        """A noise-aware classifier as (x, t) -> log p_t(labels | x), shape (B,), for guidance.classifier."""
        if not is_classifier(self.net):
            raise ValueError("log_prob_fn needs a noise-aware classifier checkpoint (trained with --net classifier)")
        self._check_label(labels)
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
        self._check_label(labels)
        net = self.net
        dtype = next(net.parameters()).dtype
        kwargs = {"labels": labels} if self.num_classes else {}

        def call(x: Tensor, sigma: Tensor, **kw) -> Tensor:
            # no graph unless the caller differentiates through x (likelihood divergence, guidance)
            with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
                return net(x.to(dtype), sigma.to(dtype), **kw).to(x.dtype)

        return score_from(call, self.process, getattr(net, "prediction", "eps"), **kwargs)


def load_model(path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> Model:
    """Load a checkpoint's EMA (default) or trained weights as a Model."""
    ck = load_checkpoint(path, device)
    return Model(ck["ema"] if ema else ck["net"], ck["process"], ck["config"], ck["step"])
