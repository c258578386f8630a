"""What a test or prediction run leaves on disk.

    metrics.json, scores.csv (or predictions.csv)   numbers, one row per image
    masks/<name>.png      predicted binary mask at the image's original size
    overlays/<name>.png   image | heat map | predicted outline (| ground-truth outline)
    plots/*.png           ROC, PR, PRO curves and the score histogram
    report.html           one page linking all of the above by relative paths

`outputs.Outputs` chooses which of them are written, and for which images (`--outputs`).

A pixel is predicted anomalous by the mask rule (`masks.MaskRule`) applied to its map,
bilinearly resized to the image's size; an image when its score is ``>= image threshold``.
"""
from __future__ import annotations

import collections
import csv
import html
import io
import json
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
import yaml
from matplotlib.figure import Figure
from PIL import Image
from skimage.segmentation import find_boundaries
from sklearn.metrics import precision_recall_curve, roc_curve

from .files import atomic_save_png, atomic_write_text, safe_names
from .masks import MaskRule
from .metrics import labelled, pixel_truth
from .outputs import Outputs
from .pixel_histogram import PRO_FPR_LIMIT, PixelCurves, PixelHistogram, pixel_curves

DISPLAY_SIZE = 256  # overlay panel side, pixels
COLOR_QUANTILE = 0.999  # heat-map scale: 0 .. this quantile of all maps, the same for all images
COLORMAP = matplotlib.colormaps["turbo"]
PREDICTED_COLOR = (255, 40, 40)
TRUTH_COLOR = (40, 255, 40)
N_EXAMPLES = 12  # images per example section of the report
WRITERS = 8  # threads writing per-image files (see _Writers)
PENDING = 4 * WRITERS  # files waiting for a writer, at most
SCORE_COLUMNS = ["path", "label", "kind", "score", "predicted", "anomalous_fraction", "name"]
PREDICTION_COLUMNS = ["path", "score", "predicted", "anomalous_fraction", "name"]
VOLUME_COLUMNS = ["volume", "path", "slices", "label", "score", "predicted", "lesion_ml", "predicted_ml",
                  "dice", "iou"]


def write_test_outputs(out_dir, imageset, scores, maps, metrics: dict, image_threshold: float,
                       rule: MaskRule, settings: dict, volumes: list[dict] | None = None,
                       outputs: Outputs | None = None) -> dict:
    """The outputs of a labelled test run that `outputs` asks for (default: all of them, for
    every image; see the module docstring), from the whole set's `maps` in memory (`ImageFiles`
    and `finish_test_outputs` with one chunk); with `volumes` (rows of volumes.volume_results),
    also volumes.csv and a per-patient section in the report. Returns `metrics`."""
    files = ImageFiles(out_dir, imageset, outputs or Outputs(), image_threshold, rule, InMemory(maps))
    files.add(np.arange(len(imageset)), scores, maps, [row for v in volumes or [] for row in v["top_rows"]])
    curves = None
    if metrics.get("pixel") and metrics["pixel"]["auroc"] is not None:
        curves = pixel_curves(np.asarray(maps), imageset.masks, pixel_truth(imageset))
    return finish_test_outputs(files, metrics, settings, volumes, curves)


def finish_test_outputs(files: "ImageFiles", metrics: dict, settings: dict, volumes: list[dict] | None = None,
                        curves: PixelCurves | None = None) -> dict:
    """The rest of a test run's outputs once every image is in `files`: the files that
    needed all scores (examples, worst/best), scores.csv and volumes.csv, the plots (the pixel
    curves: `curves`) and report.html, and metrics.json last, with the seconds spent on files
    ("files_seconds", added to what `files` spent so far) and on the report ("report_seconds")."""
    started = time.perf_counter()
    outputs, imageset, scores = files.outputs, files.imageset, files.scores
    groups = example_groups(imageset.labels, scores, files.image_threshold) if outputs.report else []
    examples = None
    if outputs.report:  # what the report shows: its examples and each volume's top slices
        shown = [index for _, index, _ in groups] + [np.asarray(v["top_rows"], int) for v in volumes or []]
        examples = np.unique(np.concatenate(shown).astype(int))
    rows = files.finish(examples)
    if outputs.scores:
        atomic_write_text(files.out / "scores.csv", _csv(rows, SCORE_COLUMNS))
        if volumes:
            write_volume_table(files.out, volumes)
    timing = metrics.setdefault("timing", {})
    timing["files_seconds"] = round(files.seconds + time.perf_counter() - started, 3)
    started = time.perf_counter()
    if outputs.report:
        plots = _write_plots(files.out / "plots", imageset, scores, curves, metrics)
        page = _render_report(metrics, rows, plots, settings, imageset.notes, files.color_max(), groups, outputs,
                              volumes)
        atomic_write_text(files.out / "report.html", page)
    timing["report_seconds"] = round(time.perf_counter() - started, 3)
    if outputs.metrics:
        atomic_write_text(files.out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def write_volume_table(out_dir, volumes: list[dict]) -> None:
    """volumes.csv: one row per volume (patient)."""
    atomic_write_text(Path(out_dir) / "volumes.csv", _csv(volumes, VOLUME_COLUMNS))


def write_predictions(out_dir, imageset, scores, maps, image_threshold: float,
                      rule: MaskRule, outputs: Outputs | None = None) -> None:
    """Masks, overlays and predictions.csv for images without labels (as `outputs` says;
    default: all of them, for every image), from the whole set's `maps` in memory."""
    files = ImageFiles(out_dir, imageset, outputs or Outputs(), image_threshold, rule, InMemory(maps))
    files.add(np.arange(len(imageset)), scores, maps)
    finish_predictions(files)


def finish_predictions(files: "ImageFiles") -> None:
    rows = files.finish()
    if files.outputs.scores:
        atomic_write_text(files.out / "predictions.csv", _csv(rows, PREDICTION_COLUMNS))


def _csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


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

    def __init__(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.file = tempfile.TemporaryFile(dir=folder)
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
        self.rankings = _rankings(outputs)
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
            self.top[i] = _best_of(self.top[i], rows[_ranked(ranking, self.imageset.labels[rows], scores,
                                                             self.image_threshold)], self.scores, ranking)
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
        masks = np.setdiff1d(self.outputs.images("masks", scores, threshold, examples),
                             np.flatnonzero(self.masks_written))
        overlays = self.outputs.images("overlays", scores, threshold, examples)
        if examples is not None:  # their overlays come with the report
            overlays = np.union1d(overlays, examples)
        color_max = self.color_max()
        try:
            for row in masks:
                self.writers.submit(self._write_mask, row, self._mask(self.store[row], self.imageset.sizes[row],
                                                                      scores[row]))
            for row in overlays:
                self.writers.submit(self._write_overlay, row, self.store[row].copy(), color_max)
            self.writers.wait()
        finally:
            self.close()
        labelled = self.imageset
        rows = [{"path": labelled.paths[i], "label": int(labelled.labels[i]), "kind": labelled.kinds[i],
                 "score": float(scores[i]), "predicted": int(scores[i] >= threshold),
                 "anomalous_fraction": float(self.fraction[i]), "name": self.names[i]} for i in range(len(scores))]
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
        atomic_save_png(self.out / "overlays" / f"{self.names[row]}.png",
                        overlay(images.images[row], anomaly_map, predicted, color_max, truth), 1)


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


# A ranking: (label or None, flagged or None: which images compete; highest first; how many;
# ties: earlier row first (1) or later (-1), as outputs.images and example_groups break them).
Ranking = tuple


def _rankings(outputs: Outputs) -> list[Ranking]:
    """The rankings whose top images may get a file: the report's example sections, and
    worst:N / best:N of masks and overlays."""
    rankings = [(label, flagged, highest, N_EXAMPLES, 1) for _, label, flagged, highest in EXAMPLE_SECTIONS] \
        if outputs.report else []
    for part in (*outputs.masks, *outputs.overlays):
        if part.startswith(("worst:", "best:")):
            worst = part.startswith("worst")
            rankings.append((None, None, worst, int(part.partition(":")[2]), 1 if worst else -1))
    return rankings


def _ranked(ranking: Ranking, labels: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    label, flagged, *_ = ranking
    competing = np.ones(len(scores), bool)
    if label is not None:
        competing &= np.asarray(labels) == label
    if flagged is not None:
        competing &= (scores >= threshold) == bool(flagged)
    return competing


def _best_of(top: np.ndarray, new: np.ndarray, scores: np.ndarray, ranking: Ranking) -> np.ndarray:
    """The first `how many` of `top` and `new` rows in `ranking`'s order."""
    *_, highest, count, ties = ranking
    rows = np.r_[top, new].astype(int)
    order = np.lexsort((ties * rows, -scores[rows] if highest else scores[rows]))
    return rows[order[:count]]


def overlay(image: np.ndarray, anomaly_map: np.ndarray, predicted: np.ndarray, color_max: float,
            truth: np.ndarray | None = None) -> Image.Image:
    """Panels side by side: image | heat map over it | outline of the `predicted` mask (red,
    DISPLAY_SIZE px a side) | ground-truth outline (green, when `truth` is given)."""
    size = (DISPLAY_SIZE, DISPLAY_SIZE)
    gray_or_rgb = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    base = np.asarray(gray_or_rgb.convert("RGB").resize(size, Image.Resampling.BILINEAR))
    values = _resize(anomaly_map, size)
    heat = COLORMAP(np.clip(values / color_max, 0, 1))[..., :3] * 255
    panels = [base, (0.5 * base + 0.5 * heat).astype(np.uint8),
              _outline(base, predicted, PREDICTED_COLOR)]
    if truth is not None:
        panels.append(_outline(base, _resize(truth, size) >= 0.5, TRUTH_COLOR))
    gap = np.full((DISPLAY_SIZE, 4, 3), 255, np.uint8)
    return Image.fromarray(np.hstack([p for panel in panels for p in (panel, gap)][:-1]))


def _outline(base: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    drawn = base.copy()
    drawn[find_boundaries(mask, mode="thick")] = color
    return drawn


# ---- plots -------------------------------------------------------------------------------

def _write_plots(folder: Path, imageset, scores, curves: PixelCurves | None, metrics: dict) -> list[tuple[str, str]]:
    """The plots that the data allows (`curves`: the pixel curves, when there are pixel
    metrics); returns (title, path relative to the report)."""
    folder.mkdir(exist_ok=True)
    roc, pr, pro = {}, {}, {}
    if metrics["image"]["auroc"] is not None:
        known_scores, known_labels = labelled(scores, imageset.labels)
        fpr, tpr, _ = roc_curve(known_labels, known_scores)
        precision, recall, _ = precision_recall_curve(known_labels, known_scores)
        roc[f"image (AUROC {metrics['image']['auroc']:.3f})"] = (fpr, tpr)
        pr[f"image (AP {metrics['image']['ap']:.3f})"] = (recall, precision)
    pixel = metrics.get("pixel")
    if pixel and pixel["auroc"] is not None and curves is not None:
        roc[f"pixel (AUROC {pixel['auroc']:.3f})"] = (np.r_[0, curves.fpr], np.r_[0, curves.tpr])
        pr[f"pixel (AP {pixel['ap']:.3f})"] = (curves.tpr, curves.precision)
        pro[f"pixel (AUPRO {pixel['aupro']:.3f})"] = (np.r_[0, curves.fpr],
                                                      np.r_[0, curves.region_overlap])
    histogram = _histogram(folder / "score_histogram.png", np.asarray(imageset.labels),
                           np.asarray(scores, float), metrics["image"]["threshold"])
    plots = [("Score histogram", histogram)]
    if roc:
        plots.append(("ROC curves", _curves(folder / "roc.png", roc, "false-positive rate",
                                            "true-positive rate")))
        plots.append(("Precision-recall curves", _curves(folder / "pr.png", pr, "recall",
                                                         "precision")))
    if pro:
        plots.append((f"PRO curve (FPR up to {PRO_FPR_LIMIT:.0%})",
                      _curves(folder / "pro.png", pro, "false-positive rate (pixels)",
                              "per-region overlap", x_max=PRO_FPR_LIMIT)))
    return [(title, path.relative_to(folder.parent).as_posix()) for title, path in plots]


def _curves(path: Path, curves: dict, xlabel: str, ylabel: str, x_max: float = 1.0) -> Path:
    figure = Figure(figsize=(5, 4.2), dpi=100, layout="tight")
    axes = figure.subplots()
    for name, (x, y) in curves.items():
        axes.plot(x, y, label=name)
    axes.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, x_max), ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.savefig(path)
    return path


def _histogram(path: Path, labels: np.ndarray, scores: np.ndarray, threshold: float) -> Path:
    figure = Figure(figsize=(5, 4.2), dpi=100, layout="tight")
    axes = figure.subplots()
    edges = np.histogram_bin_edges(scores, bins=40)
    for value, name in ((0, "normal"), (1, "anomalous"), (-1, "unlabelled")):
        if np.any(labels == value):
            axes.hist(scores[labels == value], bins=edges, alpha=0.6, label=name)
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    axes.set(xlabel="image score", ylabel="images")
    axes.legend()
    figure.savefig(path)
    return path


# ---- report.html -------------------------------------------------------------------------

_STYLE = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1240px;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
.warning { background: #fdecea; border-left: 4px solid #c0392b; padding: 0.5em 1em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 0.5em; }
.examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 1em; }
.plots img { width: 100%; border: 1px solid #ddd; }
figure { margin: 0; }
figure img { width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; word-break: break-all; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
.note { color: #555; }
"""
_METRICS = [("auroc", "AUROC"), ("ap", "average precision"), ("f1_max", "F1 max"),
            ("f1", "F1 at threshold"), ("precision", "precision"),
            ("sensitivity", "sensitivity (recall)"), ("specificity", "specificity"),
            ("aupro", f"AUPRO (FPR up to {PRO_FPR_LIMIT:.0%})"), ("dice", "Dice (micro)"),
            ("iou", "IoU (micro)"), ("hausdorff", "Hausdorff (mean, original pixels)"),
            ("threshold", "threshold")]
_KIND_COLUMNS = [("image", "n_anomalous", "images"), ("image", "auroc", "image AUROC"),
                 ("image", "ap", "image AP"), ("image", "sensitivity", "detected"),
                 ("pixel", "auroc", "pixel AUROC"), ("pixel", "aupro", "AUPRO"),
                 ("pixel", "dice", "Dice"), ("pixel", "hausdorff", "Hausdorff")]


def _number(value) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_table(metrics: dict) -> str:
    levels = [level for level in ("image", "pixel") if level in metrics]
    rows = [[title] + [_number(metrics[level].get(key)) for level in levels]
            for key, title in _METRICS if any(key in metrics[level] for level in levels)]
    return _table(["metric"] + levels, rows)


def _per_kind_table(per_kind: dict) -> str:
    columns = [column for column in _KIND_COLUMNS
               if any(column[0] in entry for entry in per_kind.values())]
    rows = [[kind] + [_number(entry.get(level, {}).get(key)) for level, key, _ in columns]
            for kind, entry in per_kind.items()]
    return _table(["kind (vs. normal)"] + [title for *_, title in columns], rows)


# The report's example sections: title, label, predicted, highest score first.
EXAMPLE_SECTIONS = [
    ("False positives: normal images flagged, highest score first", 0, 1, True),
    ("False negatives: anomalies missed, lowest score first", 1, 0, False),
    ("Clearest detections: anomalies with the highest scores", 1, 1, True),
    ("Clearest normals: normal images with the lowest scores", 0, 0, False),
]


def example_groups(labels, scores, image_threshold: float) -> list[tuple[str, np.ndarray, int]]:
    """The report's examples: (title, indices of the images shown, how many qualified) per
    section of EXAMPLE_SECTIONS, at most N_EXAMPLES images each."""
    labels, scores = np.asarray(labels), np.asarray(scores, float)
    predicted = (scores >= image_threshold).astype(int)
    groups = []
    for title, label, flagged, highest_first in EXAMPLE_SECTIONS:
        chosen = np.flatnonzero((labels == label) & (predicted == flagged))
        order = np.argsort(-scores[chosen] if highest_first else scores[chosen], kind="stable")
        groups.append((title, chosen[order[:N_EXAMPLES]], len(chosen)))
    return groups


def _examples(title: str, rows: list[dict], total: int) -> str:
    if not rows:
        return f"<h3>{html.escape(title)} (none)</h3>"
    figures = "".join(
        f'<figure><a href="overlays/{row["name"]}.png"><img src="overlays/{row["name"]}.png" '
        f'alt="{html.escape(row["name"])}" loading="lazy"></a><figcaption>'
        f'{html.escape(row["path"])}<br>{html.escape(row["kind"])}, score '
        f'{row["score"]:.4g}, anomalous area {row["anomalous_fraction"]:.1%}</figcaption></figure>'
        for row in rows)
    shown = f" ({len(rows)} of {total})" if total > len(rows) else f" ({total})"
    return f'<h3>{html.escape(title)}{shown}</h3><div class="examples">{figures}</div>'


def _example_sections(rows: list[dict], groups: list[tuple[str, np.ndarray, int]]) -> str:
    return "".join(_examples(title, [rows[i] for i in shown], total) for title, shown, total in groups)


def _file_links(outputs: Outputs) -> str:
    """What this run wrote besides the report, for the report's first paragraph."""
    def which(parts: tuple[str, ...], extra: list[str]) -> str:
        if "all" in parts:
            return "every image"
        named = [part.replace("examples", "the examples below") for part in parts if part != "none"]
        return " + ".join(dict.fromkeys([*named, *extra]))

    links = [f'<a href="{name}">{name}</a>' for name, wanted in
             (("metrics.json", outputs.metrics), ("scores.csv", outputs.scores)) if wanted]
    if outputs.masks != ("none",):
        links.append(f"masks/ ({html.escape(which(outputs.masks, []))})")
    links.append(f"overlays/ ({html.escape(which(outputs.overlays, ['the examples below']))})")
    return ", ".join(links)


_VOLUME_METRICS = [("auroc", "AUROC"), ("ap", "average precision"), ("f1", "F1 at threshold"),
                   ("sensitivity", "sensitivity"), ("specificity", "specificity")]


def _volume_section(summary: dict, volumes: list[dict], rows: list[dict]) -> str:
    """Per patient: detection over volumes, then each volume's figures and a strip of its
    most anomalous slices, most anomalous volume first."""
    detection = summary.get("detection", {})
    overall = [[title, _number(detection.get(key))] for key, title in _VOLUME_METRICS]
    overall += [["3-D Dice (mean over volumes with lesion)", _number(summary.get("dice_mean"))],
                ["3-D IoU (mean over volumes with lesion)", _number(summary.get("iou_mean"))],
                ["lesion volume |predicted - true|, mean ml", _number(summary.get("lesion_ml_abs_error_mean"))],
                ["voxel AP (every voxel of every volume pooled, as MOOD)", _number(summary.get("voxel_ap"))]]
    parts = [f"<h2>Per patient ({len(volumes)} volumes)</h2>",
             f'<p class="note">Volume score: {html.escape(summary.get("score", ""))}. Files: '
             '<a href="volumes.csv">volumes.csv</a>, volumes/ (NIfTI maps and masks on each '
             "scan's grid).</p>", _table(["metric", "volumes"], overall)]
    for volume in sorted(volumes, key=lambda v: v["score"], reverse=True):
        label = {1: "lesion", 0: "no lesion", -1: "unlabelled"}[volume["label"]]
        parts.append(
            f"<h3>{html.escape(volume['volume'])}: score {volume['score']:.4g} "
            f"({'flagged' if volume['predicted'] else 'not flagged'}), {label}, {volume['slices']} slices, "
            f"lesion {_number(volume['lesion_ml'])} ml true / {volume['predicted_ml']:.4g} ml predicted, "
            f"Dice {_number(volume['dice'])}</h3>")
        parts.append('<div class="examples">' + "".join(
            f'<figure><a href="overlays/{rows[i]["name"]}.png"><img src="overlays/{rows[i]["name"]}.png" '
            f'alt="{html.escape(rows[i]["name"])}" loading="lazy"></a><figcaption>'
            f'{html.escape(rows[i]["path"])}, score {rows[i]["score"]:.4g}</figcaption></figure>'
            for i in volume["top_rows"]) + "</div>")
    return "\n".join(parts)


def _promise_line(kept: dict | None) -> list[str]:
    """The test normals flagged against the threshold's promise, as a warning when broken."""
    if kept is None:
        return []
    if kept["warning"]:
        return [f'<p class="warning"><strong>Warning:</strong> {html.escape(kept["warning"])}.</p>']
    return [f'<p>Normal images flagged: {kept["flagged"]} of {kept["normals"]} ({kept["rate"]:.1%}), '
            f'about {kept["expected_rate"]:.1%} expected.</p>']


def _render_report(metrics: dict, rows: list[dict], plots: list[tuple[str, str]],
                   settings: dict, notes: list[str], color_max: float,
                   groups: list[tuple[str, np.ndarray, int]], outputs: Outputs,
                   volumes: list[dict] | None = None) -> str:
    image = metrics["image"]
    counts = image["counts"]
    # A JSON round trip turns tuples, paths and numbers into plain YAML-able values.
    settings_yaml = yaml.safe_dump(json.loads(json.dumps(settings, default=str)),
                                   sort_keys=False)
    parts = [
        f"<h1>Anomaly detection test report</h1><p>{len(rows)} images: "
        f"{image['n_normal']} normal, {image['n_anomalous']} anomalous. At the image threshold "
        f"{image['threshold']:.4g}: {counts['tp']} true positives, {counts['fp']} false "
        f"positives, {counts['fn']} false negatives, {counts['tn']} true negatives. Files: "
        f"{_file_links(outputs)}.</p>",
        *_promise_line(metrics.get("promise")),
        "<h2>Metrics</h2>", _metrics_table(metrics),
    ]
    if "scored_pixels" in metrics:
        parts.append(f'<p class="note">Pixels scored: {html.escape(metrics["scored_pixels"])}.</p>')
    if metrics["per_kind"]:
        parts += ["<h2>Per kind</h2>", _per_kind_table(metrics["per_kind"])]
    parts += ["<h2>Plots</h2><div class=\"plots\">"]
    parts += [f'<a href="{path}"><img src="{path}" alt="{html.escape(title)}" '
              f'title="{html.escape(title)}"></a>' for title, path in plots]
    parts += [
        "</div><h2>Examples</h2>",
        f'<p class="note">Panels: image | anomaly map (colour scale 0 to {color_max:.4g}, the '
        "same for every image) | predicted mask (red) | ground truth (green, when known).</p>",
        _example_sections(rows, groups),
    ]
    if volumes:
        parts += [_volume_section(metrics.get("volume", {}), volumes, rows)]
    if notes:
        parts += ["<h2>Data notes</h2><ul>"]
        parts += [f"<li>{html.escape(note)}</li>" for note in notes] + ["</ul>"]
    parts += ["<h2>Settings</h2>", f"<pre>{html.escape(settings_yaml)}</pre>"]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>funetgan test report</title><style>{_STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
