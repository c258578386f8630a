"""The demo's data (`data.demo`): held-out normals and tests come from photo regions that no
training crop touches, and the selection and report splits from different regions. Every
crop is found again in the photo from its pixels alone, so the check does not trust how the
crops were cut."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from funetgan.commands.demo import DEMO_DATA
from funetgan.data.demo import GAP, make_texture_dataset, normal_crops, regions, texture_photo

CROP = 64  # the demo's crops
KEY = 8  # pixels of a row that locate a crop


class PhotoIndex:
    """Where in a uint8 photo each run of KEY pixels of a row starts, as sorted 64-bit keys."""

    def __init__(self, photo: np.ndarray):
        self.photo = photo
        self.keys = np.lib.stride_tricks.sliding_window_view(photo, KEY, axis=1).copy().view(np.uint64)[..., 0]
        self.order = np.argsort(self.keys, axis=None, kind="stable")
        self.sorted = self.keys.ravel()[self.order]

    def starts(self, pixels: np.ndarray) -> list[tuple[int, int]]:
        key = np.ascontiguousarray(pixels).view(np.uint64)[0]
        found = self.order[np.searchsorted(self.sorted, key) : np.searchsorted(self.sorted, key, "right")]
        return [divmod(int(i), self.keys.shape[1]) for i in found]

    def place(self, crop: np.ndarray, changed: np.ndarray | None = None) -> tuple[int, int]:
        """(top, left) of `crop`: the one place where every pixel outside `changed` (a
        defect's mask) equals the photo's."""
        kept = np.ones(crop.shape, bool) if changed is None else ~changed
        row, column = next(
            (r, c) for r in range(crop.shape[0]) for c in range(crop.shape[1] - KEY + 1) if kept[r, c : c + KEY].all()
        )
        height, width = crop.shape
        found = [
            (top, left)
            for top, left in ((r - row, c - column) for r, c in self.starts(crop[row, column : column + KEY]))
            if 0 <= top <= self.photo.shape[0] - height
            and 0 <= left <= self.photo.shape[1] - width
            and np.array_equal(self.photo[top : top + height, left : left + width][kept], crop[kept])
        ]
        assert len(found) == 1, f"crop found at {found}"
        return found[0]


def coverage(index: PhotoIndex, crops: list[np.ndarray], masks: list | None = None) -> np.ndarray:
    """The photo's pixels that `crops` cover."""
    covered = np.zeros(index.photo.shape, bool)
    for crop, changed in zip(crops, masks or [None] * len(crops)):
        top, left = index.place(crop, changed)
        covered[top : top + crop.shape[0], left : left + crop.shape[1]] = True
    return covered


def read(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))]


def test_crops_are_exact_photo_pixels_found_again():
    photo = texture_photo("brick").astype(np.uint8)
    crop = photo[100:164, 37:101].copy()
    changed = np.zeros_like(crop, bool)
    changed[:20, :] = True
    crop[changed] = 0
    assert PhotoIndex(photo).place(crop, changed) == (100, 37)


@pytest.fixture
def unsynced(monkeypatch):
    """Files written without fsync: this checks contents, and 2,000 syncs cost seconds."""
    monkeypatch.setattr("funetgan.files._fsync", lambda *_: None)


def test_held_out_normals_and_tests_share_no_pixel_with_training_crops(tmp_path, unsynced):
    texture = "brick"  # every photo is 512 x 512: the regions are the same for all
    index = PhotoIndex(texture_photo(texture).astype(np.uint8))
    sets = {
        split: make_texture_dataset(tmp_path / split, texture, crop=CROP, seed=seed, split=split, **DEMO_DATA)
        for split, seed in (("report", 0), ("selection", 100))
    }
    train = coverage(index, read(sets["report"] / "train" / "good"))
    train |= coverage(index, read(sets["selection"] / "train" / "good"))
    calibration = coverage(index, read(sets["report"] / "val" / "good"))
    fresh = coverage(index, list(normal_crops(texture, CROP, 400, "fresh", 10_000)))
    shifted = coverage(index, list(normal_crops(texture, CROP, 100, "shifted", 10_000)))
    tests = {}
    for split, root in sets.items():
        kinds = [d.name for d in (root / "test").iterdir() if d.name != "good"]
        crops = read(root / "test" / "good") + [c for kind in kinds for c in read(root / "test" / kind)]
        masks = [None] * len(read(root / "test" / "good")) + [
            m > 0 for kind in kinds for m in read(root / "ground_truth" / kind)
        ]
        tests[split] = coverage(index, crops, masks)
    near_train = ndimage.binary_dilation(train, iterations=GAP)  # at least GAP px apart
    for name, held_out in {"calibration": calibration, "fresh": fresh, "shifted": shifted, **tests}.items():
        assert held_out.any() and not (near_train & held_out).any(), name
    assert not (calibration & fresh).any()
    assert not (tests["selection"] & tests["report"]).any()
    assert not ((tests["selection"] | tests["report"]) & (calibration | fresh)).any()


def test_every_role_has_regions_and_no_two_regions_touch():
    parts = regions((512, 512), "checker", CROP)
    boxes = [(role, box) for role, found in parts.items() for box in found]
    assert {role for role, _ in boxes} == {"train", "calibration", "fresh", "selection", "report", "shifted"}
    for i, (_, ((r0, r1), (c0, c1))) in enumerate(boxes):
        assert r1 - r0 >= CROP and c1 - c0 >= CROP
        for _, ((s0, s1), (d0, d1)) in boxes[i + 1 :]:
            apart = max(s0 - r1, r0 - s1, d0 - c1, c0 - d1)
            assert apart >= GAP


def test_a_crop_too_large_for_the_grid_is_refused(tmp_path):
    with pytest.raises(ValueError, match="crop 128 leaves no report part"):
        make_texture_dataset(tmp_path / "x", crop=128, n_train=1)
    with pytest.raises(ValueError, match="unknown split"):
        make_texture_dataset(tmp_path / "x", split="test")
