"""Anomaly maps and image scores from the raw terms (`terms.TERMS`) and calibration's normal levels.

With r = G(E(x)), each term of the map and of izif is measured against the calibration
normals (`normalised`), weighed by its setting and added; with the default table:
  pixel map   A = |x - r| / m_r + kappa * |f_p(x) - f_p(r)| / m_f
                  + density_weight * d(x) / m_d
                  + smoothness_weight * max(mu_l - l(x), 0) / sd_l               (then Gaussian blur)
  izif        s = mse(x, r) / m_i + kappa * mse(f_g(x), f_g(r)) / m_g
                  + latent_density_weight * q(x) / m_q
  image score   izif, or max((s - mu_s) / sd_s, w * (t(x) - mu_t) / sd_t) with the smoothness
                evidence on (w = image_smoothness_weight, the default on tiled images; t(x) the
                maximum of the blurred smoothness term, the image's smoothest region), or the
                max / top-1 % mean of A (`score.image_score`).
The m_*, mu_* and sd_* are means and spreads over calibration normals (`calibration`): the
published method adds the raw terms; dividing by their normal level first makes kappa a relative
weight whatever the scale D's features have after training (it varies from run to run by
orders of magnitude). d(x) and q(x) are the density terms (`nn.density`), l(x) the local
contrast (`terms.local_contrast`): where it falls below normal texture's, a smudge or a flat
foreign object lies on a stochastic texture, which G rebuilds all too well and izif cannot
see, hence the smoothest region as image evidence on tiled images.
With a scoring region (the lung of CT slices, `score.lung_only`), the terms count only its
pixels (`terms.restrict`) and the map is 0 outside it. Tiled images (`tiling`) have one izif
value per tile; an image's is their maximum (a defect that fills one tile of a large image
would be diluted by the mean). Numpy only: the PyTorch and the ONNX runtime share it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..config import Config, ScoreConfig, scored_in_tiles
from .terms import BELOW, IMAGE, LEVEL, MAP, SMOOTHNESS, Term, Terms, all_terms, of_kind
from .terms import term as named

# The share of a map's pixels whose mean is the "topk" image score: the top 1 %, as in the
# published ablations (F-UNetGAN's image score options: a statistic of the map, max or top-k mean).
TOP_FRACTION = 0.01


def weight(term: Term, cfg: ScoreConfig, levels: dict[str, float]) -> float:
    """The term's weight under `cfg`; 0 for a density term without its level (its Gaussian
    could not be fitted: calibration's notes say so)."""
    value = 1.0 if term.weight is None else getattr(cfg, term.weight)
    return 0.0 if term.fitted and term.name not in levels else value


def normalised(term: Term, terms: Terms, levels: dict[str, float]) -> np.ndarray:
    """The term against calibration normals (`Term.normaliser`), 0 outside the scoring region
    for the "below" ones (so the blur spreads nothing in)."""
    values, level = terms[term.name], levels[term.name]
    if term.normaliser == LEVEL:
        return values / max(level, 1e-12)
    below = np.maximum((level - values) / max(levels[f"{term.name}_std"], 1e-12), 0).astype(np.float32)
    return below if terms.region is None else below * terms.region


def combine(
    terms: Terms, levels: dict[str, float], cfg: ScoreConfig, image_size: int, tiled: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(image scores N float64, anomaly maps N x H x W float32) from raw terms and the
    calibration's normal levels; `image_size` is the model's and `tiled` whether the maps are
    stitched from tiles (both set the default blur, `blur_sigma`; `tiled` also the default
    smoothness evidence in the image score, `image_smoothness_weight`)."""
    sigma = blur_sigma(cfg, image_size, tiled)
    maps = np.zeros(terms[of_kind(MAP)[0].name].shape, np.float32)
    for term in of_kind(MAP):
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
            smoothest = standardised_value(evidence["image_smoothness"], levels, "image_smoothness")
            scores = np.maximum(standardised_value(scores, levels, "image_izif"), smoothness * smoothest)
    elif cfg.image_score == "max":
        scores = maps.reshape(len(maps), -1).max(1)
    else:
        flat = maps.reshape(len(maps), -1)
        k = max(1, round(TOP_FRACTION * flat.shape[1]))
        scores = np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(1, dtype=np.float64)
    return scores.astype(np.float64), maps


def image_evidence(
    terms: Terms, levels: dict[str, float], cfg: ScoreConfig, image_size: int, tiled: bool = False
) -> dict[str, np.ndarray]:
    """Each kind of evidence the izif image score weighs, N values each: "image_izif" (izif,
    the maximum over its tiles) and, when the smoothness evidence is on
    (`image_smoothness_weight`), "image_smoothness": the maximum of each image's blurred
    smoothness term, how much smoother than normal texture its smoothest region is."""
    per_tile = np.asarray(
        sum(
            weight(term, cfg, levels) * normalised(term, terms, levels)
            for term in of_kind(IMAGE)
            if weight(term, cfg, levels)
        )
    )
    evidence = {"image_izif": per_tile.max(1)}
    if image_smoothness_weight(cfg, tiled):
        below = normalised(named(SMOOTHNESS), terms, levels)
        blurred = gaussian_blur(below, blur_sigma(cfg, image_size, tiled))
        evidence["image_smoothness"] = blurred.reshape(len(blurred), -1).max(1).astype(np.float64)
    return evidence


def formula(config: Config) -> str:
    """The map and the image score under `config`'s settings, in words and numbers (for the
    ONNX doc string and `--print-config` readers): the terms that count, with their weights."""
    cfg, tiled = config.score, scored_in_tiles(config)

    def total(terms: tuple[Term, ...]) -> str:
        shown = {LEVEL: "{name} / m_{name}", BELOW: "max(m_{name} - {name}, 0) / {name}_std"}
        return " + ".join(
            f"{weight(t, cfg, {t.name: 1.0}):g} * " + shown[t.normaliser].format(name=t.name)
            for t in terms
            if weight(t, cfg, {t.name: 1.0})
        )

    text = (
        f"Anomaly map = blur_{blur_sigma(cfg, config.model.image_size, tiled):g}px({total(of_kind(MAP))}), "
        + "".join(f"{t.name} {t.about} (from the images); " for t in all_terms() if t.images is not None)
    )
    izif = f"izif = max over tiles of ({total(of_kind(IMAGE))})"
    if cfg.image_score != "izif":
        statistic = "max" if cfg.image_score == "max" else f"mean of the top {TOP_FRACTION:.0%}"
        return text + f"Image score = {statistic} of the map."
    smoothness = image_smoothness_weight(cfg, tiled)
    if not smoothness:
        return text + f"Image score = {izif}."
    return text + (
        f"Image score = max((izif - m_image_izif) / image_izif_std, "
        f"{smoothness:g} * (t - m_image_smoothness) / image_smoothness_std), {izif}, "
        f"t the maximum of the blurred smoothness term."
    )


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
