"""How fast `load_dataset` decodes a folder of PNGs into memory.

    PYTHONPATH=src python benchmarks/data_throughput.py [--small 2000] [--large 500]

Writes random-noise PNGs (28x28 grey, 256x256 RGB; noise is the worst case for PNG
decoding) in the generic folder layout in a temporary folder, then times `load_dataset`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from funetgan.data import load_dataset


def write_pngs(root: Path, count: int, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(root / "train" / f"{i:05d}.png")


def measure(count: int, shape: tuple[int, ...], image_size: int, channels: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        write_pngs(Path(folder), count, shape)
        start = time.perf_counter()
        splits = load_dataset(folder, image_size, channels)
        seconds = time.perf_counter() - start
    assert len(splits.train) == count
    source = "x".join(map(str, shape))
    print(
        f"{count} PNGs {source} -> {image_size}x{image_size}x{channels}: "
        f"{seconds:.2f} s, {count / seconds:,.0f} images/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000, help="28x28 grey PNGs")
    parser.add_argument("--large", type=int, default=500, help="256x256 RGB PNGs")
    args = parser.parse_args()
    measure(args.small, (28, 28), 32, 1)
    measure(args.large, (256, 256, 3), 256, 3)
    measure(args.large, (256, 256, 3), 128, 3)


if __name__ == "__main__":
    main()
