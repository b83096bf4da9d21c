"""Noising processes x_t = alpha(t) * x0 + sigma(t) * eps, and the SDEs that produce them.

Everything derives from alpha(t) and sigma(t) (Kingma et al. 2021, "Variational Diffusion Models"):

    f(t)  = d log alpha / dt                      drift coefficient, drift(x, t) = f(t) x
    g(t)² = d sigma² / dt - 2 f(t) sigma(t)²      squared diffusion coefficient
    log_snr(t) = log(alpha² / sigma²)

Concrete processes override these with closed forms; the base class falls back to autograd.

Range checks on t (ValueError naming the value) run when t lives on the CPU, where they cost no device
synchronisation. On accelerators they are skipped so that sampling and training loops never wait on the host;
samplers check their (CPU, float64) time grids once before the loop.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ._utils import append_dims, as_time, check_positive

__all__ = ["Process", "VE", "VP", "SubVP", "DiscreteVP", "EDM", "from_config", "PROCESSES"]


class Process:
    """A Gaussian noising process defined by alpha(t) and sigma(t) on [t_min, t_max]."""

    t_min: float
    t_max: float
    discrete: bool = False  # True: train_times draws integer steps (DiscreteVP), not continuous times

    # -- to implement: closed forms on tensors, no checks -----------------------------------------------------
    def _alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _log_snr(self, t: Tensor) -> Tensor:
        return 2.0 * (torch.log(self._alpha(t)) - torch.log(self._sigma(t)))

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t)) unchecked; processes override it to share work (the training loss's hot path)."""
        return self._alpha(t), self._sigma(t)

    def _f(self, t: Tensor) -> Tensor:
        with torch.enable_grad():
            tt = t.detach().requires_grad_(True)
            (d,) = torch.autograd.grad(torch.log(self._alpha(tt)).sum(), tt)
        return d

    def _g2(self, t: Tensor) -> Tensor:
        with torch.enable_grad():
            tt = t.detach().requires_grad_(True)
            (dvar,) = torch.autograd.grad((self._sigma(tt) ** 2).sum(), tt)
        return dvar - 2.0 * self._f(t) * self._sigma(t) ** 2

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # Generic fallback: bisection, valid because log_snr is decreasing in t.
        lo = torch.full_like(log_snr, self.t_min, dtype=torch.float64)
        hi = torch.full_like(log_snr, self.t_max, dtype=torch.float64)
        target = log_snr.double()
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self._log_snr(mid) > target
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(log_snr.dtype)

    # -- public API ----------------------------------------------------------------------------------------------
    def check_t(self, t: Tensor | float) -> Tensor:
        """Return t as a tensor; raise ValueError if any value (on the CPU) lies outside [t_min, t_max]."""
        t = as_time(t)
        if t.device.type == "cpu" and t.numel() > 0:
            lo, hi = torch.aminmax(t.detach())
            slack = 1e-6 * max(abs(self.t_max), 1.0)
            if not (lo >= self.t_min - slack and hi <= self.t_max + slack):
                bad = lo.item() if not lo >= self.t_min - slack else hi.item()
                raise ValueError(
                    f"t = {bad!r} is outside [{self.t_min}, {self.t_max}] for {self!r}"
                )
        return t

    def alpha(self, t: Tensor | float) -> Tensor:
        """Signal scale alpha(t)."""
        return self._alpha(self.check_t(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        """Noise scale sigma(t)."""
        return self._sigma(self.check_t(t))

    def log_snr(self, t: Tensor | float) -> Tensor:
        """log(alpha(t)² / sigma(t)²), decreasing in t."""
        return self._log_snr(self.check_t(t))

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        """Inverse of log_snr."""
        return self._t_from_log_snr(as_time(log_snr))

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t)) in one call; processes share work between the two (the training loss's hot path)."""
        return self._alpha_sigma(self.check_t(t))

    def train_times(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """n training times: uniform on [t_min, t_max] (DiscreteVP: uniform over its integer steps)."""
        return torch.empty(n, device=device, dtype=dtype).uniform_(self.t_min, self.t_max, generator=generator)

    def config(self) -> dict:
        """A JSON-able description; from_config(process.config()) rebuilds the process."""
        raise NotImplementedError(f"{type(self).__name__} has no config(); define one to save it in checkpoints")

    def f(self, t: Tensor | float) -> Tensor:
        """Drift coefficient f(t) = d log alpha / dt."""
        return self._f(self.check_t(t))

    def g2(self, t: Tensor | float) -> Tensor:
        """Squared diffusion coefficient g(t)² = d sigma²/dt - 2 f sigma²."""
        return self._g2(self.check_t(t))

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Forward SDE drift f(t) x, for x of shape (B, ...) and t scalar or (B,)."""
        return append_dims(self.f(as_time(t, x)), x.ndim) * x

    def diffusion(self, t: Tensor | float) -> Tensor:
        """Forward SDE diffusion coefficient g(t)."""
        return self.g2(t).clamp_min(0).sqrt()

    def perturb(self, x0: Tensor, t: Tensor | float, eps: Tensor) -> Tensor:
        """Sample of the marginal: alpha(t) x0 + sigma(t) eps."""
        if eps.shape != x0.shape:
            raise ValueError(f"eps has shape {tuple(eps.shape)} but x0 has shape {tuple(x0.shape)}")
        t = as_time(t, x0)
        return append_dims(self.alpha(t), x0.ndim) * x0 + append_dims(self.sigma(t), x0.ndim) * eps

    def transition(self, s: Tensor | float, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(alpha_ts, sigma_ts) of q(x_t | x_s) = N(alpha_ts x_s, sigma_ts² I) for s < t."""
        a_s, a_t = self.alpha(s), self.alpha(t)
        s_s, s_t = self.sigma(s), self.sigma(t)
        alpha_ts = a_t / a_s
        var_ts = s_t**2 - alpha_ts**2 * s_s**2
        return alpha_ts, var_ts.clamp_min(0).sqrt()

    def posterior_coefficients(self, s: Tensor | float, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """(c_x0, c_xt, std) with q(x_s | x_t, x0) = N(c_x0 x0 + c_xt x_t, std² I), s < t.

        On DiscreteVP with consecutive steps this is DDPM's posterior q(x_{i-1} | x_i, x0).
        """
        a_s, s_s, s_t = self.alpha(s), self.sigma(s), self.sigma(t)
        alpha_ts, sigma_ts = self.transition(s, t)
        c_xt = alpha_ts * s_s**2 / s_t**2
        c_x0 = a_s * sigma_ts**2 / s_t**2
        std = sigma_ts * s_s / s_t
        return c_x0, c_xt, std

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std² I) at t_max."""
        return float(self._sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def prior(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Sample x_T ~ N(0, prior_std² I)."""
        if generator is not None and device is None:
            device = generator.device
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return z * self.prior_std

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std² I), summed over all but the batch dimension."""
        d = z[0].numel()
        s = self.prior_std
        return -0.5 * z.flatten(1).pow(2).sum(1) / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))


class VE(Process):
    """Variance exploding (NCSN / SMLD): alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t, t in [0, 1]."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        check_positive("sigma_min", sigma_min)
        check_positive("sigma_max", sigma_max)
        if sigma_min >= sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min!r} >= sigma_max={sigma_max!r}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.t_min, self.t_max = 0.0, 1.0

    def __repr__(self) -> str:
        return f"VE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    def config(self) -> dict:
        return {"name": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def _alpha(self, t):
        return 1.0 + 0.0 * t  # stays differentiable in t

    def _sigma(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _log_snr(self, t):
        return -2.0 * (math.log(self.sigma_min) + t * self._log_ratio)

    def _t_from_log_snr(self, log_snr):
        return (-0.5 * log_snr - math.log(self.sigma_min)) / self._log_ratio

    def _f(self, t):
        return torch.zeros_like(t)

    def _g2(self, t):
        return 2.0 * self._log_ratio * self._sigma(t) ** 2

    @property
    def prior_std(self) -> float:
        return self.sigma_max


class _LinearBeta(Process):
    """Shared by VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min), t in [t_min, 1]."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        check_positive("beta_min", beta_min)
        check_positive("beta_max", beta_max)
        if beta_min >= beta_max:
            raise ValueError(f"need beta_min < beta_max, got beta_min={beta_min!r} >= beta_max={beta_max!r}")
        if not 0 < t_min < 1:
            raise ValueError(f"t_min must lie in (0, 1), got {t_min!r}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, t_min={self.t_min})"

    def config(self) -> dict:
        return {"name": type(self).__name__.lower(), "beta_min": self.beta_min, "beta_max": self.beta_max,
                "t_min": self.t_min}

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _int_beta(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        ib = t * (t * (0.5 * (self.beta_max - self.beta_min)) + self.beta_min)  # ∫beta, in three operations
        return (ib * -0.5).exp_(), self._sigma_from_int_beta(ib)

    def _t_from_int_beta(self, c: Tensor) -> Tensor:
        d = self.beta_max - self.beta_min
        # positive root of d/2 t² + beta_min t - c = 0, in the cancellation-free form
        return 2.0 * c / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * d * c))

    def _alpha(self, t):
        return torch.exp(-0.5 * self._int_beta(t))

    def _f(self, t):
        return -0.5 * self.beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0


class VP(_LinearBeta):
    """Variance preserving (DDPM's continuous limit): alpha = exp(-½∫beta), sigma = sqrt(1 - alpha²)."""

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._int_beta(t)))

    def _sigma_from_int_beta(self, ib: Tensor) -> Tensor:
        return ib.neg().expm1_().neg_().sqrt_()

    def _log_snr(self, t):
        return -torch.log(torch.expm1(self._int_beta(t)))

    def _t_from_log_snr(self, log_snr):
        return self._t_from_int_beta(torch.nn.functional.softplus(-log_snr))

    def _g2(self, t):
        return self.beta(t)


class SubVP(_LinearBeta):
    """Sub-VP (Song et al. 2021): alpha = exp(-½∫beta), sigma = 1 - alpha²."""

    def _sigma(self, t):
        return -torch.expm1(-self._int_beta(t))

    def _sigma_from_int_beta(self, ib: Tensor) -> Tensor:
        return ib.neg().expm1_().neg_()

    def _log_snr(self, t):
        b = self._int_beta(t)
        return -b - 2.0 * torch.log(-torch.expm1(-b))

    def _t_from_log_snr(self, log_snr):
        r = torch.exp(0.5 * log_snr)  # alpha / (1 - alpha²) = r  =>  alpha = 2r / (1 + sqrt(1 + 4r²))
        alpha = 2.0 * r / (1.0 + torch.sqrt(1.0 + 4.0 * r**2))
        return self._t_from_int_beta(-2.0 * torch.log(alpha))

    def _g2(self, t):
        return self.beta(t) * -torch.expm1(-2.0 * self._int_beta(t))


class DiscreteVP(Process):
    """DDPM as a discrete VP process with betas beta_1..beta_N.

    Step i (1..N) sits at time t_i = i / N, and alpha_bar_i = prod_{j<=i} (1 - beta_j) = alpha(t_i)².
    Between steps, log alpha_bar is linear in t, so the continuous process has piecewise-constant
    f(t) = (N/2) log(1 - beta_i) and g(t)² = -N log(1 - beta_i) ≈ N beta_i on (t_{i-1}, t_i]: with
    beta_i = beta(t_i) / N this is the Euler discretisation of VP(beta_min, beta_max), so
    DiscreteVP.linear(1000) matches VP(0.1, 20) up to O(1/N).
    """

    discrete = True

    def __init__(self, betas: Tensor | Sequence[float]):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
        if betas.numel() < 1:
            raise ValueError("betas must hold at least one value")
        bad = ~((betas > 0) & (betas < 1))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"betas must lie in (0, 1); beta[{i}] = {betas[i].item()!r}")
        self.betas = betas
        self.N = betas.numel()
        self.log_alphas_cumprod = torch.cat([betas.new_zeros(1), torch.cumsum(torch.log1p(-betas), 0)])
        self.alphas_cumprod = self.log_alphas_cumprod[1:].exp()
        self.t_min, self.t_max = 1.0 / self.N, 1.0
        self._tables: dict = {}
        self._config: dict = {"name": "ddpm", "schedule": "custom", "betas": betas.tolist()}

    @classmethod
    def linear(cls, N: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "DiscreteVP":
        """DDPM's linear schedule (Ho et al. 2020); for N != 1000 the betas scale by 1000/N."""
        if N < 1:
            raise ValueError(f"N must be >= 1, got {N!r}")
        scale = 1000.0 / N
        process = cls(torch.linspace(beta_start * scale, beta_end * scale, N, dtype=torch.float64))
        process._config = {"name": "ddpm", "schedule": "linear", "N": N, "beta_start": beta_start, "beta_end": beta_end}
        return process

    @classmethod
    def cosine(cls, N: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "DiscreteVP":
        """The cosine schedule of Nichol & Dhariwal (2021), betas clipped at max_beta."""
        if N < 1:
            raise ValueError(f"N must be >= 1, got {N!r}")
        t = torch.arange(N + 1, dtype=torch.float64) / N
        ab = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        process = cls((1 - ab[1:] / ab[:-1]).clamp(max=max_beta))
        process._config = {"name": "ddpm", "schedule": "cosine", "N": N, "s": s, "max_beta": max_beta}
        return process

    def __repr__(self) -> str:
        return f"DiscreteVP(N={self.N})"

    def config(self) -> dict:
        return dict(self._config)

    def train_times(self, n, *, generator=None, device=None, dtype=torch.float32):
        """n training times t_i = i / N, i uniform over the integer steps 1..N."""
        i = torch.randint(1, self.N + 1, (n,), generator=generator, device=device)
        return i.to(dtype) / self.N

    def step_to_t(self, i: Tensor | int) -> Tensor:
        """Time t_i = i / N of integer step i."""
        return torch.as_tensor(i, dtype=torch.float64) / self.N

    def t_to_step(self, t: Tensor) -> Tensor:
        """Nearest integer step of time t."""
        return torch.round(as_time(t) * self.N).long()

    def _table(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = self.log_alphas_cumprod.to(device=like.device, dtype=like.dtype)
        return self._tables[key]

    def _log_alpha_bar(self, t: Tensor) -> Tensor:
        table = self._table(t)
        u = t * self.N
        i = u.detach().floor().clamp(0, self.N - 1).long()
        lo, hi = table[i], table[i + 1]
        return lo + (u - i) * (hi - lo)

    def _alpha(self, t):
        return torch.exp(0.5 * self._log_alpha_bar(t))

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(self._log_alpha_bar(t)))

    def _alpha_sigma(self, t):
        lab = self._log_alpha_bar(t)  # one table lookup for both
        return torch.exp(0.5 * lab), torch.sqrt(-torch.expm1(lab))

    def _log_snr(self, t):
        lab = self._log_alpha_bar(t)
        return lab - torch.log(-torch.expm1(lab))

    def _slope(self, t: Tensor) -> Tensor:
        # d log alpha_bar / dt on the interval (t_{i-1}, t_i] holding t
        table = self._table(t)
        i = torch.ceil(t * self.N - 1e-9).clamp(1, self.N).long()
        return (table[i] - table[i - 1]) * self.N

    def _f(self, t):
        return 0.5 * self._slope(t)

    def _g2(self, t):
        return -self._slope(t)

    def _t_from_log_snr(self, log_snr):
        table = self._table(log_snr)
        lab = torch.nn.functional.logsigmoid(log_snr)  # log alpha_bar = log sigmoid(log_snr)
        neg = -table  # increasing in i
        j = torch.searchsorted(neg, (-lab).contiguous()).clamp(1, self.N)
        lo, hi = table[j - 1], table[j]
        return ((j - 1) + (lab - lo) / (hi - lo)) / self.N

    @property
    def prior_std(self) -> float:
        return 1.0


class EDM(Process):
    """EDM's parametrisation (Karras et al. 2022): alpha = 1, sigma(t) = t, t in [sigma_min, sigma_max].

    Process time is the noise level, so an EDM or k-diffusion denoiser D(x, sigma) runs at t = sigma unchanged.
    The marginals are VE's; only the clock differs (VE's t is log sigma, rescaled to [0, 1]).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        check_positive("sigma_min", sigma_min)
        check_positive("sigma_max", sigma_max)
        if sigma_min >= sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min!r} >= sigma_max={sigma_max!r}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_min, self.t_max = self.sigma_min, self.sigma_max

    def __repr__(self) -> str:
        return f"EDM(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    def config(self) -> dict:
        return {"name": "edm", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def _alpha(self, t):
        return 1.0 + 0.0 * t  # stays differentiable in t

    def _sigma(self, t):
        return 1.0 * t

    def _log_snr(self, t):
        return -2.0 * torch.log(t)

    def _t_from_log_snr(self, log_snr):
        return torch.exp(-0.5 * log_snr)

    def _f(self, t):
        return torch.zeros_like(t)

    def _g2(self, t):
        return 2.0 * t

    @property
    def prior_std(self) -> float:
        return self.sigma_max


PROCESSES = ("vp", "ve", "subvp", "ddpm", "ddpm-cosine", "edm")


def from_config(config: dict | str) -> Process:
    """Rebuild a process from Process.config(); a name alone takes the defaults ("ddpm-cosine": the cosine DDPM).

    Names: vp, ve, subvp, ddpm (linear betas; schedule "cosine" or "custom" with betas), ddpm-cosine, edm.
    """
    if isinstance(config, str):
        config = {"name": "ddpm", "schedule": "cosine"} if config == "ddpm-cosine" else {"name": config}
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"a process config is a dict with a 'name', got {config!r}")
    kw = {k: v for k, v in config.items() if k != "name"}
    name = config["name"]
    try:
        if name in ("ve", "edm"):
            return (VE if name == "ve" else EDM)(**kw)
        if name in ("vp", "subvp"):
            return (VP if name == "vp" else SubVP)(**kw)
        if name == "ddpm":
            schedule = kw.pop("schedule", "linear")
            if schedule == "custom":
                return DiscreteVP(**kw)
            if schedule not in ("linear", "cosine"):
                raise ValueError(f"unknown DDPM schedule {schedule!r}; choose linear, cosine or custom")
            return getattr(DiscreteVP, schedule)(**kw)
    except TypeError as e:
        raise ValueError(f"bad process config {config!r}: {e}") from None
    raise ValueError(f"unknown process {name!r}; choose from {', '.join(PROCESSES)}")
