"""Anomaly maps and image scores from the raw residual terms of E, G and D.

With r = G(E(x)), each term of the map (`MAP`) and of izif (`IZIF`) is measured against the
calibration normals (`Term.normaliser`), weighed by its setting and added:
  pixel map   A = |x - r| / m_r + kappa * |f_p(x) - f_p(r)| / m_f
                  + density_weight * d(x) / m_d
                  + smoothness_weight * max(mu_l - l(x), 0) / sd_l               (then Gaussian blur)
  izif        s = mse(x, r) / m_i + kappa * mse(f_g(x), f_g(r)) / m_g
                  + latent_density_weight * q(x) / m_q
  image score   izif, or max((s - mu_s) / sd_s, w * (t(x) - mu_t) / sd_t) with the smoothness
                evidence on (w = image_smoothness_weight, the default on tiled images; t(x) the
                maximum of the blurred smoothness term, the image's smoothest region), or the
                max / top-1 % mean of A (`score.image_score`).
The m_*, mu_* and sd_* are means and spreads over calibration normals (`calibration`): METHOD.md
adds the raw terms; dividing by their normal level first makes kappa a relative weight whatever
the scale D's features have after training (it varies from run to run by orders of magnitude).
d(x) is how unlike normal images D's bottleneck features of x are at each location, q(x) how
unlike normal codes E's latent code is (`nn.density`: Mahalanobis distances to
Gaussians fitted on training images); l(x) is the local contrast of x itself (the standard
deviation of its pixels in a 5 x 5 window; no network): where it falls below normal texture's,
a smudge or a flat foreign object lies on a stochastic texture, which G rebuilds all too well
and izif cannot see, hence the smoothest region as image evidence on tiled images.
With a scoring region (the lung of CT slices, `score.lung_only`), the pixel terms and the
image residual count only its pixels and the map is 0 outside it; D's global features still
see the whole image. Tiled images (`tiling`) have one izif value per tile; an image's is their
maximum (a defect that fills one tile of a large image would be diluted by the mean).

Numpy only, so the PyTorch and the ONNX runtime paths share it: `Scorer` is all of scoring
except the networks' forward pass, which each runtime supplies as a tile scorer (`FUNetGAN`
with PyTorch, `OnnxScorer` with onnxruntime).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from . import tiling
from ..config import Config, ScoreConfig, scored_in_tiles, tile_stride, working_size
from ..data.base import ImageSet
from .masks import MaskRule

if TYPE_CHECKING:
    from .calibration import Calibration

MAP_TERMS = ("pixel_residual", "pixel_features", "pixel_density")  # nn.residuals' TERM_MAPS
VALUE_TERMS = ("image_residual", "image_features", "latent_density")  # and TERM_VALUES (numpy only: no torch here)
TERMS = (*MAP_TERMS, *VALUE_TERMS)


def named_terms(outputs: list[np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The networks' outputs, in their order (MAP_TERMS, then VALUE_TERMS), by name: what a
    tile scorer returns (`tiling.TileScorer`), whichever runtime ran them."""
    return {"maps": dict(zip(MAP_TERMS, outputs)), "values": dict(zip(VALUE_TERMS, outputs[len(MAP_TERMS):]))}


@dataclass
class Terms:
    """Raw residual terms: maps N x H x W (stitched at working resolution), image terms N x T
    (one per tile; T = 1 for whole images)."""

    pixel_residual: np.ndarray
    pixel_features: np.ndarray
    pixel_density: np.ndarray
    image_residual: np.ndarray
    image_features: np.ndarray
    latent_density: np.ndarray
    pixel_contrast: np.ndarray  # N x H x W: `local_contrast` of the images themselves (no network)
    region: np.ndarray | None = None  # N x H x W bool: the pixels that count (None: all)

    def normal_levels(self) -> dict[str, float]:
        """`normal_levels` of these terms."""
        return normal_levels([self])

    def rows(self, index: np.ndarray) -> "Terms":
        """The terms of the images at `index` only."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return Terms(**{name: None if value is None else value[index] for name, value in values.items()})


STANDARDISED = ("pixel_contrast",)  # the terms measured in their normal spread too


def normal_levels(chunks: Iterable[Terms]) -> dict[str, float]:
    """Mean of each term over the images of `chunks` (the calibration normals, a chunk of
    images at a time), and the standard deviation of the local contrast ("pixel_contrast_std");
    pixel terms over the scoring region's
    pixels only (they are 0 outside it)."""
    sums: dict[str, float] = {}
    pixels = values = 0
    for terms in chunks:
        pixels += terms.pixel_residual.size if terms.region is None else int(terms.region.sum())
        values += terms.image_residual.size
        for name in (*VALUE_TERMS, *MAP_TERMS, "pixel_contrast"):
            sums[name] = sums.get(name, 0.0) + float(getattr(terms, name).sum(dtype=np.float64))
        for name in STANDARDISED:
            square = float(np.square(getattr(terms, name), dtype=np.float64).sum())
            sums[f"{name}_square"] = sums.get(f"{name}_square", 0.0) + square
    pixels = max(pixels, 1)
    levels = {name: sums[name] / values for name in VALUE_TERMS}
    levels.update({name: sums[name] / pixels for name in (*MAP_TERMS, "pixel_contrast")})
    for name in STANDARDISED:
        levels[f"{name}_std"] = math.sqrt(max(sums[f"{name}_square"] / pixels - levels[name] ** 2, 0.0))
    return levels


def restrict(terms: Terms, region: np.ndarray) -> Terms:
    """`terms` counting only `region`'s pixels: pixel terms 0 outside it and the image residual
    the mean squared residual inside it (one value per image; for grey images, as CT is, the
    squared per-pixel residual is exactly the image mse's summand)."""
    inside = region.astype(np.float32)
    area = np.maximum(inside.reshape(len(inside), -1).sum(1), 1)
    squared = (terms.pixel_residual ** 2 * inside).reshape(len(inside), -1).sum(1, dtype=np.float64)
    return Terms(pixel_residual=terms.pixel_residual * inside, pixel_features=terms.pixel_features * inside,
                 pixel_density=terms.pixel_density * inside, image_residual=(squared / area)[:, None],
                 image_features=terms.image_features, latent_density=terms.latent_density,
                 pixel_contrast=terms.pixel_contrast * inside, region=region)


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
        """The raw residual terms of uint8 B x S x S x C tiles (a `tiling.TileScorer`)."""
        raise NotImplementedError

    def residual_terms(self, images: np.ndarray, batch_size: int | None = None,
                       region: np.ndarray | None = None) -> Terms:
        """The raw residual terms of E, G and D on uint8 `images`: what `score` combines, so
        several scoring settings can be compared on one pass of the networks. Images larger
        than the model are scored tile by tile (`tiling`), `batch_size` tiles at a time.
        `region` (N x H x W bool): the pixels that count (see `scoring_region`)."""
        maps, values = tiling.score_tiled(images, self.config.model.image_size, tile_stride(self.config),
                                          batch_size or self.config.score.batch_size, self._score_tiles)
        terms = Terms(**maps, **values, pixel_contrast=local_contrast(images))
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

    def combine(self, terms: Terms, levels: dict[str, float], settings: ScoreConfig | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """`combine` under this model's settings (or `settings`) and its image geometry."""
        return combine(terms, levels, settings or self.config.score, self.config.model.image_size,
                       scored_in_tiles(self.config))

    def _calibrated(self) -> Calibration:
        if self.calibration is None:
            raise RuntimeError("the model is not calibrated: fit it, or load a trained run")
        return self.calibration

    def _check_images(self, images: np.ndarray) -> None:
        """uint8 N x S x S x C at the working resolution; "native" takes any size the patch fits."""
        size, channels, patch = working_size(self.config), self.config.model.channels, self.config.model.image_size
        expected = f"N x {size} x {size} x {channels}" if size else f"N x H x W x {channels} (H, W >= {patch})"
        shape = images.shape
        fits = images.ndim == 4 and images.dtype == np.uint8 and shape[3] == channels and (
            shape[1:3] == (size, size) if size else min(shape[1:3]) >= patch)
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


@dataclass(frozen=True)
class Term:
    """One raw term of the map or of izif: the setting that weighs it (None: weight 1), what it
    is measured against on calibration normals ("level": divided by its mean there; "below":
    how far below that mean, in their spread, 0 above it), and whether it needs a Gaussian fitted at calibration (a density
    term: `nn.density`)."""

    name: str
    weight: str | None
    normaliser: str
    fitted: bool = False


# The default map and image score in one place (default weights: `config.ScoreConfig`).
MAP = (
    Term("pixel_residual", None, "level"),  # |x - G(E(x))|
    Term("pixel_features", "kappa", "level"),  # D's decoder-feature residual
    Term("pixel_density", "density_weight", "level", fitted=True),  # D's bottleneck features unlike normals'
    Term("pixel_contrast", "smoothness_weight", "below"),  # the image smoother than normal texture
)
IZIF = (
    Term("image_residual", None, "level"),  # mse(x, G(E(x)))
    Term("image_features", "kappa", "level"),  # D's bottleneck feature mse
    Term("latent_density", "latent_density_weight", "level", fitted=True),  # E's code unlike normals' codes
)


# The share of a map's pixels whose mean is the "topk" image score: the top 1 %, as in the
# published ablations (METHOD.md: "a statistic of the pixel map (max, top-k mean)").
TOP_FRACTION = 0.01


def weight(term: Term, cfg: ScoreConfig, levels: dict[str, float]) -> float:
    """The term's weight under `cfg`; 0 for a density term without its level (its Gaussian
    could not be fitted: calibration's notes say so)."""
    value = 1.0 if term.weight is None else getattr(cfg, term.weight)
    return 0.0 if term.fitted and term.name not in levels else value


def normalised(term: Term, terms: Terms, levels: dict[str, float]) -> np.ndarray:
    """The term against calibration normals (`Term.normaliser`), 0 outside the scoring region
    for the "below" ones (so the blur spreads nothing in)."""
    values, level = getattr(terms, term.name), levels[term.name]
    if term.normaliser == "level":
        return values / max(level, 1e-12)
    below = np.maximum((level - values) / max(levels[f"{term.name}_std"], 1e-12), 0).astype(np.float32)
    return below if terms.region is None else below * terms.region


def combine(terms: Terms, levels: dict[str, float], cfg: ScoreConfig, image_size: int,
            tiled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image scores N float64, anomaly maps N x H x W float32) from raw terms and the
    calibration's normal levels; `image_size` is the model's and `tiled` whether the maps are
    stitched from tiles (both set the default blur, `blur_sigma`; `tiled` also the default
    smoothness evidence in the image score, `image_smoothness_weight`)."""
    sigma = blur_sigma(cfg, image_size, tiled)
    maps = np.zeros(terms.pixel_residual.shape, np.float32)
    for term in MAP:
        if weight(term, cfg, levels):
            maps = maps + np.float32(weight(term, cfg, levels)) * normalised(term, terms, levels).astype(np.float32)
    maps = gaussian_blur(maps, sigma)
    if terms.region is not None:
        maps = maps * terms.region  # the blur spreads values over the region's edge
    if cfg.image_score == "izif":
        evidence = image_evidence(terms, levels, cfg, image_size, tiled)
        scores = evidence["image_izif"]
        if "image_smoothness" in evidence:
            smoothness = image_smoothness_weight(cfg, tiled)
            scores = np.maximum(standardised_value(scores, levels, "image_izif"),
                                smoothness * standardised_value(evidence["image_smoothness"], levels, "image_smoothness"))
    elif cfg.image_score == "max":
        scores = maps.reshape(len(maps), -1).max(1)
    else:
        flat = maps.reshape(len(maps), -1)
        k = max(1, round(TOP_FRACTION * flat.shape[1]))
        scores = np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(1, dtype=np.float64)
    return scores.astype(np.float64), maps


def image_evidence(terms: Terms, levels: dict[str, float], cfg: ScoreConfig, image_size: int,
                   tiled: bool = False) -> dict[str, np.ndarray]:
    """Each kind of evidence the izif image score weighs, N values each: "image_izif" (izif,
    the maximum over its tiles) and, when the smoothness evidence is on
    (`image_smoothness_weight`), "image_smoothness": the maximum of each image's blurred
    smoothness term, how much smoother than normal texture its smoothest region is."""
    per_tile = sum(weight(term, cfg, levels) * normalised(term, terms, levels)
                   for term in IZIF if weight(term, cfg, levels))
    evidence = {"image_izif": per_tile.max(1)}
    if image_smoothness_weight(cfg, tiled):
        below = normalised(MAP[-1], terms, levels)
        blurred = gaussian_blur(below, blur_sigma(cfg, image_size, tiled))
        evidence["image_smoothness"] = blurred.reshape(len(blurred), -1).max(1).astype(np.float64)
    return evidence


def formula(config: Config) -> str:
    """The map and the image score under `config`'s settings, in words and numbers (for the
    ONNX doc string and `--print-config` readers): the terms that count, with their weights."""
    cfg, tiled = config.score, scored_in_tiles(config)

    def total(terms: tuple[Term, ...]) -> str:
        shown = {"level": "{name} / m_{name}", "below": "max(m_{name} - {name}, 0) / {name}_std"}
        return " + ".join(f"{weight(t, cfg, {t.name: 1.0}):g} * " + shown[t.normaliser].format(name=t.name)
                          for t in terms if weight(t, cfg, {t.name: 1.0}))

    text = (f"Anomaly map = blur_{blur_sigma(cfg, config.model.image_size, tiled):g}px({total(MAP)}), "
            f"pixel_contrast the standard deviation of the image's pixels in a 5 x 5 window (from the images). ")
    izif = f"izif = max over tiles of ({total(IZIF)})"
    if cfg.image_score != "izif":
        statistic = "max" if cfg.image_score == "max" else f"mean of the top {TOP_FRACTION:.0%}"
        return text + f"Image score = {statistic} of the map."
    smoothness = image_smoothness_weight(cfg, tiled)
    if not smoothness:
        return text + f"Image score = {izif}."
    return text + (f"Image score = max((izif - m_image_izif) / image_izif_std, {smoothness:g} * (t - m_image_smoothness) "
                   f"/ image_smoothness_std), {izif}, t the maximum of the blurred smoothness term.")


# An image statistic's spread is taken as at least this share of its mean: a handful of
# calibration normals can agree almost exactly (the smoothest region saturates where an image
# has a flat patch), and a spread near 0 would make any difference from them decisive.
SPREAD_FLOOR = 0.05


def standardised_value(values: np.ndarray, levels: dict[str, float], name: str) -> np.ndarray:
    """Image values minus the normal mean `name`, in their spread (`name`_std, at least
    SPREAD_FLOOR x the mean)."""
    spread = max(levels[f"{name}_std"], SPREAD_FLOOR * abs(levels[name]), 1e-12)
    return (values - levels[name]) / spread


# The default weight of the smoothness evidence in the image score on tiled images (whole
# images: 0). Chosen on the selection splits (docs/design.md): image AUROC +0.13 on grass and
# +0.09 on gravel, brick level; on whole Fashion-MNIST images -0.004, so not there.
TILED_IMAGE_SMOOTHNESS = 1.0


def image_smoothness_weight(cfg: ScoreConfig, tiled: bool = False) -> float:
    """`cfg.image_smoothness_weight`, or by default TILED_IMAGE_SMOOTHNESS on images scored
    in tiles and 0 on whole images."""
    if cfg.image_smoothness_weight is not None:
        return cfg.image_smoothness_weight
    return TILED_IMAGE_SMOOTHNESS if tiled else 0.0


def local_contrast(images: np.ndarray, window: int = 5) -> np.ndarray:
    """N x H x W float32: the standard deviation of uint8 N x H x W x C `images`' pixels (on
    the networks' [-1, 1] scale, channels averaged) in a `window` x `window` neighbourhood,
    mirrored at the edges."""
    x = images.astype(np.float32) / np.float32(127.5) - np.float32(1)
    size = (1, window, window, 1)
    mean = ndimage.uniform_filter(x, size, mode="mirror")
    variance = ndimage.uniform_filter(x * x, size, mode="mirror") - mean * mean
    return np.sqrt(np.maximum(variance, 0)).mean(3)


# The default blur of a map stitched from tiles, in units of a whole image's at the patch's
# size: a tile's terms (D's 4 x 4 bottleneck, the 5 x 5 contrast window) are coarse beside the
# stitched map's pixels. 2 was chosen on the selection split: pixel AUROC +0.02 on grass and
# gravel and AUPRO +0.01, brick level; 3 and more raise pixel AUROC further but lower AUPRO
# (thin scratches, small defects) on all three (CHANGELOG.md, "Textures and localisation").
TILED_BLUR = 2.0


def blur_sigma(cfg: ScoreConfig, image_size: int, tiled: bool = False) -> float:
    """The map's blur in its own pixels: `cfg.blur_sigma`, or by default 4 px at a model size
    of 128, scaled with the size, and TILED_BLUR times that on maps stitched from tiles."""
    if cfg.blur_sigma is not None:
        return cfg.blur_sigma
    return 4.0 * image_size / 128 * (TILED_BLUR if tiled else 1.0)


def map_blur(config: Config) -> float:
    """The blur `config`'s own scoring settings give its maps (`blur_sigma`)."""
    return blur_sigma(config.score, config.model.image_size, scored_in_tiles(config))


def gaussian_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of N x H x W maps (mirror padding, radius 3 sigma)."""
    if sigma <= 0:
        return maps
    radius = min(max(1, math.ceil(3 * sigma)), min(maps.shape[1:]) - 1)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    blurred = ndimage.correlate1d(maps, kernel, axis=2, mode="mirror")
    return ndimage.correlate1d(blurred, kernel, axis=1, mode="mirror")
