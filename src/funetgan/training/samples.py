"""Sample grids of training: G(z) and reconstructions x | G(E(x)) as PNG files, drawn so
that drawing them changes nothing about training."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import atomic_save_png


@contextlib.contextmanager
def evaluating(*nets: torch.nn.Module):
    """The networks in eval mode, then back in the modes they were in. Samples are drawn this
    way so that drawing them changes nothing: in training mode every forward pass of a
    spectral-normed layer advances its power iteration, so results would depend on
    `checkpoint_every`, and under torchrun (only rank 0 samples) G's copies would drift apart."""
    modes = [net.training for net in nets]
    for net in nets:
        net.eval()
    try:
        yield
    finally:
        for net, mode in zip(nets, modes):
            net.train(mode)


def save_grid(path: Path, images: np.ndarray, columns: int) -> np.ndarray:
    """Tile N x S x S x C uint8 images into one PNG, 2-pixel gaps; returns the grid."""
    n, s, _, c = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (s + 2), columns * (s + 2), c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * (s + 2) : r * (s + 2) + s, col * (s + 2) : col * (s + 2) + s] = image
    atomic_save_png(path, Image.fromarray(grid[..., 0] if c == 1 else grid))
    return grid
