"""The public model object, `FUNetGAN`: the trained networks (G, D, E), the Gaussians of the
density terms and the `Calibration`. It fits (a `training.Trainer` trains the networks, then
calibration), scores (`scoring.Scorer`: the networks are its tile scorer), saves, loads and
exports; how it is trained (optimisers, random stream, checkpoints) is the trainer's."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .config import Config, ModelConfig
from .data import fit_batch
from .data.base import ImageSet
from .deploy.export import PARITY_TOLERANCE, Parity, export_onnx
from .errors import DataError, RunFolderError
from .files import CHECKPOINT_FILE, MODEL_FILE
from .nn import Discriminator, Encoder, Generator
from .nn.density import DensityStatistics, FeatureDensity, samples_needed
from .nn.residuals import Forward, ScoringNetwork
from .nn.tensors import to_tensor
from .runtime import Runtime, setup
from .scoring import tiling
from .scoring.calibration import Calibration, calibration_split, find_calibration
from .scoring.scorer import Scorer, Scores  # noqa: F401  (Scores: also importable from here)
from .scoring.terms import density_terms, named_terms, network_terms
from .training import checkpoint
from .training.tracking import Tracker, open_tracker
from .training.trainer import Trainer

# The density terms' Gaussians are fitted on at most this many random patches of the training
# images (whole images where they are the model's size): twice the 2,048 that 8 samples per
# dimension of the largest Gaussian (D's bottleneck from 64 px up) ask for.
FIT_SAMPLES = 4096

# The critics `model.critic_head` picks from (`config.CRITIC_HEADS` names them for the settings).
CRITICS: dict[str, Callable[[ModelConfig], Discriminator]] = {
    "unet": lambda m: Discriminator(m.image_size, m.channels, m.width, m.variant, pixel_head=True),
    "global": lambda m: Discriminator(m.image_size, m.channels, m.width, m.variant, pixel_head=False),
}


def training_split(
    config: Config, train: ImageSet, val: ImageSet | None, world_size: int
) -> tuple[np.ndarray | None, ImageSet, str | None]:
    """The rows of `train` to train on and the calibration set (`calibration_split`), with
    `config.batch_size` fitted to those rows and the processes (`data.fit_batch`), and a note
    when it changed. The CLI runs it before training too, to print the note and save the
    settings training will use."""
    rows, normals = calibration_split(train, val, config.data.val_fraction, config.seed)
    config.batch_size, note = fit_batch(train, rows, config.batch_size, world_size, config.model.image_size)
    return rows, normals, note


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
            self.D = self.runtime.place(CRITICS[m.critic_head](m))
            self.E = self.runtime.place(Encoder(m.image_size, m.channels, m.width, m.z_dim))
        # Fitted by calibrate: each density term's Gaussian (`scoring.terms`), by the term's name,
        # which its tensors are saved under.
        self.densities: dict[str, FeatureDensity] = {}
        for term in density_terms():
            assert term.channels is not None  # `Term` checks that a density term has both
            self.densities[term.name] = self.runtime.place(FeatureDensity(term.channels(self)))
        for net in (self.G, self.D, self.E):
            self.runtime.sync_parameters(net)
        self.calibration: Calibration | None = None
        self.training: dict[str, dict[str, float]] = {}  # what each training stage did (`TrainingState.completed`)

    def fit(
        self,
        train: ImageSet,
        val: ImageSet | None = None,
        run_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> FUNetGAN:
        """Train both stages on the normal images of `train`, then calibrate thresholds on
        `val` (or, without one, on `data.val_fraction` of the training normals held out).
        `batch_size` is the global batch, fitted to the processes and the data (`training_split`:
        a warning says when it changes).
        With `run_dir`, writes logs, samples and checkpoints there; `resume` continues from
        its checkpoint. `progress`: a progress bar per stage, as `funetgan train` shows (False:
        none)."""
        rows, normals, note = training_split(self.config, train, val, self.runtime.world_size)
        if note and self.runtime.is_main:  # the CLI fits the batch first and prints its note
            warnings.warn(note, stacklevel=2)
        if run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        # Losses and samples to TensorBoard / MLflow as settings ask (rank 0 only), then the calibration.
        with open_tracker(run_dir, self.config, "train") if self.runtime.is_main else Tracker() as tracker:
            trainer = Trainer(self, train.images, normals.images, run_dir, rows, tracker, progress)
            if resume and run_dir is not None:
                trainer.resume(Path(run_dir) / CHECKPOINT_FILE)
            self.training = trainer.fit().completed
            if self.runtime.is_main:  # one process calibrates and writes for all
                calibration = self.calibrate(normals, train.images, rows)
                tracker.figures("calibration", calibration.to_dict())
        if run_dir is not None and self.runtime.is_main:
            self.save(Path(run_dir) / MODEL_FILE)
        return self

    # ---- scoring (tiling, normalisation, blur, image scores: `Scorer`) ---------------------
    @torch.inference_mode()
    def _score_tiles(self, tiles: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """The network terms of uint8 B x S x S x C tiles, as numpy (a `tiling.TileScorer`)."""
        rt = self.runtime
        network = ScoringNetwork(self.E, self.G, self.D, self.densities, network_terms()).eval()
        terms = network(rt.prepare(to_tensor(tiles, rt.device)))
        # One copy to the host for all the terms: each copy waits for the device.
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
            raise DataError(
                f"{count} calibration normals here, {before} when the run was calibrated: "
                f"is this the data it was trained on?"
            )
        return self.calibrate(normals, train.images, rows)

    def calibrate(self, normals: ImageSet, training: np.ndarray, rows: np.ndarray | None = None) -> Calibration:
        """Fit the density terms on the normal `training` images (their `rows`, None: all), then
        set the normal levels and thresholds on `normals` (normal images, with anomalies and
        masks where there are some), which must be other images (`calibration.find_calibration`)."""
        unfitted, notes = self.fit_densities(training, rows)
        self.calibration = find_calibration(self, normals, unfitted, notes)
        return self.calibration

    @torch.inference_mode()
    def fit_densities(self, images: np.ndarray, rows: np.ndarray | None = None) -> tuple[list[str], list[str]]:
        """Fit the Gaussian of each density term (`nn.density`, on the features its table entry
        names) on normal training images `images` (the `rows` training drew from, None: all):
        `FIT_SAMPLES` random patches of the model's size, seeded (whole images where they are
        its size, at most that many). Returns the terms whose Gaussian has fewer samples than it
        needs (`samples_needed`: they stay unfitted and count 0) and a note for each of those
        the settings weigh."""
        cfg, rt = self.config, self.runtime
        statistics = {term.name: DensityStatistics() for term in density_terms()}
        for patches in tiling.random_patches(
            images, rows, cfg.model.image_size, FIT_SAMPLES, cfg.seed, cfg.score.batch_size
        ):
            step = Forward(rt.prepare(to_tensor(patches, rt.device)), self.E, self.G, self.D)
            for term in density_terms():  # on the host: the statistics are float64 sums there
                assert term.features is not None
                statistics[term.name].add(term.features(step).double().cpu())
        unfitted, notes = [], []
        for term in density_terms():
            gathered, needed = statistics[term.name], samples_needed(self.densities[term.name])
            if gathered.count >= needed:
                gathered.fit(self.densities[term.name])
                continue
            unfitted.append(term.name)
            if term.weight is None or getattr(cfg.score, term.weight):
                setting = term.name if term.weight is None else f"score.{term.weight}"
                notes.append(
                    f"{setting} counts 0: {gathered.count} training samples to fit its Gaussian on, it needs {needed}"
                )
        return unfitted, notes

    # ---- persistence ---------------------------------------------------------------------
    def export(
        self,
        path: str | Path,
        check_images: ImageSet | np.ndarray | None = None,
        tolerance: float | None = None,
        exporter: str = "torchscript",
    ) -> Parity:
        """Write the scoring networks as one ONNX graph, with the settings and calibration in
        its metadata, for `OnnxScorer` (onnxruntime, no PyTorch). Checked first: the ONNX
        checker, then maps and scores of `check_images` (default: generated images) against
        PyTorch's within `tolerance`; raises `export.ParityError` and writes nothing otherwise.
        Returns the `export.Parity` figures. Needs `pip install funetgan[onnx]`."""
        return export_onnx(self, path, check_images, PARITY_TOLERANCE if tolerance is None else tolerance, exporter)

    def weights(self) -> dict[str, torch.Tensor]:
        """Every tensor of the networks and densities, by network (or term) name and parameter."""
        tensors = {}
        for name, net in (("G", self.G), ("D", self.D), ("E", self.E), *self.densities.items()):
            tensors.update(checkpoint.prefixed(name, net.state_dict()))
        return tensors

    def load_weights(self, tensors: dict[str, torch.Tensor], source: Path) -> None:
        """`weights` saved in the file `source` (named in the error when they do not fit)."""
        for name, net in (("G", self.G), ("D", self.D), ("E", self.E)):
            try:
                net.load_state_dict(checkpoint.unprefixed(name, tensors))
            except RuntimeError as err:
                first = str(err).strip().splitlines()[0]
                raise RunFolderError(f"{source}: weights do not fit the settings ({first})") from None
        for name, density in self.densities.items():
            saved = checkpoint.unprefixed(name, tensors)
            if saved:  # a checkpoint saved before calibration holds unfitted ones
                density.load_state_dict(saved)

    def save(self, path: str | Path) -> None:
        """Weights, settings and calibration in one safetensors file."""
        calibration = None if self.calibration is None else self.calibration.to_dict()
        checkpoint.save(
            path,
            self.weights(),
            {"config": self.config.to_dict(), "calibration": calibration, "training": self.training},
        )

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, calibrated: bool = True) -> FUNetGAN:
        """Load a trained model from a run folder or a model.safetensors file; with
        `calibrated` False also one whose calibration this funetgan cannot read (to calibrate
        it again), which then has none."""
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.exists():
            raise RunFolderError(f"{path}: no trained model here (did training finish?)")
        tensors, meta = checkpoint.load(path)
        config = Config.from_saved(meta["config"], str(path))
        if device is not None:
            config.device = device
        model = cls(config)
        model.load_weights(tensors, path)
        try:
            model.calibration = Calibration.from_dict(meta.get("calibration"), str(path))
        except RunFolderError:  # an older layout, or a damaged one: calibrate fixes both
            if calibrated:
                raise
        model.training = meta.get("training", {})
        return model
