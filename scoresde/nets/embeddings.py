"""Noise-level embeddings shared by every network: features of log sigma."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SigmaEmbedding", "EMBEDDINGS"]

EMBEDDINGS = ("sinusoidal", "fourier")


class SigmaEmbedding(nn.Module):
    """Features of c_noise = log(sigma) / 4 (EDM's noise conditioning).

    "sinusoidal": Transformer-style sin/cos at geometric frequencies (DDPM);
    "fourier": sin/cos at fixed random Gaussian frequencies of std `scale` (score_sde's GaussianFourierProjection).
    """

    def __init__(self, dim: int = 64, kind: str = "sinusoidal", scale: float = 16.0, max_period: float = 1000.0):
        super().__init__()
        if kind not in EMBEDDINGS:
            raise ValueError(f"unknown sigma embedding {kind!r}; choose from {', '.join(EMBEDDINGS)}")
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be an even number >= 2, got {dim!r}")
        half = dim // 2
        if kind == "sinusoidal":
            # log sigma / 4 spans about [-1.2, 1] for sigma in [0.01, 50]; scaled so the slowest frequency
            # still varies across that range and the fastest resolves it finely.
            freqs = 100.0 * torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        else:
            g = torch.Generator().manual_seed(0)  # fixed, so a rebuilt network has the same buffer
            freqs = torch.randn(half, generator=g, dtype=torch.float64) * scale
        self.register_buffer("freqs", (2 * math.pi * freqs).float() if kind == "fourier" else freqs.float())
        self.dim, self.kind = dim, kind

    def forward(self, sigma: Tensor) -> Tensor:
        """(B,) noise levels -> (B, dim) features."""
        c = torch.log(sigma).to(self.freqs.dtype)[:, None] * 0.25 * self.freqs
        return torch.cat([c.sin(), c.cos()], dim=-1)
