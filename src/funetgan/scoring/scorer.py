"""Scoring a trained detector: `Scorer` is all of scoring except the networks' forward pass,
which each runtime supplies as a tile scorer (`FUNetGAN` with PyTorch, `OnnxScorer` with
onnxruntime): tiling (`tiling`), the terms (`terms`), their combination into maps and image
scores (`combine`) and the thresholds (`calibration`) are the same numpy code for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import Config, ScoreConfig, scored_in_tiles, tile_stride, working_size
from ..data.base import ImageSet
from . import tiling
from .calibration import Calibration
from .combine import combine
from .masks import MaskRule
from .terms import Terms, image_terms, restrict


@dataclass
class Scores:
    scores: np.ndarray  # N image anomaly scores, higher = more anomalous
    maps: np.ndarray  # N x H x W float32 anomaly maps at the working resolution


class Scorer:
    """Scores images with a trained detector: its settings (`config`), its `calibration` and a
    tile scorer (`_score_tiles`: the networks, in whatever runtime). Tiling, normalisation,
    blur and image scores are the same code for every runtime."""

    config: Config
    calibration: Calibration | None

    def _score_tiles(self, tiles: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """The network terms of uint8 B x S x S x C tiles (a `tiling.TileScorer`)."""
        raise NotImplementedError

    def residual_terms(
        self, images: np.ndarray, batch_size: int | None = None, region: np.ndarray | None = None
    ) -> Terms:
        """Every raw term of the table (`terms.TERMS`) on uint8 `images`: what `score` combines,
        so several scoring settings can be compared on one pass of the networks. Images larger
        than the model are scored tile by tile (`tiling`), `batch_size` tiles at a time.
        `region` (N x H x W bool): the pixels that count (see `scoring_region`)."""
        maps, values = tiling.score_tiled(
            images,
            self.config.model.image_size,
            tile_stride(self.config),
            batch_size or self.config.score.batch_size,
            self._score_tiles,
        )
        terms = Terms({**maps, **values, **image_terms(images)})
        return terms if region is None else restrict(terms, region)

    def scoring_region(self, images: ImageSet) -> np.ndarray | None:
        """The pixels that are scored: the lung of CT slices that have a lung mask, under
        `score.lung_only`; None: every pixel."""
        return images.lung if self.config.score.lung_only else None

    def score(self, images: ImageSet | np.ndarray, batch_size: int | None = None) -> Scores:
        """Image scores and anomaly maps; needs a calibrated model (after fit or load). For
        an ImageSet with lung masks, only the lung is scored (`scoring_region`)."""
        self._calibrated()
        array = images.images if isinstance(images, ImageSet) else images
        self._check_images(array)
        region = self.scoring_region(images) if isinstance(images, ImageSet) else None
        return self.scores_from_terms(self.residual_terms(array, batch_size, region))

    def scores_from_terms(self, terms: Terms, settings: ScoreConfig | None = None) -> Scores:
        """Scores and maps from `residual_terms` under `settings` (default: the model's)."""
        return Scores(*self.combine(terms, self._calibrated().levels, settings))

    def combine(
        self, terms: Terms, levels: dict[str, float], settings: ScoreConfig | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`combine.combine` under this model's settings (or `settings`) and its image geometry."""
        return combine(
            terms, levels, settings or self.config.score, self.config.model.image_size, scored_in_tiles(self.config)
        )

    def _calibrated(self) -> Calibration:
        if self.calibration is None:
            raise RuntimeError("the model is not calibrated: fit it, or load a trained run")
        return self.calibration

    def _check_images(self, images: np.ndarray) -> None:
        """uint8 N x S x S x C at the working resolution; "native" takes any size the patch fits."""
        size, channels, patch = working_size(self.config), self.config.model.channels, self.config.model.image_size
        expected = f"N x {size} x {size} x {channels}" if size else f"N x H x W x {channels} (H, W >= {patch})"
        shape = images.shape
        fits = (
            images.ndim == 4
            and images.dtype == np.uint8
            and shape[3] == channels
            and (shape[1:3] == (size, size) if size else min(shape[1:3]) >= patch)
        )
        if not fits:
            raise ValueError(f"images must be uint8 {expected}, got {images.dtype} {tuple(shape)}")

    @property
    def image_threshold(self) -> float:
        return self._calibrated().image_threshold

    @property
    def pixel_threshold(self) -> float:
        return self._calibrated().pixel_threshold

    @property
    def mask_rule(self) -> MaskRule:
        """How masks are drawn from maps: every pixel at or above the calibrated pixel threshold
        (the rule measured best on the selection splits: `masks`)."""
        return MaskRule(self._calibrated().pixel_threshold)
