"""`nnunet-qpg predict` on real NIfTI volumes with a real (tiny) QPG model: geometry, orientation, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from inference_model import assert_bad_volume_skipped, nnunet_qpg_command, shared_root, trained_qpg_model
from nnunet_helpers import run_command

from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_case
from nnunet_qpg.inference import read_axial_volume

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return trained_qpg_model(shared_root(tmp_path_factory))


@pytest.fixture(scope="module")
def volumes(model, tmp_path_factory):
    """The same synthetic anatomy stored with the slice axis first (KiTS19) and last (usual ITK), plus a bad file."""
    folder = tmp_path_factory.mktemp("volumes")
    made = tmp_path_factory.mktemp("cases")
    for name, slice_axis in (("axis0", 0), ("axis2", 2)):
        make_synthetic_case(made / name, seed=7, shape=(5, 40, 36), spacing=(4.0, 0.8, 0.7), slice_axis=slice_axis)
        image = sitk.ReadImage(str(made / name / "imaging.nii.gz"))
        image.SetOrigin((-12.5, 30.0, 7.25))  # a non-trivial origin must come back unchanged too
        sitk.WriteImage(image, str(folder / f"{name}_0000.nii.gz"))
    (folder / "broken.nii.gz").write_bytes(b"not a nifti volume")
    return folder


@pytest.fixture(scope="module")
def prediction(model, volumes, tmp_path_factory):
    output = tmp_path_factory.mktemp("masks")
    done = run_command([nnunet_qpg_command(), "predict", "-i", str(volumes), "-o", str(output), "-m",
                        str(model.model_folder), "-f", "0", "-device", "cpu"], model.env, check=False)
    return output, done


def test_masks_keep_the_input_geometry_in_both_orientations(volumes, prediction):
    output, _ = prediction
    for name in ("axis0", "axis2"):
        source = sitk.ReadImage(str(volumes / f"{name}_0000.nii.gz"))
        mask = sitk.ReadImage(str(output / f"{name}.nii.gz"))
        assert mask.GetSize() == source.GetSize()
        assert mask.GetSpacing() == pytest.approx(source.GetSpacing())
        assert mask.GetOrigin() == pytest.approx(source.GetOrigin())
        assert mask.GetDirection() == pytest.approx(source.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}


def test_axial_slices_are_found_from_the_header(prediction):
    """Same anatomy, two file layouts: viewed along their axial axes, the two masks are identical."""
    output, _ = prediction
    first, second = (read_axial_volume(output / f"{name}.nii.gz") for name in ("axis0", "axis2"))
    first, second = first.slices_rows_cols, second.slices_rows_cols
    assert first.shape == second.shape == (5, 40, 36)
    np.testing.assert_array_equal(first, second)


def test_bad_volume_is_reported_and_skipped(prediction):
    assert_bad_volume_skipped(*prediction)


def test_rerun_skips_finished_volumes_and_parts_split_the_batch(model, volumes, prediction, tmp_path):
    output, _ = prediction
    rerun = run_command([nnunet_qpg_command(), "predict", "-i", str(volumes), "-o", str(output), "-m",
                         str(model.model_folder), "-device", "cpu"], model.env, check=False)
    assert "0 volume(s) predicted, 2 already done, 1 skipped" in rerun.stdout
    # part 1 of 2 of [axis0, axis2] is axis2 only (nnUNetv2_predict's every-n-th split)
    good = tmp_path / "good"
    good.mkdir()
    for name in ("axis0", "axis2"):
        shutil.copy(volumes / f"{name}_0000.nii.gz", good)
    part = tmp_path / "part"
    run_command([nnunet_qpg_command(), "predict", "-i", str(good), "-o", str(part), "-m", str(model.model_folder),
                 "-device", "cpu", "--num-parts", "2", "--part-id", "1", "--disable-tta"], model.env)
    assert sorted(p.name for p in part.glob("*.nii.gz")) == ["axis2.nii.gz"]
