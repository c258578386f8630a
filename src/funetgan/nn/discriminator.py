"""U-Net discriminator D: an encoder that gives a global real/fake score and a decoder with
skip connections that gives a per-pixel real/fake map. One class for the four variants."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VARIANTS
from .blocks import ATTENTION_MAX_SIZE, Block, conv, linear, widths


class CriticOutput(NamedTuple):
    score: torch.Tensor  # B: global critic value D_g
    pixel: torch.Tensor | None  # B x 1 x S x S: per-pixel critic map D_p (None: global-only critic)
    f_g: torch.Tensor  # B x C x 4 x 4: bottleneck features after the activation, before the head
    f_p: torch.Tensor | None  # B x ch x S x S: last decoder features, before the 1x1 output conv


class Discriminator(nn.Module):
    """`variant`: conv (two plain convs per block), conv_attn (+ CBAM after each encoder
    block), res (residual blocks, 1x1 shortcuts), res_attn (residual + CBAM).
    `pixel_head=False` gives the ordinary global WGAN critic of the f-AnoGAN baseline.
    No spectral norm: the gradient penalty is WGAN-GP's Lipschitz control, and with spectral
    norm on top training diverged within 50 generator steps in every run (docs/design.md)."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        width: int,
        variant: str = "res_attn",
        attn_max_size: int = ATTENTION_MAX_SIZE,
        pixel_head: bool = True,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        residual, attention = variant.startswith("res"), variant.endswith("attn")
        w = widths(image_size, width)
        encoder: list[Block] = []
        in_ch, size = channels, image_size
        while size > 4:
            encoder.append(
                Block(
                    in_ch,
                    w[size // 2],
                    resample="down",
                    residual=residual,
                    attention=attention and size // 2 <= attn_max_size,
                    preact=bool(encoder),
                )
            )
            in_ch, size = w[size // 2], size // 2
        self.encoder = nn.ModuleList(encoder)
        self.act = nn.LeakyReLU(0.2)
        self.global_head = linear(in_ch, 1, sn=False)
        self.bottleneck_width = in_ch  # channels of f_g
        self.decoder: nn.ModuleList | None = None
        self.pixel_out: nn.Module | None = None
        if pixel_head:
            # Up-sample, concatenate the encoder's output at that size, block; last step to full size has no skip.
            skip_widths = [w[s] for s in _sizes_between(8, image_size // 2)]
            decoder = []
            for skip_ch in skip_widths:
                decoder.append(Block(in_ch + skip_ch, skip_ch, residual=residual))
                in_ch = skip_ch
            decoder.append(Block(in_ch, w[image_size], residual=residual))
            self.decoder = nn.ModuleList(decoder)
            self.pixel_out = conv(w[image_size], 1, 1, sn=False)

    def forward(self, x: torch.Tensor) -> CriticOutput:
        skips, h = [], x
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        f_g = self.act(h)
        score = self.global_head(f_g.sum((2, 3))).squeeze(1)
        if self.decoder is None or self.pixel_out is None:
            return CriticOutput(score, None, f_g, None)
        skips = skips[-2::-1]  # encoder outputs from 8x8 up to S/2, deepest first
        for i, block in enumerate(self.decoder):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skips[i]], 1) if i < len(skips) else h)
        return CriticOutput(score, self.pixel_out(self.act(h)), f_g, h)


def _sizes_between(low: int, high: int) -> list[int]:
    """Powers of two from low to high, inclusive."""
    sizes = []
    while low <= high:
        sizes.append(low)
        low *= 2
    return sizes
