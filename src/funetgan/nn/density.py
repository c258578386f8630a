"""How unlike normal images D's bottleneck features, and E's latent code, of an image are.

D's bottleneck features f_g (C channels on a 4 x 4 grid per tile, the input of its global
head) are modelled over normal training images by one Gaussian of the C channels shared by
every grid location (the networks see random patches and tiles, so a location in a patch
means nothing for *where* a defect is): the map term at a location is the squared Mahalanobis
distance of its feature vector divided by C (about 1 for normal locations), up-sampled
bilinearly to the tile's pixels.
E's latent code z = E(x) (z_dim values per tile) is modelled the same way, by one Gaussian
of training normals' codes: the latent term is its squared Mahalanobis distance / z_dim.
Both Gaussians are fitted on training images, their terms' normal levels taken on other,
calibration normals (`scoring.calibration`); the table of terms (`scoring.terms`) says which
features each density term models.

Why: the residual |x - G(E(x))| and D's feature residual only see what G fails to rebuild,
and on stochastic textures G rebuilds a smooth defect better than the texture around it, so
those maps are darkest on the defect. The density terms ask instead whether D has seen such
features in normal images, or whether E maps the image where it maps normal ones, and need
no reconstruction. On the selection split the
bottleneck gave the best maps of D's depths on grass and gravel (decoder and shallower
encoder features, alone or averaged with it, were worse: CHANGELOG.md, "Textures and localisation").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Shrinkage of each covariance towards its mean variance (16 * width channels of strongly
# correlated features, estimated from a few thousand locations).
SHRINKAGE = 0.01
# Fewest normal feature vectors per channel a Gaussian is fitted from: with fewer, its
# covariance is too far from full rank for 1 % shrinkage to make a usable precision.
MIN_SAMPLES_PER_CHANNEL = 2


class FeatureDensity(nn.Module):
    """The mean and precision (inverse covariance) of C feature channels, one Gaussian shared
    by every location; standard normal until `DensityStatistics.fit` sets them from normal
    images. Stored 1 x C and 1 x C x C, the layout saved models and ONNX graphs hold."""

    mean: torch.Tensor  # buffers, registered in __init__
    precision: torch.Tensor

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels))
        self.register_buffer("precision", torch.eye(channels)[None])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """B x C x h x w -> B x h x w: (f - mean)' precision (f - mean) / C at each location, in
        float32 (a precision matrix is too ill-conditioned for bf16 autocast)."""
        with torch.autocast(features.device.type, enabled=False):
            batch, channels, height, width = features.shape
            centred = features.float().flatten(2).transpose(1, 2) - self.mean  # B x hw x C
            # A batched matrix product broadcasts the precision (ONNX-friendly, unlike einsum).
            weighted = (centred.unsqueeze(-2) @ self.precision).squeeze(-2)
            return ((centred * weighted).sum(-1) / channels).reshape(batch, height, width)


def as_grid(vectors: torch.Tensor) -> torch.Tensor:
    """B x C -> B x C x 1 x 1: feature vectors (E's latent codes) as a one-location grid."""
    return vectors[:, :, None, None]


def up_sampled(term: torch.Tensor, size: int) -> torch.Tensor:
    """B x h x w -> B x size x size, bilinearly: the map term at the tile's pixels."""
    return F.interpolate(term[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def samples_needed(density: FeatureDensity) -> int:
    """How many feature vectors `density` is fitted from at the least (`MIN_SAMPLES_PER_CHANNEL`)."""
    return MIN_SAMPLES_PER_CHANNEL * density.mean.shape[1]


class DensityStatistics:
    """Sums of feature vectors and of their outer products (float64) over every location of
    the batches added, then the Gaussian they define."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.products: torch.Tensor | None = None
        self.count = 0

    def add(self, features: torch.Tensor) -> None:
        rows = features.detach().flatten(2).transpose(1, 2).double().cpu()  # B x hw x C
        rows = rows.reshape(-1, 1, rows.shape[-1])  # every location a sample of the one Gaussian
        total, products = rows.sum(0), torch.einsum("nlc,nld->lcd", rows, rows)
        if self.sum is None or self.products is None:
            self.sum, self.products = total, products
        else:
            self.sum += total
            self.products += products
        self.count += len(rows)

    def fit(self, density: FeatureDensity) -> FeatureDensity:
        """Set `density`'s means and precisions from what was added."""
        if not self.count or self.sum is None or self.products is None:
            raise ValueError("no normal features were seen")
        mean = self.sum / self.count
        covariance = self.products / self.count - mean[:, :, None] * mean[:, None, :]
        ridge = SHRINKAGE * covariance.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
        covariance = covariance + ridge[:, None, None] * torch.eye(mean.shape[1], dtype=torch.float64)
        density.mean.copy_(mean.to(density.mean))
        density.precision.copy_(torch.linalg.inv(covariance).to(density.precision))
        return density
