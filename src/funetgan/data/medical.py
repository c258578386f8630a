"""DICOM and NIfTI readers and CT intensity windowing.

nibabel and pydicom are the optional `medical` extra, imported only when such a file is read.
Volumes come out as axial slices, Z x H x W (inferior to superior), shown the radiological
way: anterior at the top, the patient's right on the image's left.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from .base import DataError
from .checks import MissingDependency

DEFAULT_HU_WINDOW = (-1000.0, 400.0)  # lung window, as DataConfig.hu_window
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def require(package: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingDependency(f"reading this data needs {package}: "
                                f"pip install funetgan[medical]") from None


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
        dataset = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        raise DataError("not a DICOM file") from None
    if "PixelData" not in dataset:
        raise DataError("DICOM file without pixel data")
    if int(dataset.get("NumberOfFrames", 1)) > 1:
        raise DataError("multi-frame DICOM (give its frames as a series folder of files)")
    pixels = dataset.pixel_array
    if dataset.get("SamplesPerPixel", 1) == 3:
        return stretch(pixels) if pixels.dtype != np.uint8 else pixels
    values = apply_modality_lut(pixels, dataset)
    if dataset.get("Modality") == "CT":
        grey = window(values, *hu_window)
    else:
        if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
            values = apply_voi_lut(values, dataset)
        grey = stretch(values)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 255 - grey
    return grey[..., None]


def read_volume(path: str | Path) -> np.ndarray:
    """A NIfTI file or a folder holding one DICOM series -> float32 Z x H x W (see top)."""
    path = Path(path)
    if path.is_dir():
        return _read_dicom_series(path)
    nibabel = require("nibabel")
    image = nibabel.as_closest_canonical(nibabel.load(path))
    data = image.get_fdata(dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"expected a 3-D volume, got shape {data.shape}")
    # Canonical RAS+ voxel axes (x to the patient's right, y anterior, z superior) -> slices
    # [z, row, column] with row = anterior first and column = patient's right first.
    return np.flip(data, (0, 1)).transpose(2, 1, 0)


def _read_dicom_series(folder: Path) -> np.ndarray:
    pydicom = require("pydicom")
    from pydicom.pixels import apply_modality_lut

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError("empty DICOM series folder")
    slices = sorted((pydicom.dcmread(file) for file in files), key=_slice_position)
    return np.stack([apply_modality_lut(s.pixel_array, s).astype(np.float32) for s in slices])


def _slice_position(dataset) -> float:
    """Position along the slice normal (DICOM's +z is superior), else the instance number."""
    if "ImagePositionPatient" in dataset and "ImageOrientationPatient" in dataset:
        orientation = np.asarray(dataset.ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        return float(normal @ np.asarray(dataset.ImagePositionPatient, float))
    return float(dataset.get("InstanceNumber", 0))


def volume_to_uint8(volume: np.ndarray, hu_window: tuple[float, float]) -> tuple[np.ndarray, bool]:
    """CT volume -> (uint8 volume, whether it was in HU). Volumes whose values all lie in
    0..255 are taken as grey levels already (some public sets, e.g. the Radiopaedia cases of
    the COVID-19 CT segmentation set, were converted from JPEG): real HU volumes always
    hold air at about -1000."""
    if volume.min() >= 0 and volume.max() <= 255:
        return np.rint(volume).astype(np.uint8), False
    return window(volume, *hu_window), True
