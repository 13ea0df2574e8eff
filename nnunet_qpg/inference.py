"""3D CT volume in, mask volume out, with a 2D nnU-Net model trained on `convert-kits19` slices.

The model saw axial slices preprocessed by the converter (HU window, optional 3x3 mean + 7x7 median filter,
resize to SIZE x SIZE, pixel spacing 1 x 1), so prediction must feed it exactly that. The settings are read from
the "conversion" entry the converter records in dataset.json (nnU-Net copies dataset.json into every trained
model folder), and the imaging functions the converter uses (:mod:`nnunet_qpg.imaging`) do the work:

    volume --(axial axis from the direction matrix)--> slices --window/denoise/resize--> [1, 1, SIZE, SIZE]
      --nnUNetPredictor.predict_single_npy_array (nnU-Net's preprocessing, all folds, mirroring)--> SIZE x SIZE mask
      --nearest neighbour--> original slice size --> placed back in a volume with the input's exact geometry.

Every slice goes through nnU-Net alone, as one 2D image, because nnU-Net's crop-to-nonzero and normalisation
act per image: a stack of slices would be cropped to the union of all slices and predict (slightly) different
masks from what `nnUNetv2_predict` gives on the converted 2D files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.imaging.axial import axial_pixels, axial_view
from nnunet_qpg.imaging.intensity import window_and_denoise
from nnunet_qpg.imaging.nifti_check import count_non_finite
from nnunet_qpg.imaging.reading import UnreadableImageError, error_line, read_image
from nnunet_qpg.imaging.resizing import resize_image, resize_mask_to

# nnU-Net's SimpleITK reader gives 2D images this spacing; the 2D configuration never resamples along it.
NNUNET_2D_SPACING = [999.0, 1.0, 1.0]


# An input volume that cannot be predicted: the one reader's error (one error type for every image we read).
UnreadableVolumeError = UnreadableImageError


class ModelFolderError(Exception):
    """A model folder that cannot be used for volume prediction (message names the file and the fix)."""


@dataclass(frozen=True)
class SlicePreprocessing:
    """The converter's intensity and size settings, as recorded in a model's dataset.json ("conversion")."""

    window: tuple[float, float]
    denoise: bool
    size: int
    task: str | None = None

    @classmethod
    def from_model_folder(cls, model_folder: Path | str) -> "SlicePreprocessing":
        dataset_json = Path(model_folder) / "dataset.json"
        if not dataset_json.is_file():
            raise ModelFolderError(
                f"{dataset_json} is missing: give the trained model folder (the one holding plans.json, "
                f"dataset.json and fold_X/), e.g. $nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainer__nnUNetPlans__2d"
            )
        try:
            content = json.loads(dataset_json.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ModelFolderError(f"{dataset_json} cannot be read as JSON ({error}); copy the model folder "
                                   f"again") from None
        settings = content.get("conversion") if isinstance(content, dict) else None
        if isinstance(settings, dict) and settings.get("task") == "volume":
            raise ModelFolderError(
                f"{dataset_json} records a model trained on whole 3D volumes (convert-kits19 --task volume); "
                f"predict and predict-kits19 run 2D slice models. Predict 3D volumes with nnU-Net itself: "
                f"nnUNetv2_predict -i IN -o OUT -d DATASET -c 3d_fullres -tr TRAINER"
            )
        if not isinstance(settings, dict) or not {"window", "denoise", "size"} <= set(settings):
            raise ModelFolderError(
                f"{dataset_json} has no 'conversion' settings (window, denoise, size): this model was not trained on "
                f"a dataset made by `nnunet-qpg convert-kits19`, so the slice preprocessing is unknown. Convert the "
                f"training data with convert-kits19 and retrain, or add the settings to dataset.json by hand."
            )
        return cls(
            window=(float(settings["window"][0]), float(settings["window"][1])),
            denoise=bool(settings["denoise"]),
            size=int(settings["size"]),
            task=settings.get("task"),
        )

    def filtered(self, slice_hu: np.ndarray) -> np.ndarray:
        """Window and filters on the whole native slice (the converter filters before cropping)."""
        return window_and_denoise(slice_hu, self.window, self.denoise)

    def resized(self, image_2d: np.ndarray) -> np.ndarray:
        """A filtered slice or crop resized to the model's SIZE x SIZE input."""
        return resize_image(image_2d, self.size)

    def __call__(self, slice_hu: np.ndarray) -> np.ndarray:
        """One axial slice (HU, native resolution) -> the SIZE x SIZE float32 image the model was trained on."""
        return self.resized(self.filtered(slice_hu))


@dataclass
class AxialVolume:
    """A CT volume read from disk and viewed as (axial slice, row, column), as the converter views it."""

    path: Path
    image: sitk.Image
    # :func:`nnunet_qpg.imaging.axial.axial_pixels`: a view into `image`'s buffer, no copy, that keeps `image`
    # alive itself, so it stays valid after this object is gone
    slices_rows_cols: np.ndarray
    non_finite_replaced: int = 0  # NaN/inf voxels set to finite values on reading (non_finite="replace")

    def label_slices(self, labels_of_slice: Callable[[np.ndarray], np.ndarray],
                     on_slice: Callable[[], None] | None = None) -> sitk.Image:
        """A uint8 mask with the input's exact geometry, filled slice by slice: ``labels_of_slice`` gets each axial
        slice (contiguous, native resolution, HU) and returns its label map; ``on_slice()`` follows each slice."""
        mask = np.zeros(sitk.GetArrayViewFromImage(self.image).shape, dtype=np.uint8)
        mask_view = axial_view(mask, self.image.GetDirection())
        for index in range(self.slices_rows_cols.shape[0]):
            mask_view[index] = labels_of_slice(np.ascontiguousarray(self.slices_rows_cols[index]))
            if on_slice:
                on_slice()
        image = sitk.GetImageFromArray(mask)
        image.CopyInformation(self.image)
        return image


def read_axial_volume(path: Path | str, non_finite: str = "refuse") -> AxialVolume:
    """Read a 3D CT volume through the one image reader and view it along its axial axis (found from the
    direction matrix, not assumed).

    Raises UnreadableImageError (alias UnreadableVolumeError) for missing, corrupt, truncated (.nii and .nii.gz),
    non-3D or multi-component files, and for NaN/inf voxels unless ``non_finite="replace"``
    (see :func:`nnunet_qpg.imaging.reading.read_image`).
    """
    path = Path(path)
    image = read_image(path, dimension=3, non_finite=non_finite)
    # the reader replaced them silently; count them (one streamed pass, float files only) so the batch can say so
    replaced = count_non_finite(path) if non_finite == "replace" else 0
    return AxialVolume(path, image, axial_pixels(image), replaced)


def parse_fold(text: str) -> int | str:
    """A fold as nnU-Net names its folders: a non-negative integer (fold_0, fold_1, ...) or 'all' (fold_all).

    Raises ValueError with the rule, for argparse's ``type=`` (``-f abc``, ``-f -1``).
    """
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise ValueError(f"invalid fold {text!r}: folds are non-negative integers (0 1 2 3 4) or 'all', as in fold_X/")


@dataclass(frozen=True)
class ModelChoice:
    """A model folder, the folds to ensemble and the checkpoint file name: every file prediction will load."""

    folder: Path
    folds: tuple[int | str, ...]
    checkpoint_name: str

    @property
    def checkpoints(self) -> list[Path]:
        return [self.folder / f"fold_{fold}" / self.checkpoint_name for fold in self.folds]

    @property
    def files(self) -> list[Path]:
        """Every file that decides what the model predicts: plans.json, dataset.json and the checkpoints."""
        return [self.folder / "plans.json", self.folder / "dataset.json", *self.checkpoints]


def _available_folds(model_folder: Path, checkpoint_name: str) -> list[int]:
    """nnU-Net's own rule for ``use_folds=None``: every fold_<int> holding the checkpoint (fold_all is left out)."""
    folds = [int(path.parent.name[5:]) for path in model_folder.glob(f"fold_*/{checkpoint_name}")
             if path.parent.name[5:].isdigit() and path.is_file()]
    return sorted(folds)


def missing_model_files(model_folder: Path, checkpoint_name: str = "checkpoint_final.pth") -> str | None:
    """Why ``model_folder`` cannot be a trained nnU-Net model folder (not a folder, no plans.json or dataset.json),
    as a sentence naming the path and the fix, or None. Predict and export share it."""
    holding = f"(holding plans.json, dataset.json and fold_X/{checkpoint_name})"
    if not model_folder.is_dir():
        what = "is a file" if model_folder.exists() else "does not exist"
        return (f"{model_folder} {what}: give the trained model folder {holding}, e.g. "
                f"$nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainerQPG__nnUNetPlans__2d")
    for name in ("plans.json", "dataset.json"):
        if not (model_folder / name).is_file():
            return f"{model_folder / name} is missing: give the trained model folder {holding}"
    return None


def choose_model(model_folder: Path | str, folds: Sequence[str | int] | None,
                 checkpoint_name: str = "checkpoint_final.pth", option: str = "-m") -> ModelChoice:
    """Check a trained model folder without loading anything heavy, and fix the folds prediction will use.

    ``folds`` None means every fold_X holding ``checkpoint_name`` (nnU-Net's rule). Raises ModelFolderError
    naming the missing file (plans.json, dataset.json, fold_X/checkpoint) and what is there instead.
    """
    model_folder = Path(model_folder)
    problem = missing_model_files(model_folder, checkpoint_name)
    if problem:
        raise ModelFolderError(f"{option}: {problem}")
    available = _available_folds(model_folder, checkpoint_name)
    if folds is None:
        if not available:
            raise ModelFolderError(f"no fold_X/{checkpoint_name} in {model_folder}: train the model first, "
                                   f"or pass -chk checkpoint_best.pth")
        chosen: tuple[int | str, ...] = tuple(available)
    else:
        chosen = tuple(fold if isinstance(fold, int) else parse_fold(str(fold)) for fold in folds)
    for fold in chosen:
        checkpoint = model_folder / f"fold_{fold}" / checkpoint_name
        if not checkpoint.is_file():
            there = (f"folds with {checkpoint_name}: {' '.join(map(str, available))}" if available
                     else f"no fold has {checkpoint_name}")
            raise ModelFolderError(f"{checkpoint} is missing ({there}); choose folds that were trained with -f, "
                                   f"or another checkpoint with -chk")
    return ModelChoice(model_folder, chosen, checkpoint_name)


def check_checkpoints(choice: ModelChoice) -> None:
    """Read every checkpoint of ``choice`` as data only (safe_io's allow-list): nnU-Net's predictor loads them
    with ``torch.load(weights_only=False)``, which would run any code pickled into a crafted file.

    Raises UnsafeCheckpointError naming the file.
    """
    from nnunet_qpg.safe_io import check_checkpoint

    for checkpoint in choice.checkpoints:
        check_checkpoint(checkpoint)


def load_predictor(model_folder: Path | str | ModelChoice, folds: Sequence[str | int] | None = None,
                   device: str = "cpu", checkpoint_name: str = "checkpoint_final.pth", use_mirroring: bool = True):
    """nnU-Net's own predictor for a trained model folder (all available folds when `folds` is None).

    Every checkpoint is first checked to hold data only (:func:`check_checkpoints`), then handed to nnU-Net with
    exactly the folds checked. Raises ModelFolderError / UnsafeCheckpointError with a message.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    choice = (model_folder if isinstance(model_folder, ModelChoice)
              else choose_model(model_folder, folds, checkpoint_name))
    check_checkpoints(choice)
    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
        perform_everything_on_device=device == "cuda", device=torch.device(device),
        verbose=False, verbose_preprocessing=False, allow_tqdm=False,
    )
    try:
        predictor.initialize_from_trained_model_folder(str(choice.folder), choice.folds,
                                                       checkpoint_name=choice.checkpoint_name)
    except RuntimeError as error:
        if "Could not find requested nnunet trainer" not in str(error):
            raise
        raise ModelFolderError(
            f"the trainer class of {choice.checkpoints[0]} is not importable: {error_line(error).split('. ')[0]}. "
            f"For a trainer of your own (e.g. one written by new-trainer), `export nnUNet_extTrainer=` its folder, "
            f"as for nnUNetv2_predict; nnunet-qpg adds its own trainers."
        ) from None
    return predictor


def predict_slice(predictor, slice_image: np.ndarray) -> np.ndarray:
    """nnU-Net's prediction (all loaded folds, mirroring) for one preprocessed 2D image, as a uint8 label map."""
    segmentation = predictor.predict_single_npy_array(
        slice_image[None, None].astype(np.float32, copy=False), {"spacing": list(NNUNET_2D_SPACING)}
    )
    return np.asarray(segmentation)[0].astype(np.uint8)


def predict_volume(predictor, preprocessing: SlicePreprocessing, volume: AxialVolume,
                   on_slice: Callable[[], None] | None = None) -> sitk.Image:
    """The mask of every axial slice of `volume`, as an image with the input's exact geometry."""
    return volume.label_slices(
        lambda slice_hu: resize_mask_to(predict_slice(predictor, preprocessing(slice_hu)), slice_hu.shape), on_slice)


def this_part(items: Iterable, num_parts: int, part_id: int) -> list:
    """Every num_parts-th item starting at part_id, as nnUNetv2_predict splits a batch across machines."""
    if not 0 <= part_id < num_parts:
        raise ValueError(f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id}")
    return list(items)[part_id::num_parts]
