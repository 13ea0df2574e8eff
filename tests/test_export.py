"""`nnunet-qpg export`: the baked model is a stock nnU-Net model and predicts the QPG model's masks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_model import (
    DATASET,
    DATASET_ID,
    TINY_TRAINER,
    nnunet_qpg_command,
    shared_root,
    trained_qpg_model,
    without_nnunet_qpg,
)
from nnunet_helpers import run_command

pytestmark = pytest.mark.slow

EXPORTED_TRAINER = f"{TINY_TRAINER}_baked"  # the export's `-tr` name; its checkpoints name the stock nnUNetTrainer


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = trained_qpg_model(shared_root(tmp_path_factory))
    out = tmp_path_factory.mktemp("exported_results")
    done = run_command([nnunet_qpg_command(), "export", str(model.model_folder), str(out)], model.env)
    assert f"-tr {EXPORTED_TRAINER} " in done.stdout  # the next command the user is shown
    return model, out


def test_exported_checkpoint_is_a_plain_nnunet_checkpoint(exported):
    model, out = exported
    folder = out / DATASET / f"{EXPORTED_TRAINER}__nnUNetPlans__2d"
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.pth"):
        assert (folder / name).is_file(), name
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    original = torch.load(model.model_folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                          weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    assert not any("theta" in key or ".post." in key for key in checkpoint["network_weights"])
    assert any("theta" in key for key in original["network_weights"])
    assert checkpoint["init_args"]["configuration"] == original["init_args"]["configuration"] == "2d"


def test_stock_nnunet_predicts_the_same_masks_without_nnunet_qpg(exported, tmp_path):
    model, out = exported
    images = model.raw_dataset / "imagesTs"
    qpg_masks, plain_masks = tmp_path / "qpg", tmp_path / "plain"
    run_command(["nnUNetv2_predict", "-i", str(images), "-o", str(qpg_masks), "-d", str(DATASET_ID), "-c", "2d",
                 "-tr", TINY_TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"], model.env)
    stock_env = without_nnunet_qpg({**model.env, "nnUNet_results": str(out)}, tmp_path / "blocked")
    run_command(["nnUNetv2_predict", "-i", str(images), "-o", str(plain_masks), "-d", str(DATASET_ID), "-c", "2d",
                 "-tr", EXPORTED_TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"], stock_env)
    predicted = sorted(p.name for p in qpg_masks.glob("*.nii.gz"))
    assert predicted and predicted == sorted(p.name for p in plain_masks.glob("*.nii.gz"))
    for name in predicted:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(qpg_masks / name))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(plain_masks / name))), err_msg=name)

    # and it fits nnU-Net's model sharing
    run_command(["nnUNetv2_export_model_to_zip", "-d", str(DATASET_ID), "-o", str(tmp_path / "model.zip"),
                 "-c", "2d", "-tr", EXPORTED_TRAINER, "-f", "0"], stock_env)
    assert (tmp_path / "model.zip").stat().st_size > 0
