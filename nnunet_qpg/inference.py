"""3D CT volume in, mask volume out, with a 2D nnU-Net model trained on `convert-kits19` slices.

The model saw axial slices preprocessed by the converter (HU window, optional 3x3 mean + 7x7 median filter,
resize to SIZE x SIZE, pixel spacing 1 x 1), so prediction must feed it exactly that. The settings are read from
the "conversion" entry the converter records in dataset.json (nnU-Net copies dataset.json into every trained
model folder), and the converter's own functions do the work:

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

from nnunet_qpg.dataset_conversion.kits19_slices import resize_image, window_and_denoise
from nnunet_qpg.dataset_conversion.kits19_volumes import sitk_axes_from_direction
from nnunet_qpg.nifti_check import truncation_problem

# nnU-Net's SimpleITK reader gives 2D images this spacing; the 2D configuration never resamples along it.
NNUNET_2D_SPACING = [999.0, 1.0, 1.0]
NIFTI_ENDINGS = (".nii.gz", ".nii")


class UnreadableVolumeError(Exception):
    """An input volume that cannot be predicted; the message names the file, the problem and the fix."""

    def __init__(self, path: Path | str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


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
        settings = json.loads(dataset_json.read_text()).get("conversion")
        if not settings or not {"window", "denoise", "size"} <= set(settings):
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
    # a view into `image`'s buffer, axes permuted, no copy (a 1059x512x512 CT stays one copy in memory); the
    # array keeps `image` alive itself (see _pixel_view), so it stays valid after this object is gone
    slices_rows_cols: np.ndarray
    numpy_axes: tuple[int, int, int]  # numpy axes of GetArrayFromImage holding slice, row, column

    def empty_mask(self) -> tuple[np.ndarray, np.ndarray]:
        """A uint8 array in the file's numpy layout and its (slice, row, column) view, to fill slice by slice."""
        mask = np.zeros(sitk.GetArrayViewFromImage(self.image).shape, dtype=np.uint8)
        return mask, np.transpose(mask, self.numpy_axes)

    def mask_image(self, mask: np.ndarray) -> sitk.Image:
        """`mask` (file numpy layout) as an image with the input's exact spacing, origin and direction."""
        image = sitk.GetImageFromArray(mask)
        image.CopyInformation(self.image)
        return image


class _PixelBuffer:
    """Exposes an image's pixel buffer to numpy while holding the image, so no view outlives its memory.

    ``sitk.GetArrayViewFromImage`` returns an array that does not keep the image alive: once the image is
    collected, the view reads freed memory.
    """

    def __init__(self, image: sitk.Image) -> None:
        self.image = image
        self.__array_interface__ = sitk.GetArrayViewFromImage(image).__array_interface__


def _pixel_view(image: sitk.Image) -> np.ndarray:
    """A zero-copy numpy view of ``image``'s pixels (GetArrayFromImage's axis order) that keeps ``image`` alive."""
    return np.asarray(_PixelBuffer(image))


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def read_axial_volume(path: Path | str) -> AxialVolume:
    """Read a 3D CT volume and view it along its axial axis (found from the direction matrix, not assumed).

    Raises UnreadableVolumeError for missing, corrupt, truncated, non-3D or multi-component files.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableVolumeError(path, "file is missing")
    problem = truncation_problem(path)
    if problem:
        raise UnreadableVolumeError(path, problem)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise UnreadableVolumeError(path, f"cannot be read as NIfTI (corrupt or not an image): {_first_line(error)}; "
                                          f"re-export or copy the file again")
    if image.GetDimension() != 3:
        raise UnreadableVolumeError(path, f"is {image.GetDimension()}D; a 3D CT volume is expected "
                                          f"(2D images go to nnUNetv2_predict directly)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UnreadableVolumeError(path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                                          f"a single-channel CT volume is expected")
    sitk_axes = sitk_axes_from_direction(image.GetDirection())
    numpy_axes = tuple(2 - axis for axis in sitk_axes)  # numpy axis j of GetArrayFromImage is sitk index axis 2 - j
    view = np.transpose(_pixel_view(image), numpy_axes)
    return AxialVolume(path, image, view, numpy_axes)  # type: ignore[arg-type]


def resize_mask_to(mask_2d: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to `shape` (rows, cols), pixel-centre aligned.

    The inverse of the converter's `resize_mask` (which only makes squares): output pixel i takes the input pixel
    that contains its centre, so a mask predicted at 256 x 256 lands back on the slice it came from.
    """
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * mask_2d.shape[0] / shape[0]).astype(int), mask_2d.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * mask_2d.shape[1] / shape[1]).astype(int), mask_2d.shape[1] - 1)
    return mask_2d[np.ix_(rows, cols)]


def load_predictor(model_folder: Path | str, folds: Sequence[str | int] | None, device: str = "cpu",
                   checkpoint_name: str = "checkpoint_final.pth", use_mirroring: bool = True):
    """nnU-Net's own predictor for a trained model folder (all available folds when `folds` is None)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    model_folder = Path(model_folder)
    if not (model_folder / "plans.json").is_file():
        raise ModelFolderError(f"{model_folder / 'plans.json'} is missing: give the trained model folder "
                               f"(holding plans.json, dataset.json and fold_X/{checkpoint_name})")
    if folds is None and not list(model_folder.glob(f"fold_*/{checkpoint_name}")):
        raise ModelFolderError(f"no fold_X/{checkpoint_name} in {model_folder}: train the model first, "
                               f"or pass -chk checkpoint_best.pth")
    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
        perform_everything_on_device=device == "cuda", device=torch.device(device),
        verbose=False, verbose_preprocessing=False, allow_tqdm=False,
    )
    chosen = None if folds is None else tuple(f if f == "all" else int(f) for f in folds)
    predictor.initialize_from_trained_model_folder(str(model_folder), chosen, checkpoint_name=checkpoint_name)
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
    mask, mask_view = volume.empty_mask()
    for index in range(volume.slices_rows_cols.shape[0]):
        slice_hu = np.ascontiguousarray(volume.slices_rows_cols[index])
        small = predict_slice(predictor, preprocessing(slice_hu))
        mask_view[index] = resize_mask_to(small, slice_hu.shape)
        if on_slice:
            on_slice()
    return volume.mask_image(mask)


def list_volumes(input_folder: Path) -> list[Path]:
    """The NIfTI volumes of a folder, sorted (hidden and temporary files are left out)."""
    return sorted(p for p in input_folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_ENDINGS))


def case_files(folder: Path, kits19_file: str) -> dict[str, Path]:
    """case name -> file, for a flat folder of NIfTI files or a KiTS19 data folder (``case_*/kits19_file``)."""
    files = {case_name(path): path for path in list_volumes(folder)}
    for case_dir in sorted(folder.glob("case_*")):
        if (case_dir / kits19_file).is_file():
            files[case_dir.name] = case_dir / kits19_file
    return files


def case_name(path: Path) -> str:
    """'case_00181_0000.nii.gz' -> 'case_00181' (nnU-Net's channel suffix is dropped), 'ct.nii' -> 'ct'."""
    name = next((path.name[: -len(e)] for e in NIFTI_ENDINGS if path.name.endswith(e)), path.stem)
    return name[:-5] if name.endswith("_0000") else name


def this_part(items: Iterable, num_parts: int, part_id: int) -> list:
    """Every num_parts-th item starting at part_id, as nnUNetv2_predict splits a batch across machines."""
    if not 0 <= part_id < num_parts:
        raise ValueError(f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id}")
    return list(items)[part_id::num_parts]
