"""Losses of both stages: WGAN-GP on the global and the per-pixel critic head, the per-pixel
consistency regulariser (mixup or CutMix), the generator loss and the encoder's izi_f loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import GANConfig
from ..nn import CriticOutput

# Weight of mean D(x)^2 on real images (ProGAN's drift term): keeps the unbounded WGAN
# critic values near 0.
DRIFT = 1e-3


def gradient_penalty(output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """mean_b (||d output_b / d inputs_b||_2 - 1)^2 for a per-sample `output` (shape B)."""
    (grad,) = torch.autograd.grad(output.sum(), inputs, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def per_sample_uniform(batch: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One U(0,1) weight per sample, shaped B x 1 x 1 x 1."""
    return torch.rand(batch, 1, 1, 1, device=like.device, dtype=like.dtype, generator=generator)


def cutmix_masks(batch: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random boxes (1 = take the real image), B x 1 x S x S, box area ratio ~ U(0, 1) as in
    U-Net GAN; the box is then the real part with probability 1/2 so both orders occur."""
    size = like.shape[-1]
    u = torch.rand(batch, 4, device=like.device, generator=generator)
    side = (u[:, 0].sqrt() * size).round().clamp(1, size)  # area ratio = (side/size)^2 ~ U(0,1)
    top = ((size - side) * u[:, 1]).floor()
    left = ((size - side) * u[:, 2]).floor()
    rows = torch.arange(size, device=like.device).view(1, size, 1)
    cols = torch.arange(size, device=like.device).view(1, 1, size)
    inside = (
        (rows >= top.view(-1, 1, 1))
        & (rows < (top + side).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1))
        & (cols < (left + side).view(-1, 1, 1))
    )
    flip = (u[:, 3] < 0.5).view(-1, 1, 1)
    return (inside ^ flip).unsqueeze(1).to(like.dtype)


def critic_loss(
    critic,
    real: torch.Tensor,
    fake: torch.Tensor,
    cfg: GANConfig,
    penalise: bool,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_D for one critic step, with a single forward pass of D over real, fake and mixed
    images. `penalise` adds the gradient penalties weighted by `cfg.gp_every` (lazy
    regularisation: they are computed only on every gp_every-th step).

    Under bf16 autocast the penalties get a float32 pass of D of their own: a penalty is a
    derivative of D, a sum of many nearly cancelling terms, and computed in bf16 it left D's
    gradients at a cosine of 0.87-0.98 to float32's; a float32 pass for them gives 0.9999
    (tests/test_gpu_readiness.py). The other terms keep bf16."""
    b = len(real)
    lam = per_sample_uniform(b, real, generator)
    # Mixup samples lam*x + (1-lam)*G(z) with lam ~ U(0,1) per sample are exactly WGAN-GP's
    # interpolates, so with mixup one batch serves both the penalty and the consistency term.
    interp = lam * real + (1 - lam) * fake
    weight, mixed = lam, interp
    if cfg.consistency == "cutmix":
        weight = cutmix_masks(b, real, generator)
        mixed = weight * real + (1 - weight) * fake
    parts = [real, fake]
    use_mix = cfg.consistency != "none"
    if use_mix:
        parts.append(mixed)
    penalty_in_float32 = penalise and torch.is_autocast_enabled(real.device.type)
    separate_interp = penalise and cfg.consistency != "mixup" and not penalty_in_float32
    if penalise and not penalty_in_float32:
        interp.requires_grad_(True)
    if separate_interp:
        parts.append(interp)
    out: CriticOutput = critic(torch.cat(parts))
    scores, pixels = out.score.float().split(b), None if out.pixel is None else out.pixel.float().split(b)

    stats = {"wd_global": (scores[0].mean() - scores[1].mean()).detach()}
    loss = scores[1].mean() - scores[0].mean() + DRIFT * scores[0].pow(2).mean()
    if pixels is not None:
        wd_pixel = pixels[0].mean() - pixels[1].mean()
        loss = loss - wd_pixel + DRIFT * pixels[0].pow(2).mean()
        stats["wd_pixel"] = wd_pixel.detach()
        if use_mix:
            # Not detached: with a detached target, D chased its own moving pixel maps and
            # diverged within 30 generator steps in every run; as a function of D alone the
            # term is a plain regulariser (docs/design.md).
            target = weight * pixels[0] + (1 - weight) * pixels[1]
            consistency = (pixels[2] - target).pow(2).mean()
            loss = loss + cfg.lambda_cons * consistency
            stats["consistency"] = consistency.detach()
    if penalise:
        k = 3 if separate_interp and use_mix else 2
        penalised_score, penalised_pixel = scores[k], None if pixels is None else pixels[k]
        if penalty_in_float32:
            interp = interp.detach().requires_grad_(True)
            with torch.autocast(real.device.type, enabled=False):
                own: CriticOutput = critic(interp)
            penalised_score, penalised_pixel = own.score, own.pixel
        gp = gradient_penalty(penalised_score, interp)
        if pixels is not None:
            assert penalised_pixel is not None  # a critic with a pixel head gives both
            gp = gp + gradient_penalty(pixel_projection(penalised_pixel, cfg.pixel_gp, generator), interp)
        loss = loss + cfg.lambda_gp * cfg.gp_every * gp
        stats["gp"] = gp.detach()
    stats["loss_d"] = loss.detach()
    return loss, stats


def pixel_projection(pixel: torch.Tensor, mode: str, generator: torch.Generator | None) -> torch.Tensor:
    """The per-sample scalar whose input gradient GP_p penalises.

    "mean": the pixel mean of D_p (as published). It leaves single pixels unconstrained: their
    gradients may cancel in the mean. "local": sum_ij e_ij D_p_ij / sqrt(HW) with random signs
    e_ij = +-1, whose squared input-gradient norm is, in expectation, the mean over pixels of
    each pixel's squared gradient norm: a one-backward estimate of per-pixel Lipschitzness."""
    if mode == "mean":
        return pixel.mean((1, 2, 3))
    signs = torch.randint(0, 2, pixel.shape, device=pixel.device, generator=generator).to(pixel.dtype) * 2 - 1
    return (pixel * signs).sum((1, 2, 3)) / pixel[0].numel() ** 0.5


def generator_loss(out: CriticOutput) -> torch.Tensor:
    """L_G = -mean D_g(G(z)) - mean D_p(G(z))."""
    loss = -out.score.float().mean()
    if out.pixel is not None:
        loss = loss - out.pixel.float().mean()
    return loss


def encoder_loss(
    recon: torch.Tensor, real: torch.Tensor, out_recon: CriticOutput, out_real: CriticOutput, kappa: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """izi_f: mse(G(E(x)), x) + kappa * (error of D's bottleneck features + error of D's last
    decoder features). `out_real` carries no gradient; gradients flow through `recon`.

    Each feature error is relative, mse(f(r), f(x)) / mean(f(x)^2): D's feature scale is
    arbitrary (a WGAN critic is free to grow it), and raw MSE let it swamp the image term by
    orders of magnitude in our runs; relative errors keep kappa meaningful."""
    image = F.mse_loss(recon.float(), real.float())
    features = relative_mse(out_recon.f_g, out_real.f_g)
    if out_recon.f_p is not None and out_real.f_p is not None:
        features = features + relative_mse(out_recon.f_p, out_real.f_p)
    loss = image + kappa * features
    return loss, {"loss_e": loss.detach(), "mse_image": image.detach(), "feature_error": features.detach()}


def relative_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    target = target.float()
    return F.mse_loss(prediction.float(), target) / target.pow(2).mean().clamp_min(1e-12)


def warmup_loss(recon: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """mse(G(E(x)), x) of the autoencoder warm-up."""
    loss = F.mse_loss(recon.float(), real.float())
    return loss, {"loss_warmup": loss.detach()}
