"""Run PEER libraries' samplers (diffusers schedulers, k-diffusion samplers) on an exact score function.

Shared by benchmarks.peers_quality, benchmarks.overhead and benchmarks.experiments.check_peers; nothing in
`scoresde` or its tests imports it. The peers are optional (`pip install diffusers torchsde tqdm` and
`pip install --no-deps k-diffusion`) and are imported lazily.

Conventions (process x_t = alpha(t) x0 + sigma(t) eps, here a `DiscreteVP` with N steps, t_i = i / N):

* diffusers: eps-prediction model. An integer diffusers timestep k (0-indexed) is our step i = k + 1, t = (k+1)/N.
  Euler-type schedulers (euler, euler_ancestral, heun, lms) use fractional timesteps and interpolated VE sigmas;
  there the model is evaluated at the sigma the scheduler itself uses (`scheduler.sigmas[scheduler.step_index]`),
  mapped to process time by t = process.t_from_log_snr(-2 log sigma_ve). Their state x is in the VE scale
  (x_ve = x_vp / alpha); `scale_model_input` divides by sqrt(sigma_ve² + 1) = 1/alpha, giving x_vp.
  eps = -sigma_vp(t) * score(x_vp, t).
* k-diffusion: denoiser D(x_ve, sigma_ve) -> x0 by Tweedie, x_vp = alpha x_ve with alpha = 1/sqrt(1 + sigma_ve²),
  t from sigma_ve as above; x0 = x_ve + sigma_ve² alpha score(x_vp, t).

Both entry points return (x0, nfe_measured): samples in data space and the number of score evaluations counted.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
import time
import types
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from scoresde.processes import DiscreteVP

__all__ = [
    "DIFFUSERS",
    "KDIFFUSION",
    "EULER_TYPE",
    "run_diffusers",
    "run_kdiffusion",
    "make_diffusers_scheduler",
    "kdiffusion_sigmas",
    "load_k_sampling",
    "zero_score",
    "time_per_step",
    "peer_versions",
]

DIFFUSERS: list[str] = ["ddpm", "ddim", "dpmpp_2m", "euler", "euler_ancestral", "heun", "unipc", "lms"]
KDIFFUSION: list[str] = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_sde", "dpmpp_2m_sde",
                         "dpmpp_3m_sde", "lms"]

# diffusers schedulers whose state lives in the VE scale and whose timesteps may be fractional
EULER_TYPE = frozenset({"euler", "euler_ancestral", "heun", "lms"})
# samplers that spend two evaluations per step (all but the last step, which ends at sigma = 0)
_TWO_EVAL = frozenset({"heun", "dpm_2", "dpmpp_sde"})

_DIFFUSERS_CLASSES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
}
# Departures from the schedulers' defaults. clip_sample is switched off everywhere it exists (data outside
# [-1, 1]). DDPM/DDIM default to "leading" spacing (first timestep (n-1) N/n, not N-1, so x_T ~ N(0, I) would be
# the prior of the wrong time); "trailing" starts at k = N-1 (t = 1) with the stride N/n that their step() assumes.
_DIFFUSERS_EXTRA = {
    "ddpm": {"timestep_spacing": "trailing", "variance_type": "fixed_small"},
    "ddim": {"timestep_spacing": "trailing", "set_alpha_to_one": True},
    "dpmpp_2m": {"algorithm_type": "dpmsolver++", "solver_order": 2},
}

_K_FUNCS = {
    "euler": "sample_euler",
    "euler_ancestral": "sample_euler_ancestral",
    "heun": "sample_heun",
    "dpm_2": "sample_dpm_2",
    "dpmpp_2m": "sample_dpmpp_2m",
    "dpmpp_sde": "sample_dpmpp_sde",
    "dpmpp_2m_sde": "sample_dpmpp_2m_sde",
    "dpmpp_3m_sde": "sample_dpmpp_3m_sde",
    "lms": "sample_lms",
}


def zero_score(x: Tensor, t: Tensor) -> Tensor:
    """A zero-cost ScoreFn, for timing the samplers' own loop overhead."""
    return torch.zeros_like(x)


# -- time mapping -------------------------------------------------------------------------------------------------
def _ve_sigma_of_step(process: DiscreteVP, i: int) -> float:
    """VE sigma sqrt((1 - ab_i) / ab_i) of integer step i (1..N), in float64."""
    lab = float(process.log_alphas_cumprod[i])
    return math.sqrt(math.expm1(-lab))


def _t_of_ve_sigmas(process: DiscreteVP, sigma_ve: Tensor) -> Tensor:
    """Process times (float64) whose VE sigmas are sigma_ve, clamped to [t_min, t_max]."""
    log_snr = -2.0 * torch.as_tensor(sigma_ve, dtype=torch.float64).log()
    return process.t_from_log_snr(log_snr).clamp(process.t_min, process.t_max)


class _Levels:
    """What the model adapter needs at L noise levels, prepared once and vectorised: for level j a (B,) time
    tensor (a stride-0 view) and python floats alpha, sigma_vp and x0_coef = sigma_ve² alpha."""

    def __init__(self, process: DiscreteVP, t: Tensor, batch: int, dtype: torch.dtype, device):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        alpha, sigma_vp = process.alpha(t), process.sigma(t)
        self.alpha = alpha.tolist()
        self.sigma_vp = sigma_vp.tolist()
        self.x0_coef = (sigma_vp**2 / alpha).tolist()  # sigma_ve² alpha = sigma_vp² / alpha
        td = t.to(dtype=dtype, device=device)
        self.t = [td[j].expand(batch) for j in range(t.numel())]

    def __len__(self) -> int:
        return len(self.t)


# -- diffusers -------------------------------------------------------------------------------------------------------
def make_diffusers_scheduler(name: str, process: DiscreteVP, **overrides):
    """The diffusers scheduler `name` on the process's betas (trained_betas), eps-prediction, no clipping."""
    import diffusers

    if name not in _DIFFUSERS_CLASSES:
        raise ValueError(f"unknown diffusers sampler {name!r}; expected one of {DIFFUSERS}")
    cls = getattr(diffusers, _DIFFUSERS_CLASSES[name])
    params = inspect.signature(cls.__init__).parameters
    kw = dict(
        num_train_timesteps=process.N,
        trained_betas=process.betas.numpy(),
        prediction_type="epsilon",
    )
    if "clip_sample" in params:
        kw["clip_sample"] = False
    kw.update(_DIFFUSERS_EXTRA.get(name, {}))
    kw.update(overrides)
    return cls(**kw)


def _diffusers_steps(name: str, nfe: int) -> int:
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe!r}")
    if name == "heun":  # 2 n - 1 evaluations for n steps
        return max(1, (nfe + 1) // 2)
    return nfe


def _diffusers_times(sched, process: DiscreteVP) -> Tensor:
    """Process time (float64) of every model evaluation of the scheduler's loop.

    Schedulers with a VE sigma per evaluation (all but DDPM / DDIM: len(sigmas) = len(timesteps) + 1) are
    evaluated at the sigma their step() uses, t = t_from_log_snr(-2 log sigma_ve); where the timestep k is an
    integer whose discrete sigma equals that sigma (to float32 precision), t = (k+1)/N exactly. DDPM / DDIM work
    on alphas_cumprod at integer timesteps: t = (k+1)/N.
    """
    N = process.N
    k = sched.timesteps.double().cpu()
    integral = (k - k.round()).abs() <= 1e-6
    t_k = (k.round().clamp(0, N - 1) + 1) / N
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is None or len(sigmas) != len(k) + 1:
        if not bool(integral.all()):
            raise RuntimeError(f"unexpected fractional timesteps {k.tolist()} without per-step sigmas")
        return t_k
    s = sigmas[:-1].double().cpu()
    t_s = _t_of_ve_sigmas(process, s)
    s_k = (torch.expm1(-process.log_alphas_cumprod[(k.round().clamp(0, N - 1) + 1).long()])).sqrt()
    same = integral & ((s / s_k - 1).abs() <= 1e-5)
    return torch.where(same, t_k, t_s)


def run_diffusers(
    name: str,
    score: Callable[[Tensor, Tensor], Tensor] | None,
    process: DiscreteVP,
    x_T: Tensor,
    nfe: int,
    generator: torch.Generator | None = None,
    on_first_eval: Callable[[], None] | None = None,
    **scheduler_overrides,
) -> tuple[Tensor, int]:
    """Sample with diffusers scheduler `name` from x_T ~ N(0, I); return (x0, measured NFE).

    score=None runs a raw zero eps-model with no adapter (pure loop-overhead timing).
    on_first_eval() is called just before the first model evaluation (timing hook: set-up ends there).
    Extra keyword arguments override the scheduler's constructor arguments (e.g. timestep_spacing=...).
    """
    sched = make_diffusers_scheduler(name, process, **scheduler_overrides)
    sched.set_timesteps(_diffusers_steps(name, nfe), device=x_T.device)
    batch, dtype, device = x_T.shape[0], x_T.dtype, x_T.device

    # Noise levels, prepared before the loop (one lookup per call), indexed by loop position, which equals the
    # scheduler's step_index (it starts at 0 and every step() call advances it by one, Heun's half-steps too).
    levels = None
    if score is not None:
        levels = _Levels(process, _diffusers_times(sched, process), batch, dtype, device)
    step_kw = {}
    if generator is not None and "generator" in inspect.signature(sched.step).parameters:
        step_kw["generator"] = generator

    nfe_measured = 0
    x = x_T * sched.init_noise_sigma
    for pos, k in enumerate(sched.timesteps):
        if nfe_measured == 0 and on_first_eval is not None:
            on_first_eval()
        inp = sched.scale_model_input(x, k)
        nfe_measured += 1
        if levels is None:
            eps = torch.zeros_like(inp)
        else:
            eps = score(inp, levels.t[pos]) * (-levels.sigma_vp[pos])
        x = sched.step(eps, k, x, return_dict=False, **step_kw)[0]
    return x, nfe_measured


# -- k-diffusion -------------------------------------------------------------------------------------------------------
KDIFFUSION_SOURCE: str | None = None  # "package" or "sampling.py file" once loaded
_K_SAMPLING = None


def load_k_sampling():
    """k_diffusion.sampling; if the package __init__ fails (it imports clip, skimage, wandb, ...), load only
    k_diffusion/sampling.py from the installed files, with a stub `utils` providing append_dims.
    sampling.py itself needs only torch, scipy, torchdiffeq, torchsde and tqdm."""
    global _K_SAMPLING, KDIFFUSION_SOURCE
    if _K_SAMPLING is not None:
        return _K_SAMPLING
    try:
        import k_diffusion.sampling as ks

        KDIFFUSION_SOURCE = "package"
    except Exception:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("k-diffusion is not installed: pip install --no-deps k-diffusion torchsde tqdm")
        path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
        pkg_name = "_peer_k_diffusion"
        pkg = types.ModuleType(pkg_name)
        pkg.__path__ = []  # a package, so that `from . import utils` resolves
        utils = types.ModuleType(pkg_name + ".utils")

        def append_dims(x, target_dims):  # k_diffusion.utils.append_dims, verbatim
            dims_to_append = target_dims - x.ndim
            if dims_to_append < 0:
                raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
            return x[(...,) + (None,) * dims_to_append]

        utils.append_dims = append_dims
        pkg.utils = utils
        sys.modules[pkg_name] = pkg
        sys.modules[pkg_name + ".utils"] = utils
        mspec = importlib.util.spec_from_file_location(pkg_name + ".sampling", path)
        ks = importlib.util.module_from_spec(mspec)
        sys.modules[pkg_name + ".sampling"] = ks
        mspec.loader.exec_module(ks)
        pkg.sampling = ks
        KDIFFUSION_SOURCE = "sampling.py file"
    _K_SAMPLING = ks
    return ks


def _kdiffusion_steps(name: str, nfe: int) -> int:
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe!r}")
    if name in _TWO_EVAL:  # 2 n - 1 evaluations for n noise levels (the last step to 0 is Euler)
        return max(1, (nfe + 1) // 2)
    return nfe


def kdiffusion_sigmas(process: DiscreteVP, n: int, grid: str = "karras", rho: float = 7.0) -> Tensor:
    """n decreasing VE sigmas followed by 0 (float64 values).

    "karras": k_diffusion.sampling.get_sigmas_karras(n, sigma_min, sigma_max, rho) with sigma_min / sigma_max the
    VE sigmas of steps 1 and N (it builds its ramp in float32; values are returned as float64).
    "ddpm": the N discrete DDPM sigmas subsampled uniformly in timestep, as k-diffusion's
    DiscreteSchedule.get_sigmas(n) does for CompVis/diffusers models: k = linspace(N-1, 0, n), log sigma
    interpolated linearly between integer timesteps (n = N gives exactly the N discrete sigmas).
    """
    ks = load_k_sampling()
    N = process.N
    if grid == "karras":
        smin, smax = _ve_sigma_of_step(process, 1), _ve_sigma_of_step(process, N)
        return ks.get_sigmas_karras(n, smin, smax, rho=rho).double()
    if grid == "ddpm":
        lab = process.log_alphas_cumprod[1:]  # float64, steps 1..N
        log_sigmas = 0.5 * torch.log(torch.expm1(-lab))
        k = torch.linspace(N - 1, 0, n, dtype=torch.float64)
        lo = k.floor().long().clamp(max=N - 2) if N > 1 else k.long()
        w = k - lo
        hi = (lo + 1).clamp(max=N - 1)
        sig = ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()
        return torch.cat([sig, sig.new_zeros(1)])
    raise ValueError(f"unknown grid {grid!r}; expected 'karras' or 'ddpm'")


def run_kdiffusion(
    name: str,
    score: Callable[[Tensor, Tensor], Tensor] | None,
    process: DiscreteVP,
    x_T: Tensor,
    nfe: int,
    generator: torch.Generator | None = None,
    grid: str = "karras",
    rho: float = 7.0,
    on_first_eval: Callable[[], None] | None = None,
) -> tuple[Tensor, int]:
    """Sample with k-diffusion sampler `name` from x_T ~ N(0, I) (started at x_T * sigma_max); return (x0, NFE).

    score=None runs a raw zero denoiser (D = 0) with no adapter (pure loop-overhead timing).
    on_first_eval() is called just before the first model evaluation (timing hook: set-up ends there).
    """
    if name not in _K_FUNCS:
        raise ValueError(f"unknown k-diffusion sampler {name!r}; expected one of {KDIFFUSION}")
    ks = load_k_sampling()
    batch, dtype, device = x_T.shape[0], x_T.dtype, x_T.device
    n = _kdiffusion_steps(name, nfe)
    sigmas64 = kdiffusion_sigmas(process, n, grid, rho)
    sigmas = sigmas64.to(dtype=dtype, device=device)

    counter = [0]
    if score is None:

        def model(x, sigma):
            if counter[0] == 0 and on_first_eval is not None:
                on_first_eval()
            counter[0] += 1
            return torch.zeros_like(x)

    else:
        # Levels for the grid and, for dpm_2 and dpmpp_sde, the log-midpoints (as sample_dpm_2 computes them;
        # sample_dpmpp_sde's exp(-(t + h / 2)) can differ in the last bit); keyed by the sigma value the sampler
        # passes. Any other sigma is mapped on the fly (exact, only slower).
        keys = sigmas[:-1]
        if name in ("dpm_2", "dpmpp_sde") and len(sigmas) > 2:
            mids = sigmas[:-2].log().lerp(sigmas[1:-1].log(), 0.5).exp()
            keys = torch.cat([keys, mids])
        keys = keys.cpu()
        levels = _Levels(process, _t_of_ve_sigmas(process, keys.double()), batch, dtype, device)
        index = {k: j for j, k in enumerate(keys.tolist())}

        def model(x, sigma):
            if counter[0] == 0 and on_first_eval is not None:
                on_first_eval()
            counter[0] += 1
            key = float(sigma.reshape(-1)[0])
            j = index.get(key)
            if j is None:
                lv = _Levels(process, _t_of_ve_sigmas(process, torch.tensor([key])), batch, dtype, device)
                return torch.add(x, score(x * lv.alpha[0], lv.t[0]), alpha=lv.x0_coef[0])
            return torch.add(x, score(x * levels.alpha[j], levels.t[j]), alpha=levels.x0_coef[j])

    kw = {"disable": True}
    if name == "dpmpp_2m_sde":  # the exact-integral ('heun') form, as scoresde's dpm_solver_pp_sde
        kw["solver_type"] = "heun"
    if name in ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde") and generator is not None:
        kw["noise_sampler"] = lambda s, s_next: torch.randn(
            x_T.shape, generator=generator, dtype=dtype, device=device
        )
    x = x_T * sigmas[0]
    if name == "dpmpp_sde" and generator is not None:  # its Brownian tree (two draws per step share an interval)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
        kw["noise_sampler"] = ks.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seed)
    x0 = getattr(ks, _K_FUNCS[name])(model, x, sigmas, **kw)
    return x0, counter[0]


# -- timing ------------------------------------------------------------------------------------------------------------
def time_per_step(
    run_fn: Callable[..., tuple[Tensor, int]],
    name: str,
    batch: int,
    nfe: int,
    repeats: int = 5,
    *,
    process: DiscreteVP | None = None,
    dim: int = 2,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    adapter: bool = True,
    include_setup: bool = False,
    stat: str = "median",
    **run_kwargs,
) -> float:
    """Wall seconds per score evaluation of run_fn(name, ...) with a zero-cost score (median over repeats).

    One evaluation is one solver step except for heun / dpm_2 / dpmpp_sde (two per step). By default only the
    sampling loop is timed, from the first model evaluation to the return (the peer's schedule set-up and our
    adapter's per-run table set-up excluded); include_setup=True times the whole call. adapter=True scores with
    `zero_score` through the ScoreFn adapter (time mapping + eps / x0 conversion); adapter=False uses a raw zero
    model (the peer's loop alone). One warm-up run first; torch's thread count is left as it is.
    stat: "median" or "min" over the repeats.
    """
    process = DiscreteVP.linear(1000) if process is None else process
    score = zero_score if adapter else None
    gen = torch.Generator(device=device).manual_seed(0)
    x_T = torch.randn(batch, dim, generator=gen, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    mark: list[float] = []

    def first():
        sync()
        mark.append(time.perf_counter())

    hook = None if include_setup else first
    _, nfe_measured = run_fn(name, score, process, x_T, nfe, generator=gen, on_first_eval=hook, **run_kwargs)
    sync()
    times = []
    for _ in range(repeats):
        mark.clear()
        t0 = time.perf_counter()
        run_fn(name, score, process, x_T, nfe, generator=gen, on_first_eval=hook, **run_kwargs)
        sync()
        t1 = time.perf_counter()
        times.append(t1 - (t0 if include_setup else mark[0]))
    times.sort()
    if stat == "min":
        return times[0] / nfe_measured
    if stat != "median":
        raise ValueError(f"stat must be 'median' or 'min', got {stat!r}")
    return times[len(times) // 2] / nfe_measured


def peer_versions() -> dict[str, str]:
    """Installed versions of the peers and their relevant dependencies."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "diffusers", "k-diffusion", "torchsde", "tqdm", "scipy", "numpy", "torchdiffeq"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
