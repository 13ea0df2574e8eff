"""Evaluating a folder of predicted masks against ground truth: pairs the files, reads them, applies metrics.

Predictions are matched to ground truth by case name (`{case}.nii.gz`, nnU-Net's naming). The ground truth may
also be a KiTS19 folder (`case_XXXXX/segmentation.nii.gz`). 2D images give one score each; 3D volumes give a
score per axial slice with foreground (axial axis from the direction matrix) plus per-volume (per-case) scores of
the evaluated structure: 3D Dice, surface Dice at a tolerance (default 1 mm) and HD95 in mm (physical spacing from
the ground truth's header), and the number of false-positive slices (axial slices with predicted foreground and
none in the ground truth); and, when both masks hold KiTS19 labels (values within 0, 1, 2), the KiTS19
challenge's per-case Dice of kidney (labels 1 + 2) and tumour (label 2). Definitions and empty-mask conventions:
:mod:`nnunet_qpg.metrics`.

The KiTS19 tumour Dice is scored only when at least one scored prediction holds label 2 (a two-stage,
predict-kits19 or 3D KiTS19 model); a kidney-only model's masks (labels 0/1) get null for it ("n/a"), not a 0
that would only say that the model was never asked to find tumours.

Every file is read through :func:`nnunet_qpg.imaging.reading.read_image`, so a truncated or corrupt mask is an
error naming the file, never scored as the zeros ITK would return for its missing voxels. A prediction must lie
on its ground truth's voxel grid: same dimension and size, and spacing, origin and direction equal within the
tolerances the KiTS19 converter uses for image and segmentation (:func:`geometry_difference`). A pair that fails
(unreadable file, other grid, two files for one case) is named and left out of the scores, and the evaluation
says so (``unscored``); the command then exits 1. Scores are never NaN: a summary over no image is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.imaging.axial import axial_view
from nnunet_qpg.imaging.case_names import files_by_case
from nnunet_qpg.imaging.components import axial_spacing
from nnunet_qpg.imaging.reading import UnreadableImageError, read_image
from nnunet_qpg.metrics import (
    BOTH_EMPTY_HD95_MM,
    DEFAULT_SURFACE_TOLERANCE_MM,
    KITS19_TUMOR_LABEL,
    false_positive_slices,
    foreground,
    kits19_scores,
    mean_and_std,
    overlap_scores,
    slice_scores,
    surface_scores,
)

__all__ = [
    "GEOMETRY_TOLERANCES",
    "Evaluation",
    "EvaluationError",
    "Pairing",
    "evaluate_folders",
    "evaluate_pairs",
    "format_table",
    "geometry_difference",
    "ground_truth_files",
    "pair_files",
]

# name -> absolute tolerance (relative tolerance 1e-4 on top), as the KiTS19 converter checks image and mask
GEOMETRY_TOLERANCES = {"spacing": 1e-3, "origin": 1e-2, "direction": 1e-3}
SHOWN_NAMES = 5


class EvaluationError(Exception):
    """Predictions and ground truth that cannot be compared at all; the message names the folders."""


class _UnscoredPair(Exception):
    """One pair that cannot be scored; the message names the file and the problem."""


# per-volume metric -> what it is (the JSON's "per_volume_metrics"); every key is in each "per_volume" row
PER_VOLUME_METRICS = {
    "dice_3d": "DSC over all voxels of the volume (the evaluated structure)",
    "slices": "axial slices with ground-truth foreground (scored as images)",
    "surface_dice": "surface Dice at surface_tolerance_mm: surface voxels (foreground with a background "
                    "6-neighbour) of each mask within the tolerance of the other's surface, over all surface "
                    "voxels of both; both empty 1.0, one empty 0.0",
    "hd95_mm": "95th percentile (linear interpolation) of the surface distances of both directions pooled, mm; "
               f"both empty {BOTH_EMPTY_HD95_MM}, one empty null (undefined, left out of the mean)",
    "false_positive_slices": "axial slices where the prediction has foreground and the ground truth has none",
    "predicted_slices": "axial slices where the prediction has foreground",
    "kits19_kidney_dice": "KiTS19 per-case score: DSC of labels 1 + 2 (kidney and tumour); null unless both "
                          "masks hold only labels 0, 1, 2",
    "kits19_tumor_dice": "KiTS19 per-case score: DSC of label 2 (tumour); null unless both masks hold only "
                         "labels 0, 1, 2, and null for every case when no prediction holds label 2 (n/a)",
}
# the per-volume metrics whose mean and std the summary holds ({metric}_mean, {metric}_std)
_VOLUME_MEANS = ("dice_3d", "surface_dice", "hd95_mm", "false_positive_slices", "kits19_kidney_dice",
                 "kits19_tumor_dice")


@dataclass
class Evaluation:
    labels: list[int] | None
    images: list[dict] = field(default_factory=list)  # {"image", "iou", "dsc"}
    volumes: list[dict] = field(default_factory=list)  # {"case", "dice_3d", "slices", ...: PER_VOLUME_METRICS}
    missing_predictions: list[str] = field(default_factory=list)
    unscored: list[dict] = field(default_factory=list)  # {"case", "prediction", "ground_truth", "problem"}
    surface_tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM
    tumor_predicted: bool = False  # some scored prediction holds KiTS19 label 2: the tumour Dice is scored

    def summary(self) -> dict:
        """Mean and std over the scored images (and volumes); ``None`` where nothing was scored (never NaN).

        With volumes: ``{metric}_mean`` and ``{metric}_std`` for each per-volume metric, over the volumes where
        it is defined (``hd95_volumes`` and ``kits19_volumes`` say how many), ``false_positive_slices_total``,
        and ``kits19_composite_dice`` (mean of the kidney and tumour means, the challenge's ranking score; null
        when the tumour is n/a).
        """
        iou_mean, iou_std = mean_and_std(row["iou"] for row in self.images)
        dsc_mean, dsc_std = mean_and_std(row["dsc"] for row in self.images)
        result = {"images": len(self.images), "iou_mean": iou_mean, "iou_std": iou_std,
                  "dsc_mean": dsc_mean, "dsc_std": dsc_std}
        if self.volumes:
            result["volumes"] = len(self.volumes)
            for metric in _VOLUME_MEANS:
                mean, std = mean_and_std(row[metric] for row in self.volumes if row.get(metric) is not None)
                result[f"{metric}_mean"], result[f"{metric}_std"] = mean, std
            result["surface_tolerance_mm"] = self.surface_tolerance_mm
            result["hd95_volumes"] = sum(row.get("hd95_mm") is not None for row in self.volumes)
            result["false_positive_slices_total"] = sum(row.get("false_positive_slices", 0) for row in self.volumes)
            result["kits19_volumes"] = sum(row.get("kits19_kidney_dice") is not None for row in self.volumes)
            kidney, tumor = result["kits19_kidney_dice_mean"], result["kits19_tumor_dice_mean"]
            result["kits19_composite_dice"] = None if kidney is None or tumor is None else (kidney + tumor) / 2
        return result

    def to_dict(self) -> dict:
        from nnunet_qpg.metrics import BOTH_EMPTY_SCORE

        result = {
            "metrics": "IoU (Eq. 10) and DSC (Eq. 11) per 2D image; mean and population std over images",
            "empty_masks": f"both empty -> {BOTH_EMPTY_SCORE}, one empty -> 0.0",
            "volumes_per_image": "3D volumes count each axial slice with ground-truth foreground as one image",
            "no_images": "a mean and std over no scored image are null",
            "labels": self.labels if self.labels else "any label > 0",
            "summary": self.summary(),
            "per_image": self.images,
            "per_volume": self.volumes,
            "missing_predictions": self.missing_predictions,
            "unscored": self.unscored,
        }
        if self.volumes:
            result["per_volume_metrics"] = dict(PER_VOLUME_METRICS)
            result["surface_tolerance_mm"] = self.surface_tolerance_mm
            result["kits19_tumor"] = (
                "scored: some prediction holds label 2" if self.tumor_predicted else
                "n/a: no prediction holds label 2 (a kidney-only model's masks); kits19_tumor_dice is null")
        return result


@dataclass
class Pairing:
    """Predictions matched to ground truth by case name."""

    pairs: dict[str, tuple[Path, Path]]  # case -> (prediction, ground truth)
    missing_predictions: list[str]
    ambiguous: list[dict]  # {"case", "prediction", "ground_truth", "problem"}: several files for one case

    def files(self) -> list[Path]:
        return [path for pair in self.pairs.values() for path in pair]


def ground_truth_files(folder: Path) -> dict[str, Path]:
    """case name -> ground-truth file, for an nnU-Net labels folder or a KiTS19 data folder (cases with several
    files are left out; :func:`pair_files` names them)."""
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder of ground-truth masks")
    return {case: paths[0] for case, paths in files_by_case(folder, "segmentation.nii.gz").items()
            if len(paths) == 1}


def _names(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:SHOWN_NAMES])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > SHOWN_NAMES else shown or "none"


def pair_files(predictions: Path, ground_truth: Path) -> Pairing:
    """Match prediction files to ground-truth files by case name.

    Raises EvaluationError (naming the folders and a few names on each side) when a folder is missing, holds no
    masks, or no prediction matches any ground-truth case.
    """
    if not predictions.is_dir():
        raise EvaluationError(f"{predictions} is not a folder of predicted masks; give the folder the "
                              f"prediction wrote ({{case}}.nii.gz files)")
    if not ground_truth.is_dir():
        raise EvaluationError(f"{ground_truth} is not a folder of ground-truth masks; give an nnU-Net labels "
                              f"folder (labelsTs/) or a KiTS19 data folder")
    predicted = files_by_case(predictions)
    references = files_by_case(ground_truth, "segmentation.nii.gz")
    if not references:
        raise EvaluationError(f"no .nii/.nii.gz masks (or case_*/segmentation.nii.gz) in {ground_truth}")
    if not predicted:
        raise EvaluationError(f"no .nii/.nii.gz predictions in {predictions}")
    matched = sorted(set(predicted) & set(references))
    if not matched:
        raise EvaluationError(
            f"no prediction in {predictions} matches a ground-truth case in {ground_truth} by name "
            f"(predictions: {_names(predicted)}; ground truth: {_names(references)}). A prediction "
            f"{{case}}.nii.gz is compared with {{case}}.nii.gz, {{case}}_0000.nii.gz or {{case}}/segmentation.nii.gz; "
            f"check that the two folders belong together")
    pairs, ambiguous = {}, []
    for case in matched:
        if len(predicted[case]) > 1 or len(references[case]) > 1:
            several = [paths for paths in (predicted[case], references[case]) if len(paths) > 1][0]
            ambiguous.append({"case": case, "prediction": str(predicted[case][0]),
                              "ground_truth": str(references[case][0]),
                              "problem": f"{len(several)} files for this case ({', '.join(str(p) for p in several)}); "
                                         f"keep one of them"})
            continue
        pairs[case] = (predicted[case][0], references[case][0])
    missing = sorted(set(references) - set(predicted))
    return Pairing(pairs=pairs, missing_predictions=missing, ambiguous=ambiguous)


def geometry_difference(image: sitk.Image, reference: sitk.Image, reference_name: str = "the ground truth"
                        ) -> str | None:
    """How ``image`` is off ``reference``'s voxel grid (dimension, size, spacing, origin, direction), or None.

    Tolerances are the converter's for a KiTS19 image and its segmentation (:data:`GEOMETRY_TOLERANCES`).
    """
    if image.GetDimension() != reference.GetDimension():
        return f"is {image.GetDimension()}D but {reference_name} is {reference.GetDimension()}D"
    if image.GetSize() != reference.GetSize():
        return f"has size {image.GetSize()} but {reference_name} has {reference.GetSize()}"
    for name, of_image, of_reference in (("spacing", image.GetSpacing(), reference.GetSpacing()),
                                         ("origin", image.GetOrigin(), reference.GetOrigin()),
                                         ("direction", image.GetDirection(), reference.GetDirection())):
        if not np.allclose(of_image, of_reference, atol=GEOMETRY_TOLERANCES[name], rtol=1e-4):
            return (f"has {name} {tuple(round(v, 4) for v in of_image)} but {reference_name} has "
                    f"{tuple(round(v, 4) for v in of_reference)}")
    return None


def _kits19_labels(labels: np.ndarray) -> bool:
    """True when every value is one of KiTS19's labels 0, 1, 2."""
    if labels.size == 0 or labels.min() < 0 or labels.max() > 2:
        return False
    return bool(np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool or np.all(np.mod(labels, 1) == 0))


def _volume_scores(evaluation: Evaluation, prediction_image: sitk.Image, reference_image: sitk.Image,
                   prediction_zyx: np.ndarray, reference_zyx: np.ndarray) -> dict:
    """The per-volume scores besides the 3D Dice (PER_VOLUME_METRICS), for the evaluated structure's axial
    views and the raw label volumes (KiTS19 grouping)."""
    surface = surface_scores(prediction_zyx, reference_zyx, axial_spacing(reference_image),
                             evaluation.surface_tolerance_mm)
    row = {
        "surface_dice": surface.surface_dice,
        "hd95_mm": surface.hd95_mm,
        "false_positive_slices": false_positive_slices(prediction_zyx, reference_zyx),
        "predicted_slices": int(np.count_nonzero(prediction_zyx.any(axis=(1, 2)))),
        "kits19_kidney_dice": None,
        "kits19_tumor_dice": None,
    }
    predicted_labels = sitk.GetArrayViewFromImage(prediction_image)
    reference_labels = sitk.GetArrayViewFromImage(reference_image)
    if _kits19_labels(predicted_labels) and _kits19_labels(reference_labels):
        scores = kits19_scores(predicted_labels, reference_labels)
        row["kits19_kidney_dice"], row["kits19_tumor_dice"] = scores["kidney_dice"], scores["tumor_dice"]
        evaluation.tumor_predicted |= bool(np.any(predicted_labels == KITS19_TUMOR_LABEL))
    return row


def _score_pair(evaluation: Evaluation, case: str, prediction_path: Path, reference_path: Path,
                labels: Sequence[int] | None) -> None:
    prediction_image, reference_image = read_image(prediction_path), read_image(reference_path)
    difference = geometry_difference(prediction_image, reference_image, f"its ground truth {reference_path}")
    if difference:
        raise _UnscoredPair(f"{prediction_path}: {difference}; a prediction must be on its ground truth's voxel grid "
                            f"(predict from the images that belong to this ground truth)")
    prediction_mask = foreground(sitk.GetArrayViewFromImage(prediction_image), labels)
    reference_mask = foreground(sitk.GetArrayViewFromImage(reference_image), labels)
    is_volume = reference_image.GetDimension() == 3 and min(reference_image.GetSize()) > 1
    if not is_volume:
        scores = overlap_scores(prediction_mask, reference_mask)
        evaluation.images.append({"image": case, "iou": scores.iou, "dsc": scores.dsc})
        return
    direction = reference_image.GetDirection()
    prediction_zyx, reference_zyx = axial_view(prediction_mask, direction), axial_view(reference_mask, direction)
    per_slice = slice_scores(prediction_zyx, reference_zyx)
    row = {"case": case, "dice_3d": overlap_scores(prediction_mask, reference_mask).dsc, "slices": len(per_slice)}
    row.update(_volume_scores(evaluation, prediction_image, reference_image, prediction_zyx, reference_zyx))
    for index, scores in per_slice.items():
        evaluation.images.append({"image": f"{case}_{index:04d}", "iou": scores.iou, "dsc": scores.dsc})
    evaluation.volumes.append(row)


def evaluate_pairs(pairing: Pairing, labels: Sequence[int] | None = None,
                   surface_tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM) -> Evaluation:
    """Score every pair; a pair that cannot be scored is recorded in ``unscored`` (file and problem).

    ``surface_tolerance_mm``: the tolerance of the volumes' surface Dice (mm, >= 0).
    """
    if not (np.isfinite(surface_tolerance_mm) and surface_tolerance_mm >= 0):
        raise ValueError(f"the surface tolerance must be a distance in mm >= 0, got {surface_tolerance_mm}")
    evaluation = Evaluation(labels=list(labels) if labels else None,
                            missing_predictions=list(pairing.missing_predictions), unscored=list(pairing.ambiguous),
                            surface_tolerance_mm=float(surface_tolerance_mm))
    for case, (prediction_path, reference_path) in sorted(pairing.pairs.items()):
        try:
            _score_pair(evaluation, case, prediction_path, reference_path, labels)
        except (UnreadableImageError, _UnscoredPair) as error:
            evaluation.unscored.append({"case": case, "prediction": str(prediction_path),
                                        "ground_truth": str(reference_path), "problem": str(error)})
    evaluation.unscored.sort(key=lambda row: row["case"])
    if not evaluation.tumor_predicted:  # a kidney-only model: its tumour Dice would only say it was never asked
        for row in evaluation.volumes:
            row["kits19_tumor_dice"] = None
    return evaluation


def evaluate_folders(predictions: Path, ground_truth: Path, labels: Sequence[int] | None = None,
                     surface_tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM) -> Evaluation:
    """Score every ground-truth case that has a prediction; list the ones without and the ones not scored."""
    return evaluate_pairs(pair_files(predictions, ground_truth), labels, surface_tolerance_mm)


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table with right-aligned columns (first column left-aligned)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
