"""Calibration: what scoring needs besides the networks, found on normal images after training.

Two kinds of normal images, never the same ones:
- *training* images (or random patches of them) fit the Gaussians of the density terms
  (`nn.density`): D's bottleneck features and E's latent codes of normal images;
- *calibration* normals, which nothing was fitted on (the validation split, or whole images,
  or for CT whole patients, held out of training: `calibration_split`), give every normal
  level and spread and both thresholds.
A Mahalanobis distance measured on the sample its Gaussian was fitted on is biased low (about
the more, the fewer samples per dimension), so levels and thresholds taken there promise far
fewer flagged normals than fresh normals give; kept apart, the calibration normals and a new
normal image are exchangeable, and the threshold's promise holds (`rank_threshold`).

The result is one typed `Calibration`, saved with the weights (and in ONNX metadata), read by
scoring; `config.score` keeps only what the user chose.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..config import Config, scored_in_tiles
from ..data.base import ImageSet, row_chunks
from ..data.checks import held_out
from ..data.groups import image_groups
from ..errors import DataError, RunFolderError
from .combine import image_evidence, map_blur
from .pixel_histogram import PixelHistogram
from .terms import BELOW, MAP, Terms, all_terms, density_terms, normal_levels, of_kind
from .thresholds import (
    expected_rate,
    f1_image_threshold,
    f1_pixel_threshold,
    normals_needed,
    quantile_pixel_threshold,
    rank,
    rank_threshold,
)
from .unit_scale import fit_unit_scale, unit_scale

FORMAT = 1  # what `Calibration.to_dict` writes; other layouts are refused (calibrate again)
# Terms for calibration images beyond this many bytes are kept in a temporary file, not in
# memory (2,000 CT slices at 512 px hold about 10 GB of maps).
IN_MEMORY_BYTES = 1 << 30


class TermScorer(Protocol):
    """What calibration needs of a model (`scorer.Scorer` is one): its settings, the raw terms
    of images (`residual_terms`), the pixels that count and the terms' combination."""

    @property
    def config(self) -> Config: ...

    def residual_terms(
        self, images: np.ndarray, batch_size: int | None = None, region: np.ndarray | None = None
    ) -> Terms: ...

    def scoring_region(self, images: ImageSet) -> np.ndarray | None: ...

    def combine(self, terms: Terms, levels: dict[str, float]) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class Calibration:
    """Everything calibration found: the terms' normal levels and spreads (`levels`, by the
    term's name, "<name>_std" for spreads; a density term whose Gaussian could not be fitted
    has none and counts 0), the thresholds, the map's blur they were set with, and how many
    calibration images they rest on."""

    levels: dict[str, float]
    image_threshold: float
    pixel_threshold: float  # a pixel at or above this belongs to the mask (`masks.MaskRule`)
    blur_sigma: float
    normals: int  # calibration normal images
    anomalous: int  # calibration anomalous images (labelled validation data)
    rule: str  # "f1-optimal" or "normal quantile <q>"
    # The share of new normal images the image threshold is expected to flag (the quantile
    # rule's: `thresholds.rank_threshold`); None for an F1-optimal threshold.
    expected_image_rate: float | None
    # Scores and map values on [0, 1] (`unit_scale`: MOOD's outputs), from the normals' medians
    # and `normal_quantile` quantiles: {"score": ..., "map": ...}.
    unit_scale: dict[str, dict[str, float]]
    notes: list[str] = field(default_factory=list)
    # The calibration normals' image scores, ascending: the share of new normals any image
    # threshold flags (`thresholds.expected_rate`, the report's operating-point panel). None
    # in runs calibrated before funetgan kept them.
    normal_scores: list[float] | None = None

    def to_dict(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: Any, source: str) -> Calibration:
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        if not isinstance(values, dict) or values.get("format") != FORMAT or required - set(values):
            raise RunFolderError(
                f"{source}: calibrated by an earlier funetgan (another calibration layout); "
                f"calibrate it again: funetgan calibrate --run RUN --data DATA"
            )
        problem = damage(values)
        if problem:
            raise RunFolderError(
                f"calibration of {source} is damaged: {problem}; run funetgan calibrate --run RUN --data DATA"
            )
        return cls(**{key: value for key, value in values.items() if key in names})


def damage(values: dict) -> str | None:
    """What is wrong with a saved calibration of the current layout (a hand edit, a damaged
    file), in words, or None: every value of the type scoring reads, finite, and the normal
    level of every term scoring divides by (a density term may lack its own: it counts 0)."""

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)

    for key in ("image_threshold", "pixel_threshold", "blur_sigma"):
        if not number(values[key]):
            return f"{key} is {values[key]!r}, not a finite number"
    for key in ("normals", "anomalous"):
        if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 0:
            return f"{key} is {values[key]!r}, not a count"
    rate = values["expected_image_rate"]
    if rate is not None and not (number(rate) and 0 <= rate <= 1):
        return f"expected_image_rate is {rate!r}, not a share in [0, 1]"
    scores = values.get("normal_scores") or []
    if not isinstance(scores, list) or not all(number(score) for score in scores):
        return "normal_scores is not a list of finite numbers"
    if not isinstance(values["rule"], str) or not isinstance(values["notes"], list):
        return "rule or notes of the wrong type"
    levels = values["levels"]
    if not isinstance(levels, dict):
        return f"levels is {type(levels).__name__}, not a table of levels"
    fitted = {t.name for t in density_terms()}
    needed = [
        *(t.name for t in all_terms() if t.name not in fitted),
        *(f"{t.name}_std" for t in all_terms() if t.normaliser == BELOW),
        "image_izif",
        "image_izif_std",
    ]
    missing = [name for name in needed if name not in levels]
    if missing:
        return f"levels lack {', '.join(missing)}"
    wrong = [name for name, value in levels.items() if not number(value)]
    if wrong:
        return f"levels[{wrong[0]!r}] is {levels[wrong[0]]!r}, not a finite number"
    scales = values["unit_scale"]
    for kind in ("score", "map"):
        scale = scales.get(kind) if isinstance(scales, dict) else None
        if (
            not isinstance(scale, dict)
            or not all(number(scale.get(k)) for k in ("median", "spread"))
            or scale["spread"] <= 0
        ):
            return f"unit_scale[{kind!r}] is {scale!r}, not a median and a positive spread"
    return None


def calibration_split(
    train: ImageSet, val: ImageSet | None, fraction: float, seed: int
) -> tuple[np.ndarray | None, ImageSet]:
    """The rows of `train` to train on (None: all) and the calibration set: `val` when there
    is one, else `fraction` of the training normals held out, drawn by `seed`. Slices of one
    volume, DICOM patient or series stay together (`image_groups`: a patient is held out
    whole, as neighbouring slices are nearly the same image). Rows rather than a copy, so a
    memory-mapped training set stays on disk."""
    if (train.labels != 0).any():
        raise DataError(f"training set has {int((train.labels != 0).sum())} anomalous images; train on normals only")
    if val is not None:
        return None, val
    groups = image_groups(train)
    names = np.unique(groups)
    if len(names) < 2:
        raise DataError(
            "one training volume (or image) cannot be split into training and calibration "
            "normals: add normals or give a validation split"
        )
    count = min(held_out(len(names), fraction), len(names) - 1)
    chosen = np.random.default_rng(seed).permutation(names)[:count]
    kept = np.isin(groups, chosen)
    return np.flatnonzero(~kept), train.subset(np.flatnonzero(kept))


def find_calibration(
    model: TermScorer, normals: ImageSet, unfitted: Sequence[str] = (), notes: Sequence[str] = ()
) -> Calibration:
    """The normal levels and the thresholds on `normals` (the calibration set: its normal
    images, and its anomalies and masks where it has them; `calibration_split`), for a model
    whose density terms are fitted, but for those named `unfitted` (they count 0; `notes`
    say why). A chunk of images at a time: memory holds one chunk's maps whatever the set's size."""
    normal = np.flatnonzero(normals.labels == 0)
    if len(normal) == 0:
        raise DataError("the calibration images hold no normal image")
    with tempfile.TemporaryDirectory(prefix="funetgan-calibration-") as folder:
        terms = calibration_terms(model, normals, Path(folder))

        def normal_chunks() -> Iterator[Terms]:
            return (terms.rows(rows) for rows in row_chunks(normal, normals.images.shape[1:3]))

        levels = normal_levels(normal_chunks())
        for name in unfitted:  # without its level a term counts 0 (`scoring.weight`)
            del levels[name]
        levels.update(image_evidence_levels(normal_chunks(), levels, model.config))
        scores, histogram = scored(model, terms, levels, normals)
    return thresholds(model.config, scores, histogram, normals, levels, list(notes))


def calibration_terms(model: TermScorer, normals: ImageSet, folder: Path) -> Terms:
    """The raw terms of the calibration images, a chunk at a time, kept in memory, or in
    files in `folder` when they are large."""
    images, region = normals.images, model.scoring_region(normals)
    map_bytes = images.shape[0] * int(np.prod(images.shape[1:3])) * np.dtype(np.float32).itemsize
    on_disk = map_bytes * (len(of_kind(MAP)) + 1) > IN_MEMORY_BYTES  # the map terms and the region
    parts: dict[str, np.ndarray] = {}
    for rows in row_chunks(np.arange(len(images)), images.shape[1:3]):
        chunk = model.residual_terms(np.asarray(images[rows]), region=None if region is None else region[rows])
        arrays = {**chunk.arrays, **({} if chunk.region is None else {"region": chunk.region})}
        for name, value in arrays.items():
            if name not in parts:
                parts[name] = _array(folder if on_disk else None, name, (len(images), *value.shape[1:]), value.dtype)
            parts[name][rows] = value
    region = parts.pop("region", None)
    return Terms(parts, region)


def _array(folder: Path | None, name: str, shape: tuple, dtype) -> np.ndarray:
    if folder is None:
        return np.empty(shape, dtype)
    return np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)


def image_evidence_levels(normals: Iterable[Terms], levels: dict[str, float], config: Config) -> dict[str, float]:
    """The mean and spread over calibration normals (a chunk of their terms at a time) of each
    kind of image evidence the score can weigh (`scoring.image_evidence`): "image_izif",
    "image_smoothness" and their "_std" (the smoothness evidence's whatever its weight, so that
    other weights can be scored without calibrating again)."""
    every_kind = dataclasses.replace(config.score, image_smoothness_weight=1.0)
    found: dict[str, list[np.ndarray]] = {}
    for terms in normals:
        evidence = image_evidence(terms, levels, every_kind, config.model.image_size, scored_in_tiles(config))
        for name, values in evidence.items():
            found.setdefault(name, []).append(values)
    result = {}
    for name, parts in found.items():
        values = np.concatenate(parts)
        result[name], result[f"{name}_std"] = float(values.mean()), float(values.std())
    return result


def scored(
    model: TermScorer, terms: Terms, levels: dict[str, float], normals: ImageSet
) -> tuple[np.ndarray, PixelHistogram]:
    """Image scores of every calibration image, and the histogram of the map
    values inside the scoring region that set the pixel threshold (group 0: normal images'
    pixels; group 1: those of anomalies with masks), a chunk at a time."""
    scores = np.zeros(len(normals))
    histogram = PixelHistogram(groups=2)
    normal = normals.labels == 0
    masked = ~normal if normals.masks is None else (normals.labels == 1) & np.asarray(normals.has_mask, bool)
    counted = normal | masked if normals.masks is not None else normal
    for rows in row_chunks(np.arange(len(normals)), normals.images.shape[1:3]):
        part = terms.rows(rows)
        scores[rows], maps = model.combine(part, levels)
        keep = counted[rows]
        if keep.any():
            truth = None if normals.masks is None else np.asarray(normals.masks[rows][keep], bool)
            histogram.add(
                maps[keep],
                truth,
                None if part.region is None else part.region[keep],
                (~normal[rows][keep]).astype(np.int64),
            )
    return scores, histogram


def thresholds(
    config: Config,
    scores: np.ndarray,
    histogram: PixelHistogram,
    normals: ImageSet,
    levels: dict[str, float],
    notes: list[str],
) -> Calibration:
    """The thresholds, F1-optimal where the calibration set has labelled anomalies (and masks),
    else at `score.normal_quantile` of the calibration normals; with a note when the normals
    are too few for the quantile to mean what it says."""
    q = config.score.normal_quantile
    normal = normals.labels == 0
    anomalous = int((normals.labels == 1).sum())
    expected: float | None
    image_threshold, expected = rank_threshold(scores[normal], q)
    if anomalous:
        image_threshold, expected = f1_image_threshold(scores, normals.labels), None
    curves = histogram.curves()
    pixel_threshold = f1_pixel_threshold(curves) if curves.defined else quantile_pixel_threshold(curves, q)
    scales = {
        "score": fit_unit_scale(scores[normal], q),
        "map": unit_scale(histogram.quantile(0.5, [0]), histogram.quantile(q, [0])),
    }
    notes = [*notes, *few_normals_note(int(normal.sum()), q)] if not anomalous else notes
    return Calibration(
        levels=levels,
        image_threshold=float(image_threshold),
        pixel_threshold=float(pixel_threshold),
        blur_sigma=map_blur(config),
        normals=int(normal.sum()),
        anomalous=anomalous,
        rule="f1-optimal" if anomalous else f"normal quantile {q:g}",
        expected_image_rate=expected,
        unit_scale=scales,
        notes=notes,
        normal_scores=np.sort(scores[normal]).tolist(),
    )


def with_thresholds(calibration: Calibration, image: float | None = None, pixel: float | None = None) -> Calibration:
    """`calibration` with the thresholds a user chose (None: keep the calibrated one); a chosen
    image threshold comes with its promise, the share of new normals expected at or above it
    measured on the calibration normals' scores (`thresholds.expected_rate`)."""
    if image is None and pixel is None:
        return calibration
    changes: dict = {}
    if image is not None:
        if calibration.normal_scores is None:
            raise RunFolderError(
                "this run's calibration predates the calibration normals' scores that measure a "
                "threshold's promise; calibrate it again with --data first"
            )
        changes.update(
            image_threshold=float(image), expected_image_rate=expected_rate(calibration.normal_scores, image)
        )
    if pixel is not None:
        changes["pixel_threshold"] = float(pixel)
    chosen = " and ".join(name for name, value in (("image", image), ("pixel", pixel)) if value is not None)
    calibrated = calibration.rule.rpartition("calibrated: ")[2]  # the rule before any earlier choice
    return dataclasses.replace(
        calibration, rule=f"{chosen} threshold set by the user; calibrated: {calibrated}", **changes
    )


def few_normals_note(count: int, q: float) -> list[str]:
    """A note when `count` calibration normals are too few for the `q` quantile: below
    q / (1 - q) of them (99 for 0.99) the threshold is their maximum, which about 1 in
    count + 1 new normal images reach, more than the 1 - q asked for."""
    if rank(count, q) <= count:
        return []
    return [
        f"{count} calibration normals: the {q:g} quantile of their scores is their maximum, so about "
        f"1 in {count + 1} ({100 / (count + 1):.1f} %) normal images will be flagged, not "
        f"{100 * (1 - q):.2g} %; hold out at least {normals_needed(q)} normals "
        f"(data.val_fraction) or give a validation split"
    ]
