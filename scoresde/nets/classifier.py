"""Noise-aware classifier for low-dimensional data: clf(x_t, sigma) -> logits, for classifier guidance."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .embeddings import SigmaEmbedding

__all__ = ["MLPClassifier"]


class MLPClassifier(nn.Module):
    """Residual MLP over (c_in x_t, log sigma features) -> class logits; trained by cross-entropy over noisy inputs.

    log_softmax of its logits approximates log p_t(y | x_t), whose gradient is classifier guidance
    (Dhariwal & Nichol 2021); see `scoresde.guidance.classifier`.
    """

    kind = "classifier"

    def __init__(self, dim: int = 2, num_classes: int = 2, width: int = 128, depth: int = 3, emb_dim: int = 64,
                 embedding: str = "sinusoidal", sigma_data: float = 1.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes!r}")
        for name, v in (("dim", dim), ("width", width), ("depth", depth)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v!r}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        self.dim, self.num_classes, self.depth, self.sigma_data = dim, num_classes, depth, float(sigma_data)
        self.event_shape = (dim,)
        self.embed = SigmaEmbedding(emb_dim, embedding)
        self.cond = nn.Sequential(nn.Linear(emb_dim, width), nn.SiLU(), nn.Linear(width, width * depth))
        self.inp = nn.Linear(dim, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, num_classes)
        self._config = dict(dim=dim, num_classes=num_classes, width=width, depth=depth, emb_dim=emb_dim,
                            embedding=embedding, sigma_data=float(sigma_data))

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), for checkpoints."""
        return {"name": "mlp_classifier", **self._config}

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x of shape (B, dim), sigma of shape (B,) -> logits of shape (B, num_classes)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected x of shape (B, {self.dim}), got {tuple(x.shape)}")
        shifts = self.cond(self.embed(sigma)).chunk(self.depth, dim=-1)
        h = self.inp(x * torch.rsqrt(sigma * sigma + self.sigma_data**2)[:, None])
        for layer, shift in zip(self.layers, shifts):
            h = h + layer(nn.functional.silu(h + shift))
        return self.head(nn.functional.silu(h))
