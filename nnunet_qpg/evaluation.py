"""Evaluating a folder of predicted masks against ground truth: pairs the files, reads them, applies metrics.

Predictions are matched to ground truth by case name (`{case}.nii.gz`, nnU-Net's naming). The ground truth may
also be a KiTS19 folder (`case_XXXXX/segmentation.nii.gz`). 2D images give one score each; 3D volumes give a
score per axial slice with foreground (axial axis from the direction matrix) plus a 3D Dice per volume.

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
from nnunet_qpg.imaging.reading import UnreadableImageError, read_image
from nnunet_qpg.metrics import foreground, mean_and_std, overlap_scores, slice_scores

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


@dataclass
class Evaluation:
    labels: list[int] | None
    images: list[dict] = field(default_factory=list)  # {"image", "iou", "dsc"}
    volumes: list[dict] = field(default_factory=list)  # {"case", "dice_3d", "slices"}
    missing_predictions: list[str] = field(default_factory=list)
    unscored: list[dict] = field(default_factory=list)  # {"case", "prediction", "ground_truth", "problem"}

    def summary(self) -> dict:
        """Mean and std over the scored images (and volumes); ``None`` where nothing was scored (never NaN)."""
        iou_mean, iou_std = mean_and_std(row["iou"] for row in self.images)
        dsc_mean, dsc_std = mean_and_std(row["dsc"] for row in self.images)
        result = {"images": len(self.images), "iou_mean": iou_mean, "iou_std": iou_std,
                  "dsc_mean": dsc_mean, "dsc_std": dsc_std}
        if self.volumes:
            dice_mean, dice_std = mean_and_std(row["dice_3d"] for row in self.volumes)
            result.update(volumes=len(self.volumes), dice_3d_mean=dice_mean, dice_3d_std=dice_std)
        return result

    def to_dict(self) -> dict:
        from nnunet_qpg.metrics import BOTH_EMPTY_SCORE

        return {
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
    per_slice = slice_scores(axial_view(prediction_mask, direction), axial_view(reference_mask, direction))
    for index, scores in per_slice.items():
        evaluation.images.append({"image": f"{case}_{index:04d}", "iou": scores.iou, "dsc": scores.dsc})
    evaluation.volumes.append({"case": case, "dice_3d": overlap_scores(prediction_mask, reference_mask).dsc,
                               "slices": len(per_slice)})


def evaluate_pairs(pairing: Pairing, labels: Sequence[int] | None = None) -> Evaluation:
    """Score every pair; a pair that cannot be scored is recorded in ``unscored`` (file and problem)."""
    evaluation = Evaluation(labels=list(labels) if labels else None,
                            missing_predictions=list(pairing.missing_predictions), unscored=list(pairing.ambiguous))
    for case, (prediction_path, reference_path) in sorted(pairing.pairs.items()):
        try:
            _score_pair(evaluation, case, prediction_path, reference_path, labels)
        except (UnreadableImageError, _UnscoredPair) as error:
            evaluation.unscored.append({"case": case, "prediction": str(prediction_path),
                                        "ground_truth": str(reference_path), "problem": str(error)})
    evaluation.unscored.sort(key=lambda row: row["case"])
    return evaluation


def evaluate_folders(predictions: Path, ground_truth: Path, labels: Sequence[int] | None = None) -> Evaluation:
    """Score every ground-truth case that has a prediction; list the ones without and the ones not scored."""
    return evaluate_pairs(pair_files(predictions, ground_truth), labels)


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table with right-aligned columns (first column left-aligned)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
