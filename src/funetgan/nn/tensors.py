"""uint8 images <-> float tensors: where the data's numpy arrays meet the networks.

Kept apart from `data` so that reading images needs no PyTorch (the ONNX runtime path scores
without it); the exported graph starts with the same `uint8_to_float`.
"""

from __future__ import annotations

import numpy as np
import torch


def uint8_to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 N x S x S x C tensor -> float N x C x S x S in [-1, 1]."""
    return batch.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_tensor(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 N x S x S x C (array or tensor) -> float N x C x S x S in [-1, 1] on `device`."""
    return uint8_to_float(torch.as_tensor(images).to(device, non_blocking=True))


def to_uint8(batch: torch.Tensor) -> np.ndarray:
    """float N x C x S x S in [-1, 1] -> uint8 N x S x S x C."""
    images = ((batch.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()
