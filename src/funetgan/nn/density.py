"""How unlike normal images D's bottleneck features of an image are, location by location.

D's bottleneck features f_g (C channels on a 4 x 4 grid per tile, the input of its global
head) are modelled over validation normals by one Gaussian: the mean and full covariance of
the channels, the same at every grid location (the networks see random patches and tiles, so
a location in a patch means nothing). A location's term is the squared Mahalanobis distance
of its feature vector divided by C (about 1 for normal locations), up-sampled bilinearly to
the tile's pixels.

Why: the residual |x - G(E(x))| and D's feature residual only see what G fails to rebuild,
and on stochastic textures G rebuilds a smooth defect better than the texture around it, so
those maps are darkest on the defect. The density term asks instead whether D has seen such
features in normal images, and needs no reconstruction. On the selection split the
bottleneck gave the best maps of D's depths on grass and gravel (decoder and shallower
encoder features, alone or averaged with it, were worse: README, "Localisation").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Shrinkage of the covariance towards its mean variance: 16 * width channels of strongly
# correlated features, estimated from a few thousand grid locations.
SHRINKAGE = 0.01


class FeatureDensity(nn.Module):
    """Mean and precision (inverse covariance) of C feature channels; standard normal until
    `DensityStatistics.fit` sets them from normal images."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("precision", torch.eye(channels))

    def forward(self, features: torch.Tensor, size: int) -> torch.Tensor:
        """B x C x h x w -> B x size x size: (f - mean)' precision (f - mean) / C, up-sampled;
        in float32 (a precision matrix is too ill-conditioned for bf16 autocast)."""
        with torch.autocast(features.device.type, enabled=False):
            centred = features.float() - self.mean[None, :, None, None]
            # A 1x1 convolution is the precision's product at every location (ONNX-friendly, unlike einsum).
            weighted = F.conv2d(centred, self.precision[:, :, None, None])
            term = (centred * weighted).sum(1, keepdim=True) / len(self.mean)
            return F.interpolate(term, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


class DensityStatistics:
    """Sums of feature vectors and of their outer products over the locations of batches
    (float64), then the Gaussian they define."""

    def __init__(self):
        self.sum = self.products = None
        self.count = 0

    def add(self, features: torch.Tensor) -> None:
        rows = features.detach().permute(0, 2, 3, 1).reshape(-1, features.shape[1]).double().cpu()
        if self.sum is None:
            self.sum, self.products = rows.sum(0), rows.T @ rows
        else:
            self.sum += rows.sum(0)
            self.products += rows.T @ rows
        self.count += len(rows)

    def fit(self, density: FeatureDensity) -> FeatureDensity:
        """Set `density`'s mean and precision from what was added."""
        if not self.count:
            raise ValueError("no normal features were seen")
        mean = self.sum / self.count
        covariance = self.products / self.count - torch.outer(mean, mean)
        ridge = SHRINKAGE * covariance.diagonal().mean().clamp_min(1e-12)
        covariance = covariance + ridge * torch.eye(len(mean), dtype=torch.float64)
        density.mean.copy_(mean.to(density.mean))
        density.precision.copy_(torch.linalg.inv(covariance).to(density.precision))
        return density
