"""Choosing what to draw for `nnunet-qpg overlay`: pairs images, ground truth and predictions by case name and
picks the 2D picture of each case (the image itself, or a volume's axial slice showing the most ground-truth
labels, then the most ground truth: a KiTS19 volume's slice with the largest kidney often has no tumour).

Colours follow what each label means (see `figures`): label names come from the dataset.json of a mask folder
or of its parent (nnU-Net's labelsTs/ sits beside dataset.json; nnUNetv2_predict writes one into its output),
KiTS19's own names for a KiTS19 data folder, and for a prediction folder without names those of the ground
truth it is compared with (same task); KiTS19's as the last resort.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.dataset_conversion.kits19_volumes import sitk_axes_from_direction
from nnunet_qpg.evaluation import ground_truth_files
from nnunet_qpg.figures import KITS19_LABEL_NAMES, save_overlay_figure
from nnunet_qpg.inference import case_files, case_name, list_volumes
from nnunet_qpg.metrics import overlap_scores


class OverlayError(Exception):
    """Inputs that cannot be drawn; the message names the folder or file."""


def _image_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise OverlayError(f"{folder} is not a folder of images")
    return case_files(folder, "imaging.nii.gz")


def label_names_of(folder: Path) -> dict[int, str] | None:
    """{value: name} of a mask folder's labels from dataset.json (folder or parent), KiTS19's for a KiTS19 data
    folder, else None (unknown)."""
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            labels = json.loads(candidate.read_text()).get("labels", {})
            names = {int(value): name for name, value in labels.items()
                     if isinstance(value, int) and value != 0}  # region-based (list) labels are not named
            if names:
                return names
    if any((case_dir / "segmentation.nii.gz").is_file() for case_dir in folder.glob("case_*")):
        return dict(KITS19_LABEL_NAMES)
    return None


def most_telling_slice(masks: np.ndarray) -> int:
    """The axial slice with the most distinct labels, then the most foreground."""
    flat = masks.reshape(masks.shape[0], -1)
    distinct = [len(np.unique(row[row > 0])) for row in flat]
    area = (flat > 0).sum(axis=1)
    return max(range(masks.shape[0]), key=lambda index: (distinct[index], area[index], -index))


def _axial(path: Path) -> np.ndarray:
    """The file's pixels as (axial slice, row, column); a 2D image becomes one slice."""
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 2:
        return array[None]
    axes = sitk_axes_from_direction(image.GetDirection())
    return np.transpose(array, tuple(2 - axis for axis in axes))


def write_overlays(images: Path, ground_truth: Path | None, predictions: dict[str, Path], output: Path,
                   limit: int = 8, cases: list[str] | None = None) -> list[Path]:
    """One PNG per case present in the images and every prediction folder; returns the written paths."""
    image_files = _image_files(images)
    truth_files = ground_truth_files(ground_truth) if ground_truth else {}
    truth_names = label_names_of(ground_truth) if ground_truth else None
    names = {"ground truth": truth_names}
    predicted = {}
    for name, folder in predictions.items():
        names[name] = label_names_of(folder) or truth_names
        if not folder.is_dir():
            raise OverlayError(f"{folder} (prediction {name!r}) is not a folder")
        predicted[name] = {case_name(path): path for path in list_volumes(folder)}
    common = sorted(set(image_files).intersection(*(set(p) for p in predicted.values())))
    if ground_truth:
        common = [case for case in common if case in truth_files]
    if cases:
        common = [case for case in common if case in set(cases)]
    if not common:
        raise OverlayError(f"no case is in {images} and in every prediction folder"
                           f"{' and in ' + str(ground_truth) if ground_truth else ''} (cases match by file name)")
    written = []
    for case in common[:limit]:
        image = _axial(image_files[case])
        truth = _axial(truth_files[case]) if ground_truth else None
        masks = {name: _axial(files[case]) for name, files in predicted.items()}
        index = most_telling_slice(truth if truth is not None else np.concatenate(list(masks.values()), axis=1))
        scores = None
        if truth is not None:
            scores = {name: f"DSC {overlap_scores(mask[index] > 0, truth[index] > 0).dsc:.3f}"
                      for name, mask in masks.items()}
        title = case if image.shape[0] == 1 else f"{case}, axial slice {index}"
        written.append(save_overlay_figure(output / f"{case}.png", image[index],
                                           None if truth is None else truth[index],
                                           {name: mask[index] for name, mask in masks.items()}, title, scores,
                                           names))
    return written
