"""nnunet_qpg.imaging: the resizes against plain references (bit for bit: trained models depend on these pixels),
and the one axial view."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_qpg.imaging.axial import axial_pixels, axial_view, sitk_axes_from_direction
from nnunet_qpg.imaging.resizing import resize_image, resize_mask, resize_mask_to

# up- and down-sizing, odd sizes, 1-pixel sides, KiTS19's 512 and the converter's default 256
SIDES = (1, 2, 3, 5, 7, 16, 31, 64, 65, 97, 100, 255, 256, 300, 512, 513)
SQUARES = (1, 3, 7, 64, 65, 127, 256)


def reference_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Plain bilinear resize: output pixel i's centre at (i + 0.5) * in / size - 0.5 in input pixel coordinates,
    clamped to the image; the four neighbours weighted in float64 in scipy's order, then cast to float32."""

    def axis(in_size: int):
        centre = np.clip((np.arange(size) + 0.5) * (in_size / size) - 0.5, 0, in_size - 1)
        low = np.floor(centre).astype(int)
        t = centre - low
        return low, np.minimum(low + 1, in_size - 1), 1.0 - t, t

    pixels = image.astype(np.float64)
    r0, r1, wr0, wr1 = axis(image.shape[0])
    c0, c1, wc0, wc1 = axis(image.shape[1])
    total = pixels[np.ix_(r0, c0)] * wr0[:, None] * wc0[None, :]
    total = total + pixels[np.ix_(r0, c1)] * wr0[:, None] * wc1[None, :]
    total = total + pixels[np.ix_(r1, c0)] * wr1[:, None] * wc0[None, :]
    total = total + pixels[np.ix_(r1, c1)] * wr1[:, None] * wc1[None, :]
    return total.astype(np.float32)


def reference_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Each output pixel takes the input pixel containing its centre, in exact integer arithmetic: centre of
    output pixel i is (2i + 1) * in / (2 * out) (pixel edges at integers), a centre on an edge belongs to the
    pixel after it."""
    rows = np.minimum((2 * np.arange(shape[0]) + 1) * mask.shape[0] // (2 * shape[0]), mask.shape[0] - 1)
    cols = np.minimum((2 * np.arange(shape[1]) + 1) * mask.shape[1] // (2 * shape[1]), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def test_resize_image_is_the_plain_bilinear_reference_bit_for_bit():
    rng = np.random.default_rng(0)
    for rows, cols in itertools.product(SIDES, (1, 7, 65, 300, 512)):
        image = (rng.normal(size=(rows, cols)) * 500).astype(np.float32)  # CT-like HU values
        for size in SQUARES:
            resized = resize_image(image, size)
            assert resized.dtype == np.float32 and resized.shape == (size, size)
            assert np.array_equal(resized, reference_bilinear(image, size)), (rows, cols, size)


@pytest.mark.parametrize("rows, cols", [(300, 300), (100, 100), (512, 511), (7, 300), (1, 65)])
def test_resize_masks_are_the_exact_nearest_reference_ties_included(rows, cols):
    # 300 -> 65 and 100 -> 97 put output centres exactly on input pixel edges (where scipy's zoom differs)
    mask = np.random.default_rng(rows * cols).integers(0, 3, size=(rows, cols)).astype(np.uint8)
    for size in (1, 2, 3, 64, 65, 96, 97, 256, 512):
        assert np.array_equal(resize_mask(mask, size), reference_nearest(mask, (size, size))), (rows, cols, size)
        for shape in ((size, size + 1), (rows, cols), (max(1, rows // 3), 2 * cols + 1)):
            resized = resize_mask_to(mask, shape)
            assert resized.dtype == np.uint8
            assert np.array_equal(resized, reference_nearest(mask, shape)), (rows, cols, shape)


def test_a_mask_resized_and_back_lands_on_its_pixels():
    mask = np.random.default_rng(1).integers(0, 3, size=(64, 48)).astype(np.uint8)
    assert np.array_equal(resize_mask_to(resize_mask(mask, 192), mask.shape), mask)  # integer upscale undone


KITS19_DIRECTION = (0, 0, 1, 0, 1, 0, 1, 0, 0)  # index axis 0 superior-inferior, as KiTS19 ships the volumes


def test_axial_axes_come_from_the_direction_matrix():
    assert sitk_axes_from_direction((1, 0, 0, 0, 1, 0, 0, 0, 1)) == (2, 1, 0)
    assert sitk_axes_from_direction(KITS19_DIRECTION) == (0, 1, 2)
    oblique = sitk.VersorRigid3DTransform((0, 0, 1), 0.3).GetMatrix()  # 17 degrees about z: still one axis each
    assert sitk_axes_from_direction(oblique) == (2, 1, 0)


def test_one_axial_view_for_images_and_arrays():
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # numpy (index 2, index 1, index 0)
    image = sitk.GetImageFromArray(volume)
    image.SetDirection(KITS19_DIRECTION)
    view = axial_pixels(image)
    assert view.shape == (6, 5, 4) and np.array_equal(view[2], volume[:, :, 2].T)  # slices along index axis 0
    assert not view.flags.writeable

    mask = np.zeros_like(volume)
    axial_view(mask, image.GetDirection())[2] = 1  # writes through to the array in the file's layout
    assert mask[:, :, 2].all() and mask.sum() == 4 * 5

    flat = sitk.GetImageFromArray(np.ones((3, 7), dtype=np.uint8))
    assert axial_pixels(flat).shape == (1, 3, 7)  # a 2D image is one slice
