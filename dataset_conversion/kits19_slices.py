"""Which 2D samples the paper takes from one KiTS19 volume (SPEC section 6): slices and crops.

- Kidney task: every axial slice with any label > 0; mask = label > 0 (kidney or tumor). With
  `convert-kits19 --background-slices FRACTION`, a training case also gives a fixed, seeded draw of its slices
  without label, each with an empty mask (:func:`background_slices`); the paper's protocol is FRACTION 0.
- Tumor task: per axial slice, each 8-connected region of (label > 0) that contains tumor, cropped to its tight
  bounding box; mask = tumor inside that box (tumor of a neighbouring region that falls inside the box is
  labelled too, so the mask never contradicts what the image shows).

Their pixels come from :mod:`nnunet_qpg.imaging`, which prediction shares: the HU window and filters on the
whole native slice before cropping (:mod:`~nnunet_qpg.imaging.intensity`), then the pixel-centre aligned resize
to size x size (:mod:`~nnunet_qpg.imaging.resizing`).
"""

from __future__ import annotations

import zlib
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


def background_slice_count(fraction: float, available: int) -> int:
    """How many of `available` slices without label a case gives for `fraction`: round(fraction x available),
    halves rounded up (0.5 x 3 -> 2), so 1 takes them all and 0 none."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the background fraction must lie in [0, 1], got {fraction}")
    return min(available, int(np.floor(fraction * available + 0.5)))


def background_slices(case_id: str, slice_count: int, labelled_slices: np.ndarray, fraction: float) -> np.ndarray:
    """The axial slices WITHOUT label that join the kidney task's training set (empty masks), sorted.

    Of the case's `slice_count` slices, those not in `labelled_slices` are the candidates;
    :func:`background_slice_count` of them are taken: the first ones of a permutation drawn by
    ``numpy.random.default_rng(zlib.crc32(case_id))``, a seed that depends on the case name only (never on
    Python's per-process ``hash()``, the run, the worker or the other cases). So every rerun draws the same slices,
    and a larger fraction keeps every slice of a smaller one (the draws are nested).
    """
    candidates = np.setdiff1d(np.arange(int(slice_count)), np.asarray(labelled_slices, dtype=np.int64))
    count = background_slice_count(float(fraction), candidates.size)
    if count == candidates.size:
        return candidates
    order = np.random.default_rng(zlib.crc32(case_id.encode("utf-8"))).permutation(candidates.size)
    return np.sort(candidates[order[:count]])


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
