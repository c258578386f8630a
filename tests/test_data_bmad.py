"""The BMAD layout (data/bmad.py): its splits, pixel- and image-level sets, broken layouts,
and a run through the command line that calibrates on valid/ only."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from funetgan.cli import main
from funetgan.config import DataConfig
from funetgan.data import DataError, load_dataset
from funetgan.model import FUNetGAN


def bmad_dataset(save_image, save_mask, root, pixel=True, train=8):
    """train/good: `train` grey images; valid/ and test/: 2 good and 2 Ungood each, the
    Ungood with a bright top-left quarter and, with `pixel`, its mask in label/."""
    for i in range(train):
        save_image(root / "train/good" / f"{i}.png", 100 + i)
    for split in ("valid", "test"):
        for i in range(2):
            good = root / split / "good" / ("img" if pixel else "") / f"g{i}.png"
            save_image(good, 100 + i)
            image = np.full((16, 16), 100, np.uint8)
            image[:8, :8] = 255
            Image.fromarray(image).save(save_image(root / split / "Ungood" / ("img" if pixel else "") / f"u{i}.png", 0))
            if pixel:
                save_mask(root / split / "Ungood/label" / f"u{i}.png", np.s_[:8, :8])
    return root


def test_pixel_level_set_has_a_labelled_validation_split_with_masks(tmp_path, save_image, save_mask):
    splits = load_dataset(bmad_dataset(save_image, save_mask, tmp_path), 8, 1)
    assert len(splits.train) == 8 and set(splits.train.labels) == {0} and splits.train.masks is None
    for images in (splits.val, splits.test):
        assert images.labels.tolist() == [0, 0, 1, 1] and images.kinds == ["good", "good", "Ungood", "Ungood"]
        assert images.has_mask.all()
        assert not images.masks[:2].any()  # good: empty truth
        assert images.masks[2:, :4, :4].all() and not images.masks[2:, 4:].any()  # the 16 px mask at 8 px
    assert all("/valid/" in path for path in splits.val.paths)
    assert all("/test/" in path for path in splits.test.paths)


def test_image_level_set_has_no_masks(tmp_path, save_image, save_mask):
    splits = load_dataset(bmad_dataset(save_image, save_mask, tmp_path, pixel=False), 8, 1)
    assert splits.val.labels.tolist() == [0, 0, 1, 1] and splits.val.masks is None and splits.test.masks is None


def test_training_images_may_sit_in_an_img_folder(tmp_path, save_image, save_mask):
    root = bmad_dataset(save_image, save_mask, tmp_path)
    (root / "train/good").rename(tmp_path / "moved")
    (root / "train/good").mkdir()
    (tmp_path / "moved").rename(root / "train/good/img")
    assert len(load_dataset(root, 8, 1).train) == 8


def test_a_category_of_a_bmad_root_is_found_like_an_mvtec_category(tmp_path, save_image, save_mask):
    bmad_dataset(save_image, save_mask, tmp_path / "Brain")
    splits = load_dataset(tmp_path, 8, 1, DataConfig(category="Brain"))
    assert len(splits.val) == 4


def broken(save_image, save_mask, root, change) -> None:
    bmad_dataset(save_image, save_mask, root)
    change(root, save_image)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda r, save: (r / "valid/sick").mkdir(),
            r"valid: expected folders good/ and Ungood/, found Ungood, good, sick",
        ),
        (lambda r, save: shutil.rmtree(r / "test/good"), r"test: expected folders good/ and Ungood/, found Ungood$"),
        (
            lambda r, save: save(r / "valid/Ungood/u9.png", 1),
            r"valid/Ungood: images both in img/ and beside it \(u9.png\)",
        ),
        (lambda r, save: shutil.rmtree(r / "test/Ungood/img"), r"test/Ungood: a label/ folder without an img/ folder"),
        (
            lambda r, save: (r / "valid/Ungood/label/u1.png").unlink(),
            r"valid/Ungood/img/u1.png \(no mask in Ungood/label/\)",
        ),
        (
            lambda r, save: save(r / "test/Ungood/label/u7.png", 0),
            r"test/Ungood/label/u7.png \(mask without an image\)",
        ),
        (
            lambda r, save: save(r / "valid/Ungood/label/u0.png", 0, size=(4, 4)),
            r"u0.png \(its mask u0.png is 4x4, the image 16x16\)",
        ),
    ],
)
def test_a_broken_layout_is_one_line_naming_the_file(tmp_path, change, message, save_image, save_mask):
    broken(save_image, save_mask, tmp_path, change)
    with pytest.raises(DataError, match=message) as caught:
        load_dataset(tmp_path, 8, 1)
    assert "\n" not in str(caught.value)


def test_a_set_without_valid_is_refused_rather_than_read_as_an_mvtec_category(tmp_path, save_image, save_mask):
    root = bmad_dataset(save_image, save_mask, tmp_path)
    shutil.rmtree(root / "valid")
    with pytest.raises(DataError, match=r"valid: missing folder \(BMAD: \{train,valid,test\}/\{good,Ungood\}/\)"):
        load_dataset(root, 8, 1)


def test_train_calibrates_on_valid_and_test_scores_test(tmp_path, capsys, tiny_args, save_image, save_mask):
    data, run, results = bmad_dataset(save_image, save_mask, tmp_path / "data"), tmp_path / "run", tmp_path / "results"
    assert main(["train", "--data", str(data), "--out", str(run), *tiny_args]) == 0
    assert "(f1-optimal, 2 calibration normals)" in capsys.readouterr().out
    calibration = FUNetGAN.load(run).calibration
    assert (calibration.normals, calibration.anomalous, calibration.rule) == (2, 2, "f1-optimal")  # valid/, never test/
    assert main(["test", "--run", str(run), "--data", str(data), "--out", str(results)]) == 0
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["image"]["n_normal"] == 2 and metrics["image"]["n_anomalous"] == 2
    assert set(metrics["per_kind"]) == {"Ungood"} and metrics["pixel"]["auroc"] is not None
