"""Side-by-side PNG figures in the style of the paper's Fig. 4: image, ground truth, one column per model.

Masks are drawn as translucent colours over the grey image, coloured by what a label MEANS, not by its value:
kidney green, tumour red, anything else blue. The value alone is ambiguous in this project: in a KiTS19
segmentation 1 is kidney and 2 tumour, in the kidney dataset (Dataset701) 1 is kidney-or-tumour, and in the
tumour dataset (Dataset702) 1 is tumour. Callers pass each mask's label names (from dataset.json, see
`overlays.label_names_of`); without names, KiTS19's (1 kidney, 2 tumour) are assumed. Each figure carries a
legend line naming the colours it uses, so a reader never has to guess. Only matplotlib's Agg backend is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunet_qpg.safe_io import atomic_path

KIDNEY_COLOUR = (0.1, 0.85, 0.2)
TUMOR_COLOUR = (0.95, 0.15, 0.15)
OTHER_COLOUR = (0.2, 0.4, 1.0)
COLOUR_WORDS = {KIDNEY_COLOUR: "green", TUMOR_COLOUR: "red", OTHER_COLOUR: "blue"}
KITS19_LABEL_NAMES = {1: "kidney", 2: "tumor"}
MASK_ALPHA = 0.45


def colour_of(name: str) -> tuple[float, float, float]:
    """The colour of a label by its name: tumour red (checked first: "kidney_tumor" is tumour), kidney green."""
    lowered = name.lower()
    if "tumor" in lowered or "tumour" in lowered:
        return TUMOR_COLOUR
    if "kidney" in lowered:
        return KIDNEY_COLOUR
    return OTHER_COLOUR


def grey_levels(image_2d: np.ndarray) -> np.ndarray:
    """Image scaled to [0, 1] between its 1st and 99th percentile (works for raw HU and windowed images)."""
    low, high = np.percentile(image_2d, [1, 99])
    if high <= low:
        low, high = float(image_2d.min()), float(image_2d.max()) + 1e-6
    return np.clip((image_2d - low) / (high - low), 0, 1)


def coloured_overlay(image_2d: np.ndarray, mask_2d: np.ndarray,
                     label_names: dict[int, str] | None = None) -> np.ndarray:
    """RGB array: the grey image with each label blended in the colour of its name (KiTS19 names by default)."""
    names = KITS19_LABEL_NAMES if label_names is None else label_names
    grey = grey_levels(image_2d.astype(np.float32))
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for label in np.unique(mask_2d):
        if label == 0:
            continue
        colour = np.asarray(colour_of(names.get(int(label), f"label {int(label)}")))
        where = mask_2d == label
        rgb[where] = (1 - MASK_ALPHA) * rgb[where] + MASK_ALPHA * colour
    return rgb


def legend_text(named_masks: list[tuple[np.ndarray, dict[int, str] | None]]) -> str:
    """'green: kidney · red: tumor' for the labels that appear in the drawn masks."""
    entries: dict[str, set[str]] = {}
    for mask, label_names in named_masks:
        names = KITS19_LABEL_NAMES if label_names is None else label_names
        for label in np.unique(mask):
            if label != 0:
                name = names.get(int(label), f"label {int(label)}")
                entries.setdefault(COLOUR_WORDS[colour_of(name)], set()).add(name)
    return " · ".join(f"{colour}: {' / '.join(sorted(names))}" for colour, names in sorted(entries.items()))


def save_overlay_figure(path: Path, image_2d: np.ndarray, ground_truth: np.ndarray | None,
                        predictions: dict[str, np.ndarray], title: str = "",
                        scores: dict[str, str] | None = None,
                        label_names: dict[str, dict[int, str] | None] | None = None) -> Path:
    """Write one row: image | ground truth | each prediction (titled with its name and optional score).

    `label_names` maps "ground truth" and each prediction name to that mask's {value: name} (None: KiTS19's).
    """
    label_names = label_names or {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("image", grey_levels(image_2d.astype(np.float32)), "gray")]
    if ground_truth is not None:
        panels.append(("ground truth", coloured_overlay(image_2d, ground_truth, label_names.get("ground truth")),
                       None))
    for name, mask in predictions.items():
        label = f"{name}\n{scores[name]}" if scores and name in scores else name
        panels.append((label, coloured_overlay(image_2d, mask, label_names.get(name)), None))
    drawn = [(ground_truth, label_names.get("ground truth"))] if ground_truth is not None else []
    drawn += [(mask, label_names.get(name)) for name, mask in predictions.items()]
    legend = legend_text(drawn)
    figure, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0), squeeze=False)
    for axis, (label, picture, colour_map) in zip(axes[0], panels):
        axis.imshow(picture, cmap=colour_map, interpolation="nearest")
        axis.set_title(label, fontsize=9)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    if legend:
        figure.text(0.5, 0.01, legend, ha="center", va="bottom", fontsize=8)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    try:
        with atomic_path(path, suffix=".png") as temporary:
            figure.savefig(temporary, dpi=110)
    finally:
        plt.close(figure)
    return path
