"""The paper's CT intensities (SPEC section 6): clip to the HU window, then (if denoising) a 3x3 mean and a 7x7
median filter, both with edge replication.

Filtering runs on the whole slice at its native resolution, BEFORE cropping and resizing: the filters then mean
the same physical neighbourhood for every sample, and small crops get no artificial border effects. A model is
trained on these pixels, so prediction calls the same function with the settings its dataset.json records.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["MEAN_FILTER_SIZE", "MEDIAN_FILTER_SIZE", "window_and_denoise"]

MEAN_FILTER_SIZE = 3
MEDIAN_FILTER_SIZE = 7


def window_and_denoise(slice_hu: np.ndarray, window: tuple[float, float], denoise: bool) -> np.ndarray:
    """Clip to the HU window, then 3x3 mean and 7x7 median filters if `denoise` (float32 result)."""
    clipped = np.clip(slice_hu.astype(np.float32, copy=False), window[0], window[1])
    if not denoise:
        return clipped
    smoothed = ndimage.uniform_filter(clipped, size=MEAN_FILTER_SIZE, mode="nearest")
    return ndimage.median_filter(smoothed, size=MEDIAN_FILTER_SIZE, mode="nearest")
