"""`nnunet-qpg predict-kits19`: the two-stage pipeline with real (tiny) kidney and tumour models on NIfTI volumes.

Both models come from one `convert-kits19 --task both` of synthetic KiTS19 and are trained by nnU-Net for two
iterations, so their masks are arbitrary (the kidney model finds no kidney at all); the first tests check what the
pipeline guarantees whatever the models say: the input's geometry, KiTS19 labels, stage 1 alone deciding where
foreground is, tumour only inside it. Stage 2 runs only where stage 1 finds kidney, so the last tests use a copy
of the kidney model whose output bias says "kidney" everywhere nnU-Net looks (inside the bounding box of the
image's nonzero pixels, nnU-Net's crop-to-nonzero): on a slice whose border is air that is the whole slice, so the
tumour model sees exactly what `nnunet-qpg predict` gives it; on a slice padded with soft tissue (0 after the
[-30, 0] HU window) it is a box inside the slice, so stage 2 works on a real crop.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_model import assert_bad_volume_skipped, nnunet_qpg_command, trained_kidney_and_tumor_models
from nnunet_helpers import run_command
from scipy import ndimage

from nnunet_qpg.dataset_conversion.kits19_slices import EIGHT_CONNECTED
from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_case
from nnunet_qpg.inference import read_axial_volume

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trained_kidney_and_tumor_models(tmp_path_factory)


@pytest.fixture(scope="module")
def volumes(models, tmp_path_factory):
    """A held-out KiTS19 test case as stored (slice axis first), a case with the slice axis last and a moved
    origin, and a file that is not NIfTI."""
    kidney, _ = models
    folder = tmp_path_factory.mktemp("kits19_volumes")
    shutil.copyfile(kidney.kits19 / "case_00180" / "imaging.nii.gz", folder / "case_00180_0000.nii.gz")
    made = tmp_path_factory.mktemp("kits19_axis2")
    make_synthetic_case(made, seed=11, shape=(5, 40, 36), spacing=(4.0, 0.8, 0.7), slice_axis=2)
    image = sitk.ReadImage(str(made / "imaging.nii.gz"))
    image.SetOrigin((-12.5, 30.0, 7.25))
    sitk.WriteImage(image, str(folder / "axis2_0000.nii.gz"))
    (folder / "broken.nii.gz").write_bytes(b"not a nifti volume")
    return folder


@pytest.fixture(scope="module")
def two_stage(models, volumes, tmp_path_factory):
    kidney, tumor = models
    output = tmp_path_factory.mktemp("kits19_masks")
    done = run_command([nnunet_qpg_command(), "predict-kits19", "-i", str(volumes), "-o", str(output),
                        "--kidney-model", str(kidney.model_folder), "--tumor-model", str(tumor.model_folder),
                        "-device", "cpu"], kidney.env, check=False)
    return output, done


@pytest.fixture(scope="module")
def kidney_only(models, volumes, tmp_path_factory):
    """Stage 1 alone: `nnunet-qpg predict` with the kidney model on the same volumes."""
    kidney, _ = models
    output = tmp_path_factory.mktemp("kidney_masks")
    run_command([nnunet_qpg_command(), "predict", "-i", str(volumes), "-o", str(output), "-m",
                 str(kidney.model_folder), "-device", "cpu"], kidney.env, check=False)
    return output


CASES = ("case_00180", "axis2")


def axial_labels(path) -> np.ndarray:
    volume = read_axial_volume(path)  # held in a name: its array is a view into the image it keeps alive
    return volume.slices_rows_cols.copy()


def test_masks_keep_the_input_geometry_and_hold_kits19_labels(volumes, two_stage):
    output, _ = two_stage
    for case in CASES:
        source = sitk.ReadImage(str(volumes / f"{case}_0000.nii.gz"))
        mask = sitk.ReadImage(str(output / f"{case}.nii.gz"))
        assert mask.GetSize() == source.GetSize(), case
        assert mask.GetSpacing() == pytest.approx(source.GetSpacing()), case
        assert mask.GetOrigin() == pytest.approx(source.GetOrigin()), case
        assert mask.GetDirection() == pytest.approx(source.GetDirection()), case
        assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1, 2}, case


def test_foreground_is_the_kidney_models_and_tumour_lies_in_its_region_boxes(two_stage, kidney_only):
    """Stage 2 only relabels: kidney-or-tumour (label > 0) is exactly the kidney model's mask, and every tumour
    pixel lies in the bounding box of an 8-connected region of it, in the region itself."""
    output, _ = two_stage
    for case in CASES:
        labels = axial_labels(output / f"{case}.nii.gz")
        stage_one = axial_labels(kidney_only / f"{case}.nii.gz")
        np.testing.assert_array_equal(labels > 0, stage_one > 0, err_msg=case)
        for index, slice_labels in enumerate(labels):
            regions, _ = ndimage.label(slice_labels > 0, structure=EIGHT_CONNECTED)
            in_boxes = np.zeros(slice_labels.shape, dtype=bool)
            for box in ndimage.find_objects(regions):
                in_boxes[box] = True
            tumour = slice_labels == 2
            assert not (tumour & ~in_boxes).any(), f"{case} slice {index}: tumour outside every kidney box"
            assert not (tumour & (regions == 0)).any(), f"{case} slice {index}: tumour on background"


def test_bad_volume_is_reported_and_skipped(two_stage):
    assert_bad_volume_skipped(*two_stage)


def test_swapped_models_are_refused_before_anything_is_predicted(models, volumes, tmp_path):
    kidney, tumor = models
    done = run_command([nnunet_qpg_command(), "predict-kits19", "-i", str(volumes), "-o", str(tmp_path / "out"),
                        "--kidney-model", str(tumor.model_folder), "--tumor-model", str(kidney.model_folder),
                        "-device", "cpu"], kidney.env, check=False)
    assert done.returncode == 2
    assert "swap --kidney-model and --tumor-model" in done.stderr
    assert not (tmp_path / "out").exists()


SOFT_TISSUE_HU = 40  # clipped to 0 by the paper's [-30, 0] window: nnU-Net's crop-to-nonzero leaves it out
PADDING = 10


def kidney_everywhere_model(kidney_model_folder: Path, target: Path) -> Path:
    """A copy of the trained kidney model folder whose full-resolution output layer votes "kidney" everywhere."""
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(kidney_model_folder / name, target / name)
    (target / "fold_0").mkdir()
    checkpoint = torch.load(kidney_model_folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    weights = checkpoint["network_weights"]
    last = max(int(key.split(".")[2]) for key in weights if key.startswith("decoder.seg_layers."))
    weights[f"decoder.seg_layers.{last}.bias"] = torch.tensor([-100.0, 100.0])
    torch.save(checkpoint, target / "fold_0" / "checkpoint_final.pth")
    return target


@pytest.fixture(scope="module")
def forced_two_stage(models, tmp_path_factory):
    """predict-kits19 with the kidney-everywhere model, and `predict` with the tumour model, on the held-out case
    and on the same case padded in-plane with soft tissue."""
    kidney, tumor = models
    work = tmp_path_factory.mktemp("forced")
    forced = kidney_everywhere_model(kidney.model_folder, work / "kidney_everywhere")
    volumes = work / "volumes"
    volumes.mkdir()
    case = sitk.ReadImage(str(kidney.kits19 / "case_00180" / "imaging.nii.gz"))
    sitk.WriteImage(case, str(volumes / "case_00180_0000.nii.gz"))
    # KiTS19 layout: sitk index axis 0 holds the slices, axes 1 and 2 are in-plane
    padded = sitk.ConstantPad(case, [0, PADDING, PADDING], [0, PADDING, PADDING], SOFT_TISSUE_HU)
    sitk.WriteImage(padded, str(volumes / "padded_0000.nii.gz"))
    run_command([nnunet_qpg_command(), "predict-kits19", "-i", str(volumes), "-o", str(work / "two_stage"),
                 "--kidney-model", str(forced), "--tumor-model", str(tumor.model_folder), "-device", "cpu"],
                kidney.env)
    run_command([nnunet_qpg_command(), "predict", "-i", str(volumes), "-o", str(work / "tumour_alone"), "-m",
                 str(tumor.model_folder), "-device", "cpu"], kidney.env)
    return work


def test_stage_two_on_a_whole_slice_region_is_the_tumour_model_on_that_slice(forced_two_stage):
    labels = axial_labels(forced_two_stage / "two_stage" / "case_00180.nii.gz")
    tumour_alone = axial_labels(forced_two_stage / "tumour_alone" / "case_00180.nii.gz")
    assert (labels > 0).all(), "the kidney-everywhere model should make every pixel kidney or tumour"
    np.testing.assert_array_equal(labels == 2, tumour_alone == 1)


def test_stage_two_on_a_crop_pastes_tumour_inside_the_crop_box(forced_two_stage):
    labels = axial_labels(forced_two_stage / "two_stage" / "padded.nii.gz")
    for index, slice_labels in enumerate(labels):
        regions, count = ndimage.label(slice_labels > 0, structure=EIGHT_CONNECTED)
        assert count == 1, f"slice {index}: nnU-Net's nonzero box should be one region, got {count}"
        box = ndimage.find_objects(regions)[0]
        assert box[0].start >= PADDING // 2 and box[1].start >= PADDING // 2, f"slice {index}: box {box}"
        assert box[0].stop <= slice_labels.shape[0] - PADDING // 2, f"slice {index}: box {box}"
        outside = np.ones(slice_labels.shape, dtype=bool)
        outside[box] = False
        assert not (slice_labels[outside] > 0).any(), f"slice {index}: labels outside the kidney region's box"
