"""MVTec AD and generic folders, bad input, load_unlabelled and fit_batch."""

import re
import warnings

import numpy as np
import pytest
from PIL import Image

from funetgan.config import DataConfig
from funetgan.data import DataError, fit_batch, load_dataset, load_unlabelled, mvtec_categories
from funetgan.scoring.calibration import calibration_split


def mvtec_category(save_image, save_mask, root, train=3):
    for i in range(train):
        save_image(root / "train/good" / f"{i:03d}.png", (100 + 10 * i, 0, 0), mode="RGB")
    save_image(root / "test/good/000.png", (50, 0, 0), mode="RGB")
    save_image(root / "test/crack/000.png", (200, 0, 0), mode="RGB")
    save_image(root / "test/crack/001.png", (210, 0, 0), mode="RGB")
    save_image(root / "test/hole/000.png", (220, 0, 0), mode="RGB")
    save_mask(root / "ground_truth/crack/000_mask.png", np.s_[:8, :8])
    save_mask(root / "ground_truth/hole/000_mask.png", np.s_[8:, 8:])
    return root


def generic(save_image, save_mask, root, masks="masks"):
    for i in range(4):
        save_image(root / "train" / f"n{i}.png", 100)
    save_image(root / "test/normal/t0.png", 90)
    save_image(root / "test/abnormal/t1.png", 250)
    save_image(root / "test/scratch/t2.png", 240)
    save_mask(root / masks / "t1.png", np.s_[:4, :])
    save_mask(root / masks / "t2_mask.png", np.s_[:, :2])
    return root


def test_mvtec_category(tmp_path, save_image, save_mask):
    splits = load_dataset(mvtec_category(save_image, save_mask, tmp_path / "bottle"), 8, 1)
    train, test = splits.train, splits.test
    assert splits.val is None and train.masks is None
    assert len(train) == 3 and set(train.labels) == {0} and train.kinds == ["good"] * 3
    np.testing.assert_array_equal(train.images[:, 0, 0, 0], [30, 33, 36])  # 0.299 * red
    by_path = {p.split("test/")[1]: i for i, p in enumerate(test.paths)}
    order = [by_path[k] for k in ("good/000.png", "crack/000.png", "crack/001.png", "hole/000.png")]
    np.testing.assert_array_equal(test.labels[order], [0, 1, 1, 1])
    assert [test.kinds[i] for i in order] == ["good", "crack", "crack", "hole"]
    np.testing.assert_array_equal(test.has_mask[order], [True, True, False, True])
    np.testing.assert_array_equal(test.masks[order].sum((1, 2)), [0, 16, 0, 16])
    assert test.masks[order[1]][:4, :4].all() and test.masks[order[3]][4:, 4:].all()
    np.testing.assert_array_equal(test.sizes, [[16, 16]] * 4)
    assert any("1 anomalous image(s) without a mask" in note for note in test.notes)


def test_mvtec_root_needs_a_category(tmp_path, save_image, save_mask):
    mvtec_category(save_image, save_mask, tmp_path / "bottle")
    mvtec_category(save_image, save_mask, tmp_path / "zipper")
    (tmp_path / "license.txt").write_text("x")
    assert mvtec_categories(tmp_path) == ["bottle", "zipper"]
    assert len(load_dataset(tmp_path, 8, 3, DataConfig(category="zipper")).test) == 4
    with pytest.raises(DataError, match="MVTec AD root: set data.category to one of bottle, zipper"):
        load_dataset(tmp_path, 8, 1)
    with pytest.raises(DataError, match="no MVTec AD category 'cable' .found bottle, zipper"):
        load_dataset(tmp_path, 8, 1, DataConfig(category="cable"))


def test_generic_folder_with_flat_masks(tmp_path, save_image, save_mask):
    splits = load_dataset(generic(save_image, save_mask, tmp_path), 8, 3)
    test = splits.test
    assert splits.train.images.shape == (4, 8, 8, 3) and (splits.train.images == 100).all()
    kinds = dict(zip([p.rsplit("/", 1)[1] for p in test.paths], test.kinds))
    assert kinds == {"t0.png": "good", "t1.png": "abnormal", "t2.png": "scratch"}
    t0, t1, t2 = (
        test.paths.index(str(tmp_path / f"test/{d}/{n}"))
        for d, n in [("normal", "t0.png"), ("abnormal", "t1.png"), ("scratch", "t2.png")]
    )
    np.testing.assert_array_equal(test.labels[[t0, t1, t2]], [0, 1, 1])
    assert test.has_mask.all()
    assert not test.masks[t0].any()
    assert test.masks[t1][:2].all() and test.masks[t1].sum() == 16
    assert test.masks[t2][:, :1].all() and test.masks[t2].sum() == 8
    assert test.images[t1, 0, 0, 0] == 250


def test_generic_folder_without_masks_and_with_val(tmp_path, save_image):
    for i in range(2):
        save_image(tmp_path / "train" / f"{i}.png", 10)
    save_image(tmp_path / "test/good/a.png", 10)
    save_image(tmp_path / "test/bad/b.png", 99)
    save_image(tmp_path / "val/normal/c.png", 11)
    save_image(tmp_path / "val/bad/d.png", 98)
    splits = load_dataset(tmp_path, 16, 1)
    assert splits.test.masks is None and splits.val.masks is None
    assert "no pixel-level truth" in splits.test.notes[0]
    assert sorted(zip(splits.val.kinds, splits.val.labels.tolist())) == [("bad", 1), ("good", 0)]


# ----- bad input: every case stops before training with one line naming the files ------------


def one_line_error(root, options=None, match=""):
    with pytest.raises(DataError) as caught:
        load_dataset(root, 8, 1, options or DataConfig())
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(match, message), message
    return message


def test_missing_or_unknown_folders(tmp_path, save_image, save_mask):
    one_line_error(tmp_path / "nope", match="nope: no such folder")
    (tmp_path / "stuff").mkdir()
    one_line_error(tmp_path / "stuff", match="stuff: no known dataset layout; expected train/")
    mvtec_category(save_image, save_mask, tmp_path / "cat")
    import shutil

    shutil.rmtree(tmp_path / "cat/train/good")
    (tmp_path / "cat/train/good").mkdir()
    one_line_error(tmp_path / "cat", match="cat/train/good: no training images")


def test_unreadable_and_non_image_files(tmp_path, save_image, save_mask):
    root = generic(save_image, save_mask, tmp_path)
    (root / "train/notes.txt").write_text("not an image")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)
    Image.fromarray(noise).save(root / "train/n1.png")
    png = (root / "train/n1.png").read_bytes()
    (root / "train/n1.png").write_bytes(png[: len(png) // 2])  # cut inside the pixel data
    message = one_line_error(root, match=r"^2 bad file\(s\) \(data.on_bad_file=skip skips them\): ")
    assert "train/n1.png (unreadable: OSError: image file is truncated" in message
    assert "train/notes.txt (not an image, or corrupt)" in message


def test_mask_size_must_match_its_image(tmp_path, save_mask, save_image):
    root = generic(save_image, save_mask, tmp_path)
    save_mask(root / "masks/t1.png", np.s_[:2, :], size=(8, 16))
    one_line_error(root, match=r"test/abnormal/t1.png \(its mask t1.png is 16x8, the image 16x16\)")


def test_broken_mask_is_named(tmp_path, save_image, save_mask):
    root = generic(save_image, save_mask, tmp_path)
    (root / "masks/t2_mask.png").write_bytes(b"garbage")
    one_line_error(root, match=r"test/scratch/t2.png \(its mask t2_mask.png: not an image, or corrupt\)")


def test_masks_without_images(tmp_path, save_mask, save_image):
    root = generic(save_image, save_mask, tmp_path)
    save_mask(root / "masks/ghost_mask.png", np.s_[:2, :])
    one_line_error(root, match=r"masks/ghost_mask.png \(mask without an image\)")


def test_duplicate_names(tmp_path, save_image, save_mask):
    root = generic(save_image, save_mask, tmp_path)
    save_image(root / "train/n2.jpg", 100)
    one_line_error(root, match=r"train: duplicate image names: n2.jpg and n2.png")


def test_a_flat_mask_matching_two_images_is_ambiguous(tmp_path, save_image, save_mask):
    root = generic(save_image, save_mask, tmp_path)
    save_image(root / "test/other/t1.png", 30)
    one_line_error(root, match=r"masks matching several images .*t1.png \(")


def test_files_directly_in_test(tmp_path, save_image, save_mask):
    root = generic(save_image, save_mask, tmp_path)
    save_image(root / "test/loose.png", 1)
    one_line_error(root, match=r"test: expected only sub-folders good/ .*found files loose.png")


def test_long_lists_are_truncated(tmp_path, save_image, save_mask):
    root = generic(save_image, save_mask, tmp_path)
    for i in range(13):
        (root / f"train/bad{i:02d}.png").write_text("x")
    message = one_line_error(root, match=r"^13 bad file")
    assert message.endswith("... and 3 more") and message.count("(not an image, or corrupt)") == 10


def test_skip_mode_leaves_bad_files_out_with_a_note_and_one_warning(tmp_path, save_mask, save_image):
    root = generic(save_image, save_mask, tmp_path)
    (root / "train/a.txt").write_text("x")
    (root / "train/b.txt").write_text("x")
    save_mask(root / "masks/ghost.png", np.s_[:2, :])
    with pytest.warns(UserWarning, match="skipped 3 bad file") as caught:
        splits = load_dataset(root, 8, 1, DataConfig(on_bad_file="skip"))
    assert len(caught) == 1
    assert len(splits.train) == 4
    assert splits.train.notes == [
        f"skipped 2 bad file(s): {root}/train/a.txt (not an image, or corrupt), "
        f"{root}/train/b.txt (not an image, or corrupt)"
    ]
    assert any("ghost.png (mask without an image)" in note for note in splits.test.notes)


def test_all_training_files_bad_is_an_error_even_when_skipping(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train/a.png").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one_line_error(tmp_path, DataConfig(on_bad_file="skip"), match="no readable training images")


def training_rows(images):
    """The rows left to train on after the calibration hold-out (10 %)."""
    return calibration_split(images, None, 0.1, seed=0)[0]


@pytest.mark.parametrize(
    "n, batch, processes, fitted, note",
    [
        (71, 64, 1, 64, None),  # round(7.1) = 7 held out, 64 left
        (5, 4, 1, 4, None),  # one image held out leaves 4
        (4, 4, 1, 3, "batch_size 4 lowered to 3: only 3 training image(s) after holding out 1 for validation"),
        (9, 8, 2, 8, None),  # 8 left: 4 per process
        (
            9,
            10,
            2,
            8,
            "batch_size 10 lowered to 8: only 8 training image(s) after holding out 1 for validation, "
            "4 per process on 2 processes",
        ),
        (
            20,
            64,
            3,
            18,
            "batch_size 64 lowered to 18: only 18 training image(s) after holding out 2 for validation, "
            "6 per process on 3 processes",
        ),
        (200, 64, 3, 63, "batch_size 64 lowered to 63: an equal share (21) for each of the 3 processes"),
        (200, 2, 4, 4, "batch_size 2 raised to 4: at least one image for each of the 4 processes"),
    ],
)
def test_the_batch_is_global_split_across_processes_and_fitted_to_small_sets(
    n, batch, processes, fitted, note, random_images
):

    images = random_images(n, size=8)
    assert fit_batch(images, training_rows(images), batch, processes) == (fitted, note)


def test_a_validation_split_holds_nothing_out_and_patches_count_once_per_patch(
    tmp_path, random_images, save_image, save_mask
):

    splits = load_dataset(generic(save_image, save_mask, tmp_path), 8, 1)  # 4 training images
    assert fit_batch(splits.train, None, 4) == (4, None)
    assert fit_batch(splits.train, None, 64) == (4, "batch_size 64 lowered to 4: only 4 training image(s)")
    # 3 images of 64 px after the hold-out hold 4 x 4 patches of 16 px each: 48 patches an epoch
    images = random_images(4, size=64)
    assert fit_batch(images, training_rows(images), 64, patch=16) == (
        48,
        "batch_size 64 lowered to 48: only 3 training image(s) (48 patches) after holding out 1 for validation",
    )


def test_a_set_smaller_than_the_processes_is_refused_in_one_line(random_images):

    with pytest.raises(
        DataError,
        match=r"^only 3 training image\(s\) after holding out 1 for validation, "
        r"fewer than the 4 processes: add images or use fewer processes$",
    ):
        images = random_images(4, size=8)
        fit_batch(images, training_rows(images), 64, 4)


def test_load_unlabelled(tmp_path, save_image):
    save_image(tmp_path / "one.png", 7)
    save_image(tmp_path / "dir/sub/two.jpg", (9, 9, 9), mode="RGB")
    images = load_unlabelled([str(tmp_path / "one.png"), str(tmp_path / "dir")], 8, 1, DataConfig())
    assert images.paths == [str(tmp_path / "one.png"), str(tmp_path / "dir/sub/two.jpg")]
    assert images.labels.tolist() == [-1, -1] and images.kinds == ["unknown", "unknown"]
    assert images.masks is None and images.images[0, 0, 0, 0] == 7
    with pytest.raises(DataError, match="missing.png: no such file or folder"):
        load_unlabelled([str(tmp_path / "missing.png")], 8, 1, DataConfig())
    (tmp_path / "bad.png").write_text("x")
    with pytest.raises(DataError, match=r"bad.png \(not an image, or corrupt\)"):
        load_unlabelled([str(tmp_path / "bad.png")], 8, 1, DataConfig())


def test_a_data_folder_that_cannot_be_read_is_one_line_naming_it(tmp_path, monkeypatch):
    """An OSError while reading the data (here: a folder without permission, as root cannot
    make one) is the data's problem, never a bug's traceback."""
    import funetgan.data as data

    def refused(root, category):
        raise PermissionError(13, "Permission denied", str(root / "train"))

    monkeypatch.setattr(data, "find_folder_dataset", refused)
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'train'))}: cannot read \(Permission denied\)$"):
        load_dataset(tmp_path, 16, 1)
