"""funetgan's scores and map values on [0, 1], for conventions that ask for them (the MOOD
challenge: one score per case and a voxel map, both in [0, 1]).

    p(v) = d / (d + s),   d = max(v - m, 0)

m is the median of the values of validation normals and m + s their `normal_quantile`
(score.normal_quantile, 0.99) quantile: a value at or below the normals' median gives 0, one
as high as their top 1 % gives 0.5, and p approaches 1 as the value grows. It keeps the order of
every value above the normals' median (those below tie at 0), so rankings (AUROC, average
precision) are all but those of the raw values. 1 - p falls as 1 / v rather than
exponentially (a logistic curve), so strongly anomalous voxels stay apart even in float16, in
which MOOD's evaluator reads the maps.

The parameters are fitted on calibration normals only, as thresholds are: never on the images
they are applied to. Calibration stores those of image scores and of map values
(`Calibration.unit_scale`).
"""

from __future__ import annotations

import numpy as np

# A spread of 0 (normals that all score the same) would map every higher value to 1.
MIN_SPREAD = 1e-6


def fit_unit_scale(values, quantile: float) -> dict[str, float]:
    """{"median", "spread"} of `values` (calibration normals' scores or map values)."""
    values = np.asarray(values, np.float64).ravel()
    if not len(values):
        raise ValueError("no normal values to fit the [0, 1] scale on")
    return unit_scale(*(float(v) for v in np.quantile(values, [0.5, quantile])))


def unit_scale(median: float, top: float) -> dict[str, float]:
    """{"median", "spread"} from the normals' median and their `normal_quantile` quantile."""
    return {"median": median, "spread": max(top - median, MIN_SPREAD * max(abs(top), 1.0))}


def to_unit(values, params: dict[str, float]) -> np.ndarray:
    """`values` mapped to [0, 1] by `params` (`fit_unit_scale`), as float64."""
    excess = np.maximum(np.asarray(values, np.float64) - params["median"], 0.0)
    return excess / (excess + params["spread"])
