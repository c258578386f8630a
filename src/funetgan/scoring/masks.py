"""Masks from anomaly maps: which pixels a user is told are anomalous.

The calibrated rule is a plain threshold: every pixel at or above the pixel threshold, the
`score.normal_quantile` quantile of held-out normal pixels. The other levers here were measured
against it on the selection splits of the demo's brick and of grass (benchmarks/calibration.py,
docs/benchmarks.md): hysteresis (regions kept only when their peak reaches `region_threshold`,
e.g. a per-image rate), a smallest region (`min_area`) and masks only in flagged images
(`flagged_only`) each won on at most one of the two, so none is the default; they stay for the
Python API and the benchmark. Resolution-free (areas are shares of the image), so one rule gives
the masks at the working resolution (metrics) and at the images' original size (files).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclass(frozen=True)
class MaskRule:
    pixel_threshold: float  # a pixel can belong to a region at or above this
    region_threshold: float | None = None  # a region counts only if its largest value reaches this
    min_area: float = 0.0  # regions smaller than this share of the image's pixels are dropped
    flagged_only: bool = False  # no mask in images below the image threshold

    @property
    def peak_threshold(self) -> float:
        """The region threshold in force: without one, every region's own pixels reach it."""
        return self.pixel_threshold if self.region_threshold is None else self.region_threshold

    def thresholds(self) -> dict[str, float]:
        """The rule's numbers, as metrics record them ("threshold": the pixel threshold)."""
        return {
            "threshold": float(self.pixel_threshold),
            "region_threshold": float(self.peak_threshold),
            "min_area": float(self.min_area),
            "flagged_only": self.flagged_only,
        }

    def __call__(self, maps: np.ndarray, flagged: np.ndarray | None = None) -> np.ndarray:
        """N x H x W bool masks of N x H x W `maps`; `flagged` (N bool: the image scores at or
        above the image threshold) is needed when the rule keeps masks to flagged images."""
        maps = np.asarray(maps)
        candidate = maps >= self.pixel_threshold
        if self.flagged_only:
            if flagged is None:
                raise ValueError("this mask rule needs the images' flags (score >= image threshold)")
            candidate &= np.asarray(flagged, bool)[:, None, None]
        if self.peak_threshold <= self.pixel_threshold and not self.min_area:
            return candidate  # every region reaches its own pixels' threshold: nothing to drop
        structure = np.zeros((3, 3, 3), bool)
        structure[1] = _EIGHT_CONNECTED  # regions lie within one image
        regions, count = ndimage.label(candidate, structure)
        if not count:
            return candidate
        index = np.arange(1, count + 1)
        peaks = ndimage.maximum(maps, regions, index)
        sizes = np.bincount(regions.ravel(), minlength=count + 1)[1:]
        keep = (peaks >= self.peak_threshold) & (sizes >= self.min_area * maps[0].size)
        return np.r_[False, keep][regions]
