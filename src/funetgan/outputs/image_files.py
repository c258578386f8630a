"""The per-image files of a test or prediction run, written chunk by chunk (`ImageFiles`):

    masks/<name>.png      predicted binary mask at the image's original size
    overlays/<name>.png   image | heat map | predicted outline (| ground-truth outline)

with the table row of each image, and the maps waiting for them (`InMemory`, `MapStore`).
A pixel is predicted anomalous by the mask rule (`masks.MaskRule`) applied to its map,
bilinearly resized to the image's size; an image when its score is ``>= image threshold``.
"""

from __future__ import annotations

import collections
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from ..evaluation.metrics import pixel_truth
from ..files import atomic_save_png, safe_names
from ..scoring.masks import MaskRule
from ..scoring.pixel_histogram import PixelHistogram
from .examples import best_of, ranked, rankings
from .selection import Outputs

DISPLAY_SIZE = 256  # overlay panel side, pixels
COLOR_QUANTILE = 0.999  # heat-map scale: 0 .. this quantile of all maps, the same for all images
COLORMAP = matplotlib.colormaps["turbo"]
PREDICTED_COLOR = (255, 40, 40)
TRUTH_COLOR = (40, 255, 40)
WRITERS = 8  # threads writing per-image files (see _Writers)
PENDING = 4 * WRITERS  # files waiting for a writer, at most


def output_names(paths: list[str]) -> list[str]:
    """Unique (also case-insensitively), file-system-safe names derived from image paths:
    the path below the images' common folder, without extension, plus any "#slice" part
    (".../test/crack/000.png" -> "crack_000", "ct/vol.nii.gz#z=12" -> "vol.nii_z_12")."""
    files = [os.path.abspath(path.split("#")[0]) for path in paths]
    root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""

    def raw(path: str, file: str) -> str:
        stem = os.path.splitext(os.path.relpath(file, root))[0]
        part = path.partition("#")[2]
        return f"{stem}_{part}" if part else stem

    return safe_names((raw(path, file) for path, file in zip(paths, files)), "image")


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map to (height, width)."""
    image = Image.fromarray(np.asarray(values, np.float32))
    return np.asarray(image.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR))


class InMemory:
    """The maps of a whole set held by the caller: `ImageFiles` keeps nothing itself."""

    def __init__(self, maps):
        self.maps = maps

    def put(self, rows, maps) -> None:
        pass

    def __getitem__(self, row: int) -> np.ndarray:
        return np.asarray(self.maps[row])


class MapStore:
    """The maps `ImageFiles` needs after scoring, by image row, in an unnamed temporary file
    in `folder` (gone when closed or when the process ends): memory stays one map."""

    def __init__(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (open until close())
        self.where: dict[int, tuple[int, tuple[int, ...]]] = {}

    def put(self, rows, maps) -> None:
        for row, values in zip(rows, maps):
            if int(row) not in self.where:
                self.file.seek(0, os.SEEK_END)
                self.where[int(row)] = (self.file.tell(), values.shape)
                self.file.write(np.ascontiguousarray(values, np.float32).tobytes())

    def __getitem__(self, row: int) -> np.ndarray:
        offset, shape = self.where[int(row)]
        self.file.seek(offset)
        return np.frombuffer(self.file.read(4 * math.prod(shape)), np.float32).reshape(shape)

    def close(self) -> None:
        self.file.close()


class ImageFiles:
    """The per-image outputs (masks/, overlays/, the table rows) of a set scored chunk by
    chunk: `add` each chunk's scores and maps, then `finish`. A mask whose selection the
    image decides alone (all, flagged) is written at once; everything else waits for the
    whole set: overlays for the colour scale (a quantile of all maps, counted as they pass:
    `PixelHistogram`), ranked selections (worst:N, best:N, the report's examples) for all
    scores. The maps these may need go to `store`: those of images already chosen, and the
    top of each ranking so far (a bounded number, whatever the set's size)."""

    def __init__(self, out_dir, imageset, outputs: Outputs, image_threshold: float, rule: MaskRule, store):
        self.out, self.imageset, self.outputs, self.store = Path(out_dir), imageset, outputs, store
        self.image_threshold, self.rule = image_threshold, rule
        self.out.mkdir(parents=True, exist_ok=True)
        n = len(imageset)
        self.names = output_names(imageset.paths)
        self.scores, self.fraction = np.zeros(n), np.zeros(n)
        self.masks_written = np.zeros(n, bool)
        self.has_truth = pixel_truth(imageset)
        self.heat = PixelHistogram()
        self.rankings = rankings(outputs)
        self.top: list[np.ndarray] = [np.zeros(0, int) for _ in self.rankings]
        self.writers = _Writers()
        self.seconds = 0.0  # spent in add and finish

    def add(self, rows, scores, maps, keep=()) -> None:
        """Images `rows` of the set with their scores and maps (N x S x S); `keep`: rows of
        these whose maps are needed later anyway (the report's volume strips)."""
        started = time.perf_counter()
        rows, scores = np.asarray(rows, int), np.asarray(scores, float)
        self.scores[rows] = scores
        self.heat.add(np.asarray(maps)[:, ::4, ::4])  # maps are smooth: every 4th pixel each way
        now = self._now(self.outputs.masks, scores)
        for k, row in enumerate(rows):
            mask = self._mask(maps[k], self.imageset.sizes[row], scores[k])
            self.fraction[row] = mask.mean()
            if now[k]:
                self.writers.submit(self._write_mask, row, mask)
        self.masks_written[rows[now]] = True
        wanted = self._now(self.outputs.overlays, scores) | np.isin(rows, np.asarray(keep, int))
        for i, ranking in enumerate(self.rankings):
            self.top[i] = best_of(
                self.top[i],
                rows[ranked(ranking, self.imageset.labels[rows], scores, self.image_threshold)],
                self.scores,
                ranking,
            )
        wanted |= np.isin(rows, np.concatenate([np.zeros(0, int), *self.top]))
        self.store.put(rows[wanted], np.asarray(maps)[wanted])
        self.seconds += time.perf_counter() - started

    def _mask(self, anomaly_map: np.ndarray, size, score: float) -> np.ndarray:
        """The predicted mask of an image with this map and score, at `size` (H, W)."""
        return self.rule(_resize(anomaly_map, size)[None], np.array([score >= self.image_threshold]))[0]

    def _now(self, selection: tuple[str, ...], scores: np.ndarray) -> np.ndarray:
        """Which of these images `selection` (masks or overlays) picks on their own scores."""
        chosen = np.full(len(scores), "all" in selection)
        return chosen | (scores >= self.image_threshold) if "flagged" in selection else chosen

    def color_max(self) -> float:
        """Top of the heat-map colour scale: COLOR_QUANTILE of all maps' values."""
        top = self.heat.quantile(COLOR_QUANTILE)
        return top if top > 0 else 1.0

    def finish(self, examples: np.ndarray | None = None) -> list[dict]:
        """Writes the masks and overlays that waited for the whole set (the report's
        `examples` with their overlays) and returns one table row per image."""
        started = time.perf_counter()
        scores, threshold = self.scores, self.image_threshold
        masks = np.setdiff1d(
            self.outputs.images("masks", scores, threshold, examples), np.flatnonzero(self.masks_written)
        )
        overlays = self.outputs.images("overlays", scores, threshold, examples)
        if examples is not None:  # their overlays come with the report
            overlays = np.union1d(overlays, examples)
        color_max = self.color_max()
        try:
            for row in masks:
                self.writers.submit(
                    self._write_mask, row, self._mask(self.store[row], self.imageset.sizes[row], scores[row])
                )
            for row in overlays:
                self.writers.submit(self._write_overlay, row, self.store[row].copy(), color_max)
            self.writers.wait()
        finally:
            self.close()
        labelled = self.imageset
        rows = [
            {
                "path": labelled.paths[i],
                "label": int(labelled.labels[i]),
                "kind": labelled.kinds[i],
                "score": float(scores[i]),
                "predicted": int(scores[i] >= threshold),
                "anomalous_fraction": float(self.fraction[i]),
                "name": self.names[i],
            }
            for i in range(len(scores))
        ]
        self.seconds += time.perf_counter() - started
        return rows

    def close(self) -> None:
        """Stop writing (after an error: the files still waiting are not written)."""
        self.writers.close()

    def _write_mask(self, row: int, mask: np.ndarray) -> None:
        (self.out / "masks").mkdir(exist_ok=True)
        # Level 1: PNG compression dominates the run time otherwise.
        atomic_save_png(self.out / "masks" / f"{self.names[row]}.png", Image.fromarray(mask.astype(np.uint8) * 255), 1)

    def _write_overlay(self, row: int, anomaly_map: np.ndarray, color_max: float) -> None:
        (self.out / "overlays").mkdir(exist_ok=True)
        images = self.imageset
        truth = images.masks[row] if self.has_truth[row] else None
        predicted = self._mask(anomaly_map, (DISPLAY_SIZE, DISPLAY_SIZE), self.scores[row])
        atomic_save_png(
            self.out / "overlays" / f"{self.names[row]}.png",
            overlay(images.images[row], anomaly_map, predicted, color_max, truth),
            1,
        )


class _Writers:
    """WRITERS threads writing files: each durable write waits on the disk (fsync), and the
    waits overlap. Measured on the 2-core VM this was built on: 7 ms per 28 px mask one at a
    time, 0.5 ms with 4 or 8 writers; 22 ms per overlay, 14 ms with 8. At most PENDING jobs
    wait, so the arrays they hold stay bounded; the first failure is raised as it was."""

    def __init__(self):
        self.pool, self.pending = ThreadPoolExecutor(WRITERS), collections.deque()

    def submit(self, write, *args) -> None:
        while len(self.pending) >= PENDING:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(write, *args))

    def wait(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)  # after a failure (or Ctrl-C) write no more


def overlay(
    image: np.ndarray, anomaly_map: np.ndarray, predicted: np.ndarray, color_max: float, truth: np.ndarray | None = None
) -> Image.Image:
    """Panels side by side: image | heat map over it | outline of the `predicted` mask (red,
    DISPLAY_SIZE px a side) | ground-truth outline (green, when `truth` is given)."""
    size = (DISPLAY_SIZE, DISPLAY_SIZE)
    gray_or_rgb = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    base = np.asarray(gray_or_rgb.convert("RGB").resize(size, Image.Resampling.BILINEAR))
    values = _resize(anomaly_map, size)
    heat = COLORMAP(np.clip(values / color_max, 0, 1))[..., :3] * 255
    panels = [base, (0.5 * base + 0.5 * heat).astype(np.uint8), _outline(base, predicted, PREDICTED_COLOR)]
    if truth is not None:
        panels.append(_outline(base, _resize(truth, size) >= 0.5, TRUTH_COLOR))
    gap = np.full((DISPLAY_SIZE, 4, 3), 255, np.uint8)
    return Image.fromarray(np.hstack([p for panel in panels for p in (panel, gap)][:-1]))


def _outline(base: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    drawn = base.copy()
    drawn[find_boundaries(mask, mode="thick")] = color
    return drawn
