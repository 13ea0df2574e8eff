"""keep_largest_components and component_summary on planted organs and islands (hand-counted volumes)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_qpg.imaging.axial import axial_view
from nnunet_qpg.imaging.components import (
    axial_spacing,
    component_summary,
    keep_largest_components,
    voxel_volume_ml,
)

SPACING = (3.0, 0.8, 0.8)  # mm: slice, row, column -> one voxel is 1.92 mm^3


def organs() -> np.ndarray:
    """Two kidneys (label 1, 4x6x5 = 120 and 3x5x5 = 75 voxels), a tumour (label 2, 2x2x2) inside the first
    kidney, and a spurious island of label 1 (2x2x2 = 8 voxels) far away."""
    labels = np.zeros((12, 20, 30), dtype=np.uint8)
    labels[2:6, 2:8, 2:7] = 1
    labels[3:5, 3:5, 3:5] = 2  # the tumour replaces 8 kidney voxels: the first kidney keeps 112
    labels[4:7, 10:15, 20:25] = 1
    labels[10:12, 17:19, 27:29] = 1
    return labels


def test_spurious_island_goes_two_organs_stay():
    labels = organs()
    cleaned = keep_largest_components(labels, 2, SPACING)
    assert cleaned.dtype == labels.dtype and cleaned is not labels
    expected = labels.copy()
    expected[10:12, 17:19, 27:29] = 0
    assert np.array_equal(cleaned, expected)
    assert np.array_equal(labels, organs())  # the input is not changed
    # count=1: only the larger kidney of label 1; the tumour (its own label's only component) stays
    one = keep_largest_components(labels, 1, SPACING)
    assert not one[4:7, 10:15, 20:25].any() and (one == 2).sum() == 8 and (one == 1).sum() == 112


def test_minimum_volume_is_in_millilitres_from_the_spacing():
    labels = organs()
    voxel = 3.0 * 0.8 * 0.8 / 1000  # mL
    assert voxel_volume_ml(SPACING) == pytest.approx(voxel)
    # the second kidney has 75 voxels = 0.144 mL; a threshold just above it drops it (and the island)
    cleaned = keep_largest_components(labels, None, SPACING, min_volume_ml=75 * voxel * 1.01)
    assert (cleaned == 1).sum() == 112 and (cleaned == 2).sum() == 0  # the 8-voxel tumour is below it too
    cleaned = keep_largest_components(labels, None, SPACING, min_volume_ml=75 * voxel * 0.99)
    assert (cleaned == 1).sum() == 112 + 75 and (cleaned == 2).sum() == 0
    # the same voxels at 1 mm isotropic spacing are 3.84x smaller in mL: now the second kidney is below it
    assert (keep_largest_components(labels, None, (1.0, 1.0, 1.0), min_volume_ml=0.1) == 1).sum() == 112


def test_labels_are_cleaned_independently_and_only_the_given_ones():
    labels = organs()
    labels[0, 0, 0] = 2  # a tumour island
    cleaned = keep_largest_components(labels, 1, SPACING, label_values=[2])
    assert cleaned[0, 0, 0] == 0 and (cleaned == 2).sum() == 8
    assert np.array_equal(cleaned == 1, labels == 1)  # label 1 untouched (its island stays)
    # a tumour's voxels never join the kidney's component: label 1 around it is one component of its own
    summary = component_summary(organs(), SPACING)
    assert summary[1]["components"] == 3 and summary[2]["components"] == 1


def test_26_connectivity_joins_corner_neighbours():
    labels = np.zeros((4, 4, 4), dtype=np.int16)
    labels[0, 0, 0] = labels[1, 1, 1] = 3  # touching at a corner only: one 26-connected component
    labels[3, 3, 3] = 3
    assert component_summary(labels, (1, 1, 1))[3]["components"] == 2
    kept = keep_largest_components(labels, 1, (1, 1, 1))
    assert kept[0, 0, 0] == kept[1, 1, 1] == 3 and kept[3, 3, 3] == 0


def test_summary_volumes_and_slice_ranges():
    summary = component_summary(organs(), SPACING)
    voxel = 3.0 * 0.8 * 0.8 / 1000
    assert list(summary) == [1, 2]
    kidney = summary[1]
    assert kidney["voxels"] == 112 + 75 + 8 and kidney["volume_ml"] == pytest.approx(195 * voxel)
    assert (kidney["first_slice"], kidney["last_slice"], kidney["slices"]) == (2, 11, 7)  # slices 2-6, 10-11
    assert kidney["largest_components_ml"] == pytest.approx([112 * voxel, 75 * voxel, 8 * voxel])
    assert (summary[2]["first_slice"], summary[2]["last_slice"], summary[2]["voxels"]) == (3, 4, 8)
    absent = component_summary(organs(), SPACING, label_values=[5])[5]
    assert absent["voxels"] == 0 and absent["first_slice"] is None and absent["components"] == 0


def test_empty_input():
    empty = np.zeros((5, 6, 7), dtype=np.uint8)
    assert np.array_equal(keep_largest_components(empty, 2, SPACING, min_volume_ml=1.0), empty)
    assert component_summary(empty, SPACING) == {}
    assert keep_largest_components(np.zeros((0, 4, 4), np.uint8), 2, SPACING).shape == (0, 4, 4)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="count"):
        keep_largest_components(organs(), 0, SPACING)
    with pytest.raises(ValueError, match="spacing"):
        keep_largest_components(organs(), 2, (1.0, 1.0))
    with pytest.raises(ValueError, match="integer"):
        keep_largest_components(organs().astype(float), 2, SPACING)


def test_axial_spacing_follows_the_axial_view():
    array = np.zeros((7, 5, 3), dtype=np.uint8)  # numpy (z, y, x) of an image of sitk size (3, 5, 7)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 3.0))
    image.SetDirection((0, 0, 1, 0, 1, 0, -1, 0, 0))  # KiTS19-like: sitk axis 0 runs along z
    view = axial_view(array, image.GetDirection())
    assert view.shape == (3, 5, 7) and axial_spacing(image) == (0.7, 0.8, 3.0)
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert axial_view(array, image.GetDirection()).shape == (7, 5, 3) and axial_spacing(image) == (3.0, 0.8, 0.7)
