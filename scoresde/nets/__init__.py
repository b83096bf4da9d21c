"""Networks: all share forward(x, sigma, labels=None) and config() -> dict for checkpoints."""

from __future__ import annotations

from torch import nn

from .embeddings import EMBEDDINGS, SigmaEmbedding
from .mlp import MLPScoreNet, label_tensor

__all__ = ["EMBEDDINGS", "SigmaEmbedding", "MLPScoreNet", "label_tensor", "NETS", "build_net"]

NETS: dict[str, type[nn.Module]] = {"mlp": MLPScoreNet}


def build_net(config: dict) -> nn.Module:
    """Rebuild a network from its config() (checkpoints and the CLI)."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in NETS:
        raise ValueError(f"unknown network {name!r}; choose from {', '.join(NETS)}")
    try:
        return NETS[name](**config)
    except TypeError as e:
        raise ValueError(f"bad configuration for network {name!r}: {e}") from None
