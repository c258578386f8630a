"""Automatic lung masks (`data.lung_threshold`) on generated chest phantoms: air around an
elliptic body, two lungs at -850 HU, a lesion inside one lung, a gas pocket below them."""

import numpy as np
import pytest

from funetgan.config import DataConfig
from funetgan.data import DataError, load_dataset
from funetgan.data.lungs import segment_lung

nibabel = pytest.importorskip("nibabel")


def phantom(side=48, slices=6, seed=0):
    """(scan in HU Z x H x W, lung mask, lesion mask): the same plane in every slice, the
    lesion in the last half of them."""
    yy, xx = np.mgrid[:side, :side] / side
    body = ((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.45) ** 2 < 1
    lungs = ((yy - 0.45) / 0.25) ** 2 + ((np.abs(xx - 0.5) - 0.2) / 0.13) ** 2 < 1
    lesion = lungs & (((yy - 0.4) / 0.08) ** 2 + ((xx - 0.3) / 0.08) ** 2 < 1)
    gas = ((yy - 0.8) / 0.04) ** 2 + ((xx - 0.5) / 0.04) ** 2 < 1  # in the body, below the lungs
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[lungs], plane[gas] = -850, -900
    stack = lambda mask: np.repeat(mask[None], slices, 0)  # noqa: E731
    lesions = stack(lesion)
    lesions[: slices // 2] = False  # in the lower half of the slices only
    scan = stack(plane) + np.random.default_rng(seed).integers(-20, 20, (slices, side, side)).astype(np.int16)
    scan[lesions] = -100
    return scan, stack(lungs), lesions


def test_the_lungs_with_their_lesion_and_nothing_else():
    scan, lungs, lesion = phantom()
    found = segment_lung(scan, -320)
    assert (found == lungs).all()  # the lesion (a hole) filled in, the gas pocket and the outside air left out
    assert found[lesion].all() and lesion.any()


def test_no_air_inside_the_body_finds_no_lung():
    scan = np.full((2, 8, 8), 40, np.int16)
    scan[:, 0] = -1000  # air along one border only
    assert not segment_lung(scan, -320).any()


def test_ct_without_lung_masks_gets_them_from_the_threshold(tmp_path, save_nifti):
    for v in range(3):
        scan, lungs, lesion = phantom(seed=v)
        save_nifti(tmp_path / "ct_scans" / f"case{v}.nii.gz", scan.transpose(2, 1, 0))
        save_nifti(tmp_path / "infection_mask" / f"case{v}.nii.gz", lesion.transpose(2, 1, 0).astype(np.uint8))
    without = load_dataset(tmp_path, 48, 1, DataConfig(test_fraction=0.4))
    assert without.test.lung is None
    test = load_dataset(tmp_path, 48, 1, DataConfig(test_fraction=0.4, lung_threshold=-320)).test
    assert test.lung is not None and test.lung.any(axis=(1, 2)).all()
    # The loader's orientation flips the phantom; the lung's area per slice is what it was.
    assert test.lung.sum((1, 2)).tolist() == [int(lungs[0].sum())] * len(test)


def test_lung_threshold_needs_hounsfield_units(tmp_path, save_nifti):
    scan, _, lesion = phantom()
    for v in range(2):
        save_nifti(tmp_path / "ct_scans" / f"case{v}.nii.gz", np.clip(scan + 1000, 0, 255).astype(np.uint8))
        save_nifti(tmp_path / "infection_mask" / f"case{v}.nii.gz", lesion.astype(np.uint8))
    with pytest.raises(DataError, match="not HU: data.lung_threshold needs HU"):
        load_dataset(tmp_path, 48, 1, DataConfig(lung_threshold=-320))


def test_predict_volumes_get_the_lung_too(tmp_path, save_nifti):
    from funetgan.data import load_unlabelled

    scan, lungs, _ = phantom()
    save_nifti(tmp_path / "scan.nii.gz", scan.transpose(2, 1, 0))
    images = load_unlabelled([str(tmp_path / "scan.nii.gz")], 48, 1, DataConfig(lung_threshold=-320))
    assert images.lung is not None and images.lung.sum((1, 2)).tolist() == [int(lungs[0].sum())] * 6
