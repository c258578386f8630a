"""E, G and D as one scoring network: images in, the raw residual terms out.

One module serves PyTorch scoring and ONNX export, so both compute the same terms.
"""
from __future__ import annotations

import torch
from torch import nn

from .density import FeatureDensity, as_grid, up_sampled
from .discriminator import CriticOutput

TERM_MAPS = ("pixel_residual", "pixel_features", "pixel_density")  # B x S x S each
TERM_VALUES = ("image_residual", "image_features", "latent_density")  # B each


def residual_terms(x: torch.Tensor, recon: torch.Tensor, out_x: CriticOutput,
                   out_r: CriticOutput) -> tuple[torch.Tensor, ...]:
    """|x - r| and the D-decoder feature residual per pixel (channel means); the image mse and
    D's bottleneck feature mse per image. A global-only critic has no decoder features: zeros."""
    pixel_features = torch.zeros_like(x[:, 0])
    if out_x.f_p is not None:
        pixel_features = (out_x.f_p - out_r.f_p).abs().mean(1)
    return ((x - recon).abs().mean(1), pixel_features.float(),
            (x - recon).pow(2).flatten(1).mean(1), (out_x.f_g - out_r.f_g).float().pow(2).flatten(1).mean(1))


class ScoringNetwork(nn.Module):
    """x (float B x C x S x S in [-1, 1]) -> r = G(E(x)) -> the residual terms of x and r,
    the density term of D's bottleneck features of x per pixel (`nn.density`) and that of E's
    latent code of x; the densities are meaningless until calibration
    has fitted them, and then used only by a calibration that has their normal levels."""

    def __init__(self, encoder: nn.Module, generator: nn.Module, critic: nn.Module, density: FeatureDensity,
                 latent_density: FeatureDensity):
        super().__init__()
        self.E, self.G, self.D = encoder, generator, critic
        self.density, self.latent_density = density, latent_density

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.E(x)
        # channels-last (the layout D's weights are in) speeds D up on CPUs and GPUs alike
        recon = self.G(z).contiguous(memory_format=torch.channels_last)
        out_x = self.D(x)
        pixel_residual, pixel_features, image_residual, image_features = residual_terms(
            x.float(), recon.float(), out_x, self.D(recon))
        density = up_sampled(self.density(out_x.f_g), x.shape[-1])
        latent_density = self.latent_density(as_grid(z)).flatten(1).mean(1)
        return pixel_residual, pixel_features, density, image_residual, image_features, latent_density
