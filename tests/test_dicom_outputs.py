"""DICOM SEG and Parametric Map outputs (dicom_outputs.py), read back with pydicom and
checked by dicom3tools' dciodvfy, on a real CT series (pydicom's test files) and generated ones."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
pytest.importorskip("nibabel")
from pydicom.pixels import apply_modality_lut  # noqa: E402

from funetgan import __version__  # noqa: E402
from funetgan.data import DataError  # noqa: E402
from funetgan.data.medical import read_scan, to_scan_grid  # noqa: E402
from funetgan.medical.dicom_outputs import write_dicom_outputs  # noqa: E402


def write_the_scan_as_its_map(series: Path, out: Path, threshold: float) -> tuple[Path, Path]:
    """The scan's own HU values written as the anomaly map (and the map at or above `threshold`
    as the mask): each frame must then equal its source slice, whatever the series' geometry."""
    slices, geometry = read_scan(series)
    grid = to_scan_grid(slices, geometry)
    seg, pm = write_dicom_outputs(out, "scan", series, grid, grid >= threshold, threshold)
    return seg, pm


@pytest.mark.parametrize(
    "series",
    [
        lambda tmp, real_series, _: real_series(tmp / "real"),
        # rows running to the patient's right, columns tilted, slices descending: every axis of the grid flips
        lambda tmp, _, write_ct_series: write_ct_series(
            tmp / "oblique",
            np.random.default_rng(0).integers(-1000, 400, (4, 6, 5)),
            row_direction=(-1, 0, 0),
            column_direction=(0, 0.96, -0.28),
            step=(0, 0.28, -3.0),
        ),
    ],
    ids=["real CT series", "generated oblique series"],
)
def test_frames_line_up_with_the_source_slices(tmp_path, series, frames_by_source, real_series, write_ct_series):
    folder = series(tmp_path, real_series, write_ct_series)
    seg, pm = write_the_scan_as_its_map(folder, tmp_path / "out", threshold=0.0)
    sources = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    for name in (seg, pm):
        frames = frames_by_source(name)
        assert len(frames) == len(sources)  # one frame per source slice
        for source in sources:
            frame, position = frames[source.SOPInstanceUID]
            np.testing.assert_allclose(position, [float(v) for v in source.ImagePositionPatient], atol=1e-4)
            hu = apply_modality_lut(source.pixel_array, source)
            np.testing.assert_array_equal(frame, hu if name == pm else hu >= 0)


def test_objects_reference_the_source_and_name_the_algorithm(tmp_path, real_series):
    folder = real_series(tmp_path / "real")
    seg, pm = write_the_scan_as_its_map(folder, tmp_path / "out", threshold=-500.0)
    source = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    for path in (seg, pm):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        (referenced,) = ds.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
        assert len(referenced.ReferencedInstanceSequence) == 5
        assert (ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions) == (
            "funetgan",
            "F-UNetGAN",
            __version__,
        )
    segment = pydicom.dcmread(seg).SegmentSequence[0]
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentLabel == "anomaly"
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("funetgan", __version__)
    assert pydicom.dcmread(pm).SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0].WindowCenter == -500


def with_tags(folder: Path, **tags) -> Path:
    """`folder`'s series with `tags` set on every slice."""
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(path)
    return folder


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
@pytest.mark.parametrize(
    "tags",
    [{}, {"Laterality": ""}, {"Laterality": "R", "BodyPartExamined": "BREAST"}],
    ids=["as written", "empty Laterality", "right breast"],
)
def test_dciodvfy_finds_no_errors(tmp_path, real_series, write_ct_series, tags):
    """Also where the source's own attributes would break a SEG if copied (an empty Laterality:
    "present when condition unsatisfied")."""
    for folder in (
        with_tags(real_series(tmp_path / "real"), **tags),
        with_tags(write_ct_series(tmp_path / "generated", np.full((3, 4, 4), -1000, np.int16)), **tags),
    ):
        for path in write_the_scan_as_its_map(folder, tmp_path / folder.name, threshold=-500.0):
            report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
            assert not errors, f"{path.name}: {errors}"


def test_a_series_without_what_a_seg_must_reference_is_one_line(tmp_path, write_ct_series):
    folder = write_ct_series(tmp_path / "series", np.zeros((2, 4, 4), np.int16))
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    with pytest.raises(DataError, match=r"series: cannot write DICOM outputs for this series \(") as caught:
        write_the_scan_as_its_map(folder, tmp_path / "out", threshold=0.0)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_missing_highdicom_is_named_before_any_volume_is_scored(tmp_path, monkeypatch):
    from funetgan.errors import MissingExtra
    from funetgan.medical import dicom_outputs

    def no_module(name):
        raise ImportError(name)

    monkeypatch.setattr(dicom_outputs.importlib, "import_module", no_module)
    nifti_only = [str(tmp_path / "scan.nii.gz")]
    assert dicom_outputs.check_outputs_possible(nifti_only) is None  # NIfTI volumes need no highdicom
    with pytest.raises(MissingExtra, match=r"need highdicom: pip install funetgan\[medical\]"):
        dicom_outputs.check_outputs_possible([*nifti_only, str(tmp_path)])  # a folder: a DICOM series
