"""The public model object: fit (both training stages, then calibration), score, save, load."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, tiling
from .config import Config, scored_in_tiles, tile_stride
from .data import check_batch, held_out
from .data.base import ImageSet
from .export import PARITY_TOLERANCE, export_onnx
from .files import CHECKPOINT_FILE, MODEL_FILE
from .nn import Discriminator, Encoder, Generator
from .nn.density import GRID, DensityStatistics, FeatureDensity, as_grid, samples_needed
from .nn.residuals import TERM_MAPS, TERM_VALUES, ScoringNetwork
from .nn.tensors import to_tensor
from .runtime import Runtime, setup
from .scoring import (Scorer, Scores, image_levels, map_blur,  # noqa: F401  (Scores: also importable from here)
                      with_calibrated_blur, without_uncalibrated_terms)
from .thresholds import calibrate_image_threshold, calibrate_pixel_threshold
from .tracking import Tracker, open_tracker
from .train import Trainer, WeightAverage
from .unit_scale import fit_unit_scales

# A per-image Gaussian that the calibration normals are too few for is fitted on them and on
# training images' tiles, up to this many times the samples it needs at the least.
TOP_UP_FACTOR = 4


class FUNetGAN(Scorer):
    """F-UNetGAN: G, U-Net D and E, trained on normal images only.

    >>> model = FUNetGAN(config).fit(splits.train)      # doctest: +SKIP
    >>> result = model.score(splits.test)                # doctest: +SKIP
    """

    def __init__(self, config: Config | None = None, runtime: Runtime | None = None):
        self.config = cfg = (config or Config()).validate()
        self.runtime = runtime or setup(cfg.device, cfg.amp, cfg.channels_last)
        m = cfg.model
        # The same initial weights on every process, from a seeded copy of torch's global
        # generator: the caller's random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.G = self.runtime.place(Generator(m.image_size, m.channels, m.width, m.z_dim, m.attn_max_size))
            self.D = self.runtime.place(Discriminator(m.image_size, m.channels, m.width, m.variant, m.attn_max_size,
                                                      pixel_head=m.critic_head == "unet", sn=m.d_spectral_norm))
            self.E = self.runtime.place(Encoder(m.image_size, m.channels, m.width, m.z_dim))
        # Set by calibrate: the map's density (one Gaussian for all locations), the image's (one
        # per location) and the latent code's.
        self.density = self.runtime.place(FeatureDensity(self.D.bottleneck_width))
        self.image_density = self.runtime.place(FeatureDensity(self.D.bottleneck_width, GRID))
        self.latent_density = self.runtime.place(FeatureDensity(m.z_dim))
        for net in (self.G, self.D, self.E):
            self.runtime.sync_parameters(net)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.gan.lr_g, betas=cfg.gan.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.gan.lr_d, betas=cfg.gan.betas)
        self.opt_e = torch.optim.Adam(self.E.parameters(), lr=cfg.encoder.lr, betas=cfg.encoder.betas)
        self.rng = torch.Generator(self.runtime.device).manual_seed(cfg.seed * 10_007 + self.runtime.rank)
        self.state = {"stage": "warmup", "step": 0, "seconds": 0.0, "critic_steps": 0}
        self.averages: dict[str, WeightAverage] = {}  # gan.ema / encoder.ema, during their stage
        self.calibration: dict = {}

    # ---- training ------------------------------------------------------------------------
    def latent(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.model.z_dim, device=self.runtime.device, generator=self.rng)

    def freeze_gan(self) -> None:
        for net in (self.G, self.D):
            net.eval()
            net.requires_grad_(False)

    def fit(self, train: ImageSet, val: ImageSet | None = None, run_dir: str | Path | None = None,
            resume: bool = False) -> "FUNetGAN":
        """Train both stages on the normal images of `train`, then calibrate thresholds on
        `val` (or, without one, on `data.val_fraction` of the training normals held out).
        With `run_dir`, writes logs, samples and checkpoints there; `resume` continues from
        its checkpoint."""
        check_batch(train, val, self.config.batch_size, self.config.data.val_fraction, self.runtime.world_size,
                    self.config.model.image_size)
        rows, val = self._calibration_split(train, val)
        if run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            if resume:
                self.load_checkpoint(Path(run_dir) / CHECKPOINT_FILE)
        # Losses and samples to TensorBoard / MLflow as settings ask (rank 0 only), then the calibration.
        with open_tracker(run_dir, self.config, "train") if self.runtime.is_main else Tracker() as tracker:
            Trainer(self, train.images, val.images, run_dir, rows, tracker).fit()
            self.calibrate(val, top_up=(train.images, rows))
            tracker.figures("calibration", self.calibration)
        if run_dir is not None and self.runtime.is_main:
            self.save(Path(run_dir) / MODEL_FILE)
        return self

    def _calibration_split(self, train: ImageSet, val: ImageSet | None) -> tuple[np.ndarray | None, ImageSet]:
        """The rows of `train` to train on (None: all) and the calibration set. Rows rather
        than a copy, so a memory-mapped training set stays on disk."""
        normal = np.flatnonzero(train.labels == 0)
        if len(normal) != len(train):
            raise ValueError(f"training set has {len(train) - len(normal)} anomalous images; train on normals only")
        if val is not None:
            return None, val
        order = np.random.default_rng(self.config.seed).permutation(len(train))
        n_val = held_out(len(train), self.config.data.val_fraction)
        return np.sort(order[n_val:]), train.subset(np.sort(order[:n_val]))

    # ---- scoring (tiling, normalisation, blur, image scores: `Scorer`) ---------------------
    @torch.inference_mode()
    def _score_tiles(self, tiles: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """The residual terms of uint8 B x S x S x C tiles, as numpy (a `tiling.TileScorer`)."""
        rt = self.runtime
        network = ScoringNetwork(self.E, self.G, self.D, self.density, self.image_density, self.latent_density,
                                 torch.channels_last if rt.channels_last else torch.contiguous_format).eval()
        with rt.autocast():
            terms = [term.float().cpu().numpy() for term in network(rt.prepare(to_tensor(tiles, rt.device)))]
        return {"maps": dict(zip(TERM_MAPS, terms)), "values": dict(zip(TERM_VALUES, terms[len(TERM_MAPS):]))}

    def calibrate(self, val: ImageSet, top_up: tuple[np.ndarray, np.ndarray | None] | None = None) -> dict:
        """Normal levels of each residual term and the thresholds, from validation data only:
        F1-optimal when `val` holds anomalies (and masks), else a quantile of normal scores.
        `top_up`: (training images, the rows of normals among them, None: all), which the
        per-image Gaussians are also fitted on when `val` has too few normals (`fit_density`)."""
        normal = np.flatnonzero(val.labels == 0)
        if len(normal) == 0:
            raise ValueError("validation data has no normal images to calibrate on")
        self._check_images(val.images)
        unfitted, topped_up = self.fit_density(val.images[normal], top_up)
        # One pass of the networks over `val`: the normals' terms give the levels, all the thresholds.
        region = self.scoring_region(val)
        terms = self.residual_terms(val.images, region=region)
        levels = terms.rows(normal).normal_levels()
        for term in unfitted:  # without its level, the term's weight becomes 0
            del levels[term]
        levels.update(image_levels(terms.rows(normal), levels, self.config.score, self.config.model.image_size,
                                   scored_in_tiles(self.config)))
        notes = [note for term, note in {**unfitted, **topped_up}.items()
                 if getattr(self.config.score, f"{term}_weight")]
        without_uncalibrated_terms(self.config.score, levels)
        # The blur the pixel threshold is set with (runs without it: `with_calibrated_blur`).
        self.calibration = {"norms": levels, "notes": notes, "blur_sigma": map_blur(self.config)}
        result = self.scores_from_terms(terms)
        q = self.config.score.normal_quantile
        labelled = len(np.unique(val.labels)) == 2
        self.calibration["image_threshold"] = calibrate_image_threshold(
            result.scores, val.labels if labelled else None, q)
        has_masks = labelled and val.masks is not None and val.has_mask[val.labels == 1].any()
        with_truth = np.flatnonzero(val.has_mask) if has_masks else normal
        self.calibration["pixel_threshold"] = calibrate_pixel_threshold(
            result.maps[with_truth], val.masks[with_truth] if has_masks else None, q,
            None if region is None else region[with_truth])
        self.calibration["unit_scale"] = fit_unit_scales(result.scores[normal], result.maps[normal],
                                                         None if region is None else region[normal], q)
        self.calibration["validation"] = {"images": len(val), "anomalous": int((val.labels == 1).sum()),
                                          "rule": "f1-optimal" if labelled else f"normal quantile {q}"}
        return self.calibration

    def recalibrate(self, train: ImageSet, val: ImageSet | None = None) -> dict:
        """Calibrate a trained model again on the images it was calibrated on at training
        (`val`, or the same held-out training normals: the split follows `seed` and the
        training set's size), e.g. after changing its scoring settings: no retraining."""
        rows, images = self._calibration_split(train, val)
        before = self.calibration.get("validation", {}).get("images")
        if before is not None and before != len(images):
            raise ValueError(f"{len(images)} calibration images here, {before} when the run was calibrated: "
                             f"is this the data it was trained on?")
        return self.calibrate(images, top_up=(train.images, rows))

    @torch.inference_mode()
    def fit_density(self, images: np.ndarray, top_up: tuple[np.ndarray, np.ndarray | None] | None = None
                    ) -> tuple[dict[str, str], dict[str, str]]:
        """The Gaussians of D's bottleneck features and of E's latent codes (`nn.density`: the
        map's, the image's and the latent's) over normal uint8 `images`, tiled as they are
        scored. Every location counts, also outside a CT scoring region: the densities describe
        what D and E see in a normal tile; the map term's normal level is then taken inside the
        region. A per-image Gaussian needs 2 x its dimension tiles (`samples_needed`); when
        `images` have fewer, it is fitted on them and on tiles of training images drawn from
        `top_up` (images, rows or None: all), up to `TOP_UP_FACTOR` x what it needs, since its
        normal level (`calibrate`) still comes from `images` alone. Returns notes by the term's
        name: for each per-image term still short (left unfitted), and for each topped up."""
        per_image = {"image_density": self.image_density, "latent_density": self.latent_density}
        statistics = {self.density: DensityStatistics(), self.image_density: DensityStatistics(GRID),
                      self.latent_density: DensityStatistics()}
        self._gather_features(images, statistics)
        statistics[self.density].fit(self.density)
        own = statistics[self.latent_density].count  # tiles of `images` (every per-image term has one per tile)
        short = [density for density in per_image.values() if own < samples_needed(density)]
        drawn = 0
        if short and top_up is not None:
            wanted = max(TOP_UP_FACTOR * samples_needed(density) for density in short) - own
            extra = self._training_sample(*top_up, math.ceil(wanted / (own / len(images))))
            self._gather_features(extra, {density: statistics[density] for density in short})
            drawn = len(extra)
        unfitted, topped_up = {}, {}
        for term, density in per_image.items():
            gathered, needed = statistics[density], samples_needed(density)
            seen = f"{gathered.count} normal images (or tiles)"
            if density in short and drawn:
                seen += f" ({own} for calibration, {gathered.count - own} from {drawn} training images)"
            if gathered.count < needed:
                unfitted[term] = f"score.{term}_weight set to 0: {seen} to fit its Gaussian on, it needs {needed}"
                continue
            gathered.fit(density)
            if density in short:
                topped_up[term] = (f"score.{term}_weight: its Gaussian was fitted on {seen}, as the calibration "
                                   f"normals alone are fewer than the {needed} it needs")
        return unfitted, topped_up

    def _gather_features(self, images: np.ndarray, statistics: dict[FeatureDensity, DensityStatistics]) -> None:
        """Adds the features each density of `statistics` describes (E's codes for the
        latent's, D's bottleneck features for the others) over `images`' tiles."""
        rt = self.runtime
        needs_d = any(density is not self.latent_density for density in statistics)

        def collect(tiles: np.ndarray) -> dict:
            with rt.autocast():
                x = rt.prepare(to_tensor(tiles, rt.device))
                features = self.D(x).f_g if needs_d else None
                codes = as_grid(self.E(x)) if self.latent_density in statistics else None
            for density, gathered in statistics.items():
                gathered.add(codes if density is self.latent_density else features)
            return {"maps": {}, "values": {}}

        tiling.score_tiled(images, self.config.model.image_size, tile_stride(self.config),
                           self.config.score.batch_size, collect)

    def _training_sample(self, images: np.ndarray, rows: np.ndarray | None, count: int) -> np.ndarray:
        """`count` of the training images `rows` (None: all), drawn at random (seeded)."""
        rows = np.arange(len(images)) if rows is None else rows
        pick = np.random.default_rng(self.config.seed).permutation(rows)[:count]
        return np.asarray(images[np.sort(pick)])

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
            if saved:  # files from before a density term have none: it then stays unused
                # (files from before the image term hold the map's Gaussian without its location axis)
                density.load_state_dict({key: value.reshape(getattr(density, key).shape)
                                         for key, value in saved.items()})

    def densities(self) -> tuple[tuple[str, FeatureDensity], ...]:
        """The Gaussians calibration fits, by the name their tensors are saved under."""
        return (("density", self.density), ("image_density", self.image_density),
                ("latent_density", self.latent_density))

    def save(self, path: str | Path) -> None:
        """Weights, settings and calibration in one safetensors file."""
        checkpoint.save(path, self._weights(), {"config": self.config.to_dict(), "calibration": self.calibration,
                                                "training": self.state.get("completed", {})})

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "FUNetGAN":
        """Load a trained model from a run folder or a model.safetensors file."""
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no trained model here (did training finish?)")
        tensors, meta = checkpoint.load(path)
        config = Config.from_dict(meta["config"])
        if device is not None:
            config.device = device
        model = cls(config)
        model._load_weights(tensors, path)
        model.calibration = meta.get("calibration") or {}
        if model.calibration:
            without_uncalibrated_terms(model.config.score, model.calibration.get("norms", {}))
            with_calibrated_blur(model.config.score, model.calibration, config.model.image_size)
        model.state.update(stage="done", completed=meta.get("training", {}))
        return model

    def save_checkpoint(self, path: str | Path) -> None:
        tensors = self._weights()
        meta = {"config": self.config.to_dict(), "state": self.state}
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d), ("opt_e", self.opt_e)):
            opt_tensors, opt_meta = checkpoint.optimizer_state(name, opt)
            tensors.update(opt_tensors)
            meta[name] = opt_meta
        tensors["rng"] = self.rng.get_state()
        for name, average in self.averages.items():
            tensors.update(checkpoint.prefixed(f"ema.{name}", average.shadow))
        meta["averages"] = {name: {"decay": a.decay, "count": a.count} for name, a in self.averages.items()}
        checkpoint.save(path, tensors, meta)

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        tensors, meta = checkpoint.load(path)
        self._load_weights(tensors, path)
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d), ("opt_e", self.opt_e)):
            checkpoint.load_optimizer_state(opt, name, tensors, meta[name])
        self.rng.set_state(tensors["rng"])
        self.averages = {}
        for name, saved in meta.get("averages", {}).items():
            average = WeightAverage(getattr(self, name), saved["decay"])
            shadow = checkpoint.unprefixed(f"ema.{name}", tensors)
            average.shadow = {k: v.to(self.runtime.device) for k, v in shadow.items()}
            average.count = saved["count"]
            self.averages[name] = average
        if self.runtime.rank:
            # Only rank 0's generator is saved: the other ranks derive their own stream from it,
            # else every process would draw the same z for the rest of the run.
            seed = torch.randint(2**62, (1,), generator=self.rng, device=self.rng.device)
            self.rng.manual_seed(int(seed) + self.runtime.rank)
        self.state = dict(meta["state"])
