"""Anomaly maps and image scores from one pass of E, G and D (no latent optimisation).

With r = G(E(x)):
  pixel map   A = |x - r| / m_r + kappa * |f_p(x) - f_p(r)| / m_f        (then Gaussian blur)
  image score s = mse(x, r) / m_i + kappa * mse(f_g(x), f_g(r)) / m_g     ("izif"), or the max /
              top-k mean of A.
With a scoring region (the lung of CT slices, `score.lung_only`), the pixel terms and the
image residual count only its pixels and the map is 0 outside it; D's global features still
see the whole image.
The m_* are the means of each term over validation normals. METHOD.md adds the raw terms;
dividing by their normal level first makes kappa a relative weight whatever the scale D's
features happen to have after training (which varies from run to run by orders of magnitude).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import ScoreConfig

TERMS = ("pixel_residual", "pixel_features", "image_residual", "image_features")


@dataclass
class Terms:
    """Raw residual terms for a batch: maps B x S x S, image terms B."""

    pixel_residual: torch.Tensor
    pixel_features: torch.Tensor
    image_residual: torch.Tensor
    image_features: torch.Tensor
    region: torch.Tensor | None = None  # B x S x S, 1 where pixels count (None: everywhere)

    def means(self) -> dict[str, float]:
        """Mean of each term; pixel terms over the region's pixels only."""
        means = {name: getattr(self, name).double().mean().item() for name in TERMS}
        if self.region is not None:
            pixels = self.region.double().sum().clamp_min(1)
            for name in ("pixel_residual", "pixel_features"):
                means[name] = (getattr(self, name).double().sum() / pixels).item()
        return means


def residual_terms(x: torch.Tensor, recon: torch.Tensor, out_x, out_r,
                   region: torch.Tensor | None = None) -> Terms:
    pixel_features = torch.zeros_like(x[:, 0])
    if out_x.f_p is not None:
        pixel_features = (out_x.f_p - out_r.f_p).abs().mean(1)
    squared = (x - recon).pow(2).mean(1)
    terms = Terms(
        pixel_residual=(x - recon).abs().mean(1),
        pixel_features=pixel_features.float(),
        image_residual=squared.flatten(1).mean(1),
        image_features=(out_x.f_g - out_r.f_g).float().pow(2).flatten(1).mean(1),
    )
    if region is not None:
        terms.region = region.float()
        terms.pixel_residual = terms.pixel_residual * terms.region
        terms.pixel_features = terms.pixel_features * terms.region
        terms.image_residual = (squared * terms.region).flatten(1).sum(1) / terms.region.flatten(1).sum(1).clamp_min(1)
    return terms


def combine(terms: Terms, norms: dict[str, float], cfg: ScoreConfig, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image scores B, anomaly maps B x S x S) from raw terms and the normal-level means."""
    def scaled(name: str) -> torch.Tensor:
        return getattr(terms, name).float() / max(norms.get(name, 1.0), 1e-12)

    maps = scaled("pixel_residual")
    if cfg.kappa:
        maps = maps + cfg.kappa * scaled("pixel_features")
    maps = gaussian_blur(maps, blur_sigma(cfg, image_size))
    if terms.region is not None:
        maps = maps * terms.region  # the blur spreads values over the region's edge
    if cfg.image_score == "izif":
        scores = scaled("image_residual") + cfg.kappa * scaled("image_features")
    elif cfg.image_score == "max":
        scores = maps.flatten(1).amax(1)
    else:
        k = max(1, round(cfg.topk_fraction * maps[0].numel()))
        scores = maps.flatten(1).topk(k, dim=1).values.mean(1)
    return scores, maps


def blur_sigma(cfg: ScoreConfig, image_size: int) -> float:
    return cfg.blur_sigma if cfg.blur_sigma is not None else 4.0 * image_size / 128


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of B x H x W maps (reflect padding, radius 3 sigma)."""
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, maps.shape[-1] - 1)
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    h = F.pad(maps.unsqueeze(1), (radius, radius, radius, radius), mode="reflect")
    h = F.conv2d(h, kernel.view(1, 1, 1, -1))
    h = F.conv2d(h, kernel.view(1, 1, -1, 1))
    return h.squeeze(1)
