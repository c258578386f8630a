"""Per-patient results of slice-level scoring, for images that are slices of CT volumes.

    volume_results   one row per volume (volume_result: one): its score (its highest slice
                     score), label (anomalous when any slice holds lesion), lesion
                     volume in millilitres, true and predicted, and 3-D Dice / IoU
    volume_metrics   detection metrics over volumes and the means of the per-volume figures;
                     voxel_ap (pooled_voxel_ap chunk by chunk): MOOD's voxel-pooled average precision
    write_volumes    (write_volume: one) each volume's anomaly map and predicted mask as NIfTI on the scan's own
                     voxel grid and affine, so they overlay the scan in 3D Slicer or ITK-SNAP; for a
                     DICOM series also as a DICOM SEG and Parametric Map over it (dicom_outputs.py)

Lesion volumes and overlaps are counted on the slices at the working size; each working pixel
stands for its share of the slice's original area times the voxel size. A slice's predicted
mask is the mask rule's (`masks.MaskRule`), at the working size for the figures and on the
scan's grid for the NIfTI file.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.base import SLICE_MARK, ImageSet
from ..data.ct import volume_name
from ..data.medical import Geometry, require, to_scan_grid
from ..errors import DataError
from ..evaluation.metrics import image_metrics
from ..files import atomic_write, safe_names
from ..scoring.masks import MaskRule
from ..scoring.pixel_histogram import PixelHistogram
from .dicom_outputs import from_dicom_series, write_dicom_outputs

STRIP_SLICES = 3  # most anomalous slices per volume shown in the report
FOLDER = "volumes"


def volume_results(imageset: ImageSet, scores, predicted, image_threshold: float) -> list[dict]:
    """One row per volume of `imageset` (none when it holds no volume slices), from every
    slice's score and predicted mask."""
    by_volume = imageset.volume_rows()
    return [
        volume_result(
            imageset, source, name, rows, np.asarray(scores, float)[rows], np.asarray(predicted)[rows], image_threshold
        )
        for (source, rows), name in zip(by_volume.items(), volume_names(list(by_volume)))
    ]


def volume_result(
    imageset: ImageSet,
    source: str,
    name: str,
    rows: np.ndarray,
    slice_scores: np.ndarray,
    predicted,
    image_threshold: float,
) -> dict:
    """The row of one volume, `source`, from the scores and predicted masks of its slices
    `rows` (in slice order, as `ImageSet.volume_rows` gives them)."""
    score = volume_score(slice_scores)
    predicted = np.asarray(predicted, bool)
    pixel_ml = _pixel_ml(imageset, rows, imageset.volumes[source], predicted.shape[1:])
    labels = imageset.labels[rows]
    result = {
        "volume": name,
        "path": source,
        "slices": len(rows),
        "label": -1 if (labels < 0).any() else int((labels == 1).any()),
        "score": score,
        "predicted": int(score >= image_threshold),
        "predicted_ml": float(predicted.sum((1, 2)) @ pixel_ml),
        "lesion_ml": None,
        "dice": None,
        "iou": None,
        "top_rows": rows[np.argsort(-slice_scores, kind="stable")[:STRIP_SLICES]].tolist(),
    }
    masks, has_mask = imageset.filled_masks()
    if imageset.masks is not None and has_mask[rows].all():
        result.update(_overlap(predicted, np.asarray(masks[rows], bool), pixel_ml))
    return result


def volume_score(slice_scores) -> float:
    """A volume's score: its highest slice score (a lesion on one slice makes the patient's)."""
    return float(np.max(np.asarray(slice_scores, float)))


def _pixel_ml(imageset: ImageSet, rows: np.ndarray, geometry: Geometry, size: tuple[int, int]) -> np.ndarray:
    """Millilitres one working pixel stands for, per slice."""
    return geometry.voxel_ml * imageset.sizes[rows].prod(1) / (size[0] * size[1])


def _overlap(predicted: np.ndarray, truth: np.ndarray, pixel_ml: np.ndarray) -> dict:
    tp = int((predicted & truth).sum())
    fp, fn = int((predicted & ~truth).sum()), int((~predicted & truth).sum())
    both_empty = tp + fp + fn == 0  # no lesion, none predicted: overlap undefined
    return {
        "lesion_ml": float(truth.sum((1, 2)) @ pixel_ml),
        "dice": None if both_empty else 2 * tp / (2 * tp + fp + fn),
        "iou": None if both_empty else tp / (tp + fp + fn),
    }


def volume_metrics(results: list[dict], image_threshold: float, voxel_ap: float | None = None) -> dict:
    """Detection over volumes (labels: any lesion slice) and the means, over volumes with a
    lesion, of 3-D Dice, IoU and the absolute error of the predicted lesion volume; with
    `voxel_ap` (`pooled_voxel_ap`) that too."""
    with_lesion = [r for r in results if r["lesion_ml"]]

    def mean(values) -> float | None:
        values = list(values)
        return float(np.mean(values)) if values else None

    return {
        "n_volumes": len(results),
        "score": "highest slice score",
        "detection": image_metrics(
            [r["score"] for r in results], np.array([r["label"] for r in results]), image_threshold
        ),
        "dice_mean": mean(r["dice"] for r in with_lesion),
        "iou_mean": mean(r["iou"] for r in with_lesion),
        "lesion_ml_abs_error_mean": mean(abs(r["predicted_ml"] - r["lesion_ml"]) for r in with_lesion),
        "n_with_lesion": len(with_lesion),
        "voxel_ap": voxel_ap,
    }


def add_voxels(histogram: PixelHistogram, imageset: ImageSet, rows: np.ndarray, maps) -> None:
    """Count one volume's slices `rows` against their truth for `pooled_voxel_ap`: every
    pixel of their maps (0 outside a scoring region, as in the written volumes). A volume
    without truth on every slice is left out."""
    masks, has_mask = imageset.filled_masks()
    if imageset.masks is not None and has_mask[rows].all():
        histogram.add(np.asarray(maps), np.asarray(masks[rows], bool))


def pooled_voxel_ap(histogram: PixelHistogram) -> float | None:
    """The average precision of every counted voxel of every volume, pooled: the MOOD
    challenge's pixel-level measure (on the slices at the working resolution; None without
    both anomalous and normal voxels)."""
    curves = histogram.curves()
    return curves.ap() if curves.defined else None


def voxel_ap_of_set(imageset: ImageSet, maps) -> float | None:
    """`pooled_voxel_ap` of a whole set's volumes from all their maps in memory."""
    histogram = PixelHistogram()
    for rows in imageset.volume_rows().values():
        add_voxels(histogram, imageset, rows, np.asarray(maps)[rows])
    return pooled_voxel_ap(histogram)


def volume_names(sources: list[str]) -> list[str]:
    """Unique (also case-insensitively), file-system-safe names of volume files or folders."""
    return safe_names((volume_name(Path(source)) for source in sources), "volume")


def write_volumes(
    out_dir,
    imageset: ImageSet,
    scores,
    maps,
    rule: MaskRule,
    image_threshold: float,
    results: list[dict],
    region: np.ndarray | None = None,
) -> list[Path]:
    """`write_volume` for each row of `volume_results`, from the whole set's scores and maps."""
    rows_of = imageset.volume_rows()
    return [
        path
        for result in results
        for path in write_volume(
            out_dir,
            imageset,
            result,
            rows_of[result["path"]],
            np.asarray(maps)[rows_of[result["path"]]],
            np.asarray(scores)[rows_of[result["path"]]] >= image_threshold,
            rule,
            None if region is None else region[rows_of[result["path"]]],
        )
    ]


def write_volume(
    out_dir,
    imageset: ImageSet,
    result: dict,
    rows: np.ndarray,
    maps,
    flagged: np.ndarray,
    rule: MaskRule,
    region: np.ndarray | None = None,
) -> list[Path]:
    """`volumes/<volume>_map.nii.gz` (float32 anomaly map, 0 where nothing was scored) and
    `volumes/<volume>_mask.nii.gz` (uint8 0/1: `rule` slice by slice, `flagged` the slices whose
    score reaches the image threshold) of one volume (`result`, a `volume_result`), from the
    maps of its slices `rows`, on the scan's voxel grid with its affine; slices are resized back
    to the scan's in-plane size. A DICOM series gets the same map and mask as DICOM objects over
    it too (`dicom_outputs`), or where its headers lack what they must reference, a note in
    `imageset.notes` saying so. With `region` (the scored pixels of those slices, bool) the
    maps stay 0 outside it at that size."""
    folder = Path(out_dir) / FOLDER
    geometry = imageset.volumes[result["path"]]
    volume = scan_map(imageset, maps, rows, geometry, region)
    slice_flags = np.zeros(len(volume), bool)
    slice_flags[[int(imageset.paths[i].rpartition(SLICE_MARK)[2]) for i in rows]] = flagged
    grid = to_scan_grid(volume, geometry)
    mask = to_scan_grid(rule(volume, slice_flags).astype(np.uint8), geometry)
    written = []
    for suffix, values in (("map", grid), ("mask", mask)):
        path = folder / f"{result['volume']}_{suffix}.nii.gz"
        save_nifti(path, values, geometry)
        written.append(path)
    if from_dicom_series(result["path"]):
        try:
            written += write_dicom_outputs(
                folder, result["volume"], Path(result["path"]), grid, mask, rule.pixel_threshold
            )
        except DataError as err:  # a series without what DICOM objects must reference: NIfTI only
            imageset.notes.append(f"no DICOM SEG or Parametric Map: {err}; its NIfTI files are written")
    return written


def scan_map(
    imageset: ImageSet, maps, rows: np.ndarray, geometry: Geometry, region: np.ndarray | None = None
) -> np.ndarray:
    """The maps of one volume's slices `rows` (`maps` and `region`: one per row, in that
    order) as float32 Z x H x W in `read_scan`'s slice order, each resized (bilinearly) to its
    slice's size; 0 outside `region` resized by nearest
    neighbour (bilinear resizing blurs over its edge)."""
    volume = np.zeros(geometry.slice_shape, np.float32)
    for k, i in enumerate(rows):
        z = int(imageset.paths[i].rpartition(SLICE_MARK)[2])
        height, width = (int(v) for v in imageset.sizes[i])
        values = np.asarray(
            Image.fromarray(np.asarray(maps[k], np.float32)).resize((width, height), Image.Resampling.BILINEAR)
        )
        if region is not None:
            values = values * np.asarray(
                Image.fromarray(np.asarray(region[k])).resize((width, height), Image.Resampling.NEAREST)
            )
        volume[z, :height, :width] = values
    return volume


def save_nifti(path: Path, data: np.ndarray, geometry: Geometry) -> None:
    """An array on `geometry`'s voxel grid as a NIfTI file (gzipped when its name ends in
    .gz), written atomically."""
    nibabel = require("nibabel")
    image = nibabel.Nifti1Image(data, geometry.affine)
    image.header.set_xyzt_units("mm")
    content = image.to_bytes()
    if Path(path).name.lower().endswith(".gz"):
        content = gzip.compress(content, compresslevel=1)
    atomic_write(path, lambda tmp: tmp.write_bytes(content))
