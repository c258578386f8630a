import math

import pytest
import torch
from torch import nn

from funetgan.config import GANConfig
from funetgan.nn import CriticOutput
from funetgan.training import losses
from funetgan.training.losses import (
    critic_loss,
    cutmix_masks,
    encoder_loss,
    generator_loss,
    gradient_penalty,
    per_sample_uniform,
    pixel_projection,
    relative_mse,
)


def test_gradient_penalty_of_linear_critic_by_hand():
    # D(x) = sum(w * x) has gradient w everywhere: GP = (||w|| - 1)^2 = (2 - 1)^2 = 1 for w = 0.5 x 16.
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    w = torch.full((1, 1, 4, 4), 0.5)
    assert gradient_penalty((x * w).flatten(1).sum(1), x).item() == pytest.approx(1.0)


def test_gradient_penalty_per_sample_norms_by_hand():
    # D(x) = sum(x^2): gradient 2x; samples with ||x|| = 1 and 2 give norms 2 and 4: GP = (1 + 9) / 2.
    x = torch.zeros(2, 1, 2, 2)
    x[0, 0, 0, 0], x[1, 0, 1, 1] = 1.0, 2.0
    x.requires_grad_(True)
    assert gradient_penalty(x.pow(2).flatten(1).sum(1), x).item() == pytest.approx(5.0)


def test_gradient_penalty_is_differentiable_in_the_critic():
    w = torch.tensor(3.0, requires_grad=True)
    x = torch.ones(2, 1, 1, 1, requires_grad=True)
    gradient_penalty((w * x).flatten(1).sum(1), x).backward()
    assert w.grad.item() == pytest.approx(2 * (3 - 1))  # d/dw (|w| - 1)^2


def test_cutmix_masks_are_binary_boxes_with_uniform_area():
    g = torch.Generator().manual_seed(0)
    masks = cutmix_masks(4000, torch.zeros(1, 1, 32, 32), g)
    assert masks.shape == (4000, 1, 32, 32)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    real_fraction = masks.mean((1, 2, 3))
    assert real_fraction.mean().item() == pytest.approx(0.5, abs=0.03)  # box or its complement
    box_area = torch.minimum(real_fraction, 1 - real_fraction).mul(2)  # folded: U(0,1) area -> spread
    assert 0.2 < box_area.mean().item() < 0.8


class PixelwiseCritic(nn.Module):
    """D_p(x) = a * x^2 pixel by pixel, D_g(x) = sum(b * x): easy to compute by hand."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.7))
        self.b = nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        pixel = self.a * x.pow(2)
        return CriticOutput(self.b * x.flatten(1).sum(1), pixel, x, pixel)


def test_cutmix_consistency_is_zero_for_a_pixelwise_critic():
    real, fake = torch.rand(4, 1, 8, 8), -torch.rand(4, 1, 8, 8)
    cfg = GANConfig(consistency="cutmix")
    _, stats = critic_loss(PixelwiseCritic(), real, fake, cfg, penalise=False, generator=torch.Generator())
    assert stats["consistency"].item() == pytest.approx(0.0, abs=1e-12)


def test_mixup_consistency_by_hand():
    real, fake = torch.rand(3, 1, 8, 8), -torch.rand(3, 1, 8, 8)
    critic = PixelwiseCritic()
    _, stats = critic_loss(
        critic, real, fake, GANConfig(consistency="mixup"), penalise=False, generator=torch.Generator().manual_seed(5)
    )
    lam = per_sample_uniform(3, real, torch.Generator().manual_seed(5))
    mix = lam * real + (1 - lam) * fake
    a = critic.a.item()
    expected = (a * mix**2 - (lam * a * real**2 + (1 - lam) * a * fake**2)).pow(2).mean()
    assert stats["consistency"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_critic_loss_terms_by_hand(monkeypatch):
    """L_D = wasserstein terms of both heads + lambda_gp * (GP_g + GP_p) + lambda_cons * cons."""
    monkeypatch.setattr(losses, "DRIFT", 0.0)
    # Seeded, and fakes half the reals' range: with both in the same range, the pixel head's
    # Wasserstein term (a difference of mean squares) can fall near 0, where a relative
    # comparison fails on float32 rounding alone.
    draw = torch.Generator().manual_seed(0)
    real, fake = torch.rand(3, 1, 4, 4, generator=draw), -0.5 * torch.rand(3, 1, 4, 4, generator=draw)
    critic = PixelwiseCritic()
    cfg = GANConfig(lambda_gp=10.0, lambda_cons=2.0, pixel_gp="mean")
    loss, stats = critic_loss(critic, real, fake, cfg, penalise=True, generator=torch.Generator().manual_seed(1))
    a, b = critic.a.item(), critic.b.item()
    wd_global = b * (real.sum() - fake.sum()).item() / 3
    wd_pixel = a * (real.pow(2).mean() - fake.pow(2).mean()).item()
    assert stats["wd_global"].item() == pytest.approx(wd_global, rel=1e-5)
    assert stats["wd_pixel"].item() == pytest.approx(wd_pixel, rel=1e-5)
    # D_g gradient is b everywhere: norm b * 4 (16 pixels) -> (1.2 - 1)^2 for every sample.
    lam = per_sample_uniform(3, real, torch.Generator().manual_seed(1))
    mix = lam * real + (1 - lam) * fake
    gp_pixel = ((2 * a * mix / 16).flatten(1).norm(dim=1) - 1).pow(2).mean().item()
    assert stats["gp"].item() == pytest.approx((b * 4 - 1) ** 2 + gp_pixel, rel=1e-5)
    expected = -wd_global - wd_pixel + 10 * stats["gp"].item() + 2 * stats["consistency"].item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert critic.a.grad is not None and critic.b.grad is not None


def test_local_pixel_penalty_constrains_each_pixel():
    """For D_p = a * x pixel by pixel, every pixel's gradient has norm a: the local GP_p is
    (a - 1)^2 exactly, while the pixel mean's gradient has norm a / sqrt(HW)."""
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    pixel = 3.0 * x
    local = gradient_penalty(pixel_projection(pixel, "local", torch.Generator().manual_seed(0)), x)
    assert local.item() == pytest.approx((3.0 - 1) ** 2, rel=1e-5)
    mean = gradient_penalty(pixel_projection(pixel, "mean", None), x)
    assert mean.item() == pytest.approx((3.0 / 8 - 1) ** 2, rel=1e-5)


def test_drift_penalises_critic_values_on_real_images(monkeypatch):
    real, fake = torch.rand(2, 1, 4, 4), -torch.rand(2, 1, 4, 4)
    critic = PixelwiseCritic()
    values = []
    for drift in (0.0, 0.5):
        monkeypatch.setattr(losses, "DRIFT", drift)
        values.append(critic_loss(critic, real, fake, GANConfig(consistency="none"), False)[0].item())
    out = critic(real)
    assert values[1] - values[0] == pytest.approx(0.5 * (out.score.pow(2).mean() + out.pixel.pow(2).mean()).item())


def test_lazy_penalty_is_weighted_by_its_interval():
    real, fake = torch.rand(2, 1, 4, 4), -torch.rand(2, 1, 4, 4)
    losses = {}
    for k in (1, 4):
        loss, stats = critic_loss(
            PixelwiseCritic(), real, fake, GANConfig(gp_every=k), True, torch.Generator().manual_seed(0)
        )
        losses[k] = loss.item() - 10 * k * stats["gp"].item()
    assert losses[1] == pytest.approx(losses[4], rel=1e-6)


@pytest.mark.parametrize("consistency", ["mixup", "cutmix", "none"])
def test_penalty_uses_interpolates_in_every_mode(consistency):
    real, fake = torch.rand(2, 1, 4, 4), -torch.rand(2, 1, 4, 4)
    _, stats = critic_loss(
        PixelwiseCritic(), real, fake, GANConfig(consistency=consistency), True, torch.Generator().manual_seed(0)
    )
    assert math.isfinite(stats["gp"].item()) and stats["gp"].item() > 0
    assert ("consistency" in stats) == (consistency != "none")


def test_generator_loss_uses_both_heads():
    out = CriticOutput(torch.tensor([1.0, 3.0]), torch.full((2, 1, 2, 2), 0.5), None, None)
    assert generator_loss(out).item() == pytest.approx(-2.0 - 0.5)
    assert generator_loss(out._replace(pixel=None)).item() == pytest.approx(-2.0)


def test_encoder_loss_by_hand():
    real = torch.zeros(1, 1, 2, 2)
    recon = torch.full((1, 1, 2, 2), 0.5)
    out_real = CriticOutput(None, None, torch.full((1, 2, 1, 1), 2.0), torch.full((1, 1, 2, 2), 10.0))
    out_recon = CriticOutput(None, None, torch.ones(1, 2, 1, 1), torch.full((1, 1, 2, 2), 12.0))
    loss, stats = encoder_loss(recon, real, out_recon, out_real, kappa=0.5)
    assert stats["mse_image"].item() == pytest.approx(0.25)
    # relative errors: (2-1)^2 / 2^2 and (12-10)^2 / 10^2
    assert stats["feature_error"].item() == pytest.approx(0.25 + 0.04)
    assert loss.item() == pytest.approx(0.25 + 0.5 * 0.29)


def test_feature_error_does_not_depend_on_the_feature_scale():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert relative_mse(1000 * a, 1000 * b).item() == pytest.approx(relative_mse(a, b).item(), rel=1e-5)
