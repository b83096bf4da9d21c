"""Checkpoints and trained models.

A run directory holds `checkpoints/step_XXXXXXXX/` (each written to a temporary directory and renamed into place,
so a checkpoint is complete or absent), a `latest` file naming the newest one, and `log.jsonl`. A checkpoint is

    config.json        TrainConfig, network config, step (JSON: nothing executable)
    model.safetensors  weights: "model.*" (trained) and "ema.*" (exponential moving average)
    state.pt           optimiser state, every data stream's generator state and the torch RNG state of every
                       process, loaded with torch.load(weights_only=True)

One writer owns a run directory: `RunLock` holds an exclusive flock on `.lock` (with the owner's pid and host in
it) while train() runs, and the operating system releases it when the owner dies, so a crashed run's directory is
taken over. Process 0 alone writes. `log.jsonl` is cut back to a checkpoint's step when the run resumes from it
(`truncate_log`), so it always equals an uninterrupted run's. `load_model` gives a trained network with its process
as a `Model`, whose `score_fn` is what samplers, guidance and likelihood take.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .._utils import check_device, check_memory, check_writable
from ..nets import build_net, is_classifier, param_count
from ..processes import Process, from_config
from ..score import ScoreFn, score_from
from .config import TrainConfig

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "Model", "load_model", "RunLock",
           "RunLockedError", "truncate_log", "previous_run", "clear_run", "resume_config", "tidy_checkpoints"]

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


_STEP_NAME = re.compile(r"step_\d{8}")
LOCK_NAME = ".lock"
RUN_FILES = ("checkpoints", "latest", "log.jsonl", "previews")  # what a run writes (config.json is rewritten)


class RunLockedError(RuntimeError):
    """Another trainer owns the run directory; the message names it."""


class RunLock:
    """An exclusive advisory lock on run/.lock, held while one trainer writes the run directory.

    fcntl.flock, so the operating system releases it when the owner exits or dies (a stale lock is never left
    behind); the owner's pid, host and start time are written into the file for the message a second writer gets.
    """

    def __init__(self, run: str | Path):
        self.run = Path(run)
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no flock on this platform: no lock
            return self
        check_writable(self.run, directory=True, what="the run directory")
        try:
            fd = os.open(self.run / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ValueError(f"cannot write the run directory {self.run}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            try:
                who = "pid {pid} on {host}, since {since}".format(**json.loads(owner))
            except (ValueError, KeyError, TypeError):
                who = "owner unknown"
            raise RunLockedError(f"the run directory {self.run} is in use by another trainer ({who}); wait for it, "
                                 "stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock; the file stays (no unlink race)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def previous_run(run: str | Path) -> list[str]:
    """The files of an earlier run in `run` (checkpoints, latest, log.jsonl, previews), by name."""
    run = Path(run)
    return [name for name in RUN_FILES if (run / name).exists() and not
            ((run / name).is_dir() and not any((run / name).iterdir()))]


def clear_run(run: str | Path) -> None:
    """Remove an earlier run's files (RUN_FILES) from `run`, for a fresh run told to overwrite it."""
    for name in RUN_FILES:
        path = Path(run) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def truncate_log(path: str | Path, step: int) -> None:
    """Keep the records of log.jsonl up to `step` (a checkpoint's), dropping later ones and a torn last line, so a
    resumed run appends to exactly what an uninterrupted run had written by then (rewritten atomically)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    _atomic_write_bytes(path, "".join(kept).encode())


def latest_checkpoint(run: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run (or the path itself if it is a checkpoint)."""
    run = Path(run)
    if (run / "model.safetensors").exists():
        return run
    ckdir = run / "checkpoints"
    latest = run / "latest"
    if latest.exists():
        name = latest.read_text(errors="replace").strip()
        if not _STEP_NAME.fullmatch(name):  # never follow a path out of the run directory
            raise ValueError(f"{latest} names {name[:80]!r}, not a checkpoint of this run (step_XXXXXXXX)")
        cand = ckdir / name
        if (cand / "model.safetensors").exists():
            return cand
    done = sorted(p for p in ckdir.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")) \
        if ckdir.is_dir() else []
    return done[-1] if done else None


def _write_step_dir(tmp: Path, config: TrainConfig, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                    generators: list, step: int, torch_rng: list[Tensor] | None, log_window: list[float]) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()})
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"step": str(step)})
    meta = {"step": step, "config": dataclasses.asdict(config), "net": net.config() if hasattr(net, "config")
            else config.net, "format": FORMAT}
    (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    states = [g.get_state() if isinstance(g, torch.Generator) else g for g in generators]
    rngs = [torch.get_rng_state()] if torch_rng is None else list(torch_rng)
    state = {"step": step, "optimizer": opt.state_dict(), "generators": states, "torch_rng": rngs,
             "log_window": [float(v) for v in log_window]}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save(state, tmp / "state.pt")
    for f in tmp.iterdir():  # make the files durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def save_checkpoint(run: str | Path, config: TrainConfig, net: nn.Module, ema: nn.Module,
                    opt: torch.optim.Optimizer, generators: list, step: int,
                    torch_rng: list[Tensor] | None = None, log_window: list[float] = ()) -> Path:
    """Write checkpoints/step_XXXXXXXX atomically (temp directory + rename), point `latest` at it, prune old ones.

    `generators`: the data streams' generators (or their states), in stream order; `torch_rng`: each process's
    torch RNG state (default: this process's); `log_window`: the losses since the last log line, so a resumed run
    logs the same means as an uninterrupted one.
    """
    run = Path(run)
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = ckdir / (name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _write_step_dir(tmp, config, net, ema, opt, generators, step, torch_rng, list(log_window))
    final = ckdir / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _atomic_write_bytes(run / "latest", name.encode())
    _prune(ckdir, config.keep)
    return final


def _prune(ckdir: Path, keep: int) -> None:
    done = sorted(p for p in ckdir.glob("step_*") if p.is_dir() and _STEP_NAME.fullmatch(p.name))
    for p in done[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def tidy_checkpoints(run: str | Path, step: int, keep: int) -> None:
    """After resuming from checkpoint `step`, remove what a killed writer left: temporary directories, checkpoints
    after `step` (complete, but written before `latest` moved to them: the resumed run writes them again) and
    checkpoints beyond the newest `keep` (a prune cut short). Call it holding the run's lock."""
    ckdir = Path(run) / "checkpoints"
    for p in ckdir.glob("step_*"):
        if p.is_dir() and (not _STEP_NAME.fullmatch(p.name) or int(p.name[5:]) > step):
            shutil.rmtree(p)
    _prune(ckdir, keep)


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
    step = meta["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"corrupt checkpoint config {path}: step is {step!r}, not an integer >= 0")
    if not isinstance(meta["config"], dict) or not isinstance(meta["net"], dict):
        raise ValueError(f"corrupt checkpoint config {path}: config and net must be JSON objects")
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
    check_device(device)
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint found at {path}")
    meta = _read_meta(ckpt)
    config = TrainConfig.from_dict(meta["config"])
    process = from_config(config.process)
    params = param_count(meta["net"])
    check_memory(2 * 4 * params, f"the network of {ckpt} ({params:,} parameters, twice: trained and EMA)")
    net, ema = build_net(meta["net"]), build_net(meta["net"])
    _load_weights(ckpt, net, ema)
    net.to(device).eval()
    ema.to(device).eval().requires_grad_(False)
    return {"config": config, "net": net, "ema": ema, "process": process, "step": int(meta["step"]), "path": ckpt}


def resume_config(run: str | Path, options: dict) -> tuple[TrainConfig, Path]:
    """The saved config of run's latest checkpoint for a resumed run, which takes `steps` from options and nothing
    else (a resumed run continues the saved configuration); -> (config, checkpoint)."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {run}")
    fixed = sorted(set(options) - {"steps"})
    if fixed:
        raise ValueError(f"--resume continues the saved configuration; it takes --steps, not "
                         f"{', '.join('--' + k.replace('_', '-') for k in fixed)}")
    config = TrainConfig.from_dict(_read_meta(ckpt)["config"])
    return dataclasses.replace(config, **{k: v for k, v in options.items() if k == "steps"}), ckpt


def load_training_state(ckpt: Path, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                        rank: int = 0) -> tuple[TrainConfig, int, list[Tensor], list[float]]:
    """Restore weights, optimiser and this process's torch RNG; -> (config, step, every stream's generator state,
    the losses since the last log line)."""
    meta = _read_meta(ckpt)
    _load_weights(ckpt, net, ema)
    path = ckpt / "state.pt"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {ckpt} has no state.pt (optimiser and RNG state) to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message would advise weights_only=False, which runs the file's code
        raise ValueError(f"unsafe or corrupt resume state {path}: it holds objects other than tensors and plain "
                         "data, and was not loaded (loading it could run code); resume from another checkpoint") \
            from None
    except Exception as e:  # torch raises several types for truncated or foreign files
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"corrupt or truncated resume state {path}: {type(e).__name__}: {first}") from None
    if not isinstance(state, dict) or not {"step", "optimizer", "torch_rng"} <= set(state):
        raise ValueError(f"corrupt resume state {path}: not a scoresde training state")
    if int(state.get("step", -1)) != int(meta["step"]):
        raise ValueError(f"checkpoint {ckpt}: state.pt is for step {state.get('step')}, config for {meta['step']}")
    opt.load_state_dict(state["optimizer"])
    states = state["generators"] if "generators" in state else [state["generator"]]  # older: one stream
    rngs = state["torch_rng"] if isinstance(state["torch_rng"], list) else [state["torch_rng"]]
    torch.set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    if "cuda_rng" in state and torch.cuda.is_available() and rank == 0:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    window = [float(v) for v in state.get("log_window", [])]
    return TrainConfig.from_dict(meta["config"]), int(meta["step"]), list(states), window


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
