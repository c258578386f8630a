"""MNIST-style IDX files in the one-class protocol."""

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from funetgan.config import DataConfig
from funetgan.data import DataError, load_dataset
from funetgan.data.idx import read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_dataset(write_idx, root, compress=False, train=(0, 1, 2, 0, 1, 0), test=(0, 2, 1, 0)):
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for split, labels in (("train", train), ("t10k", test)):
        labels = np.array(labels)
        images = np.zeros((len(labels), 28, 28), np.uint8)
        images[:, :14] = (labels * 100)[:, None, None]  # top half encodes the class
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
    return root


@pytest.mark.parametrize("compress", [False, True])
def test_one_class_protocol(tmp_path, compress, write_idx):
    splits = load_dataset(idx_dataset(write_idx, tmp_path / "digits", compress), 56, 1, DataConfig(normal_class=0))
    train, test = splits.train, splits.test
    assert train.images.shape == (3, 56, 56, 1) and (train.images == 0).all()
    assert train.labels.tolist() == [0, 0, 0] and train.paths[0].endswith(
        "train-images-idx3-ubyte" + ".gz" * compress + "#0"
    )
    assert [p.rsplit("#", 1)[1] for p in train.paths] == ["0", "3", "5"]
    assert test.labels.tolist() == [0, 1, 1, 0]
    assert test.kinds == ["good", "2", "1", "good"]
    assert test.images[1, 0, 0, 0] == 200 and test.images[1, -1, 0, 0] == 0
    np.testing.assert_array_equal(test.sizes, [[28, 28]] * 4)
    assert test.masks is None and splits.val is None


def test_fashion_class_names_and_rgb(tmp_path, write_idx):
    splits = load_dataset(idx_dataset(write_idx, tmp_path / "fashion-mnist"), 32, 3, DataConfig(normal_class=1))
    assert splits.test.kinds == ["tshirt_top", "pullover", "good", "tshirt_top"]
    assert splits.test.images.shape == (4, 32, 32, 3)
    assert (splits.test.images[2, 0, 0] == 100).all()


def test_normal_class_is_required_and_must_exist(tmp_path, write_idx):
    root = idx_dataset(write_idx, tmp_path / "d")
    with pytest.raises(DataError, match="needs data.normal_class"):
        load_dataset(root, 32, 1)
    with pytest.raises(DataError, match=r"normal_class=7 not among the training labels \[0, 1, 2\]"):
        load_dataset(root, 32, 1, DataConfig(normal_class=7))


def test_broken_idx_files(tmp_path, write_idx):
    root = idx_dataset(write_idx, tmp_path / "d")
    data = (root / "train-images-idx3-ubyte").read_bytes()
    (root / "train-images-idx3-ubyte").write_bytes(data[:-5])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: header says \(6, 28, 28\) but holds"):
        load_dataset(root, 32, 1, DataConfig(normal_class=0))
    (root / "train-images-idx3-ubyte").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file of unsigned bytes"):
        load_dataset(root, 32, 1, DataConfig(normal_class=0))
    (root / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="train IDX images and labels must both be present"):
        load_dataset(root, 32, 1, DataConfig(normal_class=0))


def test_label_count_must_match(tmp_path, write_idx):
    root = idx_dataset(write_idx, tmp_path / "d")
    write_idx(root / "t10k-labels-idx1-ubyte", np.array([0, 1]))
    with pytest.raises(DataError, match=r"expected N images and N labels, got shapes \(4, 28, 28\) and \(2,\)"):
        load_dataset(root, 32, 1, DataConfig(normal_class=0))


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed here")
def test_real_fashion_mnist():
    splits = load_dataset(FASHION, 32, 1, DataConfig(normal_class=7))
    assert len(splits.train) == 6000 and len(splits.test) == 10000
    assert int((splits.test.labels == 0).sum()) == 1000
    assert set(splits.test.kinds) == {
        "good",
        "tshirt_top",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "bag",
        "ankle_boot",
    }


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_gzip_bomb_is_refused_after_reading_what_its_header_promises(tmp_path):
    """A header of 6 images of 28 x 28 followed by 300 MB of zeros (300 kB gzipped): the whole
    stream was inflated before its size was checked (the issue's 5 MiB file took 6 GiB)."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    packer, zeros = zlib.compressobj(9, zlib.DEFLATED, 31), bytes(1 << 20)  # 31: gzip framing
    body = [packer.compress(struct.pack(">BBBBIII", 0, 0, 8, 3, 6, 28, 28))]
    body += [packer.compress(zeros) for _ in range(300)] + [packer.flush()]
    path.write_bytes(b"".join(body))
    before = _peak_mb()
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: header says \(6, 28, 28\) but holds more values"):
        read_idx(path)
    assert _peak_mb() - before < 50


@pytest.mark.parametrize("compress", [False, True])
def test_a_header_promising_more_than_the_file_can_hold_is_refused_unread(tmp_path, compress, write_idx):
    path = tmp_path / ("images.gz" if compress else "images")
    write_idx(path, np.zeros((2, 28, 28)), compress)
    header = struct.pack(">BBBBIII", 0, 0, 8, 3, 4_000_000_000, 4_000_000_000, 28)
    with (gzip.open if compress else open)(path, "wb") as file:
        file.write(header + bytes(2 * 28 * 28))
    before = _peak_mb()
    with pytest.raises(DataError, match=r"more than the file can hold or this machine's memory"):
        read_idx(path)
    assert _peak_mb() - before < 50
