"""What the tests share, as fixtures (a test file never imports another): one tiny
configuration (`tiny_config`, and `tiny_args` for the command line), generated images, one
tiny model and one tiny command-line run trained once per session, and the writers of
image, mask, IDX, NIfTI and DICOM files. Fixtures that return a helper are session-scoped,
so module-scoped fixtures can use them."""

import gzip
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from funetgan.cli import main
from funetgan.config import Config
from funetgan.data.base import ImageSet
from funetgan.data.demo import make_texture_dataset


@pytest.fixture(autouse=True)
def _single_thread():
    # Tests run beside other work on 2 cores; one thread is faster there and deterministic.
    torch.set_num_threads(1)


def _tiny_config(**overrides) -> Config:
    """32x32 grey, width 4: networks small enough for millisecond steps; `section__name=value`
    overrides (`gan__n_critic=1`), a bare name a top-level setting."""
    cfg = Config()
    cfg.model.image_size, cfg.model.channels, cfg.model.width, cfg.model.z_dim = 32, 1, 4, 16
    cfg.batch_size, cfg.gan.n_critic = 4, 2
    cfg.gan.iterations, cfg.encoder.iterations = 3, 3
    cfg.log_every = cfg.checkpoint_every = 1
    cfg.device = "cpu"
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        setattr(getattr(cfg, section) if name else cfg, name or section, value)
    return cfg.validate()


def _random_images(n: int, size: int = 32, channels: int = 1, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = (rng.random((n, size, size, channels)) * 255).astype(np.uint8)
    return ImageSet(
        images, np.zeros(n, np.int64), [f"img{i}.png" for i in range(n)], ["good"] * n, np.full((n, 2), size)
    )


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Config]:
    return _tiny_config


@pytest.fixture(scope="session")
def random_images() -> Callable[..., ImageSet]:
    """`random_images(n, size=32, channels=1, seed=0)`: uniform noise images labelled normal."""
    return _random_images


@pytest.fixture(scope="session")
def tiny_args() -> list[str]:
    """The command line's settings of `tiny_config`'s networks, with 2 + 2 training steps."""
    return [
        "--set",
        "model.image_size=32",
        "--set",
        "model.width=4",
        "--set",
        "model.z_dim=16",
        "--set",
        "batch_size=4",
        "--set",
        "gan.iterations=2",
        "--set",
        "gan.n_critic=1",
        "--set",
        "encoder.iterations=2",
        "--device",
        "cpu",
    ]


@pytest.fixture(scope="session")
def texture_dataset(tmp_path_factory) -> Path:
    """A small MVTec-AD-layout brick set: 12 training crops, 3 good and 5 anomalous test crops."""
    root = tmp_path_factory.mktemp("data")
    return make_texture_dataset(root / "brick", crop=64, n_train=12, n_test_good=3, n_per_defect=1)


@pytest.fixture(scope="session")
def tiny_run(texture_dataset, tiny_args, tmp_path_factory) -> Path:
    """A run folder trained once per session through the command line on `texture_dataset`.
    Tests read it; one that rewrites it works on a copy."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", str(texture_dataset), "--out", str(out), *tiny_args]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_model():
    """`tiny_config()`'s model fitted once per session on `random_images(12)`. Tests score or
    save it and must not change it."""
    from funetgan.model import FUNetGAN

    torch.set_num_threads(1)
    return FUNetGAN(_tiny_config()).fit(_random_images(12))


def _save_image(path: Path, value, size=(16, 16), mode="L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size[::-1], value).save(path)
    return path


def _save_mask(path: Path, box, size=(16, 16)) -> None:
    mask = np.zeros(size, np.uint8)
    mask[box] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


@pytest.fixture(scope="session")
def save_image() -> Callable[..., Path]:
    """`save_image(path, value, size=(16, 16), mode="L")`: a constant image file."""
    return _save_image


@pytest.fixture(scope="session")
def save_mask() -> Callable[..., None]:
    """`save_mask(path, box, size=(16, 16))`: a mask file, 255 inside `box` (a slice pair)."""
    return _save_mask


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if compress else open)(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def write_idx() -> Callable[..., None]:
    """`write_idx(path, array, compress=False)`: an IDX file of unsigned bytes (MNIST's format)."""
    return _write_idx


def _save_nifti(path: Path, data: np.ndarray, affine=None) -> None:
    import nibabel

    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.Nifti1Image(data, np.eye(4) if affine is None else affine).to_filename(path)


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    modality="CT",
    slope=1.0,
    intercept=0.0,
    photometric="MONOCHROME2",
    window=None,
    z=None,
) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if z is not None:
        ds.ImagePositionPatient = [0, 0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _ct_dataset(root: Path, volumes=4, slices=4, lesion_from=2) -> Path:
    """Volumes of `slices` 8 x 8 slices in HU: air (-1000) with a 400 HU block; a lesion in
    the slices from `lesion_from` on, in the top-left 4 x 4."""
    for v in range(volumes):
        scan = np.full((8, 8, slices), -1000, np.int16)
        scan[2:6, 2:6] = 400
        lesion = np.zeros((8, 8, slices), np.uint8)
        lesion[4:, 4:, lesion_from:] = 1  # display top-left = high x and y (see orientation test)
        _save_nifti(root / "ct_scans" / f"case{v}.nii.gz", scan)
        _save_nifti(root / "infection_mask" / f"case{v}.nii.gz", lesion)
    return root


@pytest.fixture(scope="session")
def save_nifti() -> Callable[..., None]:
    """`save_nifti(path, data, affine=None)`: a NIfTI file (needs nibabel)."""
    pytest.importorskip("nibabel")
    return _save_nifti


@pytest.fixture(scope="session")
def write_dicom() -> Callable[..., Path]:
    """`write_dicom(path, pixels, modality="CT", slope, intercept, photometric, window, z)`: a
    single-frame DICOM file (needs pydicom)."""
    pytest.importorskip("pydicom")
    return _write_dicom


@pytest.fixture(scope="session")
def ct_dataset() -> Callable[..., Path]:
    """`ct_dataset(root, volumes=4, slices=4, lesion_from=2)`: ct_scans/ + infection_mask/
    NIfTI volumes (needs nibabel)."""
    pytest.importorskip("nibabel")
    return _ct_dataset


# pydicom's test files: 5 axial CT slices of 16 x 16, z decreasing with the file names.
REAL_SERIES = "dicomdirtests/98892001/CT5N"


def _real_series(folder: Path) -> Path:
    """A copy of a real CT series from pydicom's test files."""
    import pydicom.data

    source = Path(pydicom.data.get_testdata_file(f"{REAL_SERIES}/2062")).parent
    return Path(shutil.copytree(source, folder))


def _frames_by_source(path: Path) -> dict[str, tuple[np.ndarray, list[float]]]:
    """A multi-frame DICOM object's frames by the source instance each references, with the
    frame's position."""
    import pydicom

    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    found = {}
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        found[uid] = (frame, [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
    return found


@pytest.fixture(scope="session")
def real_series() -> Callable[[Path], Path]:
    """`real_series(folder)`: a copy of a real 5-slice CT series (pydicom's test files)."""
    pytest.importorskip("pydicom")
    return _real_series


@pytest.fixture(scope="session")
def frames_by_source() -> Callable[[Path], dict[str, tuple[np.ndarray, list[float]]]]:
    """`frames_by_source(path)`: a SEG's or Parametric Map's frames by referenced source instance."""
    pytest.importorskip("pydicom")
    return _frames_by_source


@pytest.fixture
def tmpfs():
    """`tmpfs(folder, options)` mounts a tmpfs with `options` ("size=64k", "ro") on a new
    `folder` until the test ends; skips the test where mounting is not allowed (needs root)."""
    mounted = []

    def mount(folder, options: str):
        folder.mkdir(parents=True)
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
        ).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _tilted_affine() -> np.ndarray:
    """x flipped, 0.8 x 1.1 x 2.5 mm, turned 10 degrees about z, away from the origin."""
    turn = np.deg2rad(10)
    rotation = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.8, 1.1, 2.5])
    affine[:3, 3] = [40, -30, 12]
    return affine


def _mood_region(root: Path, train=4, toy=3, seed=0):
    """brain_train/: `train` volumes of 8 x 10 x 6 voxels in 0..1 (a 0.5 block with noise on
    0); toy/: `toy` more, the first with a bright 0.95 cube in slices 3 and 4, and its voxel
    labels in toy_label/pixel/."""
    rng = np.random.default_rng(seed)
    for folder, count in (("brain_train", train), ("toy", toy)):
        for i in range(count):
            volume = np.zeros((8, 10, 6), np.float32)
            volume[1:7, 1:9] = 0.5 + rng.normal(0, 0.05, (6, 8, 6))
            label = np.zeros(volume.shape, np.uint8)
            if folder == "toy" and i == 0:
                volume[2:5, 3:6, 3:5], label[2:5, 3:6, 3:5] = 0.95, 1
            _save_nifti(root / folder / f"{i:05d}.nii.gz", volume.clip(0, 1), _tilted_affine())
            if folder == "toy":
                _save_nifti(root / "toy_label/pixel" / f"{i:05d}.nii.gz", label, _tilted_affine())
    return root


@pytest.fixture(scope="session")
def mood_region() -> Callable[..., Path]:
    """`mood_region(root, train=4, toy=3, seed=0)`: a MOOD-layout folder of small 0..1 volumes
    with a tilted affine (brain_train/, toy/ with one bright cube, toy_label/pixel/)."""
    pytest.importorskip("nibabel")
    return _mood_region


def _write_ct_series(
    folder: Path,
    hu: np.ndarray,
    row_direction=(1, 0, 0),
    column_direction=(0, 1, 0),
    step=(0, 0, 2.5),
    origin=(-10.0, -20.0, 30.0),
    spacing=(0.7, 0.8),
) -> Path:
    """A CT series of `hu` (slices x rows x columns, int16) with the patient and study
    attributes a scanner writes; file names run against the slice order."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k, pixels in enumerate(hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{len(hu) - k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P1", "19700101", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20260101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "A1", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series, 3, "CT"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.Manufacturer, ds.InstanceNumber, ds.ImageType = "test", k + 1, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(o + k * s) for o, s in zip(origin, step)]
        ds.ImageOrientationPatient = [float(v) for v in (*row_direction, *column_direction)]
        ds.PixelSpacing, ds.SliceThickness = list(spacing), float(np.linalg.norm(step))
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "HU"
        ds.KVP, ds.AcquisitionNumber = 120, 1
        ds.PixelData = np.ascontiguousarray(pixels, np.int16).tobytes()
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{len(hu) - k:03d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture(scope="session")
def write_ct_series() -> Callable[..., Path]:
    """`write_ct_series(folder, hu, row_direction, column_direction, step, origin, spacing)`: a CT
    DICOM series with a scanner's patient and study attributes (needs pydicom)."""
    pytest.importorskip("pydicom")
    return _write_ct_series
