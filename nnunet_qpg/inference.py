"""3D CT volume in, mask volume out, with a 2D nnU-Net model trained on `convert-kits19` slices.

The model saw axial slices preprocessed by the converter (HU window, optional 3x3 mean + 7x7 median filter,
resize to SIZE x SIZE, pixel spacing 1 x 1), so prediction must feed it exactly that. The settings are read from
the "conversion" entry the converter records in dataset.json (nnU-Net copies dataset.json into every trained
model folder), and the imaging functions the converter uses (:mod:`nnunet_qpg.imaging`) do the work:

    volume --(axial axis from the direction matrix)--> slices --window/denoise/resize--> SIZE x SIZE images
      --nnU-Net's preprocessing, one image at a time (crop to nonzero, normalisation)--> padded to the patch
      --nnU-Net's sliding window, mirroring and fold ensemble on a batch of slices--> SIZE x SIZE masks
      --nearest neighbour--> original slice size --> placed back in a volume with the input's exact geometry.

nnU-Net's crop-to-nonzero and normalisation act per image, so every slice is still preprocessed alone, exactly as
``predict_single_npy_array`` (and ``nnUNetv2_predict`` on the converted 2D files) does: a stack of slices would be
cropped to the union of all slices. Only the network runs on batches: :class:`SliceBatchPredictor` is
``nnUNetPredictor`` with two seams extended. Slices whose preprocessed images pad to the same shape (all of them,
for a model whose patch is the whole SIZE x SIZE slice) are stacked along nnU-Net's 2D "slice" axis and given to
``predict_logits_from_preprocessed_data`` as one image; its sliding window (per slice, per tile) then hands its
tiles to ``_internal_maybe_mirror_and_predict`` one at a time as always, and the extended seam answers them from
one network call (with nnU-Net's own mirroring) per ``batch_size`` tiles. The Gaussian weighting, the float16
accumulation, the fold averaging and the conversion to labels stay nnU-Net's own code, per slice, in the same
order.

Same masks as slice by slice (``predict_slice``, ``batch_size=1``), up to float rounding: the network itself may
give a tile's logits in other last float32 bits in a batch than alone (oneDNN picks another convolution kernel for
a batch of one: up to ~2e-5 on the demo model; cuDNN may too), and nnU-Net's float16 accumulation of the
Gaussian-weighted tile turns that into a few float16 steps (up to 0.016 at logits of about 5 on the test model,
the largest at the tile's border, where the Gaussian weight is tiny and the float16 product coarse). A label can
change only where two classes tie to within that: none did on the test model (37 slices) nor on the benchmark's
100 and 300 slice CT volumes (tests/test_batched_inference.py, benchmarks/bench_volume_inference.py).

While the network runs on one batch, a thread preprocesses the next one (as nnUNetv2_predict preprocesses in
background workers; the filters and nnU-Net's preprocessing release the GIL for most of their time).
"""

from __future__ import annotations

import copy
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.imaging.axial import axial_pixels, axial_view
from nnunet_qpg.imaging.intensity import window_and_denoise
from nnunet_qpg.imaging.nifti_check import count_non_finite
from nnunet_qpg.imaging.reading import UnreadableImageError, error_line, read_image
from nnunet_qpg.imaging.resizing import resize_image, resize_mask_to

# nnU-Net's SimpleITK reader gives 2D images this spacing; the 2D configuration never resamples along it.
NNUNET_2D_SPACING = [999.0, 1.0, 1.0]

# Slices per network call by default: 16 on the CPU (measured on the demo's 64 x 64 model: 1.3-1.5x less time per
# slice than one at a time with one torch thread, and 16 is within noise of the best of 8-32 at one and two
# threads; 32 leaves the caches), 32 on a GPU (more work per kernel launch). Fewer when patches are larger than
# 256 x 256: one call never holds more than 32 patches of 256 x 256 pixels (activation memory grows with
# batch x patch pixels; 8 slices of 512 x 512).
DEFAULT_CPU_BATCH_SIZE = 16
DEFAULT_GPU_BATCH_SIZE = 32
BATCH_PATCH_PIXELS = 32 * 256 * 256


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

    def stack(self, slices_hu: np.ndarray) -> np.ndarray:
        """Several axial slices (slices, rows, cols) at once -> (slices, SIZE, SIZE) float32, each slice's pixels
        exactly what ``self(slice)`` gives (the filters act within each slice)."""
        filtered = window_and_denoise(slices_hu, self.window, self.denoise)
        return np.stack([self.resized(image) for image in filtered]) if len(filtered) else (
            np.zeros((0, self.size, self.size), np.float32))


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
                   device: str = "cpu", checkpoint_name: str = "checkpoint_final.pth", use_mirroring: bool = True,
                   batch_size: int | None = None):
    """nnU-Net's own predictor for a trained model folder (all available folds when `folds` is None): a
    :class:`SliceBatchPredictor`, which :func:`predict_volume` runs on batches of ``batch_size`` slices (default
    :func:`default_batch_size`; 1 predicts slice by slice).

    Every checkpoint is first checked to hold data only (:func:`check_checkpoints`), then handed to nnU-Net with
    exactly the folds checked. Raises ModelFolderError / UnsafeCheckpointError with a message.
    """
    import torch

    choice = (model_folder if isinstance(model_folder, ModelChoice)
              else choose_model(model_folder, folds, checkpoint_name))
    check_checkpoints(choice)
    predictor = _slice_batch_predictor_class()(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
        perform_everything_on_device=device == "cuda", device=torch.device(device),
        verbose=False, verbose_preprocessing=False, allow_tqdm=False,
    )
    predictor.batch_size = _checked_batch_size(batch_size)
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


def _checked_batch_size(batch_size: int | None) -> int | None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer (1: slice by slice) or None, got {batch_size!r}")
    return batch_size


def default_batch_size(patch_size: Sequence[int], device_type: str = "cpu") -> int:
    """Slices per network call when none is given: 16 on the CPU, 32 on a GPU, fewer for patches over 256 x 256
    (at most BATCH_PATCH_PIXELS patch pixels per call: 8 slices of 512 x 512)."""
    preferred = DEFAULT_CPU_BATCH_SIZE if device_type == "cpu" else DEFAULT_GPU_BATCH_SIZE
    return max(1, min(preferred, BATCH_PATCH_PIXELS // max(1, int(np.prod(patch_size)))))


class _TileBatches:
    """The tiles of one sliding-window pass, run through the network ``batch`` at a time, in nnU-Net's order.

    ``answer(x, predict)`` is called with each tile nnU-Net sends (``x``: [1, c, *patch]); on the first tile of a
    batch it stacks the next ``batch`` tiles of ``slicers`` and runs ``predict`` (nnU-Net's mirroring and network)
    on them once, then answers each tile from that result. A tile that is not the one expected (nnU-Net changed
    its order) is predicted alone, and so is every later one: the result is the same, only slower.
    """

    def __init__(self, data, slicers: Sequence[tuple], batch: int, device):
        self.data, self.slicers, self.batch, self.device = data, list(slicers), batch, device
        self.next = 0  # index in slicers of the next tile nnU-Net will ask for
        self.inputs = self.outputs = None
        self.used = 0
        self.broken = False

    def answer(self, x, predict):
        import torch

        if self.broken:
            return predict(x)
        if self.outputs is None or self.used == len(self.outputs):
            chunk = self.slicers[self.next:self.next + self.batch]
            if not chunk:
                self.broken = True
                return predict(x)
            self.inputs = torch.stack([self.data[slicer] for slicer in chunk]).to(self.device)
            self.outputs = predict(self.inputs)
            self.used = 0
        expected = self.inputs[self.used]
        if x.shape[0] != 1 or x.shape[1:] != expected.shape or not torch.equal(x[0], expected):
            self.broken = True
            return predict(x)
        self.used += 1
        self.next += 1
        return self.outputs[self.used - 1:self.used]


def _slice_batch_predictor_class():
    """SliceBatchPredictor, made on first use (importing nnU-Net and torch costs seconds; the commands check their
    arguments before that)."""
    global _SliceBatchPredictor
    if _SliceBatchPredictor is not None:
        return _SliceBatchPredictor
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class SliceBatchPredictor(nnUNetPredictor):
        """``nnUNetPredictor`` whose sliding window runs the network on ``batch_size`` tiles at once.

        nnU-Net's ``_internal_predict_sliding_window_return_logits`` is kept as it is (Gaussian weighting, float16
        accumulation, padding, the per-slice tiles of the 2D configuration); around it, the tiles it will ask for
        are known, and ``_internal_maybe_mirror_and_predict`` (nnU-Net's mirroring, on a batch) answers them
        from one network call per batch. Everything else, ``predict_single_npy_array`` included, is
        nnUNetPredictor's own, so this predictor works wherever an nnUNetPredictor does.

        ``batch_size``: tiles (slices) per network call; None: :func:`default_batch_size` of the patch.
        """

        batch_size: int | None = None
        _tile_batches: _TileBatches | None = None

        @property
        def tiles_per_call(self) -> int:
            return self.batch_size or default_batch_size(self.configuration_manager.patch_size, self.device.type)

        def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
            self._tile_batches = _TileBatches(data, slicers, self.tiles_per_call, self.device)
            try:
                return super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)
            finally:
                self._tile_batches = None

        def _internal_maybe_mirror_and_predict(self, x):
            tiles = self._tile_batches
            if tiles is None or tiles.batch == 1:
                return super()._internal_maybe_mirror_and_predict(x)
            return tiles.answer(x, super()._internal_maybe_mirror_and_predict)

    SliceBatchPredictor.__module__ = __name__
    SliceBatchPredictor.__qualname__ = "SliceBatchPredictor"
    _SliceBatchPredictor = SliceBatchPredictor
    return SliceBatchPredictor


_SliceBatchPredictor = None


def __getattr__(name: str):
    # `from nnunet_qpg.inference import SliceBatchPredictor` imports nnU-Net only then
    if name == "SliceBatchPredictor":
        return _slice_batch_predictor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def batch_predictor(predictor, batch_size: int | None = None):
    """``predictor`` as a SliceBatchPredictor running ``batch_size`` slices per network call (None: the
    predictor's own setting, else :func:`default_batch_size`), sharing its network and weights; None where
    prediction must go slice by slice: ``batch_size`` 1, or a predictor of another nnUNetPredictor subclass
    (whose overrides batching would bypass)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    batch_size = _checked_batch_size(batch_size)
    cls = _slice_batch_predictor_class()
    if isinstance(predictor, cls):
        batched = predictor
    elif type(predictor) is nnUNetPredictor:
        batched = cls.__new__(cls)
        batched.__dict__.update(predictor.__dict__)
    else:
        return None
    if batch_size is not None and batch_size != batched.batch_size:
        batched = copy.copy(batched)
        batched.batch_size = batch_size
    return None if batched.tiles_per_call == 1 else batched


@dataclass
class PreprocessedSlice:
    """One slice after nnU-Net's preprocessing: ``data`` [c, 1, rows, cols] padded to at least the patch as the
    sliding window pads it, ``unpad`` the slicer that undoes that padding, ``properties`` nnU-Net's record of the
    cropping (for converting logits back)."""

    data: Any
    unpad: tuple
    properties: dict


def preprocess_slices(predictor, images: Iterable[np.ndarray]) -> list[PreprocessedSlice]:
    """nnU-Net's preprocessing of each 2D image alone, as ``predict_single_npy_array`` runs it (the plans'
    preprocessor: crop to nonzero, normalisation), then nnU-Net's padding to the patch size."""
    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=predictor.verbose)
    prepared = []
    for image in images:
        data, _, properties = preprocessor.run_case_npy(
            np.asarray(image)[None, None].astype(np.float32, copy=False), None,
            {"spacing": list(NNUNET_2D_SPACING)}, predictor.plans_manager, predictor.configuration_manager,
            predictor.dataset_json)
        padded, unpad = pad_nd_image(torch.from_numpy(data), predictor.configuration_manager.patch_size,
                                     "constant", {"value": 0}, True, None)
        prepared.append(PreprocessedSlice(padded, unpad, properties))
    return prepared


def _add_time(timings: dict | None, key: str, started: float) -> None:
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - started


def predict_preprocessed(predictor, slices: Sequence[PreprocessedSlice], timings: dict | None = None,
                         ) -> list[np.ndarray]:
    """The uint8 label map of each preprocessed slice (:func:`preprocess_slices`): slices of one padded shape go
    through ``predict_logits_from_preprocessed_data`` together, stacked as one 2D-configuration image (a
    SliceBatchPredictor then batches their tiles); each slice's logits go back through nnU-Net's
    ``convert_predicted_logits_to_segmentation_with_correct_shape`` alone."""
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    labels: list[np.ndarray | None] = [None] * len(slices)
    groups: dict[tuple, list[int]] = {}
    for index, item in enumerate(slices):
        groups.setdefault(tuple(item.data.shape), []).append(index)
    for members in groups.values():
        started = time.perf_counter()
        stacked = torch.cat([slices[index].data for index in members], dim=1) if len(members) > 1 else (
            slices[members[0]].data)
        logits = predictor.predict_logits_from_preprocessed_data(stacked).cpu()
        _add_time(timings, "network", started)
        started = time.perf_counter()
        for position, index in enumerate(members):
            item = slices[index]
            segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits[:, position:position + 1][(slice(None), *item.unpad[1:])], predictor.plans_manager,
                predictor.configuration_manager, predictor.label_manager, item.properties)
            labels[index] = np.asarray(segmentation)[0].astype(np.uint8)
        _add_time(timings, "masks", started)
    return labels


def predict_slices(predictor, images: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
    """:func:`predict_slice` of every image (model-ready SIZE x SIZE float32, e.g. from SlicePreprocessing),
    ``batch_size`` slices per network call (see :func:`batch_predictor`; slice by slice where it gives None)."""
    batched = batch_predictor(predictor, batch_size)
    if batched is None:
        return [predict_slice(predictor, image) for image in images]
    labels = []
    for start in range(0, len(images), batched.tiles_per_call):
        chunk = images[start:start + batched.tiles_per_call]
        labels += predict_preprocessed(batched, preprocess_slices(batched, chunk))
    return labels


def predict_volume(predictor, preprocessing: SlicePreprocessing, volume: AxialVolume,
                   on_slice: Callable[[], None] | None = None, *, batch_size: int | None = None,
                   timings: dict | None = None) -> sitk.Image:
    """The mask of every axial slice of `volume`, as an image with the input's exact geometry.

    Slices go through the network ``batch_size`` at a time (None: the predictor's setting, else
    :func:`default_batch_size`; 1: slice by slice with :func:`predict_slice`, as for predictors that are not
    plain nnUNetPredictors, see :func:`batch_predictor`), while a thread preprocesses the next batch. The masks
    are those of the slice-by-slice path (module docstring). ``timings``, if given, gets seconds added under
    "preprocessing" (window, filters, resize, nnU-Net's preprocessing; on the thread, overlapping the network),
    "network" (nnU-Net's sliding window, mirroring and folds) and "masks" (logits to labels, back to the slice
    size).
    """
    batched = batch_predictor(predictor, batch_size)
    if batched is None:
        single = predictor
        if isinstance(predictor, _slice_batch_predictor_class()) and predictor.tiles_per_call != 1:
            single = copy.copy(predictor)  # one tile per network call too, as nnUNetPredictor does
            single.batch_size = 1

        def labels_of_slice(slice_hu: np.ndarray) -> np.ndarray:
            started = time.perf_counter()
            image = preprocessing(slice_hu)
            _add_time(timings, "preprocessing", started)
            started = time.perf_counter()
            labels = predict_slice(single, image)
            _add_time(timings, "network", started)
            started = time.perf_counter()
            labels = resize_mask_to(labels, slice_hu.shape)
            _add_time(timings, "masks", started)
            return labels

        return volume.label_slices(labels_of_slice, on_slice)

    pixels = volume.slices_rows_cols
    count, shape = pixels.shape[0], pixels.shape[1:]
    step = batched.tiles_per_call
    chunks = [(start, min(count, start + step)) for start in range(0, count, step)]
    mask = np.zeros(sitk.GetArrayViewFromImage(volume.image).shape, dtype=np.uint8)
    mask_view = axial_view(mask, volume.image.GetDirection())

    def prepare(start: int, stop: int) -> list[PreprocessedSlice]:
        started = time.perf_counter()
        prepared = preprocess_slices(batched, preprocessing.stack(pixels[start:stop]))
        _add_time(timings, "preprocessing", started)
        return prepared

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nnunet-qpg-preprocessing") as pool:
        pending = pool.submit(prepare, *chunks[0]) if chunks else None
        for index, (start, stop) in enumerate(chunks):
            prepared = pending.result()
            pending = pool.submit(prepare, *chunks[index + 1]) if index + 1 < len(chunks) else None
            labels = predict_preprocessed(batched, prepared, timings)
            started = time.perf_counter()
            mask_view[start:stop] = resize_mask_to(np.stack(labels), shape)
            _add_time(timings, "masks", started)
            if on_slice:
                for _ in range(stop - start):
                    on_slice()
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(volume.image)
    return image


def this_part(items: Iterable, num_parts: int, part_id: int) -> list:
    """Every num_parts-th item starting at part_id, as nnUNetv2_predict splits a batch across machines."""
    if not 0 <= part_id < num_parts:
        raise ValueError(f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id}")
    return list(items)[part_id::num_parts]
