"""Image networks: a DDPM/ADM-style UNet score net and its encoder half as a noise-aware classifier.

Both follow the MLP's conventions: conditioned on SigmaEmbedding(log sigma), input scaled by
c_in = 1 / sqrt(sigma² + sigma_data²), config() -> {"name": ..., **constructor arguments}.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..score import check_prediction
from .embeddings import SigmaEmbedding
from .mlp import label_tensor

__all__ = ["UNet", "EncoderClassifier"]


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the noise (and class) embedding enters as a per-channel (scale and) shift."""

    def __init__(self, cin: int, cout: int, emb_ch: int, dropout: float, groups: int, scale_shift: bool):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_ch, cout * (2 if scale_shift else 1))
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))  # each block starts as the identity (ADM)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Multi-head self-attention over the H x W positions, residual, zero-initialised output projection."""

    def __init__(self, ch: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        out = F.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # (B, heads, HW, C / heads)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class _Block(nn.Module):
    """A residual block, optional attention, then optionally nearest-neighbour upsampling to a given size.

    No conv after upsampling (ADM's conv_resample=False): the next block's first conv mixes the copies anyway,
    and at 8 x 8 that conv would be the network's most expensive layer.
    """

    def __init__(self, res: _ResBlock, attn: _Attention | None = None, up: bool = False):
        super().__init__()
        self.res, self.attn, self.up = res, attn, up

    def forward(self, h: Tensor, emb: Tensor, size: Sequence[int] | None = None) -> Tensor:
        h = self.res(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        if self.up:  # to the skip's size, so odd sizes (7 -> 14 -> 28) come back exactly
            h = F.interpolate(h, size=tuple(size), mode="nearest")
        return h


class _Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)  # H -> ceil(H / 2): 7 -> 4

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return self.conv(h)


def _sizes(image_size: int, levels: int) -> list[int]:
    sizes = [image_size]
    for _ in range(levels - 1):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class _Trunk(nn.Module):
    """The shared encoder: sigma embedding, input conv, the downsampling half and the middle block."""

    def __init__(self, in_channels, image_size, channels, channel_mult, num_res_blocks, attention_resolutions,
                 num_heads, head_dim, dropout, emb_dim, embedding, sigma_data, groups, scale_shift):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("image_size", image_size), ("channels", channels),
                        ("num_res_blocks", num_res_blocks), ("num_heads", num_heads)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not channel_mult or any(not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty sequence of integers >= 1, got {channel_mult!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        widths = sorted({channels * m for m in channel_mult})
        if not isinstance(groups, int) or groups < 1 or any(w % groups for w in widths):
            raise ValueError(f"groups={groups!r} must divide every channel count {widths} (channels x channel_mult)")
        if head_dim is not None and (head_dim < 1 or any(w % head_dim for w in widths)):
            raise ValueError(f"head_dim={head_dim!r} must divide every channel count {widths}")
        if head_dim is None and any(w % num_heads for w in widths):
            raise ValueError(f"num_heads={num_heads!r} must divide every channel count {widths}")
        sizes = _sizes(image_size, len(channel_mult))
        attn_at = {sizes[-1]} if attention_resolutions is None else set(attention_resolutions)
        if not attn_at <= set(sizes):
            raise ValueError(f"attention_resolutions {sorted(attn_at)} must be among this network's resolutions "
                             f"{sizes} (image_size {image_size}, halved per channel_mult level)")
        self.in_channels, self.image_size, self.sigma_data = in_channels, image_size, float(sigma_data)
        self.sizes, self.attn_at, self.emb_ch = sizes, attn_at, 4 * channels
        self._block_args = dict(dropout=dropout, groups=groups, scale_shift=scale_shift)
        self._heads = (num_heads, head_dim)
        res, attn = self.res, self.attn
        self.embed = SigmaEmbedding(emb_dim, embedding)
        self.cond = nn.Sequential(nn.Linear(emb_dim, self.emb_ch), nn.SiLU(), nn.Linear(self.emb_ch, self.emb_ch))
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        ch, skips = channels, [channels]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(_Block(res(ch, channels * mult), attn(channels * mult, sizes[level])))
                ch = channels * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(_Downsample(ch))
                skips.append(ch)
        self.mid1 = _Block(res(ch, ch), attn(ch, None))
        self.mid2 = res(ch, ch)
        self.skip_channels, self.out_channels = skips, ch

    def res(self, cin: int, cout: int) -> _ResBlock:
        return _ResBlock(cin, cout, self.emb_ch, **self._block_args)

    def attn(self, ch: int, size: int | None) -> _Attention | None:
        """Attention for a block at `size` pixels (None: the middle block, which always has it)."""
        if size is not None and size not in self.attn_at:
            return None
        num_heads, head_dim = self._heads
        return _Attention(ch, ch // head_dim if head_dim else num_heads, self._block_args["groups"])

    def check(self, x: Tensor, sigma: Tensor) -> None:
        shape = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, shape))}) (in_channels, image_size, "
                             f"image_size), got {tuple(x.shape)}")
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must have shape ({x.shape[0]},), got {tuple(sigma.shape)}")

    def forward(self, x: Tensor, sigma: Tensor, label_emb: Tensor | None = None) -> tuple[Tensor, list[Tensor], Tensor]:
        """-> (lowest-resolution features, skip activations, SiLU of the conditioning embedding)."""
        emb = self.cond(self.embed(sigma).to(self.inp.weight.dtype))
        if label_emb is not None:
            emb = emb + label_emb
        emb = F.silu(emb)
        c_in = torch.rsqrt(sigma * sigma + self.sigma_data**2).to(x.dtype)[:, None, None, None]
        h = self.inp(x * c_in)
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        h = self.mid2(self.mid1(h, emb), emb)
        return h, hs, emb


def _json_config(**kw) -> dict:
    """Constructor arguments as JSON values (sequences as lists), in the constructor's order."""
    kw["channel_mult"] = [int(m) for m in kw["channel_mult"]]
    if kw["attention_resolutions"] is not None:
        kw["attention_resolutions"] = sorted(int(r) for r in kw["attention_resolutions"])
    kw["dropout"], kw["sigma_data"], kw["scale_shift"] = float(kw["dropout"]), float(kw["sigma_data"]), \
        bool(kw["scale_shift"])
    return kw


class UNet(nn.Module):
    """DDPM/ADM UNet (Ho et al. 2020; Dhariwal & Nichol 2021): net(x, sigma, labels=None) -> eps, x0, v or score.

    Residual blocks with GroupNorm and SiLU take the sigma (plus class) embedding as a per-channel scale and shift
    (`scale_shift=False`: a shift); self-attention at `attention_resolutions` (sizes in pixels; None = the lowest)
    and in the middle; stride-2 convs down, nearest-neighbour up to the skip's size (odd sizes such as 7 are fine);
    zero-initialised output. With `num_classes` = K the labels 0..K-1 get learned embeddings and label K is the
    null label (classifier-free guidance); `labels=None` means the null label.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] | None = None,
        num_heads: int = 1,
        head_dim: int | None = None,
        dropout: float = 0.0,
        emb_dim: int = 64,
        embedding: str = "sinusoidal",
        prediction: str = "eps",
        num_classes: int = 0,
        sigma_data: float = 0.5,
        groups: int = 8,
        scale_shift: bool = True,
    ):
        super().__init__()
        check_prediction(prediction)
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        channel_mult = tuple(channel_mult)
        self.trunk = _Trunk(in_channels, image_size, channels, channel_mult, num_res_blocks, attention_resolutions,
                            num_heads, head_dim, dropout, emb_dim, embedding, sigma_data, groups, scale_shift)
        self.in_channels, self.image_size, self.prediction = in_channels, image_size, prediction
        self.event_shape = (in_channels, image_size, image_size)
        self.num_classes, self.sigma_data = num_classes, float(sigma_data)
        self.label_embed = nn.Embedding(num_classes + 1, self.trunk.emb_ch) if num_classes else None
        skips, ch, sizes = list(self.trunk.skip_channels), self.trunk.out_channels, self.trunk.sizes
        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            width = channels * channel_mult[level]
            for i in range(num_res_blocks + 1):
                upsample = level > 0 and i == num_res_blocks
                self.up.append(_Block(self.trunk.res(ch + skips.pop(), width), self.trunk.attn(width, sizes[level]),
                                      upsample))
                ch = width
        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), _zero(nn.Conv2d(ch, in_channels, 3, padding=1)))
        self._config = _json_config(
            in_channels=in_channels, image_size=image_size, channels=channels, channel_mult=channel_mult,
            num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions, num_heads=num_heads,
            head_dim=head_dim, dropout=dropout, emb_dim=emb_dim, embedding=embedding, prediction=prediction,
            num_classes=num_classes, sigma_data=sigma_data, groups=groups, scale_shift=scale_shift)

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), for checkpoints."""
        return {"name": "unet", **self._config}

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor | int | None = None) -> Tensor:
        """x of shape (B, C, H, W), sigma of shape (B,) -> prediction of shape (B, C, H, W)."""
        self.trunk.check(x, sigma)
        label_emb = None
        if self.label_embed is not None:
            label_emb = self.label_embed(label_tensor(labels, x.shape[0], self.num_classes, x.device))
        elif labels is not None:
            raise ValueError("this network is unconditional (num_classes = 0) but labels were given")
        h, hs, emb = self.trunk(x, sigma, label_emb)
        for block in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            h = block(h, emb, hs[-1].shape[-2:] if hs else None)
        return self.out(h)


class EncoderClassifier(nn.Module):
    """Noise-aware classifier for classifier guidance: the UNet's downsampling half and middle, global average
    pooling and a linear head; classifier(x, sigma) -> logits of shape (B, num_classes) (ADM's encoder model)."""

    kind = "classifier"  # nets.is_classifier: trained by cross-entropy, not DSM

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 8,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] | None = None,
        num_heads: int = 1,
        head_dim: int | None = None,
        dropout: float = 0.0,
        emb_dim: int = 64,
        embedding: str = "sinusoidal",
        sigma_data: float = 0.5,
        groups: int = 8,
        scale_shift: bool = True,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        channel_mult = tuple(channel_mult)
        self.trunk = _Trunk(in_channels, image_size, channels, channel_mult, num_res_blocks, attention_resolutions,
                            num_heads, head_dim, dropout, emb_dim, embedding, sigma_data, groups, scale_shift)
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.event_shape = (in_channels, image_size, image_size)
        self.sigma_data = float(sigma_data)
        ch = self.trunk.out_channels
        self.head = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(ch, num_classes))
        self._config = _json_config(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, channels=channels,
            channel_mult=channel_mult, num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
            num_heads=num_heads, head_dim=head_dim, dropout=dropout, emb_dim=emb_dim, embedding=embedding,
            sigma_data=sigma_data, groups=groups, scale_shift=scale_shift)

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), for checkpoints."""
        return {"name": "encoder_classifier", **self._config}

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x of shape (B, C, H, W), sigma of shape (B,) -> logits of shape (B, num_classes)."""
        self.trunk.check(x, sigma)
        h, _, _ = self.trunk(x, sigma)
        return self.head(h)
