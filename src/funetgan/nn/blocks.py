"""Building blocks shared by G, D and E: one residual/plain block with optional resampling,
CBAM attention, and spectral-norm wrappers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

# CBAM only on feature maps this small or smaller: at high resolution it is ~40 % of a step's
# cost on a CPU for little gain (CHANGELOG.md, "Speed"; never measured to change quality).
ATTENTION_MAX_SIZE = 16


def widths(image_size: int, width: int) -> dict[int, int]:
    """Channels at each feature-map size: `width` at full resolution, doubling per halving,
    capped at 16 * width (the published ch .. 16ch)."""
    sizes = [image_size >> i for i in range(int(math.log2(image_size // 4)) + 1)]
    return {s: width * min(16, image_size // s) for s in sizes}


def conv(in_ch: int, out_ch: int, kernel: int, sn: bool) -> nn.Module:
    layer = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    return spectral_norm(layer) if sn else layer


def linear(in_features: int, out_features: int, sn: bool) -> nn.Module:
    layer = nn.Linear(in_features, out_features)
    return spectral_norm(layer) if sn else layer


def group_norm(channels: int) -> nn.GroupNorm:
    """G's normalisation. Not batch norm: its running statistics differ from batch statistics
    early in training, and G runs in eval mode in stage 2 and at scoring, where batch norm
    made G(E(x)) noise in our runs. Group norm is the same in both modes."""
    return nn.GroupNorm(max(1, min(8, channels // 4)), channels)


class CBAM(nn.Module):
    """Convolutional block attention: channel attention (shared MLP on avg- and max-pooled
    features), then spatial attention (7x7 conv on channel-wise avg and max)."""

    def __init__(self, channels: int, sn: bool, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(conv(channels, hidden, 1, sn), nn.ReLU(), conv(hidden, channels, 1, sn))
        self.spatial = conv(2, 1, 7, sn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)])
        avg, mx = self.mlp(pooled).chunk(2)
        x = x * torch.sigmoid(avg + mx)
        maps = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(maps))


class Block(nn.Module):
    """Two 3x3 convs with pre-activation, optional x2 resampling and a residual shortcut
    (1x1 conv when the shape changes), optionally followed by CBAM.

    G uses it with group norm, ReLU and `resample="up"`; D and E with LeakyReLU, no norm and
    `resample="down"`; D's `conv` variants with `residual=False`.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        resample: str | None = None,
        residual: bool = True,
        norm: bool = False,
        act: str = "lrelu",
        sn: bool = False,
        attention: bool = False,
        preact: bool = True,
    ):
        super().__init__()
        self.preact = preact  # False for a block that reads raw pixels
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.resample = resample
        self.residual = residual
        self.norm1 = group_norm(in_ch) if norm else nn.Identity()
        self.norm2 = group_norm(out_ch) if norm else nn.Identity()
        self.act = nn.ReLU() if act == "relu" else nn.LeakyReLU(0.2)
        self.conv1 = conv(in_ch, out_ch, 3, sn)
        self.conv2 = conv(out_ch, out_ch, 3, sn)
        self.shortcut = conv(in_ch, out_ch, 1, sn) if residual and (in_ch != out_ch or resample) else None
        self.attention = CBAM(out_ch, sn) if attention else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(x)) if self.preact else x
        if self.resample == "up":
            h = self._resample(h)
        h = self.conv2(self.act(self.norm2(self.conv1(h))))
        if self.resample == "down":
            h = self._resample(h)
        if self.residual:
            skip = x
            if self.shortcut is not None:
                # A 1x1 conv commutes with resampling: run it at the lower resolution.
                skip = self._resample(self.shortcut(x)) if self.resample == "up" else self.shortcut(self._resample(x))
            h = h + skip
        return self.attention(h) if self.attention is not None else h
