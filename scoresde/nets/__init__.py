"""Networks: all share forward(x, sigma, labels=None) and config() -> dict for checkpoints."""

from __future__ import annotations

from torch import nn

from .embeddings import EMBEDDINGS, SigmaEmbedding
from .classifier import MLPClassifier
from .mlp import MLPScoreNet, label_tensor
from .unet import EncoderClassifier, UNet

__all__ = ["EMBEDDINGS", "SigmaEmbedding", "MLPScoreNet", "MLPClassifier", "label_tensor", "NETS", "build_net",
           "is_classifier", "UNet", "EncoderClassifier"]

NETS: dict[str, type[nn.Module]] = {
    "mlp": MLPScoreNet,
    "mlp_classifier": MLPClassifier,
    "unet": UNet,
    "encoder_classifier": EncoderClassifier,
}


def is_classifier(net: nn.Module) -> bool:
    """True for noise-aware classifiers (trained by cross-entropy), False for score networks (trained by DSM)."""
    return getattr(net, "kind", "score") == "classifier"


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
