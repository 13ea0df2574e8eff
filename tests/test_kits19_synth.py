"""The synthetic KiTS19 generator: KiTS19-like headers, labels, HU contrast, determinism."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.cli import main as cli_main
from nnunet_qpg.dataset_conversion.synth_kits19 import HU, make_synthetic_case, parse_case_list

KITS19_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def test_headers_look_like_kits19(tmp_path):
    make_synthetic_case(tmp_path / "case_00000", seed=3, shape=(24, 80, 96))
    image = sitk.ReadImage(str(tmp_path / "case_00000" / "imaging.nii.gz"))
    labels = sitk.ReadImage(str(tmp_path / "case_00000" / "segmentation.nii.gz"))
    assert image.GetSize() == (24, 80, 96)  # slices on sitk index axis 0, as in KiTS19
    assert sitk.GetArrayViewFromImage(image).shape == (96, 80, 24)
    assert np.allclose(image.GetDirection(), KITS19_DIRECTION)
    slice_mm, row_mm, col_mm = image.GetSpacing()
    assert slice_mm in (3.0, 5.0) and 0.7 <= row_mm == col_mm <= 0.9
    assert image.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
    assert labels.GetSize() == image.GetSize() and labels.GetDirection() == image.GetDirection()
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) == {0, 1, 2}


def test_intensities_per_label_without_noise(tmp_path):
    make_synthetic_case(tmp_path / "c", seed=5, shape=(20, 64, 64), noise_std=0)
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c" / "imaging.nii.gz")))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c" / "segmentation.nii.gz")))
    assert set(np.unique(image[labels == 1])) == {HU["kidney"]}
    assert set(np.unique(image[labels == 2])) == {HU["tumor"]}
    assert set(np.unique(image[labels == 0])) == {HU["air"], HU["fat"], HU["soft_tissue"]}
    # the paper's [-30, 0] window keeps kidney, tumor and background apart
    clipped = {name: float(np.clip(value, -30, 0)) for name, value in HU.items()}
    assert len({clipped["kidney"], clipped["tumor"], clipped["soft_tissue"]}) == 3


def test_same_seed_same_volume_and_other_seed_differs(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        make_synthetic_case(tmp_path / name, seed=seed, shape=(16, 48, 48))
    read = lambda name: sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name / "imaging.nii.gz")))  # noqa: E731
    assert np.array_equal(read("a"), read("b"))
    assert not np.array_equal(read("a"), read("c"))


def test_slice_axis_option_keeps_the_physical_volume(tmp_path):
    make_synthetic_case(tmp_path / "axis0", seed=2, shape=(12, 40, 48), slice_axis=0)
    make_synthetic_case(tmp_path / "axis2", seed=2, shape=(12, 40, 48), slice_axis=2)
    first = sitk.ReadImage(str(tmp_path / "axis0" / "segmentation.nii.gz"))
    second = sitk.ReadImage(str(tmp_path / "axis2" / "segmentation.nii.gz"))
    assert first.GetSize() == (12, 40, 48) and second.GetSize() == (48, 40, 12)
    # numpy of the axis-2 file is (slices, rows, cols); of the KiTS19-like file (cols, rows, slices)
    assert np.array_equal(sitk.GetArrayFromImage(second), sitk.GetArrayFromImage(first).transpose(2, 1, 0))


def test_cli_writes_the_requested_cases(tmp_path, capsys):
    assert parse_case_list(["0-2", "180,182"]) == [0, 1, 2, 180, 182]
    assert cli_main(["synth-kits19", str(tmp_path), "--cases", "3", "181", "--shape", "8", "32", "32"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_00003", "case_00181"]
    assert sitk.ReadImage(str(tmp_path / "case_00181" / "imaging.nii.gz")).GetSize() == (8, 32, 32)
