"""Per-case (per-volume) scores against hand-computed cases: 3D Dice, surface Dice, HD95, false-positive slices,
the KiTS19 kidney = 1 + 2 grouping, and `nnunet-qpg evaluate` reporting them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_qpg.cli import main as cli_main
from nnunet_qpg.metrics import (
    false_positive_slices,
    kits19_scores,
    overlap_scores,
    surface_scores,
    surface_voxels,
)

SPACING = (2.0, 1.0, 0.5)  # mm along (slice, row, column)
KITS19_DIRECTION = (0, 0, 1, 0, 1, 0, -1, 0, 0)  # slices along sitk axis 0, i.e. numpy's LAST axis


def cubes() -> tuple[np.ndarray, np.ndarray]:
    """Reference: a 3x3x3 cube in slices 2-4; prediction: the same cube one slice further (slices 3-5)."""
    reference = np.zeros((8, 8, 8), dtype=bool)
    prediction = np.zeros_like(reference)
    reference[2:5, 2:5, 2:5] = True
    prediction[3:6, 2:5, 2:5] = True
    return prediction, reference


def test_surface_is_the_voxels_with_a_background_face_neighbour():
    _, reference = cubes()
    assert surface_voxels(reference).sum() == 26 and not surface_voxels(reference)[3, 3, 3]
    touching = np.ones((3, 3, 3), dtype=bool)  # the array's outside is background: every voxel but the centre
    assert surface_voxels(touching).sum() == 26


def test_cubes_offset_by_one_slice_with_anisotropic_spacing():
    prediction, reference = cubes()
    # Dice: 2 x 18 shared / (27 + 27)
    assert overlap_scores(prediction, reference).dsc == pytest.approx(2 / 3)
    # Surface distances by hand (26 surface voxels each). Prediction -> reference: its slice-3 ring (8) and
    # slice-4 ring (8) lie on the reference surface (0); its slice-3 centre is 0.5 mm (one column) from the
    # reference's slice-3 ring; its slice 5 (9) is 2 mm (one slice) from the reference's slice 4. The reverse is
    # the mirror image. Pooled: 32 x 0, 2 x 0.5, 18 x 2.0.
    scores = surface_scores(prediction, reference, SPACING, tolerance_mm=1.0)
    assert scores.surface_dice == pytest.approx(34 / 52)
    assert scores.hd95_mm == pytest.approx(2.0)  # 95th percentile at position 0.95 x 51 = 48.45: among the 2.0s
    assert surface_scores(prediction, reference, SPACING, tolerance_mm=2.0).surface_dice == pytest.approx(1.0)
    assert surface_scores(prediction, reference, SPACING, tolerance_mm=0.4).surface_dice == pytest.approx(32 / 52)
    # isotropic 1 mm: the slice-3 centre is now 1 mm away, inside the tolerance; slice 5 is 1 mm away too
    assert surface_scores(prediction, reference, (1.0, 1.0, 1.0)).surface_dice == pytest.approx(1.0)


def test_hd95_of_a_known_shift():
    # two full planes 3 slices apart at 2 mm slices: every surface voxel is exactly 6 mm from the other surface
    prediction, reference = np.zeros((6, 5, 7), bool), np.zeros((6, 5, 7), bool)
    prediction[1], reference[4] = True, True
    scores = surface_scores(prediction, reference, SPACING)
    assert scores.hd95_mm == pytest.approx(6.0) and scores.surface_dice == 0.0
    assert surface_scores(prediction, reference, SPACING, tolerance_mm=6.0).surface_dice == 1.0
    # a shift along the 0.5 mm columns: 4 columns = 2 mm
    prediction, reference = np.zeros((3, 3, 9), bool), np.zeros((3, 3, 9), bool)
    prediction[:, :, 1], reference[:, :, 5] = True, True
    assert surface_scores(prediction, reference, SPACING).hd95_mm == pytest.approx(2.0)


def test_empty_mask_conventions():
    empty, cube = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)
    cube[1:3, 1:3, 1:3] = True
    both = surface_scores(empty, empty, SPACING)
    assert (both.surface_dice, both.hd95_mm) == (1.0, 0.0)
    for prediction, reference in ((cube, empty), (empty, cube)):
        one = surface_scores(prediction, reference, SPACING)
        assert (one.surface_dice, one.hd95_mm) == (0.0, None)
    assert surface_scores(cube, cube, SPACING).hd95_mm == 0.0


def test_false_positive_slices():
    prediction, reference = np.zeros((6, 4, 4), bool), np.zeros((6, 4, 4), bool)
    reference[2:4, 1, 1] = True
    prediction[0, 0, 0] = prediction[2, 3, 3] = prediction[5, 2, 2] = True  # slices 0 and 5: nothing there
    assert false_positive_slices(prediction, reference) == 2
    assert false_positive_slices(reference, reference) == 0


def test_kits19_kidney_is_labels_1_and_2():
    reference = np.zeros((4, 6, 6), np.uint8)
    reference[1:3, 1:5, 1:5] = 1
    reference[1:3, 2:4, 2:4] = 2  # tumour inside the kidney: 8 of the 32 voxels
    kidney_only = (reference > 0).astype(np.uint8)  # a kidney model's mask: labels 0/1, covering kidney + tumour
    scores = kits19_scores(kidney_only, reference)
    assert scores["kidney_dice"] == 1.0 and scores["tumor_dice"] == 0.0
    two_stage = reference.copy()
    two_stage[1, 2, 2] = 1  # one tumour voxel called kidney: kidney still perfect, tumour 2 x 7 / (7 + 8)
    scores = kits19_scores(two_stage, reference)
    assert scores["kidney_dice"] == 1.0 and scores["tumor_dice"] == pytest.approx(14 / 15)


def write(array_zyx: np.ndarray, path, kits19_layout: bool) -> None:
    """Write an (axial slice, row, column) array with SPACING, as an identity-direction image or laid out as the
    KiTS19 files are (slices along sitk axis 0, numpy's last axis)."""
    if kits19_layout:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)).astype(np.uint8))
        image.SetSpacing(SPACING)
        image.SetDirection(KITS19_DIRECTION)
    else:
        image = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
        image.SetSpacing(SPACING[::-1])
    sitk.WriteImage(image, str(path))


def strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{constant} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_evaluate_reports_per_case_scores_in_json_and_table(tmp_path, capsys):
    predictions, truth = tmp_path / "pred", tmp_path / "gt"
    predictions.mkdir()
    truth.mkdir()
    prediction, reference = cubes()
    reference_labels = reference.astype(np.uint8)
    reference_labels[3, 3, 3] = 2  # a tumour voxel: kidney = 1 + 2 is still the cube
    prediction_labels = prediction.astype(np.uint8)
    prediction_labels[7, 0, 0] = 1  # a stray voxel on slice 7 (nothing there), far from the cube
    for case, layout in (("identity", False), ("kits19", True)):
        write(prediction_labels, predictions / f"{case}.nii.gz", layout)
        write(reference_labels, truth / f"{case}.nii.gz", layout)
    write(np.zeros((8, 8, 8)), predictions / "empty.nii.gz", False)
    write(reference_labels, truth / "empty.nii.gz", False)

    output = tmp_path / "m.json"
    assert cli_main(["evaluate", str(predictions), str(truth), "-o", str(output)]) == 0
    out = capsys.readouterr().out
    result = strict_json(output)
    rows = {row["case"]: row for row in result["per_volume"]}
    # same masks, two layouts on disk: the axial axis and spacing come from the header, so the scores agree
    for key in ("dice_3d", "surface_dice", "hd95_mm", "false_positive_slices", "kits19_kidney_dice"):
        assert rows["identity"][key] == pytest.approx(rows["kits19"][key]), key
    row = rows["identity"]
    assert row["dice_3d"] == pytest.approx(2 * 18 / (27 + 28))
    # predicted slices 3, 4, 5 (cube) and 7 (stray); the reference has slices 2-4: slices 5 and 7 are false positives
    assert row["false_positive_slices"] == 2 and row["predicted_slices"] == 4 and row["slices"] == 3
    assert row["kits19_kidney_dice"] == pytest.approx(row["dice_3d"])
    assert row["kits19_tumor_dice"] is None  # no prediction holds label 2: a kidney-only model, n/a
    # the stray voxel adds one prediction surface voxel, sqrt(6^2 + 2^2 + 1^2) mm from the reference's corner
    # (4, 2, 2): 53 pooled distances, 34 within 1 mm; the 95th percentile (position 49.4) is still among the 2.0s
    assert row["surface_dice"] == pytest.approx(34 / 53) and row["hd95_mm"] == pytest.approx(2.0)
    assert rows["empty"]["hd95_mm"] is None and rows["empty"]["surface_dice"] == 0.0
    summary = result["summary"]
    assert summary["volumes"] == 3 and summary["hd95_volumes"] == 2
    assert summary["hd95_mm_mean"] == pytest.approx(row["hd95_mm"])  # over the volumes where it is defined
    assert summary["surface_dice_mean"] == pytest.approx(2 * row["surface_dice"] / 3)
    assert summary["false_positive_slices_total"] == 4 and summary["false_positive_slices_mean"] == pytest.approx(4 / 3)
    assert summary["kits19_volumes"] == 3 and summary["kits19_tumor_dice_mean"] is None
    assert summary["kits19_composite_dice"] is None and summary["surface_tolerance_mm"] == 1.0
    assert result["kits19_tumor"].startswith("n/a") and set(result["per_volume_metrics"]) <= set(row)
    assert summary["dsc_mean"] is not None and summary["dice_3d_mean"] is not None  # the existing keys stay
    for words in ("surface Dice @ 1 mm", "HD95 (mm)", "false-positive slices", "KiTS19 kidney Dice (1+2)",
                  "KiTS19 tumour Dice (2)", "n/a"):
        assert words in out, words
    assert "identity" in out and "kits19" in out  # the per-volume table

    # predictions that hold label 2 get a tumour Dice (and a composite); the tolerance is an option
    prediction_labels[3, 3, 3] = 2
    write(prediction_labels, predictions / "identity.nii.gz", False)
    assert cli_main(["evaluate", str(predictions), str(truth), "-o", str(output), "--surface-tolerance", "2"]) == 0
    result = strict_json(output)
    rows = {row["case"]: row for row in result["per_volume"]}
    assert rows["identity"]["kits19_tumor_dice"] == 1.0 and rows["kits19"]["kits19_tumor_dice"] == 0.0
    assert rows["empty"]["kits19_tumor_dice"] == 0.0
    summary = result["summary"]
    assert summary["kits19_tumor_dice_mean"] == pytest.approx(1 / 3) and summary["surface_tolerance_mm"] == 2.0
    assert summary["kits19_composite_dice"] == pytest.approx((summary["kits19_kidney_dice_mean"] + 1 / 3) / 2)
    assert "surface Dice @ 2 mm" in capsys.readouterr().out


def test_surface_tolerance_must_be_a_distance(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["evaluate", str(tmp_path), str(tmp_path), "--surface-tolerance", "-1"])
    assert "a distance in mm >= 0" in capsys.readouterr().err
