"""The paper's segmentation metrics (Eqs. 10-11) and a per-volume 3D Dice.

    IoU = |P ∩ G| / |P ∪ G|                    (Eq. 10)
    DSC = 2 |P ∩ G| / (|P| + |G|)              (Eq. 11)

computed per 2D image, then summarised as mean and standard deviation over images (population standard
deviation, numpy's default ddof=0), as the paper reports them in Table 1.

Empty masks (the paper does not say): when prediction and ground truth are both empty, IoU = DSC = 1.0 (nothing
to find, nothing found); when exactly one is empty, IoU = DSC = 0.0. nnU-Net's own summary.json instead leaves
the both-empty case out (NaN); `scores_from_counts` applies our convention to its counts.

For 3D volumes the "images" are the axial slices whose ground truth has foreground (the slices the paper's
kidney test set is made of); false positives on other slices are caught by the per-volume 3D Dice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

BOTH_EMPTY_SCORE = 1.0


@dataclass(frozen=True)
class OverlapScores:
    iou: float
    dsc: float


def scores_from_counts(true_positives: float, false_positives: float, false_negatives: float) -> OverlapScores:
    """IoU (Eq. 10) and DSC (Eq. 11) from pixel counts, with the empty-mask convention of this module."""
    union = true_positives + false_positives + false_negatives
    if union == 0:
        return OverlapScores(BOTH_EMPTY_SCORE, BOTH_EMPTY_SCORE)
    return OverlapScores(
        iou=float(true_positives / union),
        dsc=float(2 * true_positives / (2 * true_positives + false_positives + false_negatives)),
    )


def overlap_scores(prediction: np.ndarray, reference: np.ndarray) -> OverlapScores:
    """IoU and DSC of two boolean masks of the same shape (any dimension)."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground truth shape {reference.shape}")
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    true_positives = int(np.count_nonzero(prediction & reference))
    false_positives = int(np.count_nonzero(prediction & ~reference))
    false_negatives = int(np.count_nonzero(~prediction & reference))
    return scores_from_counts(true_positives, false_positives, false_negatives)


def foreground(labels: np.ndarray, label_values: Sequence[int] | None) -> np.ndarray:
    """The evaluated structure: labels in `label_values`, or any label > 0 when None (the paper's kidney mask)."""
    if not label_values:
        return labels > 0
    return np.isin(labels, np.asarray(label_values))


def mean_and_std(values: Iterable[float]) -> tuple[float | None, float | None]:
    """Mean and population standard deviation; (None, None) for an empty list (no value, and valid JSON)."""
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        return None, None
    return float(array.mean()), float(array.std())


def slice_scores(prediction_zyx: np.ndarray, reference_zyx: np.ndarray) -> dict[int, OverlapScores]:
    """Per-axial-slice scores of a volume (axis 0 = slices), over the slices with ground-truth foreground."""
    slices = np.flatnonzero(reference_zyx.reshape(reference_zyx.shape[0], -1).any(axis=1))
    return {int(k): overlap_scores(prediction_zyx[k], reference_zyx[k]) for k in slices}
