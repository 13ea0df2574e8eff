"""Batched volume prediction and the fast median: the same pixels and masks as the slice-by-slice path.

- :func:`nnunet_qpg.imaging.intensity.median_filter_nearest` equals ``scipy.ndimage.median_filter(mode="nearest")``
  bit for bit (ties, borders, tiny and odd shapes, stacks, other sizes and dtypes), and ``window_and_denoise`` on a
  stack equals the converter's slice-by-slice reference;
- on a real tiny nnU-Net model (tests/inference_model.py's session model), :func:`predict_volume` in batches gives
  the masks of the per-slice path (``batch_size=1``, i.e. ``predict_single_npy_array`` per slice). The network's
  numbers may differ in the last float32 bits between a batch of one and a larger batch (oneDNN picks another
  kernel for a batch of one; ~1e-5), which nnU-Net's float16 accumulation of the Gaussian-weighted tile turns into
  a few float16 steps of the logits (most at the tile's border, where the weight is tiny); labels may then differ
  only where two classes tie to within that. The test asserts that bound (see
  ``_assert_same_up_to_float16_rounding``); on this model no label differs;
- slices that cannot share a batch (a patch smaller than the slice: several tiles, and crops of other shapes)
  still predict, with the same masks.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_qpg.imaging.intensity import MEAN_FILTER_SIZE, MEDIAN_FILTER_SIZE, median_filter_nearest, window_and_denoise


def reference_window_and_denoise(slice_hu: np.ndarray, window, denoise: bool) -> np.ndarray:
    """The converter's filters as they always were: clip, scipy's 3x3 mean and 7x7 median, edges replicated."""
    clipped = np.clip(slice_hu.astype(np.float32, copy=False), window[0], window[1])
    if not denoise:
        return clipped
    smoothed = ndimage.uniform_filter(clipped, size=MEAN_FILTER_SIZE, mode="nearest")
    return ndimage.median_filter(smoothed, size=MEDIAN_FILTER_SIZE, mode="nearest")


SHAPES = [(1, 1), (1, 9), (9, 1), (2, 3), (6, 6), (7, 7), (8, 13), (37, 53), (64, 64), (100, 31), (700, 40),
          (130, 517), (4, 33, 29)]


@pytest.mark.parametrize("size", [3, 5, 7, 9])
def test_fast_median_is_scipys_bit_for_bit_ties_and_borders(size):
    rng = np.random.default_rng(size)
    for shape in SHAPES:
        footprint = (1,) * (len(shape) - 2) + (size, size)
        for dtype in (np.float32, np.float64, np.int16, np.uint8):
            # few distinct values: windows full of ties, also along the replicated borders
            image = rng.integers(0 if dtype == np.uint8 else -3, 4, shape).astype(dtype)
            expected = ndimage.median_filter(image, size=footprint, mode="nearest")
            got = median_filter_nearest(image, size)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), (shape, dtype)
        image = (rng.normal(size=shape) * 300).astype(np.float32)  # all distinct
        assert np.array_equal(median_filter_nearest(image, size),
                              ndimage.median_filter(image, size=footprint, mode="nearest")), shape


def test_fast_median_on_ct_like_slices_and_order_ambiguous_values():
    rng = np.random.default_rng(0)
    # a 512 x 512 CT-like slice after the paper's window and mean filter: plateaus at -30 and 0, noise between
    hu = rng.normal(-15, 25, (512, 512)).round()
    hu[:40] = 60.0
    hu[:, :25] = -1000.0
    smoothed = ndimage.uniform_filter(np.clip(hu.astype(np.float32), -30, 0), size=3, mode="nearest")
    assert np.array_equal(median_filter_nearest(smoothed), ndimage.median_filter(smoothed, size=7, mode="nearest"))
    # NaN and -0.0: which one a median returns depends on the order of comparisons; scipy's own answer is kept
    for special in (np.nan, -0.0):
        image = rng.integers(-2, 2, (20, 20)).astype(np.float32)
        image[rng.random((20, 20)) < 0.3] = special
        expected = ndimage.median_filter(image, size=7, mode="nearest")
        got = median_filter_nearest(image)
        assert np.array_equal(got, expected, equal_nan=True) and np.array_equal(np.signbit(got), np.signbit(expected))
    with pytest.raises(ValueError):
        median_filter_nearest(np.zeros(5, np.float32))


@pytest.mark.parametrize("denoise", [True, False])
def test_window_and_denoise_on_a_stack_is_the_converters_reference_slice_by_slice(denoise):
    rng = np.random.default_rng(1)
    volume = rng.normal(-15, 40, (5, 70, 90)).round().astype(np.int16)
    volume[2, :30] = 100  # a slice whose top clips to the window's upper edge
    stack = window_and_denoise(volume, (-30.0, 0.0), denoise)
    for index, slice_hu in enumerate(volume):
        expected = reference_window_and_denoise(slice_hu, (-30.0, 0.0), denoise)
        assert np.array_equal(window_and_denoise(slice_hu, (-30.0, 0.0), denoise), expected)
        assert np.array_equal(stack[index], expected)
    # a non-contiguous view (the axial view of a volume stored slice axis last) gives the same pixels
    transposed = np.ascontiguousarray(volume.transpose(1, 2, 0)).transpose(2, 0, 1)
    assert np.array_equal(window_and_denoise(transposed, (-30.0, 0.0), denoise), stack)


def test_default_batch_size_bounds_the_pixels_per_call():
    from nnunet_qpg.inference import default_batch_size

    assert default_batch_size([64, 64]) == 16 and default_batch_size([64, 64], "cuda") == 32
    assert default_batch_size([256, 256]) == 16 and default_batch_size([256, 256], "cuda") == 32
    assert default_batch_size([512, 512]) == default_batch_size([512, 512], "cuda") == 8
    assert default_batch_size([2048, 2048], "cuda") == 1


def test_tile_batches_answer_each_tile_and_survive_an_unexpected_order():
    """The seam's bookkeeping alone: tiles are answered from batched calls, in nnU-Net's order; a tile that is
    not the one expected is predicted alone (same numbers), and so are all later ones."""
    import torch

    from nnunet_qpg.inference import _TileBatches

    data = torch.arange(2 * 5 * 4 * 4, dtype=torch.float32).reshape(2, 5, 4, 4)
    slicers = [(slice(None), d, slice(0, 4), slice(0, 4)) for d in range(5)]
    calls = []

    def predict(x):
        calls.append(x.shape[0])
        return x * 2

    tiles = _TileBatches(data, slicers, 2, torch.device("cpu"))
    for d in range(5):
        x = data[slicers[d]][None].clone()
        assert torch.equal(tiles.answer(x, predict), x * 2)
    assert calls == [2, 2, 1]
    calls.clear()
    tiles = _TileBatches(data, slicers, 4, torch.device("cpu"))
    first = data[slicers[0]][None].clone()
    assert torch.equal(tiles.answer(first, predict), first * 2)
    other = data[slicers[3]][None].clone()  # nnU-Net skipped ahead
    assert torch.equal(tiles.answer(other, predict), other * 2)
    assert torch.equal(tiles.answer(first, predict), first * 2)
    assert calls == [4, 1, 1]


# --- with a real trained model --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from inference_model import shared_root, trained_qpg_model

    return trained_qpg_model(shared_root(tmp_path_factory))


@pytest.fixture(scope="module")
def predictor(model):
    import os

    from nnunet_qpg.inference import load_predictor

    # the tiny trainer class lives in the session's trainer folder, as nnUNetv2_predict would find it
    old = os.environ.get("nnUNet_extTrainer")
    os.environ["nnUNet_extTrainer"] = model.env["nnUNet_extTrainer"]
    try:
        yield load_predictor(model.model_folder, [0])
    finally:
        if old is None:
            os.environ.pop("nnUNet_extTrainer", None)
        else:
            os.environ["nnUNet_extTrainer"] = old


def _volume_with_cropped_slices(folder, slices: int):
    """A synthetic CT (stored slice axis last, as ITK usually does) in which every third slice has a band of soft
    tissue along one edge: the paper's window clips it to 0 and nnU-Net crops it off, so slices' preprocessed
    shapes differ."""
    from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_case
    from nnunet_qpg.inference import read_axial_volume

    make_synthetic_case(folder, seed=11, shape=(slices, 56, 50), spacing=(3.0, 0.8, 0.8), slice_axis=2)
    image = sitk.ReadImage(str(folder / "imaging.nii.gz"))
    pixels = sitk.GetArrayFromImage(image)  # sitk index axis 2 holds the slices: numpy axis 0
    for z in range(0, slices, 3):
        pixels[z, :2 + z % 12] = 60
    edited = sitk.GetImageFromArray(pixels)
    edited.CopyInformation(image)
    sitk.WriteImage(edited, str(folder / "edited.nii.gz"))
    return read_axial_volume(folder / "edited.nii.gz")


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    # 37 slices: the batches of 32, 5 and 8 below all end with a partial one
    return _volume_with_cropped_slices(tmp_path_factory.mktemp("batched_volume"), 37)


@pytest.fixture(scope="module")
def short_volume(tmp_path_factory):
    return _volume_with_cropped_slices(tmp_path_factory.mktemp("short_volume"), 10)


def _plain(predictor):
    """A plain nnUNetPredictor sharing ``predictor``'s network, weights and plans (today's per-slice path)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    plain = nnUNetPredictor.__new__(nnUNetPredictor)
    plain.__dict__.update(predictor.__dict__)
    return plain


def _per_slice_logits_and_labels(predictor, images):
    """What predict_single_npy_array computes for each image: its float16 logits and its labels."""
    import torch

    from nnunet_qpg.inference import NNUNET_2D_SPACING, predict_slice

    plain = _plain(predictor)
    preprocessor = plain.configuration_manager.preprocessor_class(verbose=False)
    logits = []
    for image in images:
        data, _, _ = preprocessor.run_case_npy(image[None, None].astype(np.float32), None,
                                               {"spacing": list(NNUNET_2D_SPACING)}, plain.plans_manager,
                                               plain.configuration_manager, plain.dataset_json)
        logits.append(plain.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu())
    return logits, [predict_slice(plain, image) for image in images]


def _batched_logits_and_labels(predictor, images, batch_size):
    """The batched path's logits (slices stacked batch_size at a time), its labels (predict_preprocessed), and
    nnU-Net's Gaussian tile weight under each slice's pixels."""
    import torch
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    from nnunet_qpg.inference import batch_predictor, predict_preprocessed, preprocess_slices

    batched = batch_predictor(predictor, batch_size)
    patch = tuple(batched.configuration_manager.patch_size)
    gaussian = compute_gaussian(patch, sigma_scale=1. / 8, value_scaling_factor=10, device=torch.device("cpu"))
    prepared = preprocess_slices(batched, images)
    assert {tuple(item.data.shape[2:]) for item in prepared} == {patch}, "every slice is one tile"
    logits, labels, weights = [], [], []
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start:start + batch_size]
        out = batched.predict_logits_from_preprocessed_data(torch.cat([item.data for item in chunk], dim=1)).cpu()
        logits += [out[:, i:i + 1][(slice(None), *item.unpad[1:])] for i, item in enumerate(chunk)]
        weights += [gaussian[item.unpad[2:]].float() for item in chunk]
        labels += predict_preprocessed(batched, chunk)
    return logits, labels, weights


# The network's own float32 difference between a tile alone and in a batch (measured up to 2.1e-5 on the test and
# benchmark models), with a margin: it matters where logits are near 0 and their float16 steps tiny.
NETWORK_DIFFERENCE = 1e-4


def _float16_step(values):
    """One float16 step (unit in the last place) at each value's magnitude, subnormals included."""
    import torch

    magnitude = values.abs().clamp_min(2 ** -14)
    return torch.exp2(torch.floor(torch.log2(magnitude))) * 2 ** -10


def _assert_same_up_to_float16_rounding(per_slice, batched) -> tuple[float, int]:
    """The tolerance of the batched path, from how nnU-Net accumulates a tile: logits = half(half(p * g) /
    half(g)), p the network's (mirrored) output, g the Gaussian weight (10 in the tile's centre, 1e-6 in its
    corners). The network's last float32 bits may differ between a batch of one and a larger batch (~1e-5); after
    the float16 roundings that is at most two float16 steps of the logit plus two of the product p * g divided by
    g (large only where g is tiny, at the tile's border), plus the network's difference itself (NETWORK_DIFFERENCE,
    which dominates for logits near 0). Labels must be equal except where the per-slice logits of the two best
    classes lie within that tolerance. Returns the largest logit difference and the number of pixels whose labels
    differ."""
    import torch

    disagreeing = total = 0
    largest = 0.0
    for single, other, single_labels, labels, weight in zip(per_slice[0], batched[0], per_slice[1], batched[1],
                                                              batched[2]):
        single, other = single.float()[:, 0], other.float()[:, 0]
        assert single.shape == other.shape
        difference = (single - other).abs()
        largest = max(largest, float(difference.max()) if difference.numel() else 0.0)
        magnitude = torch.maximum(single.abs(), other.abs())  # either side of a float16 binade boundary
        tolerance = (NETWORK_DIFFERENCE + 2 * _float16_step(magnitude)
                     + 2 * _float16_step(magnitude * weight) / weight)
        assert bool((difference <= tolerance).all()), float((difference - tolerance).max())
        differ = single_labels != labels
        total += single_labels.size
        if differ.any():
            top2 = torch.topk(single, 2, dim=0).values
            margin = (top2[0] - top2[1]).numpy()
            assert np.all(margin[differ] <= 2 * tolerance.max(dim=0).values.numpy()[differ])
            disagreeing += int(differ.sum())
    assert disagreeing <= total * 1e-3, f"{disagreeing} of {total} pixels differ"
    return largest, disagreeing


@pytest.mark.slow
def test_batched_slices_match_the_per_slice_path(model, predictor, volume):
    from nnunet_qpg.imaging.axial import axial_view
    from nnunet_qpg.imaging.resizing import resize_mask_to
    from nnunet_qpg.inference import SlicePreprocessing, predict_volume

    preprocessing = SlicePreprocessing.from_model_folder(model.model_folder)
    images = preprocessing.stack(volume.slices_rows_cols)
    per_slice = _per_slice_logits_and_labels(predictor, images)
    assert len({tuple(item.shape) for item in per_slice[0]}) > 1, "nnU-Net should crop some slices differently"
    for batch_size in (32, 5):
        largest, disagreeing = _assert_same_up_to_float16_rounding(
            per_slice, _batched_logits_and_labels(predictor, images, batch_size))
        print(f"batch {batch_size}: largest logit difference {largest}, {disagreeing} pixel label(s) differ")
    # the whole volume, batched with the preprocessing thread, against predict_slice slice by slice
    ticks = []
    batched = predict_volume(predictor, preprocessing, volume, lambda: ticks.append(1), batch_size=8)
    one_by_one = predict_volume(predictor, preprocessing, volume, batch_size=1)
    assert len(ticks) == volume.slices_rows_cols.shape[0]
    for image in (batched, one_by_one):
        assert image.GetSize() == volume.image.GetSize() and image.GetDirection() == volume.image.GetDirection()
        assert image.GetOrigin() == volume.image.GetOrigin() and image.GetSpacing() == volume.image.GetSpacing()
    differ = sitk.GetArrayViewFromImage(batched) != sitk.GetArrayViewFromImage(one_by_one)
    assert int(differ.sum()) <= differ.size * 1e-3
    # batch_size=1 is today's path: predict_slice per slice, masks resized back
    expected = resize_mask_to(np.stack(per_slice[1]), volume.slices_rows_cols.shape[1:])
    assert np.array_equal(axial_view(sitk.GetArrayFromImage(one_by_one), volume.image.GetDirection()), expected)


@pytest.mark.slow
def test_slices_that_cannot_share_a_batch_still_predict(model, predictor, short_volume):
    """A patch smaller than the slices: each slice has several tiles and nnU-Net's crops pad to different shapes,
    so slices are grouped by shape (single slices included); the masks equal the per-slice path's."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    from nnunet_qpg.inference import SlicePreprocessing, batch_predictor, predict_volume, preprocess_slices

    small = copy.copy(predictor)
    configuration = dict(predictor.configuration_manager.configuration)
    configuration["patch_size"] = [16, 16]
    small.configuration_manager = ConfigurationManager(configuration)
    preprocessing = SlicePreprocessing.from_model_folder(model.model_folder)
    prepared = preprocess_slices(small, preprocessing.stack(short_volume.slices_rows_cols))
    assert len({tuple(item.data.shape) for item in prepared}) > 1
    assert batch_predictor(small, 4).tiles_per_call == 4
    batched = sitk.GetArrayFromImage(predict_volume(small, preprocessing, short_volume, batch_size=4))
    per_slice = sitk.GetArrayFromImage(predict_volume(small, preprocessing, short_volume, batch_size=1))
    assert batched.shape == sitk.GetArrayViewFromImage(short_volume.image).shape
    assert int((batched != per_slice).sum()) <= batched.size * 1e-3


@pytest.mark.slow
def test_other_predictor_classes_go_slice_by_slice(model, predictor, volume):
    """A subclass of nnUNetPredictor other than ours keeps its overrides: prediction goes through
    predict_single_npy_array slice by slice; a plain nnUNetPredictor is batched."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_qpg.inference import SlicePreprocessing, batch_predictor, predict_volume

    class Counting(nnUNetPredictor):
        calls = 0

        def predict_single_npy_array(self, *args, **kwargs):
            Counting.calls += 1
            return super().predict_single_npy_array(*args, **kwargs)

    counting = Counting.__new__(Counting)
    counting.__dict__.update(predictor.__dict__)
    assert batch_predictor(counting) is None
    plain = nnUNetPredictor.__new__(nnUNetPredictor)
    plain.__dict__.update(predictor.__dict__)
    assert batch_predictor(plain) is not None and batch_predictor(plain, 1) is None
    preprocessing = SlicePreprocessing.from_model_folder(model.model_folder)
    mask = predict_volume(counting, preprocessing, volume)
    assert Counting.calls == volume.slices_rows_cols.shape[0]
    assert mask.GetSize() == volume.image.GetSize()
