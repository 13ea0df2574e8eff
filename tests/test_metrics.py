"""Eqs. 10-11 against hand-computed cases, the empty-mask convention, and `nnunet-qpg evaluate` on real files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_qpg.cli import main as cli_main
from nnunet_qpg.metrics import mean_and_std, overlap_scores, scores_from_counts


def test_hand_computed_overlap():
    prediction = np.zeros((4, 4), bool)
    reference = np.zeros((4, 4), bool)
    prediction[0, 0:3] = True  # 3 pixels
    reference[0, 1:4] = True  # 3 pixels, 2 shared
    scores = overlap_scores(prediction, reference)
    assert scores.iou == pytest.approx(2 / 4)  # |P ∩ G| = 2, |P ∪ G| = 4
    assert scores.dsc == pytest.approx(2 * 2 / 6)


def test_empty_mask_convention():
    empty, one = np.zeros((3, 3), bool), np.eye(3, dtype=bool)
    assert overlap_scores(empty, empty).iou == overlap_scores(empty, empty).dsc == 1.0
    assert overlap_scores(one, empty).iou == overlap_scores(empty, one).dsc == 0.0
    assert scores_from_counts(0, 0, 0).dsc == 1.0


def test_mean_and_population_std():
    assert mean_and_std([0.5, 1.0]) == (pytest.approx(0.75), pytest.approx(0.25))
    assert mean_and_std([]) == (None, None)  # no value, never NaN (which is not JSON)


def _write(array: np.ndarray, path, direction=None) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


def test_evaluate_command_on_2d_images_and_a_volume(tmp_path):
    predictions, truth = tmp_path / "pred", tmp_path / "gt"
    predictions.mkdir()
    truth.mkdir()
    # 2D image a: IoU 1/2, DSC 2/3
    a_pred, a_true = np.zeros((4, 4)), np.zeros((4, 4))
    a_pred[0, 0:2], a_true[0, 0:1] = 1, 1
    _write(a_pred, predictions / "a.nii.gz")
    _write(a_true, truth / "a.nii.gz")
    # 2D image b: both empty -> 1.0 by convention
    _write(np.zeros((4, 4)), predictions / "b.nii.gz")
    _write(np.zeros((4, 4)), truth / "b.nii.gz")
    # 3D volume v (slices along numpy axis 0, identity direction): slice 1 perfect (label 2 counts as foreground),
    # slice 2 missed; slice 0 has a false positive only -> not a scored image, but it lowers the 3D Dice
    v_pred, v_true = np.zeros((3, 4, 4)), np.zeros((3, 4, 4))
    v_true[1, :2, :2], v_pred[1, :2, :2] = 2, 1
    v_true[2, 0, 0] = 1
    v_pred[0, 3, 3] = 1
    _write(v_pred, predictions / "v.nii.gz")
    _write(v_true, truth / "v.nii.gz")
    _write(np.zeros((4, 4)), truth / "c.nii.gz")  # no prediction: listed, not scored

    assert cli_main(["evaluate", str(predictions), str(truth), "-o", str(tmp_path / "m.json")]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    per_image = {row["image"]: row for row in result["per_image"]}
    assert set(per_image) == {"a", "b", "v_0001", "v_0002"}
    assert per_image["a"]["iou"] == pytest.approx(0.5) and per_image["a"]["dsc"] == pytest.approx(2 / 3)
    assert per_image["b"]["dsc"] == 1.0 and per_image["v_0001"]["dsc"] == 1.0 and per_image["v_0002"]["dsc"] == 0.0
    dsc = [2 / 3, 1.0, 1.0, 0.0]
    assert result["summary"]["dsc_mean"] == pytest.approx(np.mean(dsc))
    assert result["summary"]["dsc_std"] == pytest.approx(np.std(dsc))
    assert result["per_volume"][0]["dice_3d"] == pytest.approx(2 * 4 / (5 + 5))  # 4 shared, 5 + 5 voxels
    assert result["missing_predictions"] == ["c"]

    # --label 2: only the tumour label of the ground truth counts (the prediction's label 1 is then background)
    assert cli_main(["evaluate", str(predictions), str(truth), "--label", "2", "-o", str(tmp_path / "t.json")]) == 0
    tumour = {row["image"]: row for row in json.loads((tmp_path / "t.json").read_text())["per_image"]}
    assert tumour["v_0001"]["dsc"] == 0.0 and "v_0002" not in tumour
