"""Values checked where they enter (issue 35, items 2 and 4): NaN or infinite voxels and pixels
are refused in one line naming the file and the count, and headers promising more than their
file can hold (or memory take) are refused before anything is allocated."""

import gzip
import resource
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from funetgan.config import DataConfig
from funetgan.data import DataError, load_unlabelled, read_image
from funetgan.data.medical import read_volume, volume_to_uint8

nibabel = pytest.importorskip("nibabel")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load(path):
    return load_unlabelled([str(path)], 32, 1, DataConfig())


def test_a_unit_range_volume_with_nan_voxels_is_refused_naming_the_file_and_count(tmp_path, save_nifti):
    """The issue's MOOD case: with 9 NaN voxels a 0..1 volume was no longer recognised as 0..1,
    was windowed as CT in HU, and its case score jumped from 0 to 0.964."""
    volume = np.random.default_rng(0).random((16, 16, 4)).astype(np.float32)
    grey, in_hu = volume_to_uint8(volume, (-1000.0, 400.0))
    assert not in_hu  # 0..1 without NaNs
    volume.flat[[3, 50, 100, 200, 300, 400, 500, 600, 700]] = np.nan
    save_nifti(tmp_path / "case.nii.gz", volume)
    with pytest.raises(DataError, match=r"case.nii.gz \(9 of 1024 voxels are not finite numbers \(NaN or infinity\)"):
        _load(tmp_path / "case.nii.gz")


def test_infinite_voxels_are_refused_too(tmp_path, save_nifti):
    volume = np.zeros((8, 8, 2), np.float32)
    volume[1, 2, 1] = -np.inf
    save_nifti(tmp_path / "scan.nii", volume)
    with pytest.raises(DataError, match="1 of 128 voxels are not finite"):
        read_volume(tmp_path / "scan.nii")


def test_a_float_tiff_with_nan_pixels_is_refused(tmp_path):
    pixels = np.full((8, 8), 0.5, np.float32)
    pixels[0, :3] = np.nan
    Image.fromarray(pixels, mode="F").save(tmp_path / "slice.tif")
    with pytest.raises(DataError, match=r"slice.tif \(3 of 64 pixels are not finite"):
        _load(tmp_path / "slice.tif")
    pixels[0, :3] = 0.25
    Image.fromarray(pixels, mode="F").save(tmp_path / "slice.tif")
    assert read_image(tmp_path / "slice.tif").shape == (8, 8, 1)


def test_a_dicom_whose_rescale_overflows_is_refused(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "ct.dcm", np.full((4, 4), 30000, np.int16), slope="1e308")
    with pytest.raises(DataError, match=r"ct.dcm \(16 of 16 pixels are not finite"):
        _load(path)


def test_a_dicom_header_of_more_pixels_than_any_image_is_refused_unread(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "big.dcm", np.zeros((2, 2), np.int16))
    import pydicom

    dataset = pydicom.dcmread(path)
    dataset.Rows = dataset.Columns = 60000
    dataset.save_as(path)
    with pytest.raises(DataError, match=r"big.dcm \(60000x60000 pixels, more than the limit"):
        _load(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_nifti_header_promising_more_than_its_file_is_refused_unread(tmp_path, suffix):
    """nibabel allocates the header's shape before it finds the data short: 2000^3 voxels of a
    few hundred bytes' file would take 32 GB as float32."""
    header = nibabel.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)).header
    header.set_data_shape((2000, 2000, 2000))
    header["vox_offset"] = 352
    path = tmp_path / f"bomb{suffix}"
    data = header.binaryblock + bytes(4) + bytes(16)
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    before = _peak_mb()
    with pytest.raises(DataError, match=r"header says \(2000, 2000, 2000\) voxels \(14.9 GiB\), more than the file"):
        read_volume(path)
    assert _peak_mb() - before < 50


def test_a_dicom_element_length_beyond_the_file_allocates_nothing(tmp_path, write_dicom):
    """pydicom reads each element's declared length; from a file, Python allocates that much
    first: a 1 kB slice claiming 3.75 GiB of pixel data took 3.75 GiB (found by test_fuzz)."""
    path = write_dicom(tmp_path / "slice.dcm", np.zeros((16, 16), np.int16))
    data = path.read_bytes()
    start = data.index(b"\xe0\x7f\x10\x00OW") + 8  # pixel data: tag, VR, 2 reserved bytes, then its length
    path.write_bytes(data[:start] + b"\x00\x02\x00\xf0" + data[start + 4 :])
    tracemalloc.start()
    try:
        _load(path)
    except DataError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 50 << 20


def test_a_png_chunk_length_beyond_the_file_allocates_nothing(tmp_path):
    """PIL reads a PNG's last image-data chunk by its declared length; from a file Python
    allocated that much first: 256 MiB for a 700-byte file (found by test_fuzz's deep profile)."""
    path = tmp_path / "slice.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24), np.uint8)).save(path)
    data = path.read_bytes()
    start = data.index(b"IDAT") - 4  # the chunk's length field
    path.write_bytes(data[:start] + (0x10000263).to_bytes(4, "big") + data[start + 4 :])
    tracemalloc.start()
    try:
        _load(path)
    except DataError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 50 << 20
