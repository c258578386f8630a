"""`funetgan train` + `test` end to end on each kind of source, on tiny files in their real
layouts: IDX one-class, lung CT NIfTI volumes, a generic folder of DICOM files; each with
whole images and with patch training / tiled scoring at a working resolution of 64 px."""
import json

import numpy as np
import pytest
from PIL import Image

from funetgan.cli import main
from test_cli import TINY
from test_data_idx import write_idx

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
from test_data_medical import ct_dataset, write_dicom  # noqa: E402


WORKING = pytest.mark.parametrize("working", [[], ["--set", "data.resolution=64"]], ids=["whole", "patches"])


def train_and_test(data, tmp_path, *extra):
    run, out = tmp_path / "run", tmp_path / "out"
    assert main(["train", "--data", str(data), "--out", str(run), *TINY, *extra]) == 0
    assert main(["test", "--run", str(run), "--data", str(data), "--out", str(out), "--outputs", "all"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    masks = list((out / "masks").rglob("*.png"))
    assert masks
    for mask in masks:
        with Image.open(mask) as image:
            assert max(image.size) <= 28  # at each image's original size, whatever the working one
    return metrics


@WORKING
def test_idx_one_class(tmp_path, working):
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2] * 8, np.uint8)
    data = tmp_path / "idx"  # apart from the run and results: an output inside an input is refused
    data.mkdir()
    for split in ("train", "t10k"):
        write_idx(data / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (24, 28, 28), dtype=np.uint8))
        write_idx(data / f"{split}-labels-idx1-ubyte", labels)
    metrics = train_and_test(data, tmp_path / "work", "--normal-class", "1", *working)
    assert metrics["image"]["n_normal"] == 8 and metrics["image"]["n_anomalous"] == 16
    assert "pixel" not in metrics


@WORKING
def test_lung_ct_nifti(tmp_path, working):
    data = ct_dataset(tmp_path / "ct", volumes=6, slices=10, lesion_from=5)
    metrics = train_and_test(data, tmp_path, *working)
    assert metrics["pixel"]["auroc"] is not None  # lesion masks are the pixel truth
    assert metrics["image"]["n_normal"] > 0 and metrics["image"]["n_anomalous"] > 0


@WORKING
def test_dicom_generic_folder(tmp_path, working):
    rng = np.random.default_rng(0)
    data = tmp_path / "dicom"

    def slice_hu(lesion: bool) -> np.ndarray:
        hu = rng.normal(-700, 60, (16, 16)).astype(np.int16)
        if lesion:
            hu[4:9, 4:9] = 50
        return hu

    for i in range(14):
        write_dicom(data / "train" / f"n{i}.dcm", slice_hu(False))
    for i in range(3):
        write_dicom(data / "test" / "good" / f"g{i}.dcm", slice_hu(False))
        write_dicom(data / "test" / "lesion" / f"a{i}.dcm", slice_hu(True))
        mask = np.zeros((16, 16), np.uint8)
        mask[4:9, 4:9] = 255
        (data / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(data / "masks" / f"a{i}.png")
    metrics = train_and_test(data, tmp_path, *working)
    assert metrics["image"]["n_anomalous"] == 3 and metrics["pixel"]["auroc"] is not None
    assert set(metrics["per_kind"]) == {"lesion"}
