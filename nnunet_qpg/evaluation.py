"""Evaluating a folder of predicted masks against ground truth: pairs the files, reads them, applies metrics.

Predictions are matched to ground truth by case name (`{case}.nii.gz`, nnU-Net's naming). The ground truth may
also be a KiTS19 folder (`case_XXXXX/segmentation.nii.gz`). 2D images give one score each; 3D volumes give a
score per axial slice with foreground (axial axis from the direction matrix) plus a 3D Dice per volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.dataset_conversion.kits19_volumes import sitk_axes_from_direction
from nnunet_qpg.inference import case_files, case_name, list_volumes
from nnunet_qpg.metrics import foreground, mean_and_std, overlap_scores, slice_scores


class EvaluationError(Exception):
    """Predictions and ground truth that cannot be compared; the message names the files."""


@dataclass
class Evaluation:
    labels: list[int] | None
    images: list[dict] = field(default_factory=list)  # {"image", "iou", "dsc"}
    volumes: list[dict] = field(default_factory=list)  # {"case", "dice_3d", "slices"}
    missing_predictions: list[str] = field(default_factory=list)

    def summary(self) -> dict:
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
            "labels": self.labels if self.labels else "any label > 0",
            "summary": self.summary(),
            "per_image": self.images,
            "per_volume": self.volumes,
            "missing_predictions": self.missing_predictions,
        }


def ground_truth_files(folder: Path) -> dict[str, Path]:
    """case name -> ground-truth file, for an nnU-Net labels folder or a KiTS19 data folder."""
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder of ground-truth masks")
    return case_files(folder, "segmentation.nii.gz")


def _read_labels(path: Path) -> tuple[np.ndarray, sitk.Image]:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise EvaluationError(f"{path}: cannot be read as an image ({str(error).strip().splitlines()[-1]})")
    return sitk.GetArrayFromImage(image), image


def _axial_view(array: np.ndarray, image: sitk.Image) -> np.ndarray:
    axes = sitk_axes_from_direction(image.GetDirection())
    return np.transpose(array, tuple(2 - axis for axis in axes))


def evaluate_folders(predictions: Path, ground_truth: Path, labels: Sequence[int] | None = None) -> Evaluation:
    """Score every ground-truth case that has a prediction; list the ones without."""
    if not predictions.is_dir():
        raise EvaluationError(f"{predictions} is not a folder of predicted masks")
    predicted = {case_name(path): path for path in list_volumes(predictions)}
    evaluation = Evaluation(labels=list(labels) if labels else None)
    references = ground_truth_files(ground_truth)
    if not references:
        raise EvaluationError(f"no .nii.gz masks (or case_*/segmentation.nii.gz) in {ground_truth}")
    for case, reference_path in sorted(references.items()):
        if case not in predicted:
            evaluation.missing_predictions.append(case)
            continue
        prediction_array, prediction_image = _read_labels(predicted[case])
        reference_array, reference_image = _read_labels(reference_path)
        if prediction_array.shape != reference_array.shape:
            raise EvaluationError(f"{predicted[case]} has shape {prediction_array.shape} but {reference_path} has "
                                  f"{reference_array.shape}; predictions must be on the ground truth's voxel grid")
        prediction_mask, reference_mask = foreground(prediction_array, labels), foreground(reference_array, labels)
        is_volume = reference_image.GetDimension() == 3 and min(reference_image.GetSize()) > 1
        if not is_volume:
            scores = overlap_scores(prediction_mask, reference_mask)
            evaluation.images.append({"image": case, "iou": scores.iou, "dsc": scores.dsc})
            continue
        per_slice = slice_scores(_axial_view(prediction_mask, reference_image),
                                 _axial_view(reference_mask, reference_image))
        for index, scores in per_slice.items():
            evaluation.images.append({"image": f"{case}_{index:04d}", "iou": scores.iou, "dsc": scores.dsc})
        evaluation.volumes.append({"case": case, "dice_3d": overlap_scores(prediction_mask, reference_mask).dsc,
                                   "slices": len(per_slice)})
    return evaluation


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table with right-aligned columns (first column left-aligned)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
