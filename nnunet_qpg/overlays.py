"""Choosing what to draw for `nnunet-qpg overlay`: pairs images, ground truth and predictions by case name and
picks the 2D picture of each case (the image itself, or a volume's axial slice with the most ground truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.dataset_conversion.kits19_volumes import sitk_axes_from_direction
from nnunet_qpg.evaluation import ground_truth_files
from nnunet_qpg.figures import save_overlay_figure
from nnunet_qpg.inference import case_name, list_volumes
from nnunet_qpg.metrics import overlap_scores


class OverlayError(Exception):
    """Inputs that cannot be drawn; the message names the folder or file."""


def _image_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise OverlayError(f"{folder} is not a folder of images")
    files = {case_name(path): path for path in list_volumes(folder)}
    for case_dir in sorted(folder.glob("case_*")):
        if (case_dir / "imaging.nii.gz").is_file():
            files[case_dir.name] = case_dir / "imaging.nii.gz"
    return files


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
    predicted = {}
    for name, folder in predictions.items():
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
        if truth is not None:
            index = int(np.argmax((truth > 0).reshape(truth.shape[0], -1).sum(axis=1)))
        else:
            index = int(np.argmax(sum((m > 0).reshape(m.shape[0], -1).sum(axis=1) for m in masks.values())))
        scores = None
        if truth is not None:
            scores = {name: f"DSC {overlap_scores(mask[index] > 0, truth[index] > 0).dsc:.3f}"
                      for name, mask in masks.items()}
        title = case if image.shape[0] == 1 else f"{case}, axial slice {index}"
        written.append(save_overlay_figure(output / f"{case}.png", image[index],
                                           None if truth is None else truth[index],
                                           {name: mask[index] for name, mask in masks.items()}, title, scores))
    return written
