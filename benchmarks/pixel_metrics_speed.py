"""Time and peak memory of `pixel_metrics` on an MVTec-size test set.

    PYTHONPATH=src python benchmarks/pixel_metrics_speed.py [--images 2000] [--threshold 1.0]

Maps are smooth noise; half the images carry 1-3 elliptic defects (the truth masks) that
raise the map by a random contrast, so the metrics land in a realistic, non-trivial range.
Peak memory is what `pixel_metrics` allocates on top of the maps and masks (tracemalloc
sees numpy's buffers).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import torch
import torch.nn.functional as F

from funetgan.evaluation.metrics import pixel_metrics


def structured_maps(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((n, 1, size // 16, size // 16), np.float32))
    maps = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    maps = maps[:, 0].numpy()
    masks = np.zeros((n, size, size), bool)
    rows, cols = np.mgrid[:size, :size] / size
    for i in range(n // 2):
        for _ in range(rng.integers(1, 4)):
            (cy, cx), (ry, rx) = rng.uniform(0.15, 0.85, 2), rng.uniform(0.02, 0.12, 2)
            blob = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 < 1
            masks[i] |= blob
            maps[i][blob] += rng.uniform(0.0, 1.0)
    return maps, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threshold", type=float, default=1.0, help="map values are in 0..2")
    args = parser.parse_args()

    maps, masks = structured_maps(args.images, args.size)
    sizes = np.full((args.images, 2), 900)  # MVTec-like original resolution
    print(
        f"{args.images} maps of {args.size}x{args.size}: {maps.nbytes / 2**20:.0f} MiB "
        f"float32 + {masks.nbytes / 2**20:.0f} MiB masks"
    )
    tracemalloc.start()
    start = time.perf_counter()
    result = pixel_metrics(maps, masks, threshold=args.threshold, sizes=sizes)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"pixel_metrics: {seconds:.1f} s, peak extra memory {peak / 2**20:.0f} MiB")
    print({key: None if value is None else round(value, 4) for key, value in result.items()})


if __name__ == "__main__":
    main()
