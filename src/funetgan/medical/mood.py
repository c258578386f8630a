"""The MOOD challenge's conventions (Medical Out-of-Distribution Analysis Challenge, MICCAI):
a folder of NIfTI volumes in, and per case in the output folder

    <case>.nii.gz.txt   the case's score in [0, 1]                        (sample-level task)
    <case>.nii.gz       a voxel map in [0, 1], the input's shape and affine  (pixel-level task)

named as the challenge's own example names them: the input file's name, plus ".txt" for the
score. Cases are scored one at a time (memory for one volume), slice by slice as `predict`
scores a volume: the case score is the volume score (its highest slice score), the map is
the slices' maps on the scan's voxel grid. Both go to [0, 1] by the scales calibration fitted
on validation normals (`unit_scale`: 0 at or below their median, 0.5 at their
`score.normal_quantile` quantile); the case score by the slice
scores' scale. The challenge's measures are average precisions (of the case scores, and of
every voxel of every case pooled): the scales keep the order of everything above the
normals' median, so they leave them all but as the raw values give them, and `funetgan test`
reports both for a volume test set (metrics.json: volume.detection.ap and volume.voxel_ap).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import working_size
from ..data import load_unlabelled
from ..data.medical import is_nifti, to_scan_grid
from ..errors import DataError, RunFolderError
from ..files import atomic_write_text
from ..scoring.scorer import Scorer
from ..scoring.unit_scale import to_unit
from .volumes import save_nifti, scan_map, volume_score

TASKS = ("sample", "pixel")
SCORE_SUFFIX = ".txt"


def case_files(folder: Path) -> list[Path]:
    """The NIfTI volumes directly in `folder`, sorted (hidden files left out)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    cases = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))
    if not cases:
        raise DataError(f"{folder}: no NIfTI volumes (.nii.gz, .nii) to score")
    return cases


def outputs_of(case: Path, output_dir: Path, tasks: tuple[str, ...] = TASKS) -> list[Path]:
    """The files `run_mood` writes for `case`: its score file, then its map."""
    names = {"sample": case.name + SCORE_SUFFIX, "pixel": case.name}
    return [output_dir / names[task] for task in TASKS if task in tasks]


def run_mood(
    model: Scorer, input_dir: Path, output_dir: Path, tasks: tuple[str, ...] = TASKS, overwrite: bool = False
) -> dict[str, float]:
    """Score every case of `input_dir` and write `tasks`' files to `output_dir` (see top);
    returns each case's score in [0, 1] by file name. Earlier outputs are replaced only with
    `overwrite`; this is checked for every case before any is scored."""
    scales = unit_scales(model)
    cases = case_files(Path(input_dir))
    output_dir = Path(output_dir)
    existing = [path for case in cases for path in outputs_of(case, output_dir, tasks) if path.exists()]
    if existing and not overwrite:
        raise RunFolderError(
            f"{output_dir} already holds results ({existing[0].name}); use --overwrite to replace them"
        )
    scores = {}
    for case in cases:
        score, grid, geometry = score_case(model, case)
        scores[case.name] = float(to_unit(score, scales["score"]))
        if "sample" in tasks:
            atomic_write_text(output_dir / (case.name + SCORE_SUFFIX), f"{scores[case.name]!r}\n")
        if "pixel" in tasks:
            save_nifti(output_dir / case.name, to_unit(grid, scales["map"]).astype(np.float32), geometry)
    return scores


def unit_scales(model: Scorer) -> dict:
    """The calibration's [0, 1] scales (`Calibration.unit_scale`)."""
    return model._calibrated().unit_scale


def score_case(model: Scorer, case: Path):
    """(raw volume score, raw anomaly map on the scan's voxel grid, geometry) of one volume."""
    config = model.config
    images = load_unlabelled([str(case)], working_size(config), config.model.channels, config.data)
    [(source, rows)] = images.volume_rows().items()
    result = model.score(images)
    region = model.scoring_region(images)
    geometry = images.volumes[source]
    volume = scan_map(images, result.maps[rows], rows, geometry, None if region is None else region[rows])
    return volume_score(result.scores[rows]), to_scan_grid(volume, geometry), geometry
