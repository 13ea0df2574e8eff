"""The axial axis of an image, found from its direction matrix (never assumed to be an array axis), and the one
(axial slice, row, column) view of its pixels that the converter, prediction, evaluation and overlays share.

`sitk.GetArrayFromImage` puts sitk index axis i at numpy axis ``ndim - 1 - i``. Which index axis holds the
slices depends on how the file was written: in the KiTS19 files it is sitk index axis 0 (nibabel's axis 0), which
numpy then holds LAST.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import SimpleITK as sitk

__all__ = ["axial_pixels", "axial_view", "pixel_view", "sitk_axes_from_direction"]


def sitk_axes_from_direction(direction: Sequence[float]) -> tuple[int, int, int]:
    """The sitk index axes that run along physical (z, y, x): superior-inferior, anterior-posterior, left-right.

    `direction` is SimpleITK's row-major 3x3 matrix; column i is the physical direction of index axis i.
    The permutation with the largest total alignment wins, so oblique scans still get one axis each.
    """
    matrix = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))
    physical_rows_zyx = (2, 1, 0)
    best = max(
        itertools.permutations(range(3)),
        key=lambda axes: sum(matrix[row, axis] for row, axis in zip(physical_rows_zyx, axes)),
    )
    return tuple(int(axis) for axis in best)  # type: ignore[return-value]


def axial_view(array: np.ndarray, direction: Sequence[float]) -> np.ndarray:
    """``array`` as (axial slice, row, column), no copy (writing into the view writes into ``array``).

    ``array`` is laid out as ``sitk.GetArrayFromImage`` gives an image whose direction matrix is ``direction``
    (9 numbers for 3D; a 2D image's 4 make it one slice). Rows follow the index axis closest to the patient's
    anterior-posterior axis, columns the one closest to left-right.
    """
    if len(direction) == 4:
        return array[None]
    if len(direction) != 9:
        raise ValueError(f"an axial view needs a 2D or 3D image, got a direction matrix of {len(direction)} numbers")
    # numpy axis j of GetArrayFromImage is sitk index axis 2 - j
    return np.transpose(array, tuple(2 - axis for axis in sitk_axes_from_direction(direction)))


class _PixelBuffer:
    """Exposes an image's pixel buffer to numpy while holding the image, so no view outlives its memory.

    ``sitk.GetArrayViewFromImage`` returns an array that does not keep the image alive: once the image is
    collected, the view reads freed memory.
    """

    def __init__(self, image: sitk.Image) -> None:
        self.image = image
        self.__array_interface__ = sitk.GetArrayViewFromImage(image).__array_interface__


def pixel_view(image: sitk.Image) -> np.ndarray:
    """A zero-copy, read-only numpy view of ``image``'s pixels (GetArrayFromImage's axis order) that keeps
    ``image`` alive."""
    return np.asarray(_PixelBuffer(image))


def axial_pixels(image: sitk.Image) -> np.ndarray:
    """``image``'s pixels as (axial slice, row, column), zero-copy and read-only (a 1059x512x512 CT stays one
    copy in memory); a 2D image is one slice. The array keeps ``image`` alive."""
    return axial_view(pixel_view(image), image.GetDirection())
