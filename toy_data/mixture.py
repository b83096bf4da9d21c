"""Gaussian mixtures: the exact ground truth for every score identity, sampler and guidance rule.

Under x_t = alpha x0 + sigma eps a mixture sum_k w_k N(mu_k, Sigma_k) becomes sum_k w_k N(alpha mu_k,
alpha² Sigma_k + sigma² I). With Sigma_k = U_k diag(lam_k) U_kᵀ (eigendecomposition, once, in float64) the
noised covariance is U_k diag(alpha² lam_k + sigma²) U_kᵀ, so per-sample times cost no per-sample
factorisation: densities, scores and posterior means are exact and stable (logsumexp over components).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from scoresde.processes import Process

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """sum_k weights[k] N(means[k], covariances[k]) in D dimensions, optionally with a class label per component.

    Data may be given with any trailing shape (e.g. images (B, 1, 8, 8) with D = 64); `event_shape` sets it.
    """

    def __init__(
        self,
        weights: Tensor | Sequence[float],
        means: Tensor | Sequence[Sequence[float]],
        covariances: Tensor | Sequence,
        labels: Tensor | Sequence[int] | None = None,
        event_shape: Sequence[int] | None = None,
    ):
        w = torch.as_tensor(weights, dtype=torch.float64).cpu()
        mu = torch.as_tensor(means, dtype=torch.float64).cpu()
        cov = torch.as_tensor(covariances, dtype=torch.float64).cpu()
        if mu.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(mu.shape)}")
        k, d = mu.shape
        if w.shape != (k,):
            raise ValueError(f"weights must have shape ({k},) to match means, got {tuple(w.shape)}")
        if bool((w < 0).any()) or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-6):
            raise ValueError(f"weights must be non-negative and sum to one, got {w.tolist()} (sum {float(w.sum())!r})")
        if cov.shape != (k, d, d):
            raise ValueError(f"covariances must have shape ({k}, {d}, {d}), got {tuple(cov.shape)}")
        if not torch.allclose(cov, cov.transpose(1, 2), atol=1e-12, rtol=1e-9):
            raise ValueError("covariances must be symmetric")
        lam, u = torch.linalg.eigh(cov)
        if bool((lam <= 0).any()):
            i = int((lam <= 0).any(1).nonzero()[0])
            raise ValueError(
                f"covariances[{i}] is not positive definite: smallest eigenvalue {lam[i].min().item()!r}"
            )
        self._setup(w, mu, lam, u, labels, event_shape, cov)

    def _setup(self, w: Tensor, mu: Tensor, lam: Tensor, u: Tensor, labels, event_shape, cov: Tensor | None = None):
        """Store the parameters, covariances given by their eigendecomposition U diag(lam) Uᵀ (lam >= 0)."""
        k, d = mu.shape
        self.weights, self.means = w, mu
        self.covariances = cov if cov is not None else (u * lam[:, None, :]) @ u.transpose(1, 2)
        self.eigvals, self.eigvecs = lam, u
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long).cpu()
        if self.labels is not None and self.labels.shape != (k,):
            raise ValueError(f"labels must have shape ({k},), got {tuple(self.labels.shape)}")
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not hold D = {d} values")
        self._cache: dict = {}

    @classmethod
    def _from_eigh(cls, w: Tensor, mu: Tensor, lam: Tensor, u: Tensor, labels, event_shape,
                   cov: Tensor | None = None) -> "GaussianMixture":
        """A mixture from eigendecomposed covariances; zero eigenvalues allowed (a degenerate mixture)."""
        out = cls.__new__(cls)
        out._setup(w, mu, lam, u, labels, event_shape, cov)
        return out

    @property
    def degenerate(self) -> bool:
        """True if some component has zero variance in some direction (the posterior of a noiseless measurement):
        its density and score exist only once noised (t with sigma(t) > 0)."""
        return bool((self.eigvals == 0).any())

    # -- construction helpers ------------------------------------------------------------------------------------
    @classmethod
    def isotropic(
        cls,
        weights: Sequence[float] | Tensor,
        means: Tensor | Sequence[Sequence[float]],
        std: float | Sequence[float],
        labels: Sequence[int] | None = None,
        event_shape: Sequence[int] | None = None,
    ) -> "GaussianMixture":
        """Mixture with covariances std_k² I."""
        mu = torch.as_tensor(means, dtype=torch.float64)
        k, d = mu.shape
        std = torch.as_tensor(std, dtype=torch.float64).expand(k)
        cov = std[:, None, None] ** 2 * torch.eye(d, dtype=torch.float64)
        return cls(weights, mu, cov, labels=labels, event_shape=event_shape)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_classes(self) -> int:
        if self.labels is None:
            raise ValueError("this mixture has no class labels")
        return int(self.labels.max()) + 1

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, D={self.dim})"

    def _params(self, like: Tensor) -> tuple[Tensor, ...]:
        """log w (K,), mu (K, D), lam (K, D), U stacked as (D, K*D), mu rotated into each eigenbasis (K, D)."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            # built outside inference mode: inference tensors in the cache would break later autograd
            with torch.inference_mode(False):
                k, d = self.means.shape
                u_flat = self.eigvecs.permute(1, 0, 2).reshape(d, k * d)  # u_flat[:, k*D + j] = U_k[:, j]
                mu_rot = torch.einsum("kd,kdj->kj", self.means, self.eigvecs)
                self._cache[key] = tuple(
                    p.to(device=like.device, dtype=like.dtype)
                    for p in (self.weights.log(), self.means, self.eigvals, u_flat, mu_rot)
                )
        return self._cache[key]

    # -- sampling ------------------------------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw n exact samples of shape (n, *event_shape); optionally their component labels too."""
        if generator is not None and device is None:
            device = generator.device
        comp = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=torch.float64)
        mu, lam, u = (p.to(device) for p in (self.means, self.eigvals, self.eigvecs))
        x = mu[comp] + torch.einsum("nij,nj->ni", u[comp], lam[comp].sqrt() * z)
        x = x.to(dtype).reshape((n,) + self.event_shape)
        if return_labels:
            lab = comp if self.labels is None else self.labels.to(device)[comp]
            return x, lab
        return x

    # -- exact noised quantities ---------------------------------------------------------------------------------
    def _components(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per sample and component: log w_k N_k(x), y = U_kᵀ(x - alpha mu_k) (B, K, D), noised eigenvalues."""
        logw, _, lam, u_flat, mu_rot = self._params(x)
        xf = x.reshape(x.shape[0], -1)
        if xf.shape[1] != self.dim:
            raise ValueError(f"x has {xf.shape[1]} values per sample, the mixture has D = {self.dim}")
        a = alpha.reshape(-1, 1, 1)  # (B or 1, 1, 1)
        var = a**2 * lam + (sigma**2).reshape(-1, 1, 1)  # (B or 1, K, D)
        k, d = self.num_components, self.dim
        y = (xf @ u_flat).reshape(xf.shape[0], k, d) - a * mu_rot
        terms = y * y / var
        if d <= 4:  # torch's sum over a last dimension of 2 or 3 costs several times these adds
            quad = terms[..., 0]
            for j in range(1, d):
                quad = quad + terms[..., j]
        else:
            quad = terms.sum(-1)
        log_n = -0.5 * (quad + var.log().sum(-1) + d * math.log(2 * math.pi))
        return logw + log_n, y, var

    def _alpha_sigma(self, x: Tensor, process: Process | None, t: Tensor | float | None) -> tuple[Tensor, Tensor]:
        if process is None:
            if self.degenerate:
                raise ValueError("this mixture is degenerate (zero variance in some direction, e.g. the posterior of a "
                                 "noiseless measurement): it has no density or score at t = 0; pass a process and t")
            one = x.new_ones(())
            return one, one * 0
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim > 1 or (t.ndim == 1 and (x.ndim == 0 or t.shape[0] != x.shape[0])):
            raise ValueError(f"t must be a scalar or have shape (B,) for x of shape {tuple(x.shape)}; got t of shape "
                             f"{tuple(t.shape)}")
        if t.ndim == 1 and t.shape[0] > 1 and t.stride(0) == 0:
            t = t[:1]  # one time expanded over the batch (as samplers pass it): noise the mixture once
        t = process.check_t(t)
        return process.alpha(t).to(x.dtype), process.sigma(t).to(x.dtype)

    def log_prob(self, x: Tensor, process: Process | None = None, t: Tensor | float | None = None) -> Tensor:
        """Exact log density of x (shape (B, ...)) under the mixture, or under its noised version at time t."""
        alpha, sigma = self._alpha_sigma(x, process, t)
        lp, _, _ = self._components(x, alpha, sigma)
        return torch.logsumexp(lp, dim=1)

    def score(self, x: Tensor, process: Process | None = None, t: Tensor | float | None = None) -> Tensor:
        """Exact score ∇_x log p_t(x), same shape as x."""
        alpha, sigma = self._alpha_sigma(x, process, t)
        lp, y, var = self._components(x, alpha, sigma)
        r = torch.softmax(lp, dim=1)  # responsibilities (B, K)
        u_flat = self._params(x)[3]
        # sum_k r_k U_k (-y_k / var_k): one matmul with the stacked eigenvectors
        return -((r[..., None] * y / var).reshape(x.shape[0], -1) @ u_flat.T).reshape(x.shape)

    def posterior_mean(self, x: Tensor, process: Process, t: Tensor | float) -> Tensor:
        """Exact E[x0 | x_t = x], computed by Gaussian conditioning in each component (not by Tweedie)."""
        alpha, sigma = self._alpha_sigma(x, process, t)
        _, mu, lam, u_flat, _ = self._params(x)
        lp, y, var = self._components(x, alpha, sigma)
        r = torch.softmax(lp, dim=1)
        a = alpha.reshape(-1, 1, 1)
        # E[x0 | x_t, k] = mu_k + Sigma_k a C_k^{-1} (x - a mu_k), in the eigenbasis of Sigma_k
        shift = (r[..., None] * (a * lam * y / var)).reshape(x.shape[0], -1) @ u_flat.T
        return (r @ mu + shift).reshape(x.shape)

    def class_log_prob(self, x: Tensor, process: Process | None = None, t: Tensor | float | None = None) -> Tensor:
        """Exact log p_t(y | x) for every class y, shape (B, num_classes)."""
        alpha, sigma = self._alpha_sigma(x, process, t)
        lp, _, _ = self._components(x, alpha, sigma)
        classes = torch.arange(self.num_classes, device=x.device)
        member = self.labels.to(x.device)[None, :] == classes[:, None]  # (C, K)
        masked = torch.where(member, lp[:, None, :], lp.new_tensor(-math.inf))  # (B, C, K)
        log_joint = torch.logsumexp(masked, dim=2)
        return log_joint - torch.logsumexp(lp, dim=1, keepdim=True)

    def conditional(self, y: int) -> "GaussianMixture":
        """The mixture p(x | y): the components labelled y, weights renormalised."""
        if self.labels is None:
            raise ValueError("this mixture has no class labels")
        keep = self.labels == y
        if not bool(keep.any()):
            raise ValueError(f"no component has label {y!r}; labels are {sorted(set(self.labels.tolist()))}")
        w = self.weights[keep]
        return GaussianMixture._from_eigh(
            w / w.sum(), self.means[keep], self.eigvals[keep], self.eigvecs[keep], self.labels[keep], self.event_shape,
            self.covariances[keep],
        )

    def condition(self, A, y: Tensor | Sequence[float], noise_std: float) -> "GaussianMixture":
        """The exact posterior p(x0 | y) of the measurement y = A x0 + noise_std n, n ~ N(0, I): a Gaussian mixture.

        A is an (M, D) matrix or an operator with `matrix()` (scoresde.guidance.Mask, BlockAverage, Projection);
        y is one measurement with M values (no batch). Per component, by Gaussian conditioning:
            C_k = A S_k Aᵀ + noise_std² I,  K_k = S_k Aᵀ C_k⁻¹,  m_k' = m_k + K_k (y - A m_k),
            S_k' = (I - K_k A) S_k (I - K_k A)ᵀ + noise_std² K_k K_kᵀ   (Joseph's form: PSD despite rounding),
        and w_k' ∝ w_k N(y; A m_k, C_k), the component's evidence. noise_std = 0 needs every C_k nonsingular (A of
        full row rank); the posterior is then degenerate (zero variance along A's rows, eigenvalues set to 0 below
        rounding level): its noised densities and scores are exact for sigma(t) > 0.
        """
        a = torch.as_tensor(A.matrix() if hasattr(A, "matrix") else A, dtype=torch.float64).cpu()
        d = self.dim
        if a.ndim != 2 or a.shape[1] != d or a.shape[0] < 1:
            raise ValueError(f"A must be an (M, {d}) matrix for this D = {d} mixture, got shape {tuple(a.shape)}")
        if not bool(torch.isfinite(a).all()):
            raise ValueError("A has a non-finite entry (NaN or inf)")
        m = a.shape[0]
        yv = torch.as_tensor(y, dtype=torch.float64).detach().cpu().reshape(-1)
        if yv.numel() != m:
            raise ValueError(f"y must hold one measurement of M = {m} values (no batch), got shape "
                             f"{tuple(torch.as_tensor(y).shape)}")
        if not bool(torch.isfinite(yv).all()):
            raise ValueError(f"y has a non-finite entry: {yv.tolist()}")
        if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not noise_std >= 0 \
                or not math.isfinite(noise_std):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        s = self.covariances
        sat = s @ a.T  # (K, D, M)
        c = a @ sat + noise_std**2 * torch.eye(m, dtype=torch.float64)
        chol, info = torch.linalg.cholesky_ex(c)
        diag = chol.diagonal(dim1=-2, dim2=-1)
        singular = (info != 0) | ~(diag.amin(-1) > 1e-7 * diag.amax(-1))  # condition number above 1e14
        if bool(singular.any()):
            k = int(singular.nonzero()[0])
            raise ValueError(f"A S_k Aᵀ + noise_std² I is singular for component {k} (noise_std = {noise_std!r}): "
                             "with noise_std = 0, A must have full row rank")
        resid = yv - self.means @ a.T  # (K, M)
        z = torch.linalg.solve_triangular(chol, resid[..., None], upper=False)[..., 0]
        log_evidence = -0.5 * (z.square().sum(-1) + m * math.log(2 * math.pi)) - diag.log().sum(-1)
        gain = torch.cholesky_solve(sat.transpose(1, 2), chol).transpose(1, 2)  # K_k = S_k Aᵀ C_k⁻¹, (K, D, M)
        mu = self.means + (gain @ resid[..., None])[..., 0]
        i_ka = torch.eye(d, dtype=torch.float64) - gain @ a
        cov = i_ka @ s @ i_ka.transpose(1, 2) + noise_std**2 * gain @ gain.transpose(1, 2)
        cov = 0.5 * (cov + cov.transpose(1, 2))
        lam, u = torch.linalg.eigh(cov)
        tol = 64 * d * torch.finfo(torch.float64).eps * self.eigvals.amax(1, keepdim=True)
        lam = torch.where(lam > tol, lam, torch.zeros_like(lam))
        w = torch.softmax(self.weights.log() + log_evidence, dim=0)
        return GaussianMixture._from_eigh(w, mu, lam, u, self.labels, self.event_shape)

    def score_fn(self, process: Process):
        """The exact ScoreFn (x, t) -> ∇ log p_t(x) of this mixture noised by process."""

        def score(x: Tensor, t: Tensor) -> Tensor:
            return self.score(x, process, t)

        return score

    # -- moments -------------------------------------------------------------------------------------------------
    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def entropy_mc(self, n: int = 200_000, generator: torch.Generator | None = None) -> tuple[float, float]:
        """Monte Carlo entropy -E[log p(x)] (nats) and its standard error."""
        x = self.sample(n, generator=generator, dtype=torch.float64)
        lp = self.log_prob(x)
        return float(-lp.mean()), float(lp.std() / math.sqrt(n))

