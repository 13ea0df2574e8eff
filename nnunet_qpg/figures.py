"""Side-by-side PNG figures in the style of the paper's Fig. 4: image, ground truth, one column per model.

Masks are drawn as translucent colours over the grey image (label 1 green, label 2 red, others blue), so a
reader sees at once where a model over- or under-segments. Only matplotlib's Agg backend is used (no display).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

LABEL_COLOURS = {1: (0.1, 0.85, 0.2), 2: (0.95, 0.15, 0.15)}
OTHER_COLOUR = (0.2, 0.4, 1.0)
MASK_ALPHA = 0.45


def grey_levels(image_2d: np.ndarray) -> np.ndarray:
    """Image scaled to [0, 1] between its 1st and 99th percentile (works for raw HU and windowed images)."""
    low, high = np.percentile(image_2d, [1, 99])
    if high <= low:
        low, high = float(image_2d.min()), float(image_2d.max()) + 1e-6
    return np.clip((image_2d - low) / (high - low), 0, 1)


def coloured_overlay(image_2d: np.ndarray, mask_2d: np.ndarray) -> np.ndarray:
    """RGB array: the grey image with each label blended in its colour."""
    grey = grey_levels(image_2d.astype(np.float32))
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for label in np.unique(mask_2d):
        if label == 0:
            continue
        colour = np.asarray(LABEL_COLOURS.get(int(label), OTHER_COLOUR))
        where = mask_2d == label
        rgb[where] = (1 - MASK_ALPHA) * rgb[where] + MASK_ALPHA * colour
    return rgb


def save_overlay_figure(path: Path, image_2d: np.ndarray, ground_truth: np.ndarray | None,
                        predictions: dict[str, np.ndarray], title: str = "",
                        scores: dict[str, str] | None = None) -> Path:
    """Write one row: image | ground truth | each prediction (titled with its name and optional score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("image", grey_levels(image_2d.astype(np.float32)), "gray")]
    if ground_truth is not None:
        panels.append(("ground truth", coloured_overlay(image_2d, ground_truth), None))
    for name, mask in predictions.items():
        label = f"{name}\n{scores[name]}" if scores and name in scores else name
        panels.append((label, coloured_overlay(image_2d, mask), None))
    figure, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0), squeeze=False)
    for axis, (label, picture, colour_map) in zip(axes[0], panels):
        axis.imshow(picture, cmap=colour_map, interpolation="nearest")
        axis.set_title(label, fontsize=9)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temp_name, dpi=110)
        os.replace(temp_name, path)
    finally:
        plt.close(figure)
        Path(temp_name).unlink(missing_ok=True)
    return path
