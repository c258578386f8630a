"""Generator G: z -> image, residual up-sampling blocks with CBAM, spectral norm."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ATTENTION_MAX_SIZE, Block, conv, group_norm, linear, widths


class Generator(nn.Module):
    def __init__(self, image_size: int, channels: int, width: int, z_dim: int, attn_max_size: int = ATTENTION_MAX_SIZE):
        super().__init__()
        w = widths(image_size, width)
        self.z_dim = z_dim
        self.base = w[4]
        self.fc = linear(z_dim, self.base * 16, sn=True)
        blocks, size = [], 4
        while size < image_size:
            blocks.append(
                Block(
                    w[size],
                    w[2 * size],
                    resample="up",
                    norm=True,
                    act="relu",
                    sn=True,
                    attention=2 * size <= attn_max_size,
                )
            )
            size *= 2
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Sequential(
            group_norm(w[image_size]), nn.ReLU(), conv(w[image_size], channels, 3, sn=True), nn.Tanh()
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.base, 4, 4)  # -1, not len(z): a traced graph keeps any batch size
        return self.to_image(self.blocks(h))
