"""How unlike normal images D's features of an image are, pixel by pixel.

D's features at each depth of its encoder (and, for the U-Net critic, its decoder) are
modelled, over the pixels of validation normals, by one Gaussian per depth (mean and full
covariance of the channels, the same at every location: the networks see random patches and
tiles, so a location in a patch means nothing). A pixel's term is the squared Mahalanobis
distance of its feature vector divided by the number of channels (about 1 for normal pixels
at any depth), averaged over the depths after bilinear up-sampling to the tile size.

Why: the residual |x - G(E(x))| and D's feature residual only see what G fails to rebuild,
and on stochastic textures G rebuilds a smooth defect better than the texture around it, so
those maps are darkest on the defect. The density term asks instead whether D has seen such
features on normal images, which needs no reconstruction at all.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Shrinkage of each covariance towards its mean variance: a depth of up to 16 * width
# channels is estimated from a few hundred thousand pixels of strongly correlated features.
SHRINKAGE = 0.01


class LevelGaussian(nn.Module):
    """Mean and precision (inverse covariance) of one depth's C channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("precision", torch.eye(channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """B x C x h x w -> B x h x w: (f - mean)' precision (f - mean) / C, in float32 (a
        precision matrix is too ill-conditioned for bf16 autocast)."""
        with torch.autocast(features.device.type, enabled=False):
            centred = features.float() - self.mean[None, :, None, None]
            # A 1x1 convolution is the precision's product at every pixel (ONNX-friendly, unlike einsum).
            weighted = F.conv2d(centred, self.precision[:, :, None, None])
            return (centred * weighted).sum(1) / len(self.mean)


class FeatureDensity(nn.Module):
    """One LevelGaussian per depth of D (`Discriminator.level_widths`), standard normal until
    `DensityStatistics.fit` sets them from normal images."""

    def __init__(self, level_widths: list[int]):
        super().__init__()
        self.levels = nn.ModuleList(LevelGaussian(c) for c in level_widths)

    def forward(self, levels: tuple[torch.Tensor, ...], size: int) -> torch.Tensor:
        """D's features at every depth -> B x size x size, the mean over depths."""
        total = None
        for gaussian, features in zip(self.levels, levels):
            term = gaussian(features)[:, None]
            if term.shape[-1] != size:
                term = F.interpolate(term, size=(size, size), mode="bilinear", align_corners=False)
            total = term if total is None else total + term
        return total[:, 0] / len(self.levels)


class DensityStatistics:
    """Sums of D's features and of their outer products over the pixels of batches (float64),
    then the Gaussians they define."""

    def __init__(self):
        self.sums: list[torch.Tensor] = []
        self.products: list[torch.Tensor] = []
        self.pixels: list[int] = []

    def add(self, levels: tuple[torch.Tensor, ...]) -> None:
        for i, features in enumerate(levels):
            rows = features.detach().permute(0, 2, 3, 1).reshape(-1, features.shape[1]).double().cpu()
            if i == len(self.sums):
                self.sums.append(torch.zeros(rows.shape[1], dtype=torch.float64))
                self.products.append(torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64))
                self.pixels.append(0)
            self.sums[i] += rows.sum(0)
            self.products[i] += rows.T @ rows
            self.pixels[i] += len(rows)

    def fit(self, density: FeatureDensity) -> FeatureDensity:
        """Set `density`'s means and precisions from what was added (it must have the same depths)."""
        if len(self.sums) != len(density.levels) or not self.pixels:
            raise ValueError("no normal features were seen, or not at every depth of the critic")
        for gaussian, total, products, n in zip(density.levels, self.sums, self.products, self.pixels):
            mean = total / n
            covariance = products / n - torch.outer(mean, mean)
            ridge = SHRINKAGE * covariance.diagonal().mean().clamp_min(1e-12)
            covariance = covariance + ridge * torch.eye(len(mean), dtype=torch.float64)
            gaussian.mean.copy_(mean.to(gaussian.mean))
            gaussian.precision.copy_(torch.linalg.inv(covariance).to(gaussian.precision))
        return density
