"""The public model object: fit (both training stages, then calibration), score, save, load."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from .training import checkpoint
from .scoring import tiling
from .scoring.calibration import Calibration, calibration_split, find_calibration
from .config import Config
from .data import fit_batch
from .data.base import ImageSet
from .deploy.export import PARITY_TOLERANCE, export_onnx
from .files import CHECKPOINT_FILE, MODEL_FILE
from .nn import Discriminator, Encoder, Generator
from .nn.density import DensityStatistics, FeatureDensity, as_grid, samples_needed
from .nn.residuals import ScoringNetwork
from .nn.tensors import to_tensor
from .runtime import Runtime, setup
from .scoring.scorer import IZIF, MAP, Scorer, Scores, named_terms  # noqa: F401  (Scores: also importable from here)
from .training.tracking import Tracker, open_tracker
from .training.trainer import Trainer

# The density terms' Gaussians are fitted on at most this many random patches of the training
# images (whole images where they are the model's size): twice the 2,048 that 8 samples per
# dimension of the largest Gaussian (D's bottleneck from 64 px up) ask for.
FIT_SAMPLES = 4096
WEIGHTS = {term.name: term.weight for term in (*MAP, *IZIF)}  # the setting weighing each term
# Adam's betas: METHOD.md's (0.0, 0.9) for G and D (WGAN-GP practice); E's as in f-AnoGAN.
GAN_BETAS, ENCODER_BETAS = (0.0, 0.9), (0.5, 0.999)


class FUNetGAN(Scorer):
    """F-UNetGAN: G, U-Net D and E, trained on normal images only.

    >>> model = FUNetGAN(config).fit(splits.train)      # doctest: +SKIP
    >>> result = model.score(splits.test)                # doctest: +SKIP
    """

    def __init__(self, config: Config | None = None, runtime: Runtime | None = None):
        self.config = cfg = (config or Config()).validate()
        self.runtime = runtime or setup(cfg.device, cfg.amp)
        m = cfg.model
        # The same initial weights on every process, from a seeded copy of torch's global
        # generator: the caller's random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.G = self.runtime.place(Generator(m.image_size, m.channels, m.width, m.z_dim))
            self.D = self.runtime.place(Discriminator(m.image_size, m.channels, m.width, m.variant,
                                                      pixel_head=m.critic_head == "unet"))
            self.E = self.runtime.place(Encoder(m.image_size, m.channels, m.width, m.z_dim))
        # Set by calibrate: the map's density (one Gaussian for all locations) and the latent code's.
        self.density = self.runtime.place(FeatureDensity(self.D.bottleneck_width))
        self.latent_density = self.runtime.place(FeatureDensity(m.z_dim))
        for net in (self.G, self.D, self.E):
            self.runtime.sync_parameters(net)
        adam = self.runtime.adam_options()
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.gan.lr_g, betas=GAN_BETAS, **adam)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.gan.lr_d, betas=GAN_BETAS, **adam)
        self.opt_e = torch.optim.Adam(self.E.parameters(), lr=cfg.encoder.lr, betas=ENCODER_BETAS, **adam)
        self.rng = torch.Generator(self.runtime.device).manual_seed(cfg.seed * 10_007 + self.runtime.rank)
        self.state = {"stage": "warmup", "step": 0, "seconds": 0.0, "critic_steps": 0}
        self.calibration: Calibration | None = None

    # ---- training ------------------------------------------------------------------------
    def latent(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.model.z_dim, device=self.runtime.device, generator=self.rng)

    def freeze_gan(self) -> None:
        for net in (self.G, self.D):
            net.eval()
            net.requires_grad_(False)

    def fit(self, train: ImageSet, val: ImageSet | None = None, run_dir: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> "FUNetGAN":
        """Train both stages on the normal images of `train`, then calibrate thresholds on
        `val` (or, without one, on `data.val_fraction` of the training normals held out).
        `batch_size` is the global batch, fitted to the processes and the data (`data.fit_batch`:
        a warning says when it changes).
        With `run_dir`, writes logs, samples and checkpoints there; `resume` continues from
        its checkpoint. `progress`: a progress bar per stage, as `funetgan train` shows (False:
        none)."""
        rows, normals = calibration_split(train, val, self.config.data.val_fraction, self.config.seed)
        self.config.batch_size, note = fit_batch(train, rows, self.config.batch_size, self.runtime.world_size,
                                                 self.config.model.image_size)
        if note and self.runtime.is_main:  # the CLI fits the batch first and prints its note
            warnings.warn(note, stacklevel=2)
        if run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            if resume:
                self.load_checkpoint(Path(run_dir) / CHECKPOINT_FILE)
        # Losses and samples to TensorBoard / MLflow as settings ask (rank 0 only), then the calibration.
        with open_tracker(run_dir, self.config, "train") if self.runtime.is_main else Tracker() as tracker:
            Trainer(self, train.images, normals.images, run_dir, rows, tracker, progress).fit()
            if self.runtime.is_main:  # one process calibrates and writes for all
                self.calibrate(normals, train.images, rows)
                tracker.figures("calibration", self.calibration.to_dict())
        if run_dir is not None and self.runtime.is_main:
            self.save(Path(run_dir) / MODEL_FILE)
        return self

    # ---- scoring (tiling, normalisation, blur, image scores: `Scorer`) ---------------------
    @torch.inference_mode()
    def _score_tiles(self, tiles: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """The residual terms of uint8 B x S x S x C tiles, as numpy (a `tiling.TileScorer`)."""
        rt = self.runtime
        network = ScoringNetwork(self.E, self.G, self.D, self.density, self.latent_density).eval()
        terms = network(rt.prepare(to_tensor(tiles, rt.device)))
        # One copy to the host for all six terms: each copy waits for the device.
        joined = torch.cat([term.float().reshape(len(tiles), -1) for term in terms], 1).cpu().numpy()
        parts = np.split(joined, np.cumsum([term[0].numel() for term in terms])[:-1], axis=1)
        return named_terms([part.reshape(term.shape) for part, term in zip(parts, terms)])

    def recalibrate(self, train: ImageSet, val: ImageSet | None = None) -> Calibration:
        """Calibrate a trained model again (e.g. after changing its scoring settings: no
        retraining) on the images it was calibrated on at training: `val`, or the same
        held-out training normals (the split follows `seed` and the training set)."""
        rows, normals = calibration_split(train, val, self.config.data.val_fraction, self.config.seed)
        before = self.calibration.normals if self.calibration is not None else None
        count = int((normals.labels == 0).sum())
        if before is not None and before != count:
            raise ValueError(f"{count} calibration normals here, {before} when the run was calibrated: "
                             f"is this the data it was trained on?")
        return self.calibrate(normals, train.images, rows)

    def calibrate(self, normals: ImageSet, training: np.ndarray, rows: np.ndarray | None = None) -> Calibration:
        """Fit the density terms on the normal `training` images (their `rows`, None: all), then
        set the normal levels and thresholds on `normals` (normal images, with anomalies and
        masks where there are some), which must be other images (`calibration.find_calibration`)."""
        self.calibration = find_calibration(self, normals, (training, rows))
        return self.calibration

    @torch.inference_mode()
    def fit_densities(self, images: np.ndarray, rows: np.ndarray | None = None) -> tuple[list[str], list[str]]:
        """Fit the Gaussians of the density terms (`nn.density`: D's bottleneck features for the
        map's, E's codes for the latent's) on normal training images `images`
        (the `rows` training drew from, None: all): `FIT_SAMPLES` random patches of the model's
        size, seeded (whole images where they are its size, at most that many). Returns the
        terms whose Gaussian has fewer samples than it needs (`samples_needed`: they stay
        unfitted and count 0) and a note for each of those the settings weigh."""
        cfg, rt = self.config, self.runtime
        statistics = {density: DensityStatistics() for _, density in self.densities()}
        for patches in tiling.random_patches(images, rows, cfg.model.image_size, FIT_SAMPLES, cfg.seed,
                                             cfg.score.batch_size):
            x = rt.prepare(to_tensor(patches, rt.device))
            # On the host once: the statistics are float64 sums there (`DensityStatistics.add`).
            features, codes = self.D(x).f_g.double().cpu(), as_grid(self.E(x)).double().cpu()
            for density, gathered in statistics.items():
                gathered.add(codes if density is self.latent_density else features)
        unfitted, notes = [], []
        for name, density in self.densities():
            gathered, needed = statistics[density], samples_needed(density)
            if gathered.count >= needed:
                gathered.fit(density)
                continue
            unfitted.append(name)
            setting = WEIGHTS[name]
            if getattr(cfg.score, setting):
                notes.append(f"score.{setting} counts 0: {gathered.count} training samples to fit its "
                             f"Gaussian on, it needs {needed}")
        return unfitted, notes

    # ---- persistence ---------------------------------------------------------------------
    def export(self, path: str | Path, check_images: ImageSet | np.ndarray | None = None,
               tolerance: float | None = None, exporter: str = "torchscript"):
        """Write the scoring networks as one ONNX graph, with the settings and calibration in
        its metadata, for `OnnxScorer` (onnxruntime, no PyTorch). Checked first: the ONNX
        checker, then maps and scores of `check_images` (default: generated images) against
        PyTorch's within `tolerance`; raises `export.ParityError` and writes nothing otherwise.
        Returns the `export.Parity` figures. Needs `pip install funetgan[onnx]`."""
        return export_onnx(self, path, check_images, PARITY_TOLERANCE if tolerance is None else tolerance, exporter)

    def _weights(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, net in (("G", self.G), ("D", self.D), ("E", self.E), *self.densities()):
            tensors.update(checkpoint.prefixed(name, net.state_dict()))
        return tensors

    def _load_weights(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        for name, net in (("G", self.G), ("D", self.D), ("E", self.E)):
            try:
                net.load_state_dict(checkpoint.unprefixed(name, tensors))
            except RuntimeError as err:
                first = str(err).strip().splitlines()[0]
                raise ValueError(f"{path}: weights do not fit the settings ({first})") from None
        for name, density in self.densities():
            saved = checkpoint.unprefixed(name, tensors)
            if saved:  # a checkpoint saved before calibration holds unfitted ones
                density.load_state_dict(saved)

    def densities(self) -> tuple[tuple[str, FeatureDensity], ...]:
        """The Gaussians calibration fits, by the name of the term each serves (`scoring.MAP`,
        `scoring.IZIF`), which their tensors are saved under."""
        return (("pixel_density", self.density), ("latent_density", self.latent_density))

    def save(self, path: str | Path) -> None:
        """Weights, settings and calibration in one safetensors file."""
        calibration = None if self.calibration is None else self.calibration.to_dict()
        checkpoint.save(path, self._weights(), {"config": self.config.to_dict(), "calibration": calibration,
                                                "training": self.state.get("completed", {})})

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, calibrated: bool = True) -> "FUNetGAN":
        """Load a trained model from a run folder or a model.safetensors file; with
        `calibrated` False also one whose calibration this funetgan cannot read (to calibrate
        it again), which then has none."""
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no trained model here (did training finish?)")
        tensors, meta = checkpoint.load(path)
        config = Config.from_saved(meta["config"], str(path))
        if device is not None:
            config.device = device
        model = cls(config)
        model._load_weights(tensors, path)
        try:
            model.calibration = Calibration.from_dict(meta.get("calibration"), str(path))
        except ValueError:
            if calibrated:
                raise
        model.state.update(stage="done", completed=meta.get("training", {}))
        return model

    def _restore_rng(self, state: torch.Tensor) -> None:
        """Continue the saved random stream. A checkpoint of another device type holds a state
        this generator cannot take (a CUDA generator's is its seed and offset, a CPU one's a
        Mersenne Twister's): the stream is then seeded from that state, so a resumed run stays
        reproducible, though it draws other numbers than the run would have on its own device."""
        try:
            self.rng.set_state(state)
        except RuntimeError:
            digest = hashlib.sha256(state.numpy().tobytes()).digest()
            self.rng.manual_seed(int.from_bytes(digest[:8], "little"))

    def save_checkpoint(self, path: str | Path) -> None:
        tensors = self._weights()
        meta = {"config": self.config.to_dict(), "state": self.state}
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d), ("opt_e", self.opt_e)):
            opt_tensors, opt_meta = checkpoint.optimizer_state(name, opt)
            tensors.update(opt_tensors)
            meta[name] = opt_meta
        tensors["rng"] = self.rng.get_state()
        checkpoint.save(path, tensors, meta)

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        tensors, meta = checkpoint.load(path)
        self._load_weights(tensors, path)
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d), ("opt_e", self.opt_e)):
            checkpoint.load_optimizer_state(opt, name, tensors, meta[name])
        self._restore_rng(tensors["rng"])
        if self.runtime.rank:
            # Only rank 0's generator is saved: the other ranks derive their own stream from it,
            # else every process would draw the same z for the rest of the run.
            seed = torch.randint(2**62, (1,), generator=self.rng, device=self.rng.device)
            self.rng.manual_seed(int(seed) + self.runtime.rank)
        self.state = dict(meta["state"])
