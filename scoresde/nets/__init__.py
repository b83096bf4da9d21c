"""Networks: all share forward(x, sigma, labels=None) and config() -> dict for checkpoints."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .embeddings import EMBEDDINGS, SigmaEmbedding
from .classifier import MLPClassifier
from .mlp import MLPScoreNet, label_tensor
from .unet import EncoderClassifier, UNet

__all__ = ["EMBEDDINGS", "SigmaEmbedding", "MLPScoreNet", "MLPClassifier", "label_tensor", "NETS", "build_net",
           "net_config", "param_count", "activation_count", "is_classifier", "UNet", "EncoderClassifier"]

NETS: dict[str, type[nn.Module]] = {
    "mlp": MLPScoreNet,
    "mlp_classifier": MLPClassifier,
    "unet": UNet,
    "encoder_classifier": EncoderClassifier,
}


def is_classifier(net: nn.Module) -> bool:
    """True for noise-aware classifiers (trained by cross-entropy), False for score networks (trained by DSM)."""
    return getattr(net, "kind", "score") == "classifier"


MAX_REPEATS = 1000


def build_net(config: dict) -> nn.Module:
    """Rebuild a network from its config() (checkpoints and the CLI)."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in NETS:
        raise ValueError(f"unknown network {name!r}; choose from {', '.join(NETS)}")
    for key in ("depth", "num_res_blocks"):  # repeat counts: bounded before a loop builds them one by one
        if isinstance(config.get(key), int) and config[key] > MAX_REPEATS:
            raise ValueError(f"{key} = {config[key]} is more than the {MAX_REPEATS:,} layers a network may repeat")
    try:
        return NETS[name](**config)
    except TypeError as e:
        raise ValueError(f"bad configuration for network {name!r}: {str(e).splitlines()[0][:200]}") from None


def net_config(
    kind: str,
    event_shape: Sequence[int],
    *,
    num_classes: int = 0,
    sigma_data: float = 1.0,
    width: int | None = None,
    depth: int = 3,
    emb_dim: int = 64,
    embedding: str = "sinusoidal",
    prediction: str = "eps",
    channel_mult: Sequence[int] = (1, 2),
    num_res_blocks: int = 1,
) -> dict:
    """The build_net config of a `kind` network sized to data of `event_shape`: "mlp" (vectors), "unet" (square
    images (C, H, W)) or "classifier" (noise-aware, vectors; num_classes >= 2). width is the MLP's width (default
    128) or the UNet's base channels (default 32); num_classes > 0 makes a score network class-conditional."""
    shape = tuple(event_shape)
    common = {"emb_dim": emb_dim, "embedding": embedding, "sigma_data": sigma_data}
    if kind in ("mlp", "classifier") and len(shape) != 1:
        hint = ": images take --net unet" if len(shape) == 3 else ""
        raise ValueError(f"the {kind} network takes vectors; the data has event shape {shape}{hint}")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    if kind == "classifier":
        if num_classes < 2:
            raise ValueError(f"a classifier needs labelled data (num_classes >= 2), got num_classes = {num_classes}")
        return {"name": "mlp_classifier", "dim": shape[0], "num_classes": num_classes, "width": width or 128,
                "depth": depth, **common}
    if kind == "mlp":
        return {"name": "mlp", "dim": shape[0], "width": width or 128, "depth": depth, "prediction": prediction,
                "num_classes": num_classes, **common}
    if kind == "unet":
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"the unet network takes square images (C, H, W); the data has event shape {shape}")
        return {"name": "unet", "in_channels": shape[0], "image_size": shape[1], "channels": width or 32,
                "channel_mult": list(channel_mult), "num_res_blocks": num_res_blocks, "prediction": prediction,
                "num_classes": num_classes, **common}
    raise ValueError(f"unknown network {kind!r}; choose mlp, unet or classifier")


def _inplace(func) -> bool:
    name = getattr(func, "__name__", "")
    return name.endswith("_") and not name.startswith("__")


class _ParamsOnMeta(TorchFunctionMode):
    """Tensors made by empty/zeros/ones/full (parameters) go to the meta device, and in-place initialisation of a
    meta tensor does nothing: shapes without memory, and without torch's slower meta decompositions."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.empty, torch.zeros, torch.ones, torch.full) and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        elif _inplace(func):
            target = args[0] if args else kwargs.get("tensor", kwargs.get("input"))
            if getattr(target, "is_meta", False):
                return target
        return func(*args, **kwargs)


def param_count(config: dict) -> int:
    """Parameters of the network `config`, counted without allocating them (so a network too large to build is
    refused before it is built)."""
    try:
        with _ParamsOnMeta():
            net = build_net(config)
    except (RuntimeError, OverflowError) as e:  # sizes whose product overflows
        raise ValueError(f"the network {config} is too large to build ({str(e).splitlines()[0][:100]})") from None
    return sum(p.numel() for p in net.parameters())


def activation_count(net: nn.Module, forward: Callable[[], object] | None = None) -> int:
    """Values every layer of net outputs in one forward pass of one input (zeros, no gradient, eval mode): times the
    batch, an upper bound on the activations a forward pass keeps (training keeps them all for the backward pass).
    `forward()` makes that pass (default: net(x, sigma) as scoresde's networks take it); 0 if it fails."""
    p = next(net.parameters())
    total = [0]

    def count(module, inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel()

    hooks = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
    kwargs = {"labels": torch.zeros(1, dtype=torch.long, device=p.device)} \
        if getattr(net, "num_classes", 0) and not is_classifier(net) else {}
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()
            if forward is not None:
                forward()
            else:
                net(torch.zeros((1, *net.event_shape), dtype=p.dtype, device=p.device),
                    torch.ones(1, dtype=p.dtype, device=p.device), **kwargs)
    except Exception:  # a network this probe cannot drive: no activation estimate
        total[0] = 0
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    return total[0]
