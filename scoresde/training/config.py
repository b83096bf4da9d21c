"""TrainConfig: everything a run needs, saved as JSON in every checkpoint."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from .._utils import check_device
from ..losses import DSMLoss
from ..nets import net_config
from ..processes import from_config

__all__ = ["TrainConfig", "config_from_options", "IMAGE_DEFAULTS"]


@dataclass
class TrainConfig:
    """Everything a run needs, saved as JSON in every checkpoint.

    `process` is a process config (`Process.config()`); a name such as "vp" is accepted and stored as its config.
    `weighting`, `snr_gamma`, `importance` and `label_dropout` describe the default loss (`losses.DSMLoss` for
    score networks; noise-aware classifiers get `losses.ClassifierLoss`); a loss object given to `train` replaces it.
    """

    data: str = "ring8"
    data_root: str | None = None
    process: dict = field(default_factory=lambda: {"name": "vp"})
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
    init: str | None = None  # fine-tuning: start from this run's (or checkpoint's) EMA weights, with a fresh optimiser
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 1000
    log_every: int = 50
    keep: int = 2  # checkpoints kept on disk
    data_streams: int = 0  # independent data/noise streams making up each batch; 0: one per process
    amp: bool = False  # bf16 autocast of the forward pass and loss (CUDA, or CPUs with bf16 units such as AMX)

    def __post_init__(self) -> None:
        self.process = from_config(self.process).config()  # ValueError naming an unknown process

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for check in (_check_types, _check_sizes, _check_optimiser, _check_loss, _check_schedule, _check_parallel, _check_model):
            check(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


_KINDS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,)}


def _check_types(cfg: TrainConfig) -> None:
    """Every field has its annotated type (a config read from JSON may hold anything)."""
    for f in dataclasses.fields(cfg):
        value, kinds = getattr(cfg, f.name), str(f.type).replace(" ", "").split("|")
        if value is None and "None" in kinds:
            continue
        ok = any(isinstance(value, _KINDS[k]) and (k == "bool" or not isinstance(value, bool)) for k in kinds
                 if k in _KINDS)
        if not ok:
            raise ValueError(f"{f.name} must be {' or '.join(kinds)}, got {value!r}")


def _check_sizes(cfg: TrainConfig) -> None:
    if cfg.steps < 0:
        raise ValueError(f"steps must be >= 0, got {cfg.steps!r}")
    if cfg.batch < 1:
        raise ValueError(f"batch must be >= 1, got {cfg.batch!r}")
    if not 0 <= cfg.seed < 2**63:
        raise ValueError(f"seed must lie in [0, 2^63), got {cfg.seed!r}")


def _check_optimiser(cfg: TrainConfig) -> None:
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"lr must be a positive number, got {cfg.lr!r}")
    if cfg.optimizer not in ("adam", "adamw"):
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adam or adamw")
    if cfg.lr_decay not in ("cosine", "none"):
        raise ValueError(f"unknown lr_decay {cfg.lr_decay!r}; choose cosine or none")
    if not 0.0 <= cfg.ema < 1.0:
        raise ValueError(f"ema decay must lie in [0, 1), got {cfg.ema!r}")
    if cfg.clip is not None and not cfg.clip > 0:
        raise ValueError(f"clip must be > 0 or None, got {cfg.clip!r}")


def _check_loss(cfg: TrainConfig) -> None:
    """The default loss checks its own fields (weighting, snr_gamma, importance, label_dropout)."""
    DSMLoss(cfg.weighting, snr_gamma=cfg.snr_gamma, importance=cfg.importance, label_dropout=cfg.label_dropout)


def _check_schedule(cfg: TrainConfig) -> None:
    for name, least in (("warmup", 0), ("checkpoint_every", 0), ("log_every", 1), ("keep", 1)):
        if getattr(cfg, name) < least:
            raise ValueError(f"{name} must be positive, got {getattr(cfg, name)!r}")


def _check_parallel(cfg: TrainConfig) -> None:
    if not isinstance(cfg.data_streams, int) or cfg.data_streams < 0:
        raise ValueError(f"data_streams must be an integer >= 0 (0: one per process), got {cfg.data_streams!r}")
    if cfg.data_streams and cfg.batch % cfg.data_streams:
        raise ValueError(f"batch {cfg.batch} must be divisible by data_streams {cfg.data_streams}")
    if cfg.amp and str(cfg.device).split(":")[0] not in ("cuda", "cpu"):
        raise ValueError(f"amp (bf16 autocast) is for CUDA and CPU devices; device is {cfg.device!r} (train "
                         "without --amp)")
    check_device(cfg.device)


def _check_model(cfg: TrainConfig) -> None:
    if not isinstance(cfg.net, dict) or "name" not in cfg.net:
        raise ValueError(f"net must be a dict with a 'name', got {cfg.net!r}")
    from_config(cfg.process)  # a process changed after construction


# a UNet's defaults: the image recipe of benchmarks/train_digits.py (points take TrainConfig's defaults)
IMAGE_DEFAULTS = {"process": "ddpm-cosine", "prediction": "v", "batch": 128, "lr": 2e-3, "warmup": 100, "ema": 0.999}
NET_OPTIONS = ("width", "depth", "channel_mult", "num_res_blocks", "emb_dim", "embedding", "prediction")


def config_from_options(given: dict, data) -> TrainConfig:
    """TrainConfig from the options a user gave (the CLI's flags): what is not given takes TrainConfig's default,
    or the image recipe's for a UNet; the network config follows the data (nets.net_config)."""
    if given.get("net") == "unet":
        given = {**IMAGE_DEFAULTS, **given}
    num_classes = int(getattr(data, "num_classes", 0) or 0)
    if given.pop("conditional", False):
        if num_classes < 1:
            raise ValueError(f"--conditional needs labelled data; {given['data']!r} has no labels")
        given.setdefault("label_dropout", 0.15)
    elif "label_dropout" in given:
        raise ValueError("--label-dropout is for class-conditional networks (--conditional)")
    elif given.get("net") != "classifier":
        num_classes = 0
    sigma_data = round(float(data.sample(4096, generator=torch.Generator().manual_seed(given.get("seed", 0))).std()), 3)
    options = {k: given.pop(k) for k in NET_OPTIONS if k in given}
    given["net"] = net_config(given.get("net", "mlp"), data.event_shape, num_classes=num_classes,
                              sigma_data=sigma_data, **options)
    if given.get("clip", 1) <= 0:
        given["clip"] = None
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in given.items() if k in fields})
