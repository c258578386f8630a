"""Automatic lung masks for CT volumes that come without one (`data.lung_threshold`): the lung
is the air-like tissue inside the body. A HU threshold finds air and lung (-1000 and about
-850 HU, against about 0 for soft tissue); the air around the body is what is connected to a
slice's border; of the rest, the largest connected components are the lungs (gas in the
bowel and small pockets are far smaller), and their holes (vessels, nodules, lesions inside
the lung) are filled slice by slice.

Not a segmentation model: a lesion on the lung's wall (no lung around it) is not a hole and
stays outside, and so does lung that a consolidation cuts off entirely.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

KEEP_SHARE = 0.1  # components of at least this share of the largest are kept: both lungs, no gas pockets


def segment_lung(scan: np.ndarray, threshold: float) -> np.ndarray:
    """Z x H x W bool lung mask of a CT volume in HU (`read_scan`'s slice order)."""
    labels, count = ndimage.label(scan < threshold)  # 6-connected in 3-D: a lung is one component
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    border = np.concatenate([labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()])
    sizes[0] = 0  # not air
    sizes[np.unique(border)] = 0  # the air around the body
    keep = (sizes > 0) & (sizes >= KEEP_SHARE * sizes.max())
    return np.stack([ndimage.binary_fill_holes(plane) for plane in keep[labels]])
