"""Training a model's networks: the optimisers, the random stream, where training stands
(`TrainingState`), checkpoints and resume, what one step of each stage does and the order the
stages run in. Stage 1 trains G and D (after an optional autoencoder warm-up of G and E);
stage 2 trains E with G and D frozen. The loop around the steps is `stages.Stage`, the batches
`batches.BatchSource`; the networks are the model's (`model.FUNetGAN`), which the trainer
changes and saves through their weights only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..config import Config
from ..errors import RunFolderError, TrainingDiverged
from ..files import CHECKPOINT_FILE, LOG_FILE, append_line
from ..nn import Discriminator, Encoder, Generator
from ..nn.tensors import to_tensor, to_uint8
from ..runtime import Runtime
from ..scoring import tiling
from . import checkpoint
from .batches import BatchSource
from .losses import critic_loss, encoder_loss, generator_loss, warmup_loss
from .samples import evaluating, save_grid
from .stages import Stage
from .state import TrainingState
from .tracking import Tracker

# The CPU recipe's stage 1 (docs/design.md): under gan.max_minutes the autoencoder
# warm-up stops at this share of the budget (a warm-up step costs a fifth to a tenth of an
# adversarial one), and the adversarial steps after it keep the autoencoder loss at this weight
# in L_G. Together: image AUROC 0.56 -> 0.81 on brick at the same 2-core CPU budget.
WARMUP_SHARE = 0.4
RECON_WEIGHT = 20.0

# What each stage's optimisers step, for the advice when a stage diverges.
LEARNING_RATES = {"warmup": "gan.lr_g and encoder.lr", "gan": "gan.lr_d and gan.lr_g", "encoder": "encoder.lr"}
# Adam's betas: (0.0, 0.9) for G and D (WGAN-GP practice, as F-UNetGAN trains); E's as in f-AnoGAN.
GAN_BETAS, ENCODER_BETAS = (0.0, 0.9), (0.5, 0.999)


class Networks(Protocol):
    """What the trainer trains (`model.FUNetGAN`): G, D and E, their settings and where they run,
    and all the weights a checkpoint holds."""

    G: Generator
    D: Discriminator
    E: Encoder
    config: Config
    runtime: Runtime

    def weights(self) -> dict[str, torch.Tensor]: ...

    def load_weights(self, tensors: dict[str, torch.Tensor], source: Path) -> None: ...


class Trainer:
    def __init__(
        self,
        model: Networks,
        train_images: np.ndarray,
        sample_images: np.ndarray,
        run_dir: str | Path | None,
        train_rows: np.ndarray | None = None,
        tracker: Tracker | None = None,
        progress: bool = True,
    ):
        """Trains on rows `train_rows` of `train_images` (all by default; see BatchSource);
        `tracker` gets the log lines and samples too (tracking.py); `progress`: the stages'
        progress bars and budget notes (False: silent)."""
        self.model, self.runtime, self.progress = model, model.runtime, progress
        self.tracker = tracker or Tracker()
        self.config = cfg = model.config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        adam = self.runtime.adam_options()
        self.opt_g = torch.optim.Adam(model.G.parameters(), lr=cfg.gan.lr_g, betas=GAN_BETAS, **adam)
        self.opt_d = torch.optim.Adam(model.D.parameters(), lr=cfg.gan.lr_d, betas=GAN_BETAS, **adam)
        self.opt_e = torch.optim.Adam(model.E.parameters(), lr=cfg.encoder.lr, betas=ENCODER_BETAS, **adam)
        self.rng = torch.Generator(self.runtime.device).manual_seed(cfg.seed * 10_007 + self.runtime.rank)
        self.state = TrainingState()
        patch = cfg.model.image_size
        # batch_size is the global batch: each process draws its share (`data.fit_batch` made it a multiple).
        self.source = BatchSource(
            train_images, cfg.batch_size // self.runtime.world_size, cfg.seed, self.runtime, patch, train_rows
        )
        previews = tiling.centre_crop(sample_images[:16], patch)  # whole images when they are the model's size
        self.sample_real = self.runtime.prepare(to_tensor(previews, self.runtime.device))
        g = torch.Generator().manual_seed(cfg.seed + 12345)
        self.sample_z = torch.randn(64, cfg.model.z_dim, generator=g, device="cpu").to(self.runtime.device)

    def log(self, record: dict) -> None:
        if not self.runtime.is_main:
            return
        if self.run_dir is not None:
            append_line(self.run_dir / LOG_FILE, json.dumps(record))
        self.tracker.scalars(
            record["stage"], record["step"], {k: v for k, v in record.items() if k not in ("stage", "step")}
        )

    def checkpoint(self) -> None:
        """Save a checkpoint (rank 0), never one with non-finite weights: every process checks
        (their weights are identical) and raises `TrainingDiverged` instead."""
        if self.run_dir is None:
            return
        if not self.finite_weights():
            raise self.diverged("weights")
        if self.runtime.is_main:
            self.save_checkpoint(self.run_dir / CHECKPOINT_FILE)

    def finite_weights(self) -> bool:
        """One device-to-host sync for all parameters, not one per tensor."""
        nets = (self.model.G, self.model.D, self.model.E)
        return bool(torch.stack([torch.isfinite(p).all() for net in nets for p in net.parameters()]).all())

    def diverged(self, what: str) -> TrainingDiverged:
        state = self.state
        saved = self.run_dir / CHECKPOINT_FILE if self.run_dir is not None else None
        kept = f"; the last checkpoint ({saved}) keeps finite weights" if saved and saved.exists() else ""
        return TrainingDiverged(
            f"training diverged in stage {state.stage} at step {state.step} "
            f"(non-finite {what}){kept}; start again with lower "
            f"{LEARNING_RATES[state.stage]} (--overwrite)"
        )

    def fit(self) -> TrainingState:
        """Run the stages from where `state` stands to the end; returns the final state."""
        state = self.state
        cfg = self.config.gan
        if state.stage == "warmup":
            warmup_minutes = None if cfg.max_minutes is None else WARMUP_SHARE * cfg.max_minutes
            warmup = Stage("warmup", cfg.warmup_iterations, warmup_minutes, self)
            warmup.run(self.warmup_step, self.save_reconstructions)
            self.finish_stage()
        if state.stage == "gan":
            Stage("gan", cfg.iterations, self.minutes_after_warmup(), self).run(self.gan_step, self.save_gan_samples)
            self.finish_stage()
        if state.stage == "encoder":
            encoder = self.config.encoder
            self.freeze_gan()
            if state.step == 0:
                self.standardise_encoder()
            Stage("encoder", encoder.iterations, encoder.max_minutes, self).run(
                self.encoder_step, self.save_reconstructions
            )
            self.finish_stage()
        return state

    def minutes_after_warmup(self) -> float | None:
        """Stage 1's budget (`gan.max_minutes`) less the warm-up's time: the warm-up is part of
        stage 1, so recipes with and without one compare at equal cost."""
        budget = self.config.gan.max_minutes
        if budget is None:
            return None
        warmup = self.state.completed.get("warmup", {"seconds": 0.0})
        return max(budget - warmup["seconds"] / 60, 0.0)

    def finish_stage(self) -> None:
        """Record what the stage did and move on to the next, with a checkpoint."""
        self.state.finish_stage()
        self.checkpoint()

    def latent(self, n: int) -> torch.Tensor:
        """n codes from the prior, drawn from the trainer's random stream."""
        return torch.randn(n, self.config.model.z_dim, device=self.runtime.device, generator=self.rng)

    def freeze_gan(self) -> None:
        for net in (self.model.G, self.model.D):
            net.eval()
            net.requires_grad_(False)

    # ---- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> None:
        """The weights, the optimisers, the random stream and `state`, in one safetensors file."""
        tensors = self.model.weights()
        meta = {"config": self.config.to_dict(), "state": self.state.to_dict()}
        for name, opt in self.optimisers():
            opt_tensors, meta[name] = checkpoint.optimizer_state(name, opt)
            tensors.update(opt_tensors)
        tensors["rng"] = self.rng.get_state()
        checkpoint.save(path, tensors, meta)

    def resume(self, path: str | Path) -> None:
        """Continue from the checkpoint at `path`: weights, optimisers, random stream and state."""
        path = Path(path)
        if not path.exists():
            raise RunFolderError(f"{path}: no checkpoint to resume from")
        tensors, meta = checkpoint.load(path)
        self.model.load_weights(tensors, path)
        for name, opt in self.optimisers():
            checkpoint.load_optimizer_state(opt, name, tensors, meta[name])
        checkpoint.restore_generator(self.rng, tensors["rng"])
        if self.runtime.rank:
            # Only rank 0's generator is saved: the other ranks derive their own stream from it,
            # else every process would draw the same z for the rest of the run.
            seed = torch.randint(2**62, (1,), generator=self.rng, device=self.rng.device)
            self.rng.manual_seed(int(seed) + self.runtime.rank)
        self.state = TrainingState.from_dict(meta["state"])

    def optimisers(self) -> tuple[tuple[str, torch.optim.Optimizer], ...]:
        """By the names their states are saved under."""
        return ("opt_g", self.opt_g), ("opt_d", self.opt_d), ("opt_e", self.opt_e)

    def warmup_step(self, step: int) -> dict[str, torch.Tensor]:
        """G and E as an autoencoder, E's codes standardised over the batch: a cheap start that
        gives G image structure before the adversarial stage (docs/design.md)."""
        m, rt = self.model, self.runtime
        with rt.autocast():
            loss, stats = self.reconstruction_loss(step)
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_e.zero_grad(set_to_none=True)
        loss.backward()
        rt.average_gradients(m.G)
        rt.average_gradients(m.E)
        self.opt_g.step()
        self.opt_e.step()
        return stats

    @torch.no_grad()
    def standardise_encoder(self, max_images: int = 1024) -> None:
        """Give E's codes the prior's per-dimension mean and variance on the training images
        before stage 2. A fresh E's outputs are far smaller than z ~ N(0, I), and after the
        warm-up G has only seen standardised codes; unscaled, E started stage 2 decoding
        every image to the same G output and did not recover within the CPU budget."""
        m = self.model
        m.E.eval()
        count = min(max_images, len(self.source))
        codes = torch.cat([m.E(self.source.images(i, min(i + 256, count))) for i in range(0, count, 256)]).float()
        m.E.train()
        m.E.standardise_output(codes.mean(0), codes.std(0).clamp_min(1e-6))
        # Every process computed this on the same images, but a GPU's kernels need not round
        # alike on each: rank 0's E for all, or the copies of E would train apart.
        self.runtime.sync_parameters(m.E)

    def reconstruction_loss(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """G and E as an autoencoder on batch `step` (the warm-up's loss and stage 1's extra term)."""
        real = self.source.batch(step)
        return warmup_loss(self.runtime.prepare(self.model.G(self.warmup_codes(real))), real)

    def warmup_codes(self, real: torch.Tensor) -> torch.Tensor:
        """E(x) standardised over the batch, so G learns to decode codes with the prior's
        per-dimension mean and variance. E runs in float32 here under autocast too: its codes
        of different images differ by less than bf16 resolves, and standardising divides that
        difference by their small spread, which left E's gradients in bf16 at a cosine of
        -0.4 to 0.96 to float32's (tests/test_gpu_readiness.py)."""
        with torch.autocast(real.device.type, enabled=False):
            z = self.model.E(real)
        if len(z) < 2:  # a single image (e.g. a one-image preview set) has no spread to divide by
            return z - z.mean(0)
        return (z - z.mean(0)) / (z.std(0) + 1e-6)

    def critic_step(self) -> dict[str, torch.Tensor]:
        """One update of D on a fresh real batch and G(z); the batch index is the running
        count of critic steps, so resumed runs draw the same batches."""
        m, rt = self.model, self.runtime
        cfg = self.config.gan
        index = self.state.critic_steps
        real = self.source.batch(index)
        with torch.no_grad(), rt.autocast():
            fake = rt.prepare(m.G(self.latent(len(real))).float())
        with rt.autocast():
            loss, stats = critic_loss(m.D, real, fake, cfg, penalise=index % cfg.gp_every == 0, generator=self.rng)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        rt.average_gradients(m.D)
        self.opt_d.step()
        self.state.critic_steps = index + 1
        return stats

    def generator_step(self, step: int) -> dict[str, torch.Tensor]:
        """L_G, plus RECON_WEIGHT x the autoencoder loss of G and E after a warm-up."""
        m, rt = self.model, self.runtime
        weight = RECON_WEIGHT if self.config.gan.warmup_iterations else 0.0
        m.D.requires_grad_(False)  # gradients for G only
        with rt.autocast():
            loss = generator_loss(m.D(rt.prepare(m.G(self.latent(self.source.batch_size)))))
            stats = {"loss_g": loss.detach()}
            if weight:
                recon_loss, recon_stats = self.reconstruction_loss(step)
                loss = loss + weight * recon_loss
                stats.update(recon_stats)
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_e.zero_grad(set_to_none=True)
        loss.backward()
        rt.average_gradients(m.G)
        self.opt_g.step()
        if weight:
            rt.average_gradients(m.E)
            self.opt_e.step()
        m.D.requires_grad_(True)
        return stats

    def gan_step(self, step: int) -> dict[str, torch.Tensor]:
        """`n_critic` critic steps, then one generator step."""
        for _ in range(self.config.gan.n_critic):
            stats = self.critic_step()
        return {**stats, **self.generator_step(step)}

    def encoder_step(self, step: int) -> dict[str, torch.Tensor]:
        m, rt = self.model, self.runtime
        real = self.source.batch(step)
        with rt.autocast():
            with torch.no_grad():
                out_real = m.D(real)
            recon = rt.prepare(m.G(m.E(real)))
            loss, stats = encoder_loss(recon, real, m.D(recon), out_real, self.config.encoder.kappa)
        self.opt_e.zero_grad(set_to_none=True)
        loss.backward()
        rt.average_gradients(m.E)
        self.opt_e.step()
        return stats

    @torch.no_grad()
    def save_gan_samples(self, step: int) -> None:
        if self.run_dir is None or not self.runtime.is_main:
            return
        with evaluating(self.model.G), self.runtime.autocast():
            images = self.model.G(self.sample_z).float()
        grid = save_grid(self.run_dir / "samples" / f"gan_{step:06d}.png", to_uint8(images), columns=8)
        self.tracker.image("samples/gan", step, grid)

    @torch.no_grad()
    def save_reconstructions(self, step: int) -> None:
        if self.run_dir is None or not self.runtime.is_main:
            return
        warmup = self.state.stage == "warmup"
        codes = self.warmup_codes if warmup else self.model.E
        with evaluating(self.model.G, self.model.E), self.runtime.autocast():
            recon = self.model.G(codes(self.sample_real)).float()
        pairs = torch.stack([self.sample_real.float(), recon], 1).flatten(0, 1)  # x, G(E(x)) side by side
        kind = "warmup" if warmup else "recon"  # the stages' step counts overlap
        grid = save_grid(self.run_dir / "samples" / f"{kind}_{step:06d}.png", to_uint8(pairs), columns=8)
        self.tracker.image(f"samples/{kind}", step, grid)
