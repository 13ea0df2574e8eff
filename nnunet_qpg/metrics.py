"""The paper's segmentation metrics (Eqs. 10-11) and a per-volume 3D Dice.

    IoU = |P ∩ G| / |P ∪ G|                    (Eq. 10)
    DSC = 2 |P ∩ G| / (|P| + |G|)              (Eq. 11)

computed per 2D image, then summarised as mean and standard deviation over images (population standard
deviation, numpy's default ddof=0), as the paper reports them in Table 1.

Empty masks (the paper does not say): when prediction and ground truth are both empty, IoU = DSC = 1.0 (nothing
to find, nothing found); when exactly one is empty, IoU = DSC = 0.0. nnU-Net's own summary.json instead leaves
the both-empty case out (NaN); `scores_from_counts` applies our convention to its counts.

For 3D volumes the "images" are the axial slices whose ground truth has foreground (the slices the paper's
kidney test set is made of); false positives on other slices are caught by the per-volume scores below.

Per-volume (per-case) scores, on masks viewed as (axial slice, row, column) with the voxel size in mm along
those axes (``spacing_zyx``):

- 3D Dice: DSC (Eq. 11) over all voxels of the volume (:func:`overlap_scores`), the KiTS19 challenge's score.
- KiTS19 grouping (:func:`kits19_scores`): "kidney" = labels 1 + 2 (kidney and tumour), "tumor" = label 2;
  3D Dice of each per case. The challenge ranks by their mean ("composite").
- Surface: the foreground voxels with at least one background 6-neighbour (face neighbour); voxels outside the
  array count as background, so a mask touching the border has surface there (:func:`surface_voxels`).
- Distance of a surface voxel to the other mask's surface: the Euclidean distance in mm between voxel centres
  to the nearest surface voxel of the other mask, in physical positions (index times ``spacing_zyx``; found with
  a k-d tree, ``scipy.spatial.cKDTree``).
- Surface Dice at tolerance t (Nikolov et al. 2021, counted in voxels rather than surface area):
  (#{p in S_P : d(p, S_G) <= t} + #{g in S_G : d(g, S_P) <= t}) / (#S_P + #S_G).
- HD95: the 95th percentile (numpy's default linear interpolation) of the symmetric set of surface distances,
  {d(p, S_G) : p in S_P} and {d(g, S_P) : g in S_G} pooled, in mm. (Some tools instead take the larger of the
  two directed 95th percentiles; that is >= this value.)
- False-positive slices: axial slices where the prediction has foreground and the ground truth has none (what a
  2D model trained only on slices with kidney does on the others).

Empty masks (same spirit as above): both empty -> 3D Dice 1, surface Dice 1, HD95 0.0; exactly one empty ->
3D Dice 0, surface Dice 0, HD95 None (undefined: there is no surface to measure to; null in JSON, left out of
HD95 means, which say over how many volumes they are taken). Never NaN or inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

BOTH_EMPTY_SCORE = 1.0
BOTH_EMPTY_HD95_MM = 0.0
DEFAULT_SURFACE_TOLERANCE_MM = 1.0
HD95_PERCENTILE = 95.0
_TOLERANCE_SLACK_MM = 1e-6  # distances are sums of float squares: 1.0 mm may come out as 1.0000000000000002
KITS19_KIDNEY_LABELS, KITS19_TUMOR_LABEL = (1, 2), 2


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
    slices = np.flatnonzero(reference_zyx.any(axis=tuple(range(1, reference_zyx.ndim))))
    return {int(k): overlap_scores(prediction_zyx[k], reference_zyx[k]) for k in slices}


def false_positive_slices(prediction_zyx: np.ndarray, reference_zyx: np.ndarray) -> int:
    """The number of axial slices (axis 0) where the prediction has foreground and the ground truth has none."""
    if prediction_zyx.shape != reference_zyx.shape:
        raise ValueError(f"prediction shape {prediction_zyx.shape} differs from ground truth shape "
                         f"{reference_zyx.shape}")
    in_plane = tuple(range(1, prediction_zyx.ndim))  # no reshape: an axial view is a transposed, strided array
    predicted, present = prediction_zyx.any(axis=in_plane), reference_zyx.any(axis=in_plane)
    return int(np.count_nonzero(predicted & ~present))


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """The surface of a boolean mask: its voxels with at least one background 6-neighbour (face neighbour in 3D,
    4-neighbour in 2D); outside the array counts as background."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


@dataclass(frozen=True)
class SurfaceScores:
    surface_dice: float
    hd95_mm: float | None  # None: exactly one mask is empty (undefined)


def surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(distances in mm from each prediction surface voxel to the reference surface, and from each reference
    surface voxel to the prediction surface), both masks non-empty, same shape; see the module notes.

    Nearest surface voxels by a k-d tree over the surface voxels' physical positions (scipy's cKDTree): exactly
    the Euclidean distances a distance transform of the surfaces gives, with memory and time in the number of
    surface voxels, not in the size of the box around both masks (islands spread over a whole CT cost little).
    """
    from scipy.spatial import cKDTree

    prediction, reference = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    spacing = np.asarray([float(value) for value in spacing_zyx])
    prediction_points = np.argwhere(surface_voxels(prediction)) * spacing
    reference_points = np.argwhere(surface_voxels(reference)) * spacing
    to_reference = cKDTree(reference_points).query(prediction_points)[0]
    to_prediction = cKDTree(prediction_points).query(reference_points)[0]
    return to_reference, to_prediction


def surface_scores(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float],
                   tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM) -> SurfaceScores:
    """Surface Dice at ``tolerance_mm`` and HD95 (mm) of two boolean masks on one voxel grid with voxel size
    ``spacing_zyx`` (mm along each array axis); definitions and empty-mask conventions in the module notes.
    A distance counts as within the tolerance up to 1e-6 mm of rounding."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground truth shape {reference.shape}")
    if len(spacing_zyx) != prediction.ndim:
        raise ValueError(f"spacing {tuple(spacing_zyx)} has {len(spacing_zyx)} values for {prediction.ndim}D masks")
    predicted, present = bool(np.any(prediction)), bool(np.any(reference))
    if not predicted and not present:
        return SurfaceScores(BOTH_EMPTY_SCORE, BOTH_EMPTY_HD95_MM)
    if not predicted or not present:
        return SurfaceScores(0.0, None)
    to_reference, to_prediction = surface_distances(prediction, reference, spacing_zyx)
    limit = float(tolerance_mm) + _TOLERANCE_SLACK_MM
    within = int(np.count_nonzero(to_reference <= limit)) + int(np.count_nonzero(to_prediction <= limit))
    pooled = np.concatenate([to_reference, to_prediction])
    return SurfaceScores(surface_dice=within / pooled.size,
                         hd95_mm=float(np.percentile(pooled, HD95_PERCENTILE)))


def kits19_scores(prediction_labels: np.ndarray, reference_labels: np.ndarray) -> dict[str, float]:
    """The KiTS19 challenge's per-case scores from label volumes (0 background, 1 kidney, 2 tumour):
    ``{"kidney_dice": 3D Dice of labels 1+2, "tumor_dice": 3D Dice of label 2}`` (empty convention as above).

    A kidney-only model's mask (labels 0/1) gets a tumour Dice too (0, or 1 where the case has no tumour);
    callers that know the model predicts no tumour report it as n/a instead (see nnunet_qpg.evaluation).
    """
    kidney = overlap_scores(foreground(prediction_labels, KITS19_KIDNEY_LABELS),
                            foreground(reference_labels, KITS19_KIDNEY_LABELS)).dsc
    tumor = overlap_scores(prediction_labels == KITS19_TUMOR_LABEL, reference_labels == KITS19_TUMOR_LABEL).dsc
    return {"kidney_dice": kidney, "tumor_dice": tumor}
