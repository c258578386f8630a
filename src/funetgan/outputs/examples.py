"""Which images are shown or kept before all scores are known: the report's example sections
(`example_groups`) and the rankings (`rankings`) whose running top `image_files.ImageFiles` keeps
the maps of, so that the images a ranked selection (the examples, masks or overlays worst:N /
best:N) picks in the end are never dropped on the way.
"""

from __future__ import annotations

import numpy as np

from .selection import Outputs

N_EXAMPLES = 12  # images per example section of the report

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


# A ranking: (label or None, flagged or None: which images compete; highest first; how many;
# ties: earlier row first (1) or later (-1), as outputs.images and example_groups break them).
Ranking = tuple[int | None, int | None, bool, int, int]


def rankings(outputs: Outputs) -> list[Ranking]:
    """The rankings whose top images may get a file: the report's example sections, and
    worst:N / best:N of masks and overlays."""
    sections = EXAMPLE_SECTIONS if outputs.report else []
    found: list[Ranking] = [(label, flagged, highest, N_EXAMPLES, 1) for _, label, flagged, highest in sections]
    for part in (*outputs.masks, *outputs.overlays):
        if part.startswith(("worst:", "best:")):
            worst = part.startswith("worst")
            found.append((None, None, worst, int(part.partition(":")[2]), 1 if worst else -1))
    return found


def ranked(ranking: Ranking, labels: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Which of these images (their `labels` and `scores`) compete in `ranking`."""
    label, flagged, *_ = ranking
    competing = np.ones(len(scores), bool)
    if label is not None:
        competing &= np.asarray(labels) == label
    if flagged is not None:
        competing &= (scores >= threshold) == bool(flagged)
    return competing


def best_of(top: np.ndarray, new: np.ndarray, scores: np.ndarray, ranking: Ranking) -> np.ndarray:
    """The first `how many` of `top` and `new` rows in `ranking`'s order."""
    *_, highest, count, ties = ranking
    rows = np.r_[top, new].astype(int)
    order = np.lexsort((ties * rows, -scores[rows] if highest else scores[rows]))
    return rows[order[:count]]
