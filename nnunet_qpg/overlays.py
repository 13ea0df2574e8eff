"""Choosing what to draw for `nnunet-qpg overlay`: pairs images, ground truth and predictions by case name and
picks the 2D picture of each case (the image itself, or a volume's axial slice showing the most ground-truth
labels, then the most ground truth: a KiTS19 volume's slice with the largest kidney often has no tumour).

Colours follow what each label means (see `figures`): label names come from the dataset.json of a mask folder
or of its parent (nnU-Net's labelsTs/ sits beside dataset.json; nnUNetv2_predict writes one into its output),
KiTS19's own names for a KiTS19 data folder, and for a prediction folder without names those of the ground
truth it is compared with (same task); KiTS19's as the last resort.

Images and masks are read through :func:`nnunet_qpg.imaging.reading.read_image`, and each mask must lie on its
image's voxel grid (:func:`nnunet_qpg.evaluation.geometry_difference`). A case that fails (unreadable file, other
grid) is named and not drawn (:class:`OverlayResult`); the others are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_qpg.evaluation import geometry_difference, ground_truth_files
from nnunet_qpg.figures import KITS19_LABEL_NAMES, save_overlay_figure
from nnunet_qpg.imaging.axial import axial_pixels
from nnunet_qpg.imaging.case_names import CaseNameCollisionError, case_files
from nnunet_qpg.imaging.reading import UnreadableImageError, read_image
from nnunet_qpg.metrics import overlap_scores


class OverlayError(Exception):
    """Inputs that cannot be drawn; the message names the folder or file."""


def _unique_case_files(folder: Path, kits19_file: str | None = None) -> dict[str, Path]:
    """case name -> file; several files of one case name are an error naming them (never one picked silently)."""
    try:
        return case_files(folder, kits19_file)
    except CaseNameCollisionError as error:
        raise OverlayError(str(error)) from None


def _image_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise OverlayError(f"{folder} is not a folder of images")
    return _unique_case_files(folder, "imaging.nii.gz")


def label_names_of(folder: Path) -> dict[int, str] | None:
    """{value: name} of a mask folder's labels from dataset.json (folder or parent), KiTS19's for a KiTS19 data
    folder, else None (unknown)."""
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            try:
                content = json.loads(candidate.read_text())
            except (OSError, UnicodeDecodeError, ValueError):
                content = None
            labels = content.get("labels", {}) if isinstance(content, dict) else None
            if not isinstance(labels, dict):
                raise OverlayError(f"{candidate} is not a valid nnU-Net dataset.json (its 'labels' name the mask "
                                   f"colours); fix or remove it")
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


class _CaseProblem(Exception):
    """One case that cannot be drawn; the message names the file and the problem."""


@dataclass
class OverlayPlan:
    """What to draw: the cases in every folder, with each folder's file and label names."""

    cases: list[str]
    image_files: dict[str, Path]
    truth_files: dict[str, Path]
    predicted: dict[str, dict[str, Path]]  # prediction name -> case -> file
    names: dict[str, dict[int, str] | None]  # "ground truth" / prediction name -> label names


@dataclass
class OverlayResult:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (case, problem)


def plan_overlays(images: Path, ground_truth: Path | None, predictions: dict[str, Path], limit: int = 8,
                  cases: list[str] | None = None) -> OverlayPlan:
    """Pair the folders by case name (OverlayError naming the folder when one is missing or nothing pairs)."""
    image_files = _image_files(images)
    if ground_truth is not None and not ground_truth.is_dir():
        raise OverlayError(f"{ground_truth} (--ground-truth) is not a folder of masks")
    truth_files = ground_truth_files(ground_truth) if ground_truth else {}
    truth_names = label_names_of(ground_truth) if ground_truth else None
    names = {"ground truth": truth_names}
    predicted = {}
    for name, folder in predictions.items():
        if not folder.is_dir():
            raise OverlayError(f"{folder} (prediction {name!r}) is not a folder")
        names[name] = label_names_of(folder) or truth_names
        predicted[name] = _unique_case_files(folder)
    common = sorted(set(image_files).intersection(*(set(p) for p in predicted.values())))
    if ground_truth:
        common = [case for case in common if case in truth_files]
    if cases:
        common = [case for case in common if case in set(cases)]
    if not common:
        raise OverlayError(f"no case is in {images} and in every prediction folder"
                           f"{' and in ' + str(ground_truth) if ground_truth else ''} (cases match by file name)")
    return OverlayPlan(common[:limit], image_files, truth_files, predicted, names)


def _read_case(plan: OverlayPlan, case: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    image = read_image(plan.image_files[case])
    masks = {"ground truth": plan.truth_files[case]} if plan.truth_files else {}
    masks.update({name: files[case] for name, files in plan.predicted.items()})
    arrays = {}
    for name, path in masks.items():
        mask = read_image(path)
        difference = geometry_difference(mask, image, f"the image {plan.image_files[case]}")
        if difference:
            raise _CaseProblem(f"{path} ({name}) {difference}; masks must be on their image's voxel grid")
        arrays[name] = axial_pixels(mask)
    truth = arrays.pop("ground truth", None)
    return axial_pixels(image), truth, arrays


def draw_overlays(plan: OverlayPlan, output: Path) -> OverlayResult:
    """One PNG per planned case in ``output``; a case that cannot be read or drawn is recorded, not drawn."""
    result = OverlayResult()
    for case in plan.cases:
        try:
            image, truth, masks = _read_case(plan, case)
        except (UnreadableImageError, _CaseProblem) as error:
            result.failed.append((case, str(error)))
            continue
        index = most_telling_slice(truth if truth is not None else np.concatenate(list(masks.values()), axis=1))
        scores = None
        if truth is not None:
            scores = {name: f"DSC {overlap_scores(mask[index] > 0, truth[index] > 0).dsc:.3f}"
                      for name, mask in masks.items()}
        title = case if image.shape[0] == 1 else f"{case}, axial slice {index}"
        result.written.append(save_overlay_figure(output / f"{case}.png", image[index],
                                                  None if truth is None else truth[index],
                                                  {name: mask[index] for name, mask in masks.items()}, title, scores,
                                                  plan.names))
    return result


def write_overlays(images: Path, ground_truth: Path | None, predictions: dict[str, Path], output: Path,
                   limit: int = 8, cases: list[str] | None = None) -> list[Path]:
    """One PNG per case present in the images and every prediction folder; returns the written paths (cases that
    cannot be drawn are skipped; `nnunet-qpg overlay` names them)."""
    return draw_overlays(plan_overlays(images, ground_truth, predictions, limit, cases), output).written
