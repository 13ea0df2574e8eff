"""Which 2D samples the paper takes from one KiTS19 volume (SPEC section 6): slices and crops.

- Kidney task: every axial slice with any label > 0; mask = label > 0 (kidney or tumor).
- Tumor task: per axial slice, each 8-connected region of (label > 0) that contains tumor, cropped to its tight
  bounding box; mask = tumor inside that box (tumor of a neighbouring region that falls inside the box is
  labelled too, so the mask never contradicts what the image shows).

Their pixels come from :mod:`nnunet_qpg.imaging`, which prediction shares: the HU window and filters on the
whole native slice before cropping (:mod:`~nnunet_qpg.imaging.intensity`), then the pixel-centre aligned resize
to size x size (:mod:`~nnunet_qpg.imaging.resizing`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class TumorRegion:
    """A tumor-bearing 8-connected region of one slice: its rank in the slice and its bounding box."""

    region: int  # 1-based, in scipy's raster order among the slice's tumor-bearing regions
    row_start: int
    row_stop: int
    col_start: int
    col_stop: int


def slices_with_labels(labels_zyx: np.ndarray) -> np.ndarray:
    """Indices of the axial slices with any label > 0 (the kidney task's slices).

    Labels are non-negative (checked before), so a slice's maximum is > 0 exactly when it has a label; the
    maximum needs no volume-sized boolean temporary, unlike `labels > 0`.
    """
    return np.flatnonzero(labels_zyx.max(axis=(1, 2)) > 0)


def tumor_regions(labels_2d: np.ndarray) -> list[TumorRegion]:
    """The 8-connected regions of (label > 0) in one slice that contain tumor (label 2), with tight boxes."""
    components, _ = ndimage.label(labels_2d > 0, structure=EIGHT_CONNECTED)
    boxes = ndimage.find_objects(components)
    tumor_components = np.unique(components[labels_2d == 2])
    regions = []
    for rank, component in enumerate(c for c in tumor_components if c > 0):
        rows, cols = boxes[component - 1]
        regions.append(TumorRegion(rank + 1, rows.start, rows.stop, cols.start, cols.stop))
    return regions
