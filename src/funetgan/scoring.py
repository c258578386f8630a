"""Anomaly maps and image scores from the raw residual terms of E, G and D.

With r = G(E(x)):
  pixel map   A = |x - r| / m_r + kappa * |f_p(x) - f_p(r)| / m_f
                  + critic_weight * (-D_p(x) - mu_c) / sd_c
                  + density_weight * d(x) / m_d
                  + smoothness_weight * max(mu_l - l(x), 0) / sd_l               (then Gaussian blur)
  image score s = mse(x, r) / m_i + kappa * mse(f_g(x), f_g(r)) / m_g
                  + image_density_weight * e(x) / m_e
                  + latent_density_weight * q(x) / m_q                    ("izif"), or the max /
              top-k mean of A; with image_smoothness_weight w > 0 (the default on tiled images),
              izif becomes max((s - mu_s) / sd_s, w * (t(x) - mu_t) / sd_t), t(x) the maximum of
              the blurred smoothness term (the image's smoothest region).
With a scoring region (the lung of CT slices, `score.lung_only`), the pixel terms and the
image residual count only its pixels and the map is 0 outside it; D's global features still
see the whole image.
The m_* are the means of each term over validation normals. METHOD.md adds the raw terms;
dividing by their normal level first makes kappa a relative weight whatever the scale D's
features happen to have after training (which varies from run to run by orders of magnitude).
The critic's verdict D_p(x) is a WGAN critic value, of either sign and with no fixed zero, so
it is standardised instead (mu_c, sd_c: its mean and spread over validation normals' pixels).
d(x) is how unlike normal images D's bottleneck features of x are (`nn.density`: the squared
Mahalanobis distance to a Gaussian of validation normals' features, up-sampled to pixels);
e(x) is the same for the image as a whole, with one Gaussian per location of D's 4 x 4
bottleneck grid, so that the features' layout counts too; q(x) asks the same of E's latent
code z = E(x) (one Gaussian of validation normals' codes): does E map x where it maps normals?
l(x) is the local contrast of x itself (the standard deviation of its pixels in a 5 x 5
window; no network): where it falls below normal images' (mu_l, sd_l: its mean and spread over
validation normals' pixels), the texture is smoother than normal, which is what a smudge or a
flat foreign object on a stochastic texture looks like, and what G rebuilds all too well.
izif cannot see such a defect (G rebuilds it), so on tiled images the image score also asks
how smooth the image's smoothest region is, each kind of evidence in the spreads of
validation normals (mu_s, sd_s, mu_t, sd_t: `image_levels`) and the stronger one counting.

Tiled images (`tiling`) have one izif value per tile; `score.tile_reduce` turns them into one
per image. Numpy only, so the PyTorch and the ONNX runtime paths share it: `Scorer` is all of
scoring except the networks' forward pass, which each runtime supplies as a tile scorer
(`FUNetGAN` with PyTorch, `OnnxScorer` with onnxruntime).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import tiling
from .config import Config, ScoreConfig, scored_in_tiles, tile_stride, working_size
from .data.base import ImageSet

MAP_TERMS = ("pixel_residual", "pixel_features", "pixel_critic", "pixel_density")  # nn.residuals' TERM_MAPS
VALUE_TERMS = ("image_residual", "image_features", "image_density", "latent_density")  # and TERM_VALUES (numpy only: no torch here)
TERMS = (*MAP_TERMS, *VALUE_TERMS)


@dataclass
class Terms:
    """Raw residual terms: maps N x H x W (stitched at working resolution), image terms N x T
    (one per tile; T = 1 for whole images)."""

    pixel_residual: np.ndarray
    pixel_features: np.ndarray
    pixel_critic: np.ndarray
    pixel_density: np.ndarray
    image_residual: np.ndarray
    image_features: np.ndarray
    image_density: np.ndarray
    latent_density: np.ndarray
    pixel_contrast: np.ndarray  # N x H x W: `local_contrast` of the images themselves (no network)
    region: np.ndarray | None = None  # N x H x W bool: the pixels that count (None: all)

    def normal_levels(self) -> dict[str, float]:
        """Mean of each term, and the standard deviations of the critic's verdict and the
        local contrast ("pixel_critic_std", "pixel_contrast_std"); pixel terms over the
        region's pixels only (they are 0 outside it)."""
        pixels = self.pixel_residual.size if self.region is None else max(int(self.region.sum()), 1)
        levels = {name: float(np.mean(getattr(self, name), dtype=np.float64)) for name in VALUE_TERMS}
        for name in (*MAP_TERMS, "pixel_contrast"):
            levels[name] = float(getattr(self, name).sum(dtype=np.float64) / pixels)
        for name in ("pixel_critic", "pixel_contrast"):  # the terms standardised by their spread
            square = float(np.square(getattr(self, name), dtype=np.float64).sum() / pixels)
            levels[f"{name}_std"] = math.sqrt(max(square - levels[name] ** 2, 0.0))
        return levels

    def rows(self, index: np.ndarray) -> "Terms":
        """The terms of the images at `index` only."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return Terms(**{name: None if value is None else value[index] for name, value in values.items()})


def restrict(terms: Terms, region: np.ndarray) -> Terms:
    """`terms` counting only `region`'s pixels: pixel terms 0 outside it and the image residual
    the mean squared residual inside it (one value per image; for grey images, as CT is, the
    squared per-pixel residual is exactly the image mse's summand)."""
    inside = region.astype(np.float32)
    area = np.maximum(inside.reshape(len(inside), -1).sum(1), 1)
    squared = (terms.pixel_residual ** 2 * inside).reshape(len(inside), -1).sum(1, dtype=np.float64)
    return Terms(pixel_residual=terms.pixel_residual * inside, pixel_features=terms.pixel_features * inside,
                 pixel_critic=terms.pixel_critic * inside, pixel_density=terms.pixel_density * inside,
                 image_residual=(squared / area)[:, None],
                 image_features=terms.image_features, image_density=terms.image_density,
                 latent_density=terms.latent_density,
                 pixel_contrast=terms.pixel_contrast * inside, region=region)


@dataclass
class Scores:
    scores: np.ndarray  # N image anomaly scores, higher = more anomalous
    maps: np.ndarray  # N x H x W float32 anomaly maps at the working resolution


class Scorer:
    """Scores images with a trained detector: its settings (`config`), its calibration (normal
    levels and thresholds) and a tile scorer (`_score_tiles`: the networks, in whatever
    runtime). Tiling, normalisation, blur and image scores are the same code for every runtime."""

    config: Config
    calibration: dict

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
        if not self.calibration:
            raise RuntimeError("the model is not calibrated: fit it, or load a trained run")
        array = images.images if isinstance(images, ImageSet) else images
        self._check_images(array)
        region = self.scoring_region(images) if isinstance(images, ImageSet) else None
        return self.scores_from_terms(self.residual_terms(array, batch_size, region))

    def scores_from_terms(self, terms: Terms, settings: ScoreConfig | None = None) -> Scores:
        """Scores and maps from `residual_terms` under `settings` (default: the model's)."""
        scores, maps = combine(terms, self.calibration["norms"], settings or self.config.score,
                               self.config.model.image_size, scored_in_tiles(self.config))
        return Scores(scores, maps)

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
        return self.calibration["image_threshold"]

    @property
    def pixel_threshold(self) -> float:
        return self.calibration["pixel_threshold"]


def combine(terms: Terms, norms: dict[str, float], cfg: ScoreConfig, image_size: int,
            tiled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image scores N float64, anomaly maps N x H x W float32) from raw terms and the
    normal-level means; `image_size` is the model's and `tiled` whether the maps are
    stitched from tiles (both set the default blur, `blur_sigma`; `tiled` also the default
    smoothness evidence in the image score, `image_smoothness_weight`)."""
    sigma = blur_sigma(cfg, image_size, tiled)
    maps = scaled(terms, norms, "pixel_residual").astype(np.float32)
    if cfg.kappa:
        maps = maps + np.float32(cfg.kappa) * scaled(terms, norms, "pixel_features").astype(np.float32)
    if cfg.critic_weight:
        maps = maps + np.float32(cfg.critic_weight) * standardised_critic(terms, norms)
    if cfg.density_weight:
        maps = maps + np.float32(cfg.density_weight) * density_term(terms, norms)
    if cfg.smoothness_weight:
        maps = maps + np.float32(cfg.smoothness_weight) * smoothness_term(terms, norms)
    maps = gaussian_blur(maps, sigma)
    if terms.region is not None:
        maps = maps * terms.region  # the blur spreads values over the region's edge
    if cfg.image_score == "izif":
        scores = izif(terms, norms, cfg)
        weight = image_smoothness_weight(cfg, tiled)
        if weight:
            require_level(norms, "image_smoothness_weight")
            smoothest = smoothest_region(terms, norms, sigma)
            scores = np.maximum(standardised_value(scores, norms, "image_izif"),
                                weight * standardised_value(smoothest, norms, "image_smoothness"))
    elif cfg.image_score == "max":
        scores = maps.reshape(len(maps), -1).max(1)
    else:
        flat = maps.reshape(len(maps), -1)
        k = max(1, round(cfg.topk_fraction * flat.shape[1]))
        scores = np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(1, dtype=np.float64)
    return scores.astype(np.float64), maps


def scaled(terms: Terms, norms: dict[str, float], name: str) -> np.ndarray:
    """Term `name` over its normal level."""
    return getattr(terms, name) / max(norms.get(name, 1.0), 1e-12)


def izif(terms: Terms, norms: dict[str, float], cfg: ScoreConfig) -> np.ndarray:
    """N: izif per tile (its terms over their normal levels), reduced to one per image."""
    per_tile = scaled(terms, norms, "image_residual") + cfg.kappa * scaled(terms, norms, "image_features")
    for weight in ("image_density_weight", "latent_density_weight"):
        if getattr(cfg, weight):
            require_level(norms, weight)
            per_tile = per_tile + getattr(cfg, weight) * scaled(terms, norms, TERM_LEVELS[weight])
    return per_tile.max(1) if cfg.tile_reduce == "max" else per_tile.mean(1)


def smoothest_region(terms: Terms, norms: dict[str, float], sigma: float) -> np.ndarray:
    """N: the maximum of each image's smoothness term blurred by `sigma` px: how much smoother
    than normal texture the image's smoothest region is (in the spreads of normal pixels)."""
    blurred = gaussian_blur(smoothness_term(terms, norms), sigma)
    return blurred.reshape(len(blurred), -1).max(1).astype(np.float64)


def image_levels(normals: Terms, norms: dict[str, float], cfg: ScoreConfig, image_size: int,
                 tiled: bool = False) -> dict[str, float]:
    """The mean and spread over validation normals' terms (`normals`, with `norms`, their term
    levels) of izif ("image_izif", "image_izif_std") and of the smoothest region
    ("image_smoothness", "image_smoothness_std") under `cfg`: what `combine` standardises the
    image score's two kinds of evidence by. Terms whose level `norms` lacks count 0 in izif."""
    cfg = dataclasses.replace(cfg)
    without_uncalibrated_terms(cfg, norms)
    evidence = {"image_izif": izif(normals, norms, cfg),
                "image_smoothness": smoothest_region(normals, norms, blur_sigma(cfg, image_size, tiled))}
    levels = {}
    for name, values in evidence.items():
        levels[name], levels[f"{name}_std"] = float(values.mean()), float(values.std())
    return levels


# An image statistic's spread is taken as at least this share of its mean: a handful of
# validation normals can agree almost exactly (the smoothest region saturates where an image
# has a flat patch), and a spread near 0 would make any difference from them decisive.
SPREAD_FLOOR = 0.05


def standardised_value(values: np.ndarray, norms: dict[str, float], name: str) -> np.ndarray:
    """Image values minus the normal mean `name`, in their spread (`name`_std, at least
    SPREAD_FLOOR x the mean)."""
    spread = max(norms[f"{name}_std"], SPREAD_FLOOR * abs(norms[name]), 1e-12)
    return (values - norms[name]) / spread


# The default weight of the smoothness evidence in the image score on tiled images (whole
# images: 0). Chosen on the selection splits (README, "Localisation"): image AUROC +0.13 on grass
# and +0.09 on gravel, brick level; on whole Fashion-MNIST images -0.004, so not there.
TILED_IMAGE_SMOOTHNESS = 1.0


def image_smoothness_weight(cfg: ScoreConfig, tiled: bool = False) -> float:
    """`cfg.image_smoothness_weight`, or by default TILED_IMAGE_SMOOTHNESS on images scored
    in tiles and 0 on whole images."""
    if cfg.image_smoothness_weight is not None:
        return cfg.image_smoothness_weight
    return TILED_IMAGE_SMOOTHNESS if tiled else 0.0


# The normal level each weighted term is scaled by; a calibration without it (by an older
# funetgan) cannot score the term.
TERM_LEVELS = {"critic_weight": "pixel_critic_std", "density_weight": "pixel_density",
               "smoothness_weight": "pixel_contrast_std", "image_density_weight": "image_density",
               "latent_density_weight": "latent_density", "image_smoothness_weight": "image_smoothness"}
# Terms added after the first release: a run calibrated before one existed is scored without it.
LATER_TERMS = ("density_weight", "smoothness_weight", "image_density_weight", "latent_density_weight",
               "image_smoothness_weight")


def without_uncalibrated_terms(cfg: ScoreConfig, norms: dict[str, float]) -> None:
    """Set to 0 the weight of each later term whose normal level `norms` lacks (a run
    calibrated by an older funetgan), so it scores as it did when it was calibrated."""
    for weight in LATER_TERMS:
        if TERM_LEVELS[weight] not in norms:
            setattr(cfg, weight, 0.0)


def with_calibrated_blur(cfg: ScoreConfig, calibration: dict, image_size: int) -> None:
    """Give a run calibrated before stitched maps had a default blur of their own (its
    calibration has no "blur_sigma") the whole-image rule its pixel threshold was set with,
    so it scores as it did when it was calibrated."""
    if cfg.blur_sigma is None and "blur_sigma" not in calibration:
        cfg.blur_sigma = blur_sigma(cfg, image_size)


def require_level(norms: dict[str, float], weight: str) -> None:
    """A one-line error when `norms` lack the normal level of the term `score.<weight>` weighs."""
    if TERM_LEVELS[weight] not in norms:
        raise ValueError(f"this model was calibrated without the normal level of the term score.{weight} weighs "
                         f"(by an older funetgan, or on too few normals for it: see its calibration notes): score "
                         f"it with score.{weight}=0, or calibrate it again (funetgan calibrate)")


def standardised(terms: Terms, norms: dict[str, float], name: str) -> np.ndarray:
    """Term `name` minus its mean over validation normals, in their spreads (`name`_std), 0
    outside the scoring region (so the blur spreads nothing in)."""
    values = ((getattr(terms, name) - norms[name]) / max(norms[f"{name}_std"], 1e-12)).astype(np.float32)
    return values if terms.region is None else values * terms.region


def standardised_critic(terms: Terms, norms: dict[str, float]) -> np.ndarray:
    """(-D_p(x) - mu_c) / sd_c."""
    require_level(norms, "critic_weight")
    return standardised(terms, norms, "pixel_critic")


def density_term(terms: Terms, norms: dict[str, float]) -> np.ndarray:
    """The feature-density term over its normal level."""
    require_level(norms, "density_weight")
    return (terms.pixel_density / max(norms["pixel_density"], 1e-12)).astype(np.float32)


def smoothness_term(terms: Terms, norms: dict[str, float]) -> np.ndarray:
    """max(mu_l - l(x), 0) / sd_l: how far below normal images' local contrast each pixel's
    is, in their spreads; 0 outside the scoring region."""
    require_level(norms, "smoothness_weight")
    return np.maximum(-standardised(terms, norms, "pixel_contrast"), 0)


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
# (thin scratches, small defects) on all three (README, "Localisation").
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
