"""3D connected components of a label volume: keep each label's largest ones, and summarise them.

Used after volume prediction: a 2D slice model marks each slice on its own, so it can leave small spurious
islands (on slices far from the kidneys, or outside the body); keeping the two largest kidney components (and
dropping anything below a plausible organ volume) removes them.

Conventions (one for every function here):

- **Connectivity: 26.** Two foreground voxels are connected when they share a face, an edge or a corner
  (``scipy.ndimage.label`` with a 3x3x3 structure of ones), the 3D analogue of the 8-connectivity the KiTS19
  converter uses for the tumour task's regions in a slice. A 2D array gets 8-connectivity.
- **Per label value.** Components are found for each label value separately (``labels == value``), never for
  the union. So in a KiTS19-style mask (0 background, 1 kidney, 2 tumour inside or on the kidney) a tumour is a
  component of label 2 and the kidney around it a component of label 1, each kept or dropped on its own.
  Caveat: a tumour that cuts a kidney in two makes two label-1 components. To treat kidney + tumour as one
  organ (the KiTS19 "kidney" structure), run on the union and mask:
  ``kept = keep_largest_components((labels > 0).astype(np.uint8), 2, spacing); labels = np.where(kept > 0,
  labels, 0)``.
- **Axes and spacing.** ``spacing_zyx[i]`` is the voxel size in mm along array axis ``i``. Axis 0 is the axial
  (slice) axis for the slice ranges of :func:`component_summary`: pass an axial view, e.g.
  ``nnunet_qpg.imaging.axial.axial_pixels(image)`` with :func:`axial_spacing` ``(image)``.
- **Volumes** are voxel counts times the voxel volume, in mL (1 mL = 1000 mm^3).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_qpg.imaging.axial import sitk_axes_from_direction

__all__ = ["axial_spacing", "component_summary", "keep_largest_components", "label_values_of", "voxel_volume_ml"]

MM3_PER_ML = 1000.0
_CHUNK = 32  # axial slices per step when listing label values (no volume-sized temporary)


def axial_spacing(image: sitk.Image) -> tuple[float, float, float]:
    """The voxel size (mm) along the axes of ``axial_view`` / ``axial_pixels`` of a 3D image: (slice, row,
    column), found from the direction matrix as the axial view itself is."""
    if image.GetDimension() != 3:
        raise ValueError(f"axial spacing needs a 3D image, got {image.GetDimension()}D")
    spacing = image.GetSpacing()
    return tuple(float(spacing[axis]) for axis in sitk_axes_from_direction(image.GetDirection()))  # type: ignore


def voxel_volume_ml(spacing_zyx: Sequence[float]) -> float:
    """The volume of one voxel in mL: the product of the spacings (mm) / 1000."""
    spacing = [float(value) for value in spacing_zyx]
    if not spacing or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"spacing must be positive finite millimetres, got {tuple(spacing_zyx)}")
    return float(np.prod(spacing)) / MM3_PER_ML


def label_values_of(labels: np.ndarray) -> list:
    """The label values > 0 present in ``labels``, ascending (a few slices at a time: no volume-sized copy)."""
    if labels.size == 0:
        return []
    if labels.dtype == bool:
        return [True] if labels.any() else []
    found: set = set()
    step = _CHUNK if labels.ndim > 1 else labels.shape[0]
    for start in range(0, labels.shape[0], step):
        values = np.unique(labels[start:start + step])
        found.update(values[values > 0].tolist())
    return sorted(found)


def _check(labels: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    labels = np.asarray(labels)
    if len(spacing_zyx) != labels.ndim:
        raise ValueError(f"spacing {tuple(spacing_zyx)} has {len(spacing_zyx)} values for a {labels.ndim}D array")
    if not (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be an integer (or boolean) array, got {labels.dtype}")
    return voxel_volume_ml(spacing_zyx)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The tight box around ``mask``'s True voxels, or None when there is none."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=others) if others else mask)
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26- (3D) or 8- (2D) connected components of a boolean mask: (component image, voxel count of each
    component 1..n at index 1..n; index 0 is the background)."""
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(components.ravel(), minlength=count + 1) if count else np.zeros(1, dtype=np.int64)
    return components, sizes


def _values(labels: np.ndarray, label_values: Iterable | None) -> list:
    if label_values is None:
        return label_values_of(labels)
    values = [value for value in label_values]
    if any(value == 0 for value in values):
        raise ValueError("label value 0 is the background; give the foreground labels to clean")
    return values


def keep_largest_components(labels: np.ndarray, count: int | None, spacing_zyx: Sequence[float],
                            min_volume_ml: float | None = None, label_values: Iterable | None = None) -> np.ndarray:
    """A copy of ``labels`` (same dtype and shape) where, for each label value separately, only the ``count``
    largest 26-connected components are kept, and none smaller than ``min_volume_ml``; removed voxels become 0.

    ``labels``: integer (or boolean) array, e.g. a predicted mask as (slice, row, column).
    ``count``: components kept per label value (>= 1), the largest by volume (equal volumes: the first in
    scipy's raster order); None keeps any number (only ``min_volume_ml`` then removes anything).
    ``spacing_zyx``: voxel size in mm along each array axis (for the volumes).
    ``min_volume_ml``: components below this volume (mL; 1 mL = 1000 mm^3) are removed first, even among the
    ``count`` largest; None keeps every size.
    ``label_values``: the label values to clean (others are left as they are); None: every value > 0 present.

    Components are computed per label value (see the module's notes on KiTS19-style nesting). An empty input
    (no foreground, or a zero-size array) comes back as an unchanged copy.
    """
    labels = np.asarray(labels)
    voxel_ml = _check(labels, spacing_zyx)
    if count is not None and (isinstance(count, bool) or int(count) != count or count < 1):
        raise ValueError(f"count must be a whole number >= 1 (or None for any number), got {count!r}")
    if min_volume_ml is not None and not (np.isfinite(min_volume_ml) and min_volume_ml >= 0):
        raise ValueError(f"min_volume_ml must be a volume in mL >= 0, got {min_volume_ml!r}")
    result = labels.copy()
    for value in _values(labels, label_values):
        mask = labels == value
        box = _bounding_box(mask)
        if box is None:
            continue
        components, sizes = _components(mask[box])
        ids = np.arange(1, sizes.size)
        if min_volume_ml is not None:
            ids = ids[sizes[ids] * voxel_ml >= min_volume_ml]
        if count is not None and ids.size > count:
            ids = ids[np.argsort(-sizes[ids], kind="stable")[:int(count)]]
        if ids.size == sizes.size - 1:
            continue  # nothing removed
        keep = np.zeros(sizes.size, dtype=bool)
        keep[ids] = True
        removed = (components > 0) & ~keep[components]
        result[box][removed] = 0
    return result


def component_summary(labels: np.ndarray, spacing_zyx: Sequence[float],
                      label_values: Iterable | None = None) -> dict:
    """Per label value (> 0 present, or the given ones): what a mask holds, for a per-volume report.

    Returns ``{value: {"voxels", "volume_ml", "first_slice", "last_slice", "slices", "components",
    "largest_components_ml"}}`` (values as Python ints, in ascending order):
      voxels / volume_ml   how much of the label there is (volume_ml = voxels x voxel volume / 1000);
      first_slice / last_slice   the first and last index along axis 0 (the axial axis of an axial view) holding
                           the label, None when it is absent; slices: how many axial slices hold it;
      components           its number of 26-connected components (per label value, as in
                           :func:`keep_largest_components`); largest_components_ml: their volumes, largest
                           first (at most 5).
    A given label value that is absent gets zeros and None; with ``label_values`` None an empty mask gives {}.
    JSON note: the keys are ints; ``{str(k): v ...}`` for a JSON object.
    """
    labels = np.asarray(labels)
    voxel_ml = _check(labels, spacing_zyx)
    summary = {}
    for value in _values(labels, label_values):
        mask = labels == value
        box = _bounding_box(mask)
        key = int(value)
        if box is None:
            summary[key] = {"voxels": 0, "volume_ml": 0.0, "first_slice": None, "last_slice": None, "slices": 0,
                            "components": 0, "largest_components_ml": []}
            continue
        components, sizes = _components(mask[box])
        voxels = int(sizes[1:].sum())
        per_slice = mask[box].any(axis=tuple(range(1, mask.ndim))) if mask.ndim > 1 else mask[box]
        largest = np.sort(sizes[1:])[::-1][:5]
        summary[key] = {
            "voxels": voxels,
            "volume_ml": voxels * voxel_ml,
            "first_slice": int(box[0].start),
            "last_slice": int(box[0].stop - 1),
            "slices": int(per_slice.sum()),
            "components": int(sizes.size - 1),
            "largest_components_ml": [float(size * voxel_ml) for size in largest],
        }
    return summary
