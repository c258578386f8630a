"""What a test or prediction run writes: `--outputs ITEM ...`.

    metrics            metrics.json (test)
    scores             scores.csv (test) / predictions.csv (predict): one row per image
    report             report.html and plots/ (test); its example overlays come with it
    masks[=WHICH]      masks/<name>.png, predicted binary masks at each image's own size
    overlays[=WHICH]   overlays/<name>.png, image | heat map | outlines
    all                everything, for every image

WHICH picks images, joined by "+": all, none, flagged (score >= the image threshold),
worst:N (the N highest scores), best:N (the N lowest), examples (test: the images the
report shows). "masks" alone means masks=all. Items not named are not written.

The per-image files are what made a large test slow: written durably, an overlay costs ~9 ms
and a 28 px mask 0.5 ms even with 8 writer threads (7 and 22 ms one at a time), against ~1 ms
to score a 32 px image (docs/deployment.md). So the test default writes the numbers, the
report and the overlays of the report's examples (about 50 files whatever the test set's
size); `masks`, `overlays=flagged` or `all` ask for more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

TEST_DEFAULT = ("metrics", "scores", "report", "overlays=examples")
PREDICT_DEFAULT = ("scores", "masks=all", "overlays=all")
_SELECTION = re.compile(r"^(all|none|flagged|examples|(worst|best):(\d+))$")


@dataclass(frozen=True)
class Outputs:
    metrics: bool = True
    scores: bool = True
    report: bool = True
    masks: tuple[str, ...] = ("all",)
    overlays: tuple[str, ...] = ("all",)

    @classmethod
    def parse(cls, items: list[str] | tuple[str, ...], test: bool = True) -> Outputs:
        """From `--outputs` items (see the module docstring); `test` False for predict, which
        has no metrics, report or examples."""
        chosen: dict = {"metrics": False, "scores": False, "report": False, "masks": ("none",), "overlays": ("none",)}
        for item in items:
            name, sep, which = item.strip().partition("=")
            if name == "all" and not sep:
                chosen.update(metrics=True, scores=True, report=True, masks=("all",), overlays=("all",))
            elif name in ("metrics", "scores", "report") and not sep:
                chosen[name] = True
            elif name in ("masks", "overlays"):
                chosen[name] = _selection(name, which if sep else "all", test)
            else:
                raise UsageError(
                    f"--outputs: unknown item {item!r}; expected metrics, scores, report, "
                    f"masks[=WHICH], overlays[=WHICH] or all"
                )
            if not test and name in ("metrics", "report"):
                raise UsageError(f"--outputs: {name} is written by test only (predict has no labels)")
        return cls(**chosen)

    def images(self, kind: str, scores: np.ndarray, threshold: float, examples: np.ndarray | None = None) -> np.ndarray:
        """Sorted indices of the images whose `kind` ("masks" or "overlays") file is written."""
        scores = np.asarray(scores, float)
        chosen = np.zeros(len(scores), bool)
        order = np.argsort(-scores, kind="stable")  # highest first
        for part in getattr(self, kind):
            if part == "all":
                chosen[:] = True
            elif part == "flagged":
                chosen |= scores >= threshold
            elif part == "examples" and examples is not None:
                chosen[examples] = True
            elif part.startswith(("worst:", "best:")):
                n = int(part.partition(":")[2])
                chosen[(order if part.startswith("worst") else order[::-1])[:n]] = True
        return np.flatnonzero(chosen)


def _selection(name: str, which: str, test: bool) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in which.split("+"))
    for part in parts:
        if not _SELECTION.match(part):
            raise UsageError(
                f"--outputs: {name}={which}: expected all, none, flagged, examples, worst:N or best:N (joined by +)"
            )
        if part == "examples" and not test:
            raise UsageError(f"--outputs: {name}=examples is for test (the report's examples); use worst:N or best:N")
    return parts
