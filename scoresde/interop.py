"""Models from other libraries as scoresde scores: diffusers UNets with their schedulers, EDM and k-diffusion
denoisers. Optional extra `scoresde[diffusers]`; diffusers is imported only when a diffusers model is loaded, and
only from local folders (the `save_pretrained` layout, safetensors weights): nothing is downloaded.

Conventions, each mapped once, here:

* diffusers' integer timestep k (0-based) is DDPM step k + 1 of `DiscreteVP`, process time t = (k + 1) / N:
  `scheduler.alphas_cumprod[k]` (what `add_noise(x0, eps, k)` and training used) is alpha((k + 1) / N)². The
  process is built from that table itself (float32 in diffusers), so its alpha_bar at every step is the table's
  value to float64 round-off, whatever the beta schedule (linear, scaled_linear, squaredcos_cap_v2, trained_betas).
  The network sees the timestep t N - 1 (fractional between steps, as diffusers' own Euler-type schedulers pass).
* `prediction_type`: epsilon -> "eps", v_prediction -> "v" (alpha eps - sigma x0, the same definition),
  sample -> "x0"; converted to the score by `score.convert`. A network with learned variance (2C output channels)
  contributes its mean half.
* EDM / k-diffusion: a denoiser D(x, sigma) -> x0 with x = x0 + sigma eps is an "x0" network on
  `EDM(sigma_min, sigma_max)` (alpha = 1, sigma = t), so it runs under every sampler through `score_from`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ._utils import as_time
from .processes import EDM, DiscreteVP
from .schedules import check_grid
from .score import ScoreFn, convert, score_from

__all__ = ["PREDICTION_TYPES", "DiffusersModel", "from_diffusers", "process_from_scheduler", "timestep_of",
           "grid_from_timesteps", "from_edm", "from_k_diffusion"]

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}  # diffusers' name -> scoresde's
SUPPORTED_MODELS = ("UNet2DModel",)  # forward(sample, timestep, class_labels=None)


def _config(obj: Any) -> dict:
    config = getattr(obj, "config", None)
    return dict(config) if config is not None else {}


def process_from_scheduler(scheduler) -> tuple[DiscreteVP, str]:
    """(DiscreteVP, prediction) of a diffusers scheduler: the process of its alphas_cumprod table (step k + 1 of
    the process is diffusers' timestep k) and its prediction_type in scoresde's vocabulary."""
    table = getattr(scheduler, "alphas_cumprod", None)
    if table is None:
        raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod: not a DDPM-type (discrete) scheduler")
    config = _config(scheduler)
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=True gives alpha_bar = 0 at the last step (zero terminal SNR); "
                         "scoresde's processes need sigma/alpha finite everywhere")
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {kind!r} is not supported; expected one of {', '.join(PREDICTION_TYPES)}")
    log_ab = torch.as_tensor(table).detach().to("cpu", torch.float64).log()
    betas = -torch.expm1(torch.diff(log_ab, prepend=log_ab.new_zeros(1)))  # 1 - ab_k / ab_{k-1}
    return DiscreteVP(betas), PREDICTION_TYPES[kind]


def timestep_of(process: DiscreteVP, t: Tensor) -> Tensor:
    """diffusers' timestep k = t N - 1 of process time t (float64); within float32 round-off of an integer step,
    that integer (a float32 grid time loses it by up to ~1e-7 N)."""
    u = t.double() * process.N
    k = u.round()
    return torch.where((u - k).abs() <= 2.5e-7 * process.N, k, u) - 1


def grid_from_timesteps(process: DiscreteVP, timesteps: Tensor | list) -> Tensor:
    """The scoresde grid t = (k + 1) / N that walks a diffusers scheduler's `timesteps` (float64, CPU, checked).

    A scoresde sampler on it with denoise=True makes its last evaluation, Tweedie's x0, at the last timestep,
    where diffusers' DDPM / DDIM (set_alpha_to_one) / DPM-Solver (final_sigmas_type "zero") step to alpha_bar = 1.
    """
    k = torch.as_tensor(timesteps).detach().to("cpu", torch.float64)
    return check_grid(process, (k + 1) / process.N)


class DiffusersModel:
    """A diffusers UNet with its scheduler's process: `score_fn(labels)` is what samplers, guidance and likelihood
    take, as for scoresde's own trained Model. A class-conditional UNet (num_class_embeds) takes labels; labels=None
    means `null_label` (the classifier-free guidance null class), which must then be set."""

    def __init__(self, net: nn.Module, process: DiscreteVP, prediction: str, null_label: int | None = None):
        config = _config(net)
        self.net, self.process, self.prediction = net, process, prediction
        self.num_embeddings = int(config.get("num_class_embeds") or 0)
        if null_label is not None and not 0 <= null_label < self.num_embeddings:
            raise ValueError(f"null_label {null_label!r} needs a class-conditional UNet with more than that many "
                             f"class embeddings (it has {self.num_embeddings})")
        self.null_label = null_label
        size = config.get("sample_size")
        if size is None or "in_channels" not in config:
            raise ValueError(f"{type(net).__name__} has no config with in_channels and sample_size")
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.event_shape: tuple[int, ...] = (int(config["in_channels"]), *map(int, size))

    def __repr__(self) -> str:
        return f"DiffusersModel({type(self.net).__name__}, {self.process!r}, prediction={self.prediction!r})"

    @property
    def num_classes(self) -> int:
        """The real classes: the class embeddings less the null label's."""
        return self.num_embeddings - (self.null_label is not None)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def _labels(self, labels: Tensor | int | None) -> Callable[[int, torch.device], Tensor | None]:
        if self.num_embeddings == 0:
            if labels is not None:
                raise ValueError("this model is unconditional; it takes no label")
            return lambda batch, device: None
        if labels is None:
            if self.null_label is None:
                raise ValueError("this model is class-conditional: give labels, or set null_label (the CFG null "
                                 "class) for its unconditional score")
            labels = self.null_label
        if isinstance(labels, int):
            if not 0 <= labels < self.num_embeddings:
                raise ValueError(f"label {labels!r} is outside [0, {self.num_embeddings - 1}]")
            return lambda batch, device: torch.full((batch,), labels, dtype=torch.long, device=device)

        def tensor(batch: int, device: torch.device) -> Tensor:
            if labels.shape != (batch,):
                raise ValueError(f"labels must have shape ({batch},), one per sample; got {tuple(labels.shape)}")
            return labels.to(device=device, dtype=torch.long)

        return tensor

    def score_fn(self, labels: Tensor | int | None = None) -> ScoreFn:
        """The network as a ScoreFn (labels: an int, one per sample, or None for null_label)."""
        net, process, prediction, make_labels = self.net, self.process, self.prediction, self._labels(labels)
        dtype = next(net.parameters()).dtype
        conditional = self.num_embeddings > 0

        def score(x: Tensor, t: Tensor) -> Tensor:
            t = as_time(t, x)
            kw = {"class_labels": make_labels(x.shape[0], x.device)} if conditional else {}
            # no graph unless the caller differentiates through x (likelihood divergence, guidance)
            with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
                out = net(x.to(dtype), timestep_of(process, t).to(x.device), return_dict=False, **kw)[0]
            out = out[:, : x.shape[1]].to(x.dtype)  # learned-variance networks: the mean half
            alpha, sigma = process.alpha_sigma(t)
            return convert(out, x, alpha.to(x.dtype), sigma.to(x.dtype), src=prediction, dst="score")

        return score


def _local_folder(path: str | Path, what: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{what} {str(path)!r} is not a local folder (scoresde loads only local folders in "
                         "diffusers' save_pretrained layout; nothing is downloaded)")
    return folder


def _diffusers_class(name: str | None, allowed: tuple[str, ...] | None, where: Path):
    import diffusers

    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or (allowed is not None and name not in allowed):
        raise ValueError(f"{where} holds a {name!r}; supported: {', '.join(allowed or ('diffusers schedulers',))}")
    return cls


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def _load_net(folder: Path, device, dtype) -> nn.Module:
    """A UNet from a model folder (config.json + safetensors) or a pipeline folder (its unet/)."""
    if (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} holds no config.json (a model folder) and no unet/ (a pipeline folder)")
    cls = _diffusers_class(_read_json(folder / "config.json").get("_class_name"), SUPPORTED_MODELS, folder)
    try:
        net = cls.from_pretrained(folder, use_safetensors=True, local_files_only=True, torch_dtype=dtype,
                                  low_cpu_mem_usage=False)  # True needs `accelerate` (and only says so)
    except OSError as e:
        raise ValueError(f"cannot load {folder} (safetensors weights expected): {e}") from None
    return net.to(device).eval().requires_grad_(False)


def _load_scheduler(scheduler, folder: Path | None):
    if scheduler is None:
        if folder is None or not (folder / "scheduler").is_dir():
            raise ValueError(f"{folder} holds no scheduler/ (a model folder): pass scheduler= (a diffusers "
                             "scheduler or its folder)")
        scheduler = folder / "scheduler"
    if not isinstance(scheduler, (str, Path)):
        return scheduler
    where = _local_folder(scheduler, "scheduler")
    if (where / "scheduler" / "scheduler_config.json").is_file():
        where = where / "scheduler"
    config = _read_json(where / "scheduler_config.json")
    return _diffusers_class(config.get("_class_name"), None, where).from_config(config)


def from_diffusers(
    model_or_folder: nn.Module | str | Path,
    scheduler=None,
    *,
    null_label: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> DiffusersModel:
    """A diffusers UNet2DModel and its scheduler as a scoresde model (`.process`, `.score_fn(labels)`).

    model_or_folder: a UNet2DModel, a model folder, or a pipeline folder (model_index.json, unet/, scheduler/);
    scheduler: a diffusers scheduler or its folder (default: the pipeline's scheduler/). Only its training
    schedule (alphas_cumprod) and prediction_type are used: any scoresde sampler then drives the network.
    dtype converts the weights (default: as saved).
    """
    folder = None
    if isinstance(model_or_folder, (str, Path)):
        folder = _local_folder(model_or_folder, "model")
        net = _load_net(folder, device, dtype)
    elif isinstance(model_or_folder, nn.Module):
        net = model_or_folder.to(device=device, dtype=dtype) if dtype is not None else model_or_folder.to(device)
    else:
        raise ValueError(f"expected a diffusers model or a folder, got {type(model_or_folder).__name__}")
    process, prediction = process_from_scheduler(_load_scheduler(scheduler, folder))
    trained = _config(net).get("num_train_timesteps")
    if trained is not None and trained != process.N:
        raise ValueError(f"the model was built for {trained} timesteps, the scheduler has {process.N}")
    return DiffusersModel(net, process, prediction, null_label)


def from_edm(denoiser: Callable[..., Tensor], sigma_min: float = 0.002, sigma_max: float = 80.0,
             **kwargs) -> tuple[ScoreFn, EDM]:
    """(ScoreFn, EDM(sigma_min, sigma_max)) of an EDM denoiser D(x, sigma, **kwargs) -> x0 (Karras et al. 2022,
    x = x0 + sigma eps; e.g. class_labels=...). Defaults: the paper's sigma range."""
    process = EDM(sigma_min, sigma_max)
    return score_from(denoiser, process, "x0", **kwargs), process


def from_k_diffusion(denoiser: Callable[..., Tensor], sigma_min: float | None = None, sigma_max: float | None = None,
                     **extra_args) -> tuple[ScoreFn, EDM]:
    """(ScoreFn, EDM) of a k-diffusion denoiser model(x, sigma, **extra_args) -> x0; sigma_min / sigma_max default
    to the denoiser's own (k-diffusion's wrappers of discrete models have them)."""
    lo = getattr(denoiser, "sigma_min", None) if sigma_min is None else sigma_min
    hi = getattr(denoiser, "sigma_max", None) if sigma_max is None else sigma_max
    if lo is None or hi is None:
        raise ValueError(f"{type(denoiser).__name__} has no sigma_min / sigma_max: pass them")
    return from_edm(denoiser, float(lo), float(hi), **extra_args)
