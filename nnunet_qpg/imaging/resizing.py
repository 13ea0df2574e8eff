"""Pixel-centre aligned resizes: images bilinear, masks nearest neighbour, so a mask pixel and the image pixel
under it come from the same place in the slice. Output pixel i's centre lies at ``(i + 0.5) * in / out`` in the
input (pixel edges at integers); edges clamp.

Trained models depend on these pixels to the bit, so the arithmetic stays as it is. ``scipy.ndimage.zoom`` with
``grid_mode=True, mode="nearest"`` (``order=1`` / ``order=0``) looks like the same resize but is not bit-identical
(scipy 1.17; tests/test_imaging.py compares these functions with plain references on many shapes):

- images: zoom combines the same bilinear weights in another order; its float64 result differs in the last bit
  (up to 6e-14 for a 2x2 -> 96x96), which after the cast to float32 moves some pixels by one float32 step
  (638 of 5083 shape pairs tried had such a pixel). Here ``map_coordinates`` runs on the coordinates computed
  below, as the converter always has.
- masks: zoom takes ``floor((i + 0.5) * (in / out) - 0.5 + 0.5)``, which rounds down where an output pixel's
  centre lies exactly on an input pixel edge (300 -> 65: outputs 6, 19, 45, centres at 30, 90, 210 exactly;
  100 -> 97: output 48, centre 50) and then takes the pixel before the edge. ``(i + 0.5) * in / out`` below is
  computed from exact integers and one correctly rounded division, so its floor is the pixel that contains the
  centre, ties included (the pixel after the edge).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["resize_image", "resize_mask", "resize_mask_to"]


def _source_coordinates(in_size: int, out_size: int) -> np.ndarray:
    # centre of output pixel i sits at (i + 0.5) * in/out - 0.5 in input pixel coordinates (pixel centres at integers)
    return (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5


def resize_image(image_2d: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize to size x size with pixel-centre alignment (edges clamp); float32 result."""
    rows = np.clip(_source_coordinates(image_2d.shape[0], size), 0, image_2d.shape[0] - 1)
    cols = np.clip(_source_coordinates(image_2d.shape[1], size), 0, image_2d.shape[1] - 1)
    grid = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(image_2d.astype(np.float32, copy=False), grid, order=1, mode="nearest")


def _containing_pixels(in_size: int, out_size: int) -> np.ndarray:
    # the input pixel that contains output pixel i's centre; see the module docstring for why not scipy's zoom
    return np.minimum(((np.arange(out_size) + 0.5) * in_size / out_size).astype(int), in_size - 1)


def resize_mask_to(mask_2d: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to `shape` (rows, cols), pixel-centre aligned: each output pixel
    takes the input pixel containing its centre. A stack of label maps (..., rows, cols) is resized map by map.

    Also the inverse of :func:`resize_mask`: a mask predicted at 256 x 256 lands back on the slice it came from.
    """
    rows = _containing_pixels(mask_2d.shape[-2], shape[0])
    cols = _containing_pixels(mask_2d.shape[-1], shape[1])
    return mask_2d[..., rows[:, None], cols[None, :]]


def resize_mask(mask_2d: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize to size x size (:func:`resize_mask_to` a square)."""
    return resize_mask_to(mask_2d, (size, size))
