"""The paper's 2D samples from one KiTS19 volume (SPEC section 6): which slices and crops, and their pixels.

- Kidney task: every axial slice with any label > 0; mask = label > 0 (kidney or tumor).
- Tumor task: per axial slice, each 8-connected region of (label > 0) that contains tumor, cropped to its tight
  bounding box; mask = tumor inside that box (tumor of a neighbouring region that falls inside the box is
  labelled too, so the mask never contradicts what the image shows).
- Intensities: clip to the HU window, then (if denoising) a 3x3 mean and a 7x7 median filter. Filtering runs on
  the whole slice at its native resolution, BEFORE cropping and resizing: the filters then mean the same
  physical neighbourhood for every sample, and small tumor crops get no artificial border effects.
- Resize to size x size: images bilinear, masks nearest neighbour, both with pixel-centre alignment, so a mask
  pixel and the image pixel under it come from the same place in the slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
MEAN_FILTER_SIZE = 3
MEDIAN_FILTER_SIZE = 7


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


def window_and_denoise(slice_hu: np.ndarray, window: tuple[float, float], denoise: bool) -> np.ndarray:
    """Clip to the HU window, then 3x3 mean and 7x7 median filters if `denoise` (float32 result)."""
    clipped = np.clip(slice_hu.astype(np.float32, copy=False), window[0], window[1])
    if not denoise:
        return clipped
    smoothed = ndimage.uniform_filter(clipped, size=MEAN_FILTER_SIZE, mode="nearest")
    return ndimage.median_filter(smoothed, size=MEDIAN_FILTER_SIZE, mode="nearest")


def _source_coordinates(in_size: int, out_size: int) -> np.ndarray:
    # centre of output pixel i sits at (i + 0.5) * in/out - 0.5 in input pixel coordinates
    return (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5


def resize_image(image_2d: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize to size x size with pixel-centre alignment (edges clamp)."""
    rows = np.clip(_source_coordinates(image_2d.shape[0], size), 0, image_2d.shape[0] - 1)
    cols = np.clip(_source_coordinates(image_2d.shape[1], size), 0, image_2d.shape[1] - 1)
    grid = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(image_2d.astype(np.float32, copy=False), grid, order=1, mode="nearest")


def resize_mask(mask_2d: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize to size x size: each output pixel takes the input pixel containing its centre."""
    rows = np.minimum((np.arange(size) + 0.5) * mask_2d.shape[0] / size, mask_2d.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(size) + 0.5) * mask_2d.shape[1] / size, mask_2d.shape[1] - 1).astype(int)
    return mask_2d[np.ix_(rows, cols)]
