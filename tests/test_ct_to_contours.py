"""From CT to contours: `nnunet-qpg predict` on DICOM CT series and NIfTI together, with a real (tiny) QPG model,
writing RT Structure Sets, DICOM SEG, the per-volume summary and overlays; 3D cleanup of a mask."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("highdicom")  # the 'dicom' extra

from dicom_data import rasterise_rtstruct, write_ct_series  # noqa: E402
from inference_model import nnunet_qpg_command, shared_root, trained_qpg_model  # noqa: E402
from nnunet_helpers import run_command  # noqa: E402

from nnunet_qpg.dicom import find_series, read_ct_series  # noqa: E402
from nnunet_qpg.volume_outputs import Cleanup  # noqa: E402


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def test_cleanup_keeps_the_largest_components_in_3d_on_any_orientation():
    labels = np.zeros((10, 20, 30), dtype=np.uint8)
    labels[2:6, 2:8, 2:8] = 1      # kidney 1: 144 voxels
    labels[2:6, 10:16, 20:26] = 1  # kidney 2: 144 voxels
    labels[8, 18, 28] = 1          # a spurious voxel on another slice
    labels[3:5, 4:6, 4:6] = 2      # a tumour, its own label
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # slice axis not last: the cleanup is geometry-aware
    image.SetMetaData("ITK_FileNotes", "kept")
    cleaned = Cleanup(largest_components=2).apply(image)
    result = sitk.GetArrayFromImage(cleaned)
    expected = labels.copy()
    expected[8, 18, 28] = 0
    assert np.array_equal(result, expected)
    assert cleaned.GetDirection() == image.GetDirection() and cleaned.GetMetaData("ITK_FileNotes") == "kept"
    # a minimum volume: 0.001 mL voxels here (0.7 x 0.8 x 2.5 mm = 1.4 mm^3); 0.1 mL drops the 8-voxel tumour
    small = sitk.GetArrayFromImage(Cleanup(min_component_ml=0.1).apply(image))
    assert (small == 2).sum() == 0 and (small == 1).sum() == 2 * 144 - 8  # the tumour replaced 8 kidney voxels
    assert Cleanup().apply(image) is image


@pytest.mark.slow
def test_dicom_series_and_nifti_to_masks_rtstruct_seg_summary_and_overlays(tmp_path_factory):
    import pydicom
    from highdicom.seg import segread

    model = trained_qpg_model(shared_root(tmp_path_factory))
    inputs = tmp_path_factory.mktemp("ct_in")
    write_ct_series(inputs / "patient1" / "CT", slices=6, rows=48, columns=40)
    write_ct_series(inputs / "patient2" / "CT", slices=6, rows=48, columns=40, modality="MR")  # bad: named, skipped
    nifti = sitk.GetImageFromArray(np.full((4, 32, 32), -100, dtype=np.int16))
    sitk.WriteImage(nifti, str(inputs / "volume_0000.nii.gz"))
    output = tmp_path_factory.mktemp("contours")
    predict = [nnunet_qpg_command(), "predict", "-i", str(inputs), "-o", str(output), "-m", str(model.model_folder),
               "-f", "0", "-device", "cpu", "--largest-components", "2"]

    first = run_command(predict, model.env, check=False)
    assert first.returncode == 1, first.stderr  # the MR series is skipped, the others predicted
    assert "patient2" in first.stdout and "MR" in first.stdout
    assert sorted(p.name for p in output.iterdir()) == ["patient1_CT.nii.gz", "summary.csv", "summary.json",
                                                       "volume.nii.gz"]

    # a later --rtstruct --dicom-seg --overlays for the finished masks reuses them (no second prediction)
    mask_bytes = (output / "patient1_CT.nii.gz").read_bytes()
    second = run_command([*predict, "--rtstruct", "--dicom-seg", "--overlays"], model.env, check=False)
    assert second.returncode == 1
    assert "0 volume(s) predicted, 2 already done" in second.stdout
    assert "made from masks already done" in second.stdout and "RT Structure Set" in second.stdout
    assert "no RT Structure Set / SEG for 1 NIfTI volume(s)" in second.stdout
    assert (output / "patient1_CT.nii.gz").read_bytes() == mask_bytes
    assert (output / "overlays" / "patient1_CT.png").is_file() and (output / "overlays" / "volume.png").is_file()
    assert not (output / "volume_rtstruct.dcm").exists()

    image, series = read_ct_series(next(ref for ref in find_series(inputs) if ref.name == "patient1_CT"))
    mask = sitk.ReadImage(str(output / "patient1_CT.nii.gz"))
    labels = sitk.GetArrayFromImage(mask)
    rtstruct = pydicom.dcmread(output / "patient1_CT_rtstruct.dcm")
    assert rtstruct.Modality == "RTSTRUCT" and "RESEARCH USE ONLY" in rtstruct.SeriesDescription.upper()
    assert rtstruct.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == series.frame_of_reference_uid
    for name, raster in rasterise_rtstruct(output / "patient1_CT_rtstruct.dcm", image, series).items():
        assert name == "kidney"  # named from the model's dataset.json
        assert _dice(raster, labels == 1) >= 0.95
    seg = segread(output / "patient1_CT_seg.dcm")
    assert seg.SeriesInstanceUID != series.series_instance_uid and "RESEARCH USE ONLY" in seg.SeriesDescription.upper()

    rows = list(csv.DictReader((output / "summary.csv").open()))
    assert {row["case"] for row in rows} == {"patient1_CT", "volume"}
    summary = json.loads((output / "summary.json").read_text())
    assert summary["settings"]["cleanup"] == "largest-components=2"
    for case, structures in summary["volumes"].items():
        case_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(output / f"{case}.nii.gz")))
        spacing = sitk.ReadImage(str(output / f"{case}.nii.gz")).GetSpacing()
        for structure in structures:
            voxels = int((case_mask == structure["label"]).sum())
            assert structure["volume_ml"] == pytest.approx(voxels * np.prod(spacing) / 1000, abs=1e-3)
            assert structure["components"] <= 2


def test_summary_merges_runs_keeps_foreign_files_and_rewrites_nothing_unchanged(tmp_path):
    from nnunet_qpg.volume_outputs import write_summary

    for case in ("a", "b"):
        (tmp_path / f"{case}.nii.gz").write_bytes(b"mask")
    row = {"case": "a", "structure": "kidney", "label": 1, "volume_ml": 1.5, "components": 2,
           "first_axial_slice": 3, "last_axial_slice": 9, "axial_slices": 7, "largest_component_ml": 0.9}
    files, note = write_summary(tmp_path, {"a": [row], "b": []}, {"command": "predict"})
    assert note is None and [f.name for f in files] == ["summary.csv", "summary.json"]
    stamps = [f.stat().st_mtime_ns for f in files]
    # a later run that found only "b" keeps "a"'s row and, with nothing new, rewrites nothing
    assert write_summary(tmp_path, {"b": []}, {"command": "predict"})[1] is None
    assert [f.stat().st_mtime_ns for f in files] == stamps
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(r["case"], r["structure"]) for r in rows] == [("a", "kidney"), ("b", "(none predicted)")]
    # rows of masks no longer in the folder go
    (tmp_path / "a.nii.gz").unlink()
    write_summary(tmp_path, {}, {"command": "predict"})
    assert list(json.loads((tmp_path / "summary.json").read_text())["volumes"]) == ["b"]
    # a summary.csv nnunet-qpg did not write is kept, and said so
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "summary.csv").write_text("mine\n")
    files, note = write_summary(foreign, {}, {"command": "predict"})
    assert files == () and "were not written by nnunet-qpg" in note
    assert (foreign / "summary.csv").read_text() == "mine\n" and not (foreign / "summary.json").exists()


def test_outputs_added_to_a_finished_mask_fail_as_those_of_a_new_mask_do(tmp_path):
    """A rerun adding --overlays to finished masks treats a blocked output as a first run does: the case is named
    and skipped, the batch goes on, and the finished mask stays."""
    from nnunet_qpg.volume_batch import MaskOutputs, predict_folder

    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    output.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 16, 16), -100, dtype=np.int16)),
                    str(inputs / "scan_0000.nii.gz"))

    def empty_mask(volume, tick):  # the batch's contract: a mask on the volume's grid
        return volume.label_slices(lambda slice_hu: np.zeros(slice_hu.shape, np.uint8), tick)

    first = predict_folder(inputs, output, empty_mask, model_digest="m")
    assert first.predicted == ["scan_0000.nii.gz"] and not first.skipped
    mask_bytes = (output / "scan.nii.gz").read_bytes()
    (output / "overlays").write_text("a file where the overlay folder would go")
    again = predict_folder(inputs, output, empty_mask, model_digest="m", outputs=MaskOutputs(overlays=True))
    assert not again.predicted and not again.already_done
    assert len(again.skipped) == 1 and "overlays" in again.skipped[0]
    assert (output / "scan.nii.gz").read_bytes() == mask_bytes
