"""The two training stages and the loop machinery they share (budget, progress, log,
samples, checkpoints). Stage 1 trains G and D; stage 2 trains E with G and D frozen."""
from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import tiling
from .files import append_line, atomic_save_png
from .losses import critic_loss, encoder_loss, generator_loss, warmup_loss
from .nn.tensors import to_tensor, to_uint8, uint8_to_float
from .runtime import Runtime
from .tracking import Tracker


class BatchSource:
    """Random batches of `batch_size` (this process's share) from a uint8 set: rows `rows` of
    `images` (all rows by default).

    An in-memory set is copied to the device once; a memory-mapped one (`np.memmap`, the
    slice cache of `data.cache`) stays on disk and each batch's rows are read from it, so
    memory holds one batch whatever the set's size. Both give the same batches.

    Batch `i` is a pure function of (seed, i): epoch e visits the permutation seeded by
    (seed, e), each process taking every world_size-th index as DistributedSampler does; so a
    resumed run sees exactly the batches an uninterrupted one would. With `patch` smaller
    than the images, each batch item is a random patch of its image (positions seeded by
    (seed, i) too) and an epoch draws `tiling.patches_per_image` patches from every image.
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, runtime: Runtime,
                 patch: int | None = None, rows: np.ndarray | None = None):
        self.mapped = images if isinstance(images, np.memmap) else None
        if self.mapped is not None:
            self.rows = np.arange(len(images)) if rows is None else np.asarray(rows)
        else:
            chosen = images if rows is None else images[rows]
            self.data = torch.from_numpy(np.ascontiguousarray(chosen)).to(runtime.device)
        self.count = len(images) if rows is None else len(rows)
        self.batch_size, self.seed, self.runtime = batch_size, seed, runtime
        self.size = images.shape[1:3]
        self.patch = patch if patch is not None and self.size != (patch, patch) else None
        self.draws = tiling.patches_per_image(*self.size, self.patch) if self.patch else 1
        self.per_epoch = (self.count * self.draws // runtime.world_size) // batch_size  # >= 1: data.fit_batch
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        return self.count

    def batch(self, index: int) -> torch.Tensor:
        epoch, position = divmod(index, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.count * self.draws, generator=g, device="cpu") % self.count
            self._order = order[self.runtime.rank::self.runtime.world_size]
            self._epoch = epoch
        pick = self._order[position * self.batch_size:(position + 1) * self.batch_size]
        return self.runtime.prepare(self._inputs(pick, np.random.default_rng((self.seed, index, self.runtime.rank))))

    def images(self, start: int, stop: int) -> torch.Tensor:
        """Training images start..stop-1 in their stored order (a random patch of each where
        the source draws patches), the same on every process."""
        pick = torch.arange(start, min(stop, self.count), device="cpu")
        return self.runtime.prepare(self._inputs(pick, np.random.default_rng((self.seed, start))))

    def _inputs(self, pick: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Images `pick` (or a random patch of each, positions drawn from `rng`) as a float
        batch on the device.

        What is random is drawn on the host, so batch i is the same on any device; it reaches
        the device in one copy that the host does not wait for (`Runtime.to_device`), and an
        in-memory set is indexed there. A memory-mapped set is indexed where it is read, and
        its batch copied the same way."""
        draws = torch.zeros(len(pick), 3, dtype=torch.int64, device="cpu")  # row, patch corner (top, left)
        draws[:, 0] = pick
        if self.patch is not None:
            draws[:, 1:3] = torch.from_numpy(tiling.random_corners(len(pick), *self.size, self.patch, rng))
        if self.mapped is None:
            return uint8_to_float(self._gather(self.data, self.runtime.to_device(draws)))
        read = torch.from_numpy(self.mapped[self.rows[pick.numpy()]])  # the batch's rows, from the page cache
        draws[:, 0] = torch.arange(len(pick), device="cpu")
        return uint8_to_float(self.runtime.to_device(self._gather(read, draws)))

    def _gather(self, data: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """The rows and patches of `draws` (B x 3, on `data`'s device) from uint8 N x H x W x C
        `data`, in one indexing operation."""
        if self.patch is None:
            return data[draws[:, 0]]
        rows = draws[:, 1:2] + torch.arange(self.patch, device=data.device)  # B x patch
        cols = draws[:, 2:3] + torch.arange(self.patch, device=data.device)
        return data[draws[:, 0, None, None], rows[:, :, None], cols[:, None, :]]


class TrainingStopped(Exception):
    """SIGTERM or SIGINT stopped training at a step boundary, after a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class TrainingDiverged(ValueError):
    """Losses or weights became NaN or infinite; nothing non-finite was saved."""


# The CPU recipe's stage 1 (README, "design choices"): under gan.max_minutes the autoencoder
# warm-up stops at this share of the budget (a warm-up step costs a fifth to a tenth of an
# adversarial one), and the adversarial steps after it keep the autoencoder loss at this weight
# in L_G. Together: image AUROC 0.56 -> 0.81 on brick at the same 2-core CPU budget.
WARMUP_SHARE = 0.4
RECON_WEIGHT = 20.0

# What each stage's optimisers step, for the advice when a stage diverges.
LEARNING_RATES = {"warmup": "gan.lr_g and encoder.lr", "gan": "gan.lr_d and gan.lr_g", "encoder": "encoder.lr"}


class StopSignals:
    """While a stage runs, SIGTERM (what Slurm and Kubernetes send before killing a job) and
    SIGINT (Ctrl-C) are noted rather than acted on, so the loop stops between two steps and
    saves a checkpoint. A second signal gets the usual behaviour (a second Ctrl-C interrupts
    at once). Signal handlers exist only in the main thread; elsewhere nothing changes."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> "StopSignals":
        self.received = 0
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._note) for s in self.SIGNALS}
        return self

    def _note(self, signum: int, frame) -> None:
        self.received = signum
        self._restore()

    def _restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def __exit__(self, *exc) -> None:
        self._restore()


class Stage:
    """Runs `step_fn(step) -> stats` from the saved step to `total`, within `max_minutes`
    (time already spent before a resume counts), with a progress bar, a JSONL log, periodic
    samples and checkpoints. SIGTERM or SIGINT (on any process) stops every process after the
    same step, with a checkpoint. Non-finite losses or weights, checked at each log step, stop
    training with `TrainingDiverged`.

    A single process checks the budget and signals after every step, which costs nothing.
    Processes under torchrun must agree, by a collective whose result the host waits for: they
    do so at the stage's start and after each log step (`log_every`), which waits for the
    device anyway, so the steps between never make the host wait; a budget or signal then
    stops training up to `log_every` steps later."""

    BUDGET = 1  # reasons to stop; a signal's number (2, 15) outranks the budget across ranks

    def __init__(self, name: str, total: int, max_minutes: float | None, trainer: "Trainer"):
        self.name, self.total, self.max_minutes, self.trainer = name, total, max_minutes, trainer

    def run(self, step_fn: Callable[[int], dict[str, torch.Tensor]], sample_fn: Callable[[int], None]) -> None:
        t = self.trainer
        state = t.model.state
        cfg = t.model.config
        start, spent = state["step"], state["seconds"]
        began = time.monotonic()
        # Under a time budget the step count is rarely reached: show steps and rate, not an ETA.
        timed = self.max_minutes is not None
        bar = tqdm(total=None if timed else self.total, initial=start, disable=not t.runtime.is_main,
                   desc=f"{self.name} (budget {self.max_minutes:.3g} min)" if timed else self.name,
                   dynamic_ncols=True, leave=True)
        step = start
        with StopSignals() as signals, contextlib.closing(bar):
            while step < self.total:
                if t.runtime.distributed and step != start and step % cfg.log_every:
                    stop = 0  # processes agree on stopping only where they log (see below)
                else:
                    elapsed = spent + time.monotonic() - began
                    over_budget = timed and elapsed >= 60 * self.max_minutes
                    stop = t.runtime.max_rank(signals.received or (self.BUDGET if over_budget else 0))
                if stop == self.BUDGET:
                    bar.write(f"{self.name}: time budget of {self.max_minutes:.3g} min reached at step {step}")
                    break
                if stop:
                    t.checkpoint()
                    saved = f"checkpoint saved in {t.run_dir}" if t.run_dir is not None else "no run folder"
                    raise TrainingStopped(f"stopped by {signal.Signals(stop).name} at {self.name} step {step}; "
                                          f"{saved}", stop)
                stats = step_fn(step)
                step += 1
                state["step"], state["seconds"] = step, spent + time.monotonic() - began
                bar.update(1)
                if step % cfg.log_every == 0 or step == self.total:
                    values = {k: round(float(v), 5) for k, v in stats.items()}
                    bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
                    t.log({"stage": self.name, "step": step, "seconds": round(state["seconds"], 2), **values})
                    self.check_finite(values)
                if step % cfg.checkpoint_every == 0:
                    sample_fn(step)
                    t.checkpoint()
        if step > start:
            sample_fn(step)

    def check_finite(self, losses: dict[str, float]) -> None:
        """Raise `TrainingDiverged` on every process when a loss (on any) or a weight is not finite."""
        t = self.trainer
        bad = [name for name, value in losses.items() if not math.isfinite(value)]
        bad += [] if t.finite_weights() else ["weights"]
        if t.runtime.any_rank(bool(bad)):
            raise t.diverged(", ".join(bad) or "losses on another process")


class Trainer:
    def __init__(self, model, train_images: np.ndarray, sample_images: np.ndarray, run_dir: str | Path | None,
                 train_rows: np.ndarray | None = None, tracker: Tracker | None = None):
        """Trains on rows `train_rows` of `train_images` (all by default; see BatchSource);
        `tracker` gets the log lines and samples too (tracking.py)."""
        self.model, self.runtime = model, model.runtime
        self.tracker = tracker or Tracker()
        cfg = model.config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        patch = cfg.model.image_size
        # batch_size is the global batch: each process draws its share (`data.fit_batch` made it a multiple).
        self.source = BatchSource(train_images, cfg.batch_size // self.runtime.world_size, cfg.seed, self.runtime,
                                  patch, train_rows)
        previews = tiling.centre_crop(sample_images[:16], patch)  # whole images when they are the model's size
        self.sample_real = self.runtime.prepare(to_tensor(previews, self.runtime.device))
        g = torch.Generator().manual_seed(cfg.seed + 12345)
        self.sample_z = torch.randn(64, cfg.model.z_dim, generator=g, device="cpu").to(self.runtime.device)

    def log(self, record: dict) -> None:
        if not self.runtime.is_main:
            return
        if self.run_dir is not None:
            append_line(self.run_dir / "log.jsonl", json.dumps(record))
        self.tracker.scalars(record["stage"], record["step"],
                             {k: v for k, v in record.items() if k not in ("stage", "step")})

    def checkpoint(self) -> None:
        """Save a checkpoint (rank 0), never one with non-finite weights: every process checks
        (their weights are identical) and raises `TrainingDiverged` instead."""
        if self.run_dir is None:
            return
        if not self.finite_weights():
            raise self.diverged("weights")
        if self.runtime.is_main:
            self.model.save_checkpoint(self.run_dir / "checkpoint.safetensors")

    def finite_weights(self) -> bool:
        """One device-to-host sync for all parameters, not one per tensor."""
        nets = (self.model.G, self.model.D, self.model.E)
        return bool(torch.stack([torch.isfinite(p).all() for net in nets for p in net.parameters()]).all())

    def diverged(self, what: str) -> TrainingDiverged:
        state = self.model.state
        saved = self.run_dir / "checkpoint.safetensors" if self.run_dir is not None else None
        kept = f"; the last checkpoint ({saved}) keeps finite weights" if saved and saved.exists() else ""
        return TrainingDiverged(f"training diverged in stage {state['stage']} at step {state['step']} "
                                f"(non-finite {what}){kept}; start again with lower "
                                f"{LEARNING_RATES[state['stage']]} (--overwrite)")

    def fit(self) -> None:
        state = self.model.state
        cfg = self.model.config.gan
        if state["stage"] == "warmup":
            warmup_minutes = None if cfg.max_minutes is None else WARMUP_SHARE * cfg.max_minutes
            Stage("warmup", cfg.warmup_iterations, warmup_minutes, self).run(self.warmup_step, self.save_reconstructions)
            self._finish_stage("gan")
        if state["stage"] == "gan":
            Stage("gan", cfg.iterations, self.minutes_after_warmup(), self).run(self.gan_step, self.save_gan_samples)
            self._finish_stage("encoder")
        if state["stage"] == "encoder":
            cfg = self.model.config.encoder
            self.model.freeze_gan()
            if state["step"] == 0:
                self.standardise_encoder()
            Stage("encoder", cfg.iterations, cfg.max_minutes, self).run(self.encoder_step, self.save_reconstructions)
            self._finish_stage("done")

    def minutes_after_warmup(self) -> float | None:
        """Stage 1's budget (`gan.max_minutes`) less the warm-up's time: the warm-up is part of
        stage 1, so recipes with and without one compare at equal cost."""
        budget = self.model.config.gan.max_minutes
        if budget is None:
            return None
        warmup = self.model.state.get("completed", {}).get("warmup", {"seconds": 0.0})
        return max(budget - warmup["seconds"] / 60, 0.0)

    def _finish_stage(self, next_stage: str) -> None:
        """Record what the stage did (steps, seconds) and move on to `next_stage`."""
        state = self.model.state
        state.setdefault("completed", {})[state["stage"]] = {
            "steps": state["step"], "critic_steps": state["critic_steps"], "seconds": round(state["seconds"], 2)}
        state.update(stage=next_stage, step=0, seconds=0.0, critic_steps=0)
        self.checkpoint()

    def warmup_step(self, step: int) -> dict[str, torch.Tensor]:
        """G and E as an autoencoder, E's codes standardised over the batch: a cheap start that
        gives G image structure before the adversarial stage (README, "design choices")."""
        m, rt = self.model, self.runtime
        with rt.autocast():
            loss, stats = self.reconstruction_loss(step)
        m.opt_g.zero_grad(set_to_none=True)
        m.opt_e.zero_grad(set_to_none=True)
        loss.backward()
        rt.average_gradients(m.G)
        rt.average_gradients(m.E)
        m.opt_g.step()
        m.opt_e.step()
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
        cfg = m.config.gan
        index = m.state["critic_steps"]
        real = self.source.batch(index)
        with torch.no_grad(), rt.autocast():
            fake = rt.prepare(m.G(m.latent(len(real))).float())
        with rt.autocast():
            loss, stats = critic_loss(m.D, real, fake, cfg, penalise=index % cfg.gp_every == 0, generator=m.rng)
        m.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        rt.average_gradients(m.D)
        m.opt_d.step()
        m.state["critic_steps"] = index + 1
        return stats

    def generator_step(self, step: int) -> dict[str, torch.Tensor]:
        """L_G, plus RECON_WEIGHT x the autoencoder loss of G and E after a warm-up."""
        m, rt = self.model, self.runtime
        weight = RECON_WEIGHT if m.config.gan.warmup_iterations else 0.0
        m.D.requires_grad_(False)  # gradients for G only
        with rt.autocast():
            loss = generator_loss(m.D(rt.prepare(m.G(m.latent(self.source.batch_size)))))
            stats = {"loss_g": loss.detach()}
            if weight:
                recon_loss, recon_stats = self.reconstruction_loss(step)
                loss = loss + weight * recon_loss
                stats.update(recon_stats)
        m.opt_g.zero_grad(set_to_none=True)
        m.opt_e.zero_grad(set_to_none=True)
        loss.backward()
        rt.average_gradients(m.G)
        m.opt_g.step()
        if weight:
            rt.average_gradients(m.E)
            m.opt_e.step()
        m.D.requires_grad_(True)
        return stats

    def gan_step(self, step: int) -> dict[str, torch.Tensor]:
        """`n_critic` critic steps, then one generator step."""
        for _ in range(self.model.config.gan.n_critic):
            stats = self.critic_step()
        return {**stats, **self.generator_step(step)}

    def encoder_step(self, step: int) -> dict[str, torch.Tensor]:
        m, rt = self.model, self.runtime
        real = self.source.batch(step)
        with rt.autocast():
            with torch.no_grad():
                out_real = m.D(real)
            recon = rt.prepare(m.G(m.E(real)))
            loss, stats = encoder_loss(recon, real, m.D(recon), out_real, m.config.encoder.kappa)
        m.opt_e.zero_grad(set_to_none=True)
        loss.backward()
        rt.average_gradients(m.E)
        m.opt_e.step()
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
        warmup = self.model.state["stage"] == "warmup"
        codes = self.warmup_codes if warmup else self.model.E
        with evaluating(self.model.G, self.model.E), self.runtime.autocast():
            recon = self.model.G(codes(self.sample_real)).float()
        pairs = torch.stack([self.sample_real.float(), recon], 1).flatten(0, 1)  # x, G(E(x)) side by side
        kind = "warmup" if warmup else "recon"  # the stages' step counts overlap
        grid = save_grid(self.run_dir / "samples" / f"{kind}_{step:06d}.png", to_uint8(pairs), columns=8)
        self.tracker.image(f"samples/{kind}", step, grid)


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
        grid[r * (s + 2):r * (s + 2) + s, col * (s + 2):col * (s + 2) + s] = image
    atomic_save_png(path, Image.fromarray(grid[..., 0] if c == 1 else grid))
    return grid
