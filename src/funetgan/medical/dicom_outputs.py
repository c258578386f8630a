"""DICOM objects for a volume that came in as a DICOM series, beside its NIfTI files:

    volumes/<volume>_seg.dcm   DICOM Segmentation (binary) of the predicted mask
    volumes/<volume>_map.dcm   DICOM Parametric Map (float32) of the anomaly map

Each has one frame per source slice, in the source's positions and orientation, and
references the source study, series, instances and frame of reference, so that 3D Slicer
(with its DICOM plug-ins), OHIF or a PACS show them over the scan. The algorithm is
identified by name and version (the SEG's Segment Algorithm Identification; both objects'
manufacturer, model and software version). The values are those of the NIfTI files: the map
and the mask (`masks.MaskRule`) as written there.

highdicom (in the `medical` extra) builds them and checks them against the standard.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import numpy as np

from .. import __version__
from ..data.medical import read_dicom_series
from ..errors import DataError, MissingExtra
from ..files import atomic_write

SEG_SUFFIX, MAP_SUFFIX = "_seg.dcm", "_map.dcm"
ALGORITHM = "funetgan"
MODEL = "F-UNetGAN"
SEG_SERIES, MAP_SERIES = 9001, 9002  # series numbers: after the scanner's own, which rarely reach 9000


def require_highdicom() -> ModuleType:
    try:
        return importlib.import_module("highdicom")
    except ImportError:
        raise MissingExtra(
            "DICOM outputs (SEG, Parametric Map) need highdicom: pip install funetgan[medical]"
        ) from None


def from_dicom_series(source: str | Path) -> bool:
    """Whether a volume's source is a DICOM series (a folder; NIfTI volumes are files)."""
    return Path(source).is_dir()


def check_outputs_possible(sources: Iterable[str]) -> None:
    """Before scoring: raise MissingExtra if some volume needs DICOM outputs and
    highdicom is missing, rather than after its NIfTI files are written."""
    if any(from_dicom_series(source) for source in sources):
        require_highdicom()


def write_dicom_outputs(
    folder: Path, name: str, series: Path, grid: np.ndarray, mask: np.ndarray, pixel_threshold: float
) -> list[Path]:
    """`<name>_seg.dcm` and `<name>_map.dcm` in `folder` for the DICOM series folder `series`,
    from its anomaly map and predicted mask on the scan's voxel grid (`grid`, `mask`: columns x
    rows x slices, as `to_scan_grid` gives them and the NIfTI files hold them);
    `pixel_threshold` the mask rule's, for the record and the map's display window."""
    sources = read_dicom_series(series, pixels=False)
    frames = np.ascontiguousarray(np.asarray(grid, np.float32).transpose(2, 1, 0))  # slice, row, column
    mask_frames = np.ascontiguousarray(np.asarray(mask, bool).transpose(2, 1, 0))
    try:
        objects = {
            SEG_SUFFIX: segmentation(sources, mask_frames, pixel_threshold),
            MAP_SUFFIX: parametric_map(sources, frames, pixel_threshold),
        }
    except (ValueError, TypeError, AttributeError, KeyError) as err:  # highdicom on incomplete source headers
        raise DataError(f"{series}: cannot write DICOM outputs for this series ({_first_line(err)})") from None
    written = []
    for suffix, dataset in objects.items():
        path = folder / f"{name}{suffix}"
        atomic_write(path, functools.partial(dataset.save_as, enforce_file_format=True))
        written.append(path)
    return written


def segmentation(sources: list, mask: np.ndarray, pixel_threshold: float):
    """A binary DICOM SEG of `mask` (slices x rows x columns bool, one slice per source),
    one segment, "anomaly", found automatically by funetgan at `pixel_threshold`."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM,
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        parameters={"pixel_threshold": f"{pixel_threshold:.6g}"},
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="anomaly",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_number=SEG_SERIES,
        series_description=f"{ALGORITHM} anomaly mask",
        omit_empty_frames=False,  # one frame per source slice, also where nothing was found
        content_label="ANOMALY",
        content_description=f"{ALGORITHM} {__version__}: map >= {pixel_threshold:.6g}",
        **_identity(hd),
    )
    # No Laterality: the SEG's General Series module allows it only under a condition its
    # frames never meet (dciodvfy: "present when condition unsatisfied", even "R" on a breast).
    return seg


def parametric_map(sources: list, values: np.ndarray, pixel_threshold: float):
    """A float32 DICOM Parametric Map of the anomaly map `values` (slices x rows x columns),
    windowed from 0 (black) through the pixel threshold (mid grey) to twice it."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ANOMALY",
        lut_explanation=f"{ALGORITHM} anomaly map (pixel threshold {pixel_threshold:.6g})",
        unit=codes.UCUM.NoUnits,
        value_range=(float(values.min()), float(values.max())),
        slope=1,
        intercept=0,
    )
    # LINEAR_EXACT: maps are scaled to their normal level (about 1), and the plain LINEAR
    # function allows no window narrower than 1.
    window = hd.VOILUTTransformation(
        window_center=float(pixel_threshold),
        window_width=max(2.0 * abs(float(pixel_threshold)), 1e-6),
        window_explanation="0 to twice the pixel threshold",
        voi_lut_function="LINEAR_EXACT",
    )
    pm = hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=values,
        series_number=MAP_SERIES,
        series_description=f"{ALGORITHM} anomaly map",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[window],
        content_label="ANOMALY",
        content_description=f"{ALGORITHM} {__version__} anomaly map",
        **_identity(hd),
    )
    return _with_laterality(pm, sources)


def _identity(hd) -> dict:
    """New UIDs and funetgan as the equipment that made the object."""
    return {
        "series_instance_uid": hd.UID(),
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": ALGORITHM,
        "manufacturer_model_name": MODEL,
        "software_versions": __version__,
        "device_serial_number": "0",
    }


def _with_laterality(dataset, sources: list):
    """The source series' Laterality, an empty one (unknown) where it has none: the
    Parametric Map's General Series module asks for it (dciodvfy)."""
    dataset.Laterality = sources[0].get("Laterality") or ""
    return dataset


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
