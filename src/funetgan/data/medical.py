"""DICOM and NIfTI readers and CT intensity windowing.

nibabel and pydicom are the optional `medical` extra, imported only when such a file is read.
Volumes come out as axial slices, Z x H x W (inferior to superior), shown the radiological
way: anterior at the top, the patient's right on the image's left.
"""

from __future__ import annotations

import importlib
import io
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from ..bounds.memory import FLOAT32, human_bytes, max_inflated, physical_memory
from ..errors import DataError, MissingExtra

DEFAULT_HU_WINDOW = (-1000.0, 400.0)  # lung window, as DataConfig.hu_window
NIFTI_SUFFIXES = (".nii", ".nii.gz")
RAS = np.array([[0, 1], [1, 1], [2, 1]])  # nibabel's orientation of canonical (RAS+) voxel axes


def require(package: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingExtra(f"reading this data needs {package}: pip install funetgan[medical]") from None


def is_dicom(path: str | Path) -> bool:
    """By suffix, or when the suffix is no image format's (DICOM files often have none, or
    a number) by the 'DICM' preamble."""
    suffix = Path(path).suffix.lower()
    if suffix == ".dcm":
        return True
    if suffix in Image.registered_extensions():
        return False
    with open(path, "rb") as file:
        return file.read(132)[128:] == b"DICM"


def is_dicom_series(folder: Path) -> bool:
    """A folder of two or more DICOM slice files of one series (SeriesInstanceUID), placed in
    space (ImagePositionPatient): a volume. Files without positions are 2-D images
    (radiographs); a folder of several series of slices is refused naming them (DataError):
    one folder is one volume in every output, and which series to score is the user's choice."""
    files = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(files) < 2 or not all(p.is_file() and is_dicom(p) for p in files):
        return False
    pydicom = require("pydicom")
    try:
        headers = [read_dataset(p, stop_before_pixels=True) for p in files]
    except pydicom.errors.InvalidDicomError:
        return False  # reported as a bad file when read as single images
    placed = Counter(_series_uid(h) for h in headers if "ImagePositionPatient" in h)
    if max(placed.values(), default=0) < 2:
        return False  # images, not the slices of a volume
    check_one_series(folder, headers)
    return True


def _series_uid(header) -> str:
    return str(header.get("SeriesInstanceUID", "") or "no SeriesInstanceUID")


def check_one_series(folder: Path, headers: list) -> None:
    """Refuse (DataError, naming each series and its file count) a folder of several series."""
    counts = Counter(_series_uid(h) for h in headers)
    if len(counts) > 1:
        found = ", ".join(f"{uid} ({count} files)" for uid, count in sorted(counts.items()))
        raise DataError(
            f"{folder}: {len(counts)} DICOM series in one folder ({found}); give each series its own "
            f"folder (dcm2niix and most viewers export them so)"
        )


def read_dataset(path: str | Path, **options):
    """pydicom.dcmread from the file's bytes in memory: pydicom asks for each element's
    declared length, and a damaged length of up to 4 GiB would have Python allocate that much
    for a read from a file, where a read from memory takes what there is."""
    dataset = require("pydicom").dcmread(io.BytesIO(Path(path).read_bytes()), **options)
    dataset.filename = str(path)  # messages name the file, as after a read from it
    return dataset


def is_nifti(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values (e.g. HU) -> uint8: `low` and below black, `high` and above white."""
    scaled = (np.asarray(values, np.float32) - low) * np.float32(255 / (high - low))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def stretch(values: np.ndarray) -> np.ndarray:
    """Min-max to uint8, for images without an absolute intensity scale."""
    low, high = float(values.min()), float(values.max())
    return window(values, low, high) if high > low else np.zeros(values.shape, np.uint8)


def read_dicom(path: str | Path, hu_window: tuple[float, float] = DEFAULT_HU_WINDOW) -> np.ndarray:
    """A single-frame DICOM file -> uint8 H x W x C. CT goes to Hounsfield units (rescale
    slope and intercept) through `hu_window`; other modalities (CR, DX radiographs, ...)
    through their VOI LUT or window when they carry one, then min-max. MONOCHROME1 (white
    is low) is inverted."""
    pydicom = require("pydicom")
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = read_dataset(path)
    except pydicom.errors.InvalidDicomError:
        raise DataError("not a DICOM file") from None
    if "PixelData" not in dataset:
        raise DataError("DICOM file without pixel data")
    if int(dataset.get("NumberOfFrames", 1)) > 1:
        raise DataError("multi-frame DICOM (give its frames as a series folder of files)")
    pixels = bounded_pixels(dataset)
    if dataset.get("SamplesPerPixel", 1) == 3:
        return stretch(pixels) if pixels.dtype != np.uint8 else pixels
    with np.errstate(over="ignore", invalid="ignore"):  # what overflows is refused just below
        values = finite(apply_modality_lut(pixels, dataset), "pixels")
    if dataset.get("Modality") == "CT":
        grey = window(values, *hu_window)
    else:
        if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
            values = apply_voi_lut(values, dataset)
        grey = stretch(values)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 255 - grey
    return grey[..., None]


def bounded_pixels(dataset) -> np.ndarray:
    """A DICOM dataset's pixels, refused unread beyond the pixel limit on every other image:
    a compressed frame of a few bytes can decode to gigabytes."""
    count = int(dataset.get("Rows", 0)) * int(dataset.get("Columns", 0))
    if Image.MAX_IMAGE_PIXELS is not None and count > Image.MAX_IMAGE_PIXELS:
        raise DataError(
            f"{dataset.get('Columns')}x{dataset.get('Rows')} pixels, more than the limit of "
            f"{Image.MAX_IMAGE_PIXELS} (a decompression bomb?)"
        )
    return dataset.pixel_array


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where a volume's voxels lie, so that maps computed on its slices can be written back
    over the scan (in a viewer, voxel for voxel)."""

    affine: np.ndarray  # 4 x 4: voxel (i, j, k) of the stored grid -> RAS+ millimetres
    shape: tuple[int, int, int]  # the stored voxel grid

    @property
    def slice_shape(self) -> tuple[int, int, int]:
        """(Z, H, W) of the slices `read_scan` returns."""
        nibabel = require("nibabel")
        axes = nibabel.orientations.io_orientation(self.affine)[:, 0].astype(int)
        canonical = [0, 0, 0]
        for stored, ras in enumerate(axes):
            canonical[ras] = self.shape[stored]
        return canonical[2], canonical[1], canonical[0]

    @property
    def voxel_ml(self) -> float:
        return abs(float(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def read_volume(path: str | Path) -> np.ndarray:
    """A NIfTI file or a folder holding one DICOM series -> float32 Z x H x W (see top)."""
    return read_scan(path)[0]


def read_scan(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """A volume as float32 slices Z x H x W (see top) and its geometry."""
    path = Path(path)
    nibabel = require("nibabel")
    image = _dicom_series(path) if path.is_dir() else _nifti(path)
    if image.ndim == 4 and image.shape[3] == 1:
        image = image.slicer[..., 0]
    if image.ndim != 3:
        raise DataError(f"expected a 3-D volume, got shape {image.shape}")
    data = finite(nibabel.as_closest_canonical(image).get_fdata(dtype=np.float32), "voxels")
    # Canonical RAS+ voxel axes (x to the patient's right, y anterior, z superior) -> slices
    # [z, row, column] with row = anterior first and column = patient's right first.
    slices = np.flip(data, (0, 1)).transpose(2, 1, 0)
    return slices, Geometry(np.asarray(image.affine, float), tuple(image.shape))


def _nifti(path: Path):
    """A NIfTI file, refused when its header promises more voxels than the file can hold or
    memory takes: nibabel would allocate them all before finding the file short."""
    image = require("nibabel").load(path)
    voxels = math.prod(image.shape)
    stored = voxels * image.get_data_dtype().itemsize
    if stored > max_inflated(path) or voxels * FLOAT32 > physical_memory():
        raise DataError(
            f"header says {image.shape} voxels ({human_bytes(stored)}), more than the file can "
            f"hold or this machine's memory (truncated, or a damaged header?)"
        )
    return image


def finite(values: np.ndarray, what: str) -> np.ndarray:
    """`values`, refused when any is NaN or infinite: no intensity can stand in for them (a
    guess would move every value derived from the range, e.g. the 0..1 test of
    `volume_to_uint8`), so the user decides (docs/reliability.md)."""
    bad = values.size - int(np.count_nonzero(np.isfinite(values)))
    if bad:
        raise DataError(
            f"{bad} of {values.size} {what} are not finite numbers (NaN or infinity); "
            f"replace them, e.g. by the background value"
        )
    return values


def to_scan_grid(slices: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Slices Z x H x W in `read_scan`'s order -> an array on the scan's stored voxel grid
    (the inverse of `read_scan`: `geometry.affine` places it)."""
    orientations = require("nibabel").orientations
    ras = np.flip(slices.transpose(2, 1, 0), (0, 1))
    stored = orientations.io_orientation(geometry.affine)
    return orientations.apply_orientation(ras, orientations.ornt_transform(RAS, stored))


def _dicom_series(folder: Path):
    """A DICOM series folder as a NIfTI image in memory: pixels on the voxel grid (column,
    row, slice) and the affine from the series' position and orientation tags."""
    nibabel = require("nibabel")
    slices = read_dicom_series(folder)
    with np.errstate(over="ignore", invalid="ignore"):  # overflows are refused by `read_scan`
        pixels = np.stack([_values(s) for s in slices])
    return nibabel.Nifti1Image(pixels.transpose(2, 1, 0), series_affine(slices))


def _values(dataset) -> np.ndarray:
    """A slice's pixels through its modality LUT (e.g. to HU); a failure names its file."""
    from pydicom.pixels import apply_modality_lut

    try:
        return apply_modality_lut(bounded_pixels(dataset), dataset).astype(np.float32)
    except Exception as err:  # any decoder failure is a problem with that one file
        raise DataError(f"{Path(dataset.filename).name}: unreadable pixel data ({_reason(err)})") from None


def _reason(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:100]


def read_dicom_series(folder: Path, pixels: bool = True) -> list:
    """The datasets of a DICOM series folder sorted along the slice normal: the order of the
    slices (the last axis) of its voxel grid. Without `pixels`, their headers only. A file
    that cannot be read, has no pixel data or no position, or slices that do not lie at even
    steps (`check_even_steps`) are refused naming the file."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError("empty DICOM series folder")
    slices = []
    for file in files:
        try:
            dataset = read_dataset(file, stop_before_pixels=not pixels)
        except Exception as err:  # any decoder failure is a problem with that one file
            raise DataError(f"{file.name}: not a readable DICOM file ({_reason(err)})") from None
        if pixels and "PixelData" not in dataset:
            raise DataError(f"{file.name}: DICOM file without pixel data")
        if len(files) > 1 and "ImagePositionPatient" not in dataset:
            raise DataError(f"{file.name}: no ImagePositionPatient, so its place in the volume is unknown")
        slices.append(dataset)
    check_one_series(folder, slices)
    slices.sort(key=_slice_position)
    check_even_steps(slices)
    return slices


# Slices may lie this far (mm, or this share of the step if more) from an even grid: scanners
# round positions to about 1e-3 mm; one missing slice among 2.5 mm steps is 2.5 mm off.
POSITION_TOLERANCE_MM, POSITION_TOLERANCE_SHARE = 0.01, 0.05


def check_even_steps(slices: list) -> None:
    """Refuse (DataError, naming the first slice off the grid) slices that do not lie at one
    even step: a NIfTI affine holds one step, and any other would place maps beside their
    slices. dcm2niix and nibabel refuse or split such series too."""
    if len(slices) < 3:
        return
    positions = np.array([np.asarray(s.ImagePositionPatient, float) for s in slices])
    step = (positions[-1] - positions[0]) / (len(slices) - 1)
    off = np.linalg.norm(positions - (positions[0] + np.arange(len(slices))[:, None] * step), axis=1)
    worst = int(np.argmax(off))
    if off[worst] > max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_SHARE * float(np.linalg.norm(step))):
        gaps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
        raise DataError(
            f"{Path(slices[worst].filename).name}: uneven slice spacing (steps of "
            f"{float(gaps.min()):.4g} to {float(gaps.max()):.4g} mm): a map on an even grid would lie up "
            f"to {float(off[worst]):.3g} mm from its slices; resample the series to even steps "
            f"or fill the gap"
        )


def series_affine(slices: list) -> np.ndarray:
    """Voxel (column, row, slice) -> RAS+ mm for DICOM slices sorted along their normal (at
    even steps: `check_even_steps`). DICOM's patient axes are LPS (x to the left, y
    posterior), NIfTI's RAS: x and y flip. A single slice without a position lies at the origin,
    one slice thickness (default 1 mm) deep."""
    first = slices[0]
    orientation = np.asarray(first.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float)
    row_spacing, column_spacing = (float(v) for v in first.get("PixelSpacing", [1, 1]))
    along_row, along_column = orientation[:3], orientation[3:]
    normal = np.cross(along_row, along_column)
    positions = [s.get("ImagePositionPatient") for s in slices]
    if len(slices) > 1:
        step = (np.asarray(positions[-1], float) - np.asarray(positions[0], float)) / (len(slices) - 1)
        if np.linalg.norm(step) == 0:
            raise DataError("DICOM series with all slices at one position")
    else:
        step = normal * float(first.get("SliceThickness", 1) or 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = along_row * column_spacing, along_column * row_spacing, step
    lps[:3, 3] = np.asarray(positions[0] if positions[0] is not None else [0, 0, 0], float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _slice_position(dataset) -> float:
    """Position along the slice normal (DICOM's +z is superior), else the instance number."""
    if "ImagePositionPatient" in dataset and "ImageOrientationPatient" in dataset:
        orientation = np.asarray(dataset.ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        return float(normal @ np.asarray(dataset.ImagePositionPatient, float))
    return float(dataset.get("InstanceNumber", 0))


def is_grey_levels(volume: np.ndarray) -> bool:
    """Whether a CT volume holds grey levels rather than HU: all its values lie in 0..255
    (some public sets, e.g. the Radiopaedia cases of the COVID-19 CT segmentation set, were
    converted from JPEG); real HU volumes always hold air at about -1000."""
    return bool(volume.min() >= 0 and volume.max() <= 255)


def is_unit_range(volume: np.ndarray) -> bool:
    """Whether a volume holds intensities normalised to 0..1 (the MOOD challenge's brain MRI
    and abdominal CT): all its values lie in 0..1."""
    return bool(volume.min() >= 0 and volume.max() <= 1)


def volume_to_uint8(volume: np.ndarray, hu_window: tuple[float, float]) -> tuple[np.ndarray, bool]:
    """CT volume -> (uint8 volume, whether it was in HU); intensities in 0..1 (`is_unit_range`)
    are scaled to 0..255, grey levels (`is_grey_levels`) taken as they are."""
    if is_unit_range(volume):
        return window(volume, 0.0, 1.0), False
    if is_grey_levels(volume):
        return np.rint(volume).astype(np.uint8), False
    return window(volume, *hu_window), True
