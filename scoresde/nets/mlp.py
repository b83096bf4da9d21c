"""MLP score network for low-dimensional data: net(x, sigma, labels=None) -> eps, x0, v or score."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..score import check_prediction
from .embeddings import SigmaEmbedding

__all__ = ["MLPScoreNet", "label_tensor"]


def label_tensor(labels: Tensor | int | None, batch: int, null: int, device) -> Tensor:
    """Labels as a (B,) long tensor; None means the null label (unconditional), an int is broadcast."""
    if labels is None:
        return torch.full((batch,), null, dtype=torch.long, device=device)
    if isinstance(labels, int):
        if not 0 <= labels <= null:
            raise ValueError(f"label {labels!r} is outside [0, {null}] (the null label is {null})")
        return torch.full((batch,), labels, dtype=torch.long, device=device)
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
    return labels.long()


class MLPScoreNet(nn.Module):
    """Residual MLP conditioned on log sigma (and optionally a class label) at every layer.

    The input is scaled by c_in = 1 / sqrt(sigma_data² + sigma²) (EDM), so it stays near unit variance at every
    noise level; `prediction` names what the last layer predicts, and `score.score_from(net, process,
    net.prediction)` turns it into a ScoreFn. With `num_classes` = K the labels 0..K-1 get learned embeddings and
    label K is the null label (classifier-free guidance); `labels=None` means the null label.
    """

    def __init__(
        self,
        dim: int = 2,
        width: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        embedding: str = "sinusoidal",
        prediction: str = "eps",
        num_classes: int = 0,
        sigma_data: float = 1.0,
    ):
        super().__init__()
        check_prediction(prediction)
        for name, v in (("dim", dim), ("width", width), ("depth", depth)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes!r}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        self.dim, self.width, self.depth, self.prediction = dim, width, depth, prediction
        self.num_classes, self.sigma_data = num_classes, float(sigma_data)
        self.event_shape = (dim,)
        self.embed = SigmaEmbedding(emb_dim, embedding)
        self.cond = nn.Sequential(nn.Linear(emb_dim, width), nn.SiLU())
        self.label_embed = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.cond_proj = nn.Linear(width, width * depth)  # one projection: a shift per layer
        self.inp = nn.Linear(dim, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self._config = dict(dim=dim, width=width, depth=depth, emb_dim=emb_dim, embedding=embedding, prediction=prediction,
                            num_classes=num_classes, sigma_data=float(sigma_data))

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), for checkpoints."""
        return {"name": "mlp", **self._config}

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor | int | None = None) -> Tensor:
        """x of shape (B, dim), sigma of shape (B,) -> prediction of shape (B, dim)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected x of shape (B, {self.dim}), got {tuple(x.shape)}")
        c = self.cond(self.embed(sigma))
        if self.label_embed is not None:
            c = c + self.label_embed(label_tensor(labels, x.shape[0], self.num_classes, x.device))
        elif labels is not None:
            raise ValueError("this network is unconditional (num_classes = 0) but labels were given")
        shifts = self.cond_proj(c).chunk(self.depth, dim=-1)
        c_in = torch.rsqrt(sigma * sigma + self.sigma_data**2)[:, None]
        h = self.inp(x * c_in)
        for layer, shift in zip(self.layers, shifts):
            h = h + layer(torch.nn.functional.silu(h + shift))
        return self.out(torch.nn.functional.silu(h))
