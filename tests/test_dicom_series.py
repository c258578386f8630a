"""DICOM series as radiology tools read them (data/medical.py): one series per folder, slices
at their true positions or refused, and the file named on every slice that cannot be read."""

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("nibabel")
from pydicom.uid import generate_uid  # noqa: E402

from funetgan.config import DataConfig  # noqa: E402
from funetgan.data import DataError, load_unlabelled  # noqa: E402
from funetgan.data.medical import read_scan  # noqa: E402


def ct(slices: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 400, (slices, 6, 6)).astype(np.int16)


def edit(path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def load(folder):
    return load_unlabelled([str(folder)], 8, 1, DataConfig())


def test_two_interleaved_series_in_one_folder_are_refused_naming_both(tmp_path, write_ct_series):
    """The issue's probe: scored as 24 unrelated 2-D images before, with no word of why."""
    folder = write_ct_series(tmp_path / "both", ct(3))
    other = generate_uid()
    for path in sorted(write_ct_series(tmp_path / "second", ct(3, seed=1)).iterdir()):
        edit(path, lambda ds: setattr(ds, "SeriesInstanceUID", other))
        path.rename(folder / f"b{path.name}")
    uid = pydicom.dcmread(folder / "001.dcm").SeriesInstanceUID
    with pytest.raises(DataError) as caught:
        load(folder)
    assert str(caught.value) == (
        f"{folder}: 2 DICOM series in one folder ({min(uid, other)} (3 files), "
        f"{max(uid, other)} (3 files)); give each series its own folder (dcm2niix and "
        f"most viewers export them so)"
    )


def test_single_images_of_several_series_stay_images(tmp_path, write_ct_series):
    """Key images from several series (one slice each) are 2-D images, as radiographs are."""
    for name in ("a", "b"):
        write_ct_series(tmp_path / name, ct(1)).joinpath("001.dcm").rename(tmp_path / f"{name}.dcm")
        (tmp_path / name).rmdir()
    images = load(tmp_path)
    assert sorted(images.paths) == [str(tmp_path / "a.dcm"), str(tmp_path / "b.dcm")] and not images.volumes


@pytest.mark.parametrize(
    "change, problem",
    [
        (
            lambda ds: delattr(ds, "ImagePositionPatient"),
            "no ImagePositionPatient, so its place in the volume is unknown",
        ),
        (lambda ds: delattr(ds, "PixelData"), "DICOM file without pixel data"),
        (lambda ds: setattr(ds, "PixelData", b"\0" * 10), "unreadable pixel data (ValueError: "),
    ],
)
def test_a_bad_slice_is_named_by_its_file(tmp_path, change, problem, write_ct_series):
    """Before: no position made the series 24 2-D images; no pixel data named only the folder
    ("unreadable: AttributeError: The dataset has no 'Pixel Data'")."""
    folder = write_ct_series(tmp_path / "series", ct(4))
    edit(folder / "003.dcm", change)
    with pytest.raises(DataError) as caught:
        load(folder)
    message = str(caught.value)
    assert f"{folder} (003.dcm: {problem}" in message and "\n" not in message


def test_uneven_spacing_is_refused_naming_the_slice_and_the_gap(tmp_path, write_ct_series):
    """One 7.5 mm gap among 2.5 mm steps (z = 30 ... 40, 47.5 ... 52.5): the even grid of 22.5 / 7
    = 3.214 mm steps used before puts slice 4 at 42.86 mm, 2.86 mm from its 40."""
    folder = write_ct_series(tmp_path / "series", ct(8))
    for path in folder.iterdir():  # slices 5 to 7 two steps further up: one 7.5 mm gap
        edit(
            path,
            lambda ds: (
                ds.ImagePositionPatient[2] > 40
                and ds.ImagePositionPatient.__setitem__(2, float(ds.ImagePositionPatient[2]) + 5.0)
            ),
        )
    with pytest.raises(DataError) as caught:
        read_scan(folder)
    assert str(caught.value).startswith(
        "004.dcm: uneven slice spacing (steps of 2.5 to 7.5 mm): a map on an even "
        "grid would lie up to 2.86 mm from its slices"
    )


def test_positions_rounded_by_the_scanner_are_even_steps(tmp_path, write_ct_series):
    folder = write_ct_series(tmp_path / "series", ct(5))
    for k, path in enumerate(sorted(folder.iterdir())):
        jitter = 0.003 * (-1) ** k  # mm
        edit(
            path,
            lambda ds, jitter=jitter: ds.ImagePositionPatient.__setitem__(
                2, float(ds.ImagePositionPatient[2]) + jitter
            ),
        )
    slices, geometry = read_scan(folder)
    assert slices.shape[0] == 5 and abs(geometry.affine[2, 2]) == pytest.approx(2.5, abs=0.01)


def test_a_volume_folder_of_a_data_set_holding_two_series_is_refused_too(tmp_path, write_ct_series):
    """ct_scans/<case>/ folders are read as series without being looked for: the same check."""
    folder = write_ct_series(tmp_path / "case", ct(3))
    edit(folder / "002.dcm", lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.3"))
    with pytest.raises(DataError, match=r"case: 2 DICOM series in one folder \(1.2.3 \(1 files\), "):
        read_scan(folder)
