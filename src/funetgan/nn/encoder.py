"""Encoder E: image -> z in one forward pass. Linear output, so it covers the Gaussian prior."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import Block, conv, widths


class Encoder(nn.Module):
    def __init__(self, image_size: int, channels: int, width: int, z_dim: int):
        super().__init__()
        w = widths(image_size, width)
        self.stem = conv(channels, w[image_size], 3, sn=False)
        blocks, size = [], image_size
        while size > 4:
            blocks.append(Block(w[size], w[size // 2], resample="down"))
            size //= 2
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(w[4] * 16, z_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    @torch.no_grad()
    def standardise_output(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fold z -> (z - mean) / std into the last linear layer."""
        linear = self.head[-1]
        assert isinstance(linear, nn.Linear)
        linear.weight.div_(std.unsqueeze(1))
        linear.bias.sub_(mean).div_(std)
