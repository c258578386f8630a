"""The run's tables: scores.csv (test), predictions.csv (predict) and volumes.csv (CT), one
row per image or volume."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..files import atomic_write_text

SCORE_COLUMNS = ["path", "label", "kind", "score", "predicted", "anomalous_fraction", "name"]
PREDICTION_COLUMNS = ["path", "score", "predicted", "anomalous_fraction", "name"]
VOLUME_COLUMNS = ["volume", "path", "slices", "label", "score", "predicted", "lesion_ml", "predicted_ml", "dice", "iou"]


def write_score_table(out_dir, rows: list[dict]) -> None:
    """scores.csv: one row per test image (`image_files.ImageFiles.finish`)."""
    atomic_write_text(Path(out_dir) / "scores.csv", _csv(rows, SCORE_COLUMNS))


def write_prediction_table(out_dir, rows: list[dict]) -> None:
    """predictions.csv: one row per image scored without labels."""
    atomic_write_text(Path(out_dir) / "predictions.csv", _csv(rows, PREDICTION_COLUMNS))


def write_volume_table(out_dir, volumes: list[dict]) -> None:
    """volumes.csv: one row per volume (patient)."""
    atomic_write_text(Path(out_dir) / "volumes.csv", _csv(volumes, VOLUME_COLUMNS))


def _csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
