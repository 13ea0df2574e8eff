"""convert-kits19 --task volume: KiTS19 as a 3D nnU-Net dataset (Dataset703_KiTS19Volumes) on tiny synthetic cases.

Voxels and geometry as stored, labels 0/1/2, the paper's split, reruns, refusals, bad cases, and nnU-Net's own
plan_and_preprocess (3d_fullres, --verify_dataset_integrity) on the result.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_qpg.cli import main as cli_main
from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_case, make_synthetic_kits19
from nnunet_helpers import nnunet_command

VOLUMES = "Dataset703_KiTS19Volumes"
TRAIN_CASES, TEST_CASES, UNUSED_CASES = [0, 1, 2, 3], [180, 181], [200]
SHAPE = (8, 24, 20)  # slices, rows, columns: milliseconds per case


def convert(kits19: Path, output: Path, *options: str) -> int:
    return cli_main(["convert-kits19", str(kits19), "--output", str(output), "--task", "volume", "--workers", "1",
                     *options])


def source_file(case_dir: Path, name: str) -> Path:
    compressed = case_dir / f"{name}.nii.gz"
    return compressed if compressed.exists() else case_dir / f"{name}.nii"


def geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def mtimes(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in sorted(folder.rglob("*"))
            if path.is_file()}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Cases of every kind the writer handles, converted once into $nnUNet_raw: KiTS19's layout (.nii.gz, int16,
    slices on sitk axis 0), slices on sitk axis 2, an uncompressed .nii CT, and a float32 CT."""
    root = tmp_path_factory.mktemp("volumes")
    kits19 = root / "kits19"
    make_synthetic_kits19(kits19, [0, 2, 180] + UNUSED_CASES, seed=31, shape=SHAPE)
    make_synthetic_case(kits19 / "case_00001", seed=32, shape=SHAPE, slice_axis=2)
    make_synthetic_case(kits19 / "case_00181", seed=33, shape=SHAPE, dtype="float32")
    make_synthetic_case(kits19 / "case_00003", seed=34, shape=SHAPE)
    plain = kits19 / "case_00003" / "imaging.nii"
    sitk.WriteImage(sitk.ReadImage(str(plain.with_suffix(".nii.gz"))), str(plain))
    plain.with_suffix(".nii.gz").unlink()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("nnUNet_raw", str(root / "raw"))
        patch.setenv("nnUNet_preprocessed", str(root / "preprocessed"))
        assert convert(kits19, root / "raw") == 0
    return root


def test_volumes_keep_the_source_voxels_and_geometry(converted):
    dataset = converted / "raw" / VOLUMES
    labels_seen = set()
    for case in TRAIN_CASES + TEST_CASES:
        case_id, split = f"case_{case:05d}", "Tr" if case < 180 else "Ts"
        source_image = sitk.ReadImage(str(source_file(converted / "kits19" / case_id, "imaging")))
        source_labels = sitk.ReadImage(str(converted / "kits19" / case_id / "segmentation.nii.gz"))
        image = sitk.ReadImage(str(dataset / f"images{split}" / f"{case_id}_0000.nii.gz"))
        labels = sitk.ReadImage(str(dataset / f"labels{split}" / f"{case_id}.nii.gz"))
        assert geometry(image) == geometry(source_image), case_id
        assert image.GetPixelID() == source_image.GetPixelID(), case_id  # no float copy of an int16 CT
        assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(source_image)), case_id
        assert geometry(labels) == geometry(image) and labels.GetPixelID() == sitk.sitkUInt8, case_id
        assert np.array_equal(sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(source_labels)), case_id
        labels_seen |= set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist())
    assert labels_seen == {0, 1, 2}  # KiTS19's classes as they are: background, kidney, tumor
    # a KiTS19 .nii.gz is copied as is; the .nii is written (compressed) in its own pixel type
    rows = {row["case"]: row for row in json.loads((dataset / "manifest.json").read_text())["images"]}
    assert (dataset / "imagesTr" / "case_00000_0000.nii.gz").read_bytes() == \
        (converted / "kits19" / "case_00000" / "imaging.nii.gz").read_bytes()
    assert rows["case_00000"]["image_file"] == "copied from imaging.nii.gz"
    assert rows["case_00003"]["image_file"].startswith("written from imaging.nii")
    assert rows["case_00001"]["axial_slices_along_sitk_axis"] == 2 and rows["case_00000"]["axial_slices_along_sitk_axis"] == 0


def test_dataset_json_manifest_and_the_case_split(converted):
    dataset = converted / "raw" / VOLUMES
    cases_in = {name: sorted(path.name for path in (dataset / name).iterdir())
                for name in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
    assert cases_in["imagesTr"] == [f"case_{c:05d}_0000.nii.gz" for c in TRAIN_CASES]
    assert cases_in["labelsTr"] == [f"case_{c:05d}.nii.gz" for c in TRAIN_CASES]
    assert cases_in["imagesTs"] == [f"case_{c:05d}_0000.nii.gz" for c in TEST_CASES]
    assert cases_in["labelsTs"] == [f"case_{c:05d}.nii.gz" for c in TEST_CASES]  # case 200 is not used

    dataset_json = json.loads((dataset / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "kidney": 1, "tumor": 2}
    assert dataset_json["channel_names"] == {"0": "CT"} and dataset_json["file_ending"] == ".nii.gz"
    assert dataset_json["numTraining"] == len(TRAIN_CASES)
    conversion = dataset_json["conversion"]
    assert conversion["task"] == "volume" and conversion["preset"] == "none"
    assert conversion["window"] is None and conversion["size"] is None and conversion["denoise"] is False

    rows = json.loads((dataset / "manifest.json").read_text())["images"]
    assert sorted(row["case"] for row in rows) == [f"case_{c:05d}" for c in TRAIN_CASES + TEST_CASES]
    for row in rows:
        source = sitk.ReadImage(str(source_file(converted / "kits19" / row["case"], "imaging")))
        assert (dataset / row["image"]).is_file() and (dataset / row["label"]).is_file()
        assert row["size_xyz"] == list(source.GetSize()) and row["spacing_mm_xyz"] == list(source.GetSpacing())
        counts = np.bincount(sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / row["label"]))).ravel(), minlength=3)
        assert row["voxels"] == {"kidney": counts[1], "tumor": counts[2]} and counts[1] > 0

    folds = json.loads((dataset / "splits_final.json").read_text())
    assert folds == json.loads((converted / "preprocessed" / VOLUMES / "splits_final.json").read_text())
    train_ids = [f"case_{c:05d}" for c in TRAIN_CASES]
    assert len(folds) == len(TRAIN_CASES)  # 5 folds, fewer with fewer cases: one case (= one image) per fold here
    assert sorted(case for fold in folds for case in fold["val"]) == train_ids
    assert all(sorted(fold["train"] + fold["val"]) == train_ids for fold in folds)


def test_rerun_skips_finished_cases_and_other_settings_are_refused(tmp_path, capsys):
    kits19, raw = tmp_path / "kits19", tmp_path / "raw"
    make_synthetic_kits19(kits19, [0, 1, 180], seed=35, shape=SHAPE)
    assert convert(kits19, raw) == 0
    dataset = raw / VOLUMES
    before = mtimes(dataset / "imagesTr")
    capsys.readouterr()

    assert convert(kits19, raw) == 0
    assert "0 case(s) to convert, 3 already done" in capsys.readouterr().err
    assert mtimes(dataset / "imagesTr") == before

    (dataset / "labelsTr" / "case_00001.nii.gz").unlink()  # a damaged case is redone, the others are kept
    assert convert(kits19, raw) == 0
    assert "1 case(s) to convert, 2 already done" in capsys.readouterr().err
    assert mtimes(dataset / "imagesTr")["case_00000_0000.nii.gz"] == before["case_00000_0000.nii.gz"]
    assert (dataset / "labelsTr" / "case_00001.nii.gz").is_file()

    # a dataset made with other settings (here: an older format) is refused untouched; --rebuild redoes it
    record = dataset / ".cases" / "case_00000.json"
    content = json.loads(record.read_text())
    content["settings"]["format_version"] = 0
    record.write_text(json.dumps(content))
    untouched = mtimes(raw)
    assert convert(kits19, raw) == 2
    message = capsys.readouterr().err
    assert f"format version 1 here, 0 in the existing {VOLUMES}" in message and "--rebuild" in message
    assert mtimes(raw) == untouched
    assert convert(kits19, raw, "--rebuild") == 0
    assert "3 case(s) to convert, 0 already done" in capsys.readouterr().err
    assert json.loads(record.read_text())["settings"]["format_version"] == 1


def test_a_copied_header_nnunet_would_reject_is_rewritten_instead(tmp_path, monkeypatch):
    """Should SimpleITK's rewrite of the mask not reproduce a copied CT header closely enough for nnU-Net's
    np.allclose check, the CT is written the same way as the mask (same voxels and pixel type)."""
    from nnunet_qpg.dataset_conversion import kits19_volume_task

    check, calls = kits19_volume_task._check_same_grid, []

    def strict_once(image_path, mask_path):
        calls.append(image_path)
        if len(calls) == 1:
            raise kits19_volume_task._GridMismatch("origin differs")
        check(image_path, mask_path)

    monkeypatch.setattr(kits19_volume_task, "_check_same_grid", strict_once)
    make_synthetic_kits19(tmp_path / "kits19", [0], seed=40, shape=SHAPE)
    assert convert(tmp_path / "kits19", tmp_path / "raw") == 0
    assert len(calls) == 2
    dataset = tmp_path / "raw" / VOLUMES
    row = json.loads((dataset / "manifest.json").read_text())["images"][0]
    assert row["image_file"] == "written from imaging.nii.gz in its pixel type"
    source = sitk.ReadImage(str(tmp_path / "kits19" / "case_00000" / "imaging.nii.gz"))
    image = sitk.ReadImage(str(dataset / "imagesTr" / "case_00000_0000.nii.gz"))
    assert geometry(image) == geometry(source) and image.GetPixelID() == source.GetPixelID()
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(source))
    assert not [path for path in dataset.rglob("*") if "staging" in path.name]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_volume_case_leaves_nothing_and_only_its_own_names_are_deleted(tmp_path, failure):
    from nnunet_qpg.dataset_conversion.nnunet_raw_dataset import VolumeDataset

    dataset = VolumeDataset(tmp_path / VOLUMES)
    dataset.prepare()
    theirs = [dataset.folder / "imagesTr" / name for name in
              ("case_00003_scan.nii.gz", "case_00003_0001_0000.nii.gz", "case_00003_0000.nii")]
    for path in theirs:  # names that are not the volume task's exact ones (a 2D-style name included)
        path.write_bytes(b"the user's")
    image = sitk.Image(4, 4, 4, sitk.sitkInt16)
    with pytest.raises(failure):
        with dataset.open_case("case_00003") as writer:
            writer.add_volume("train", "case_00003", image, sitk.Image(4, 4, 4, sitk.sitkUInt8), {"case": "case_00003"})
            writer.commit({"a": 1}, {})  # even a committed case is removed again if the work fails after it
            raise failure()
    assert sorted(p for p in dataset.folder.rglob("*") if p.is_file()) == sorted(theirs)
    assert not dataset.is_done("case_00003", {"a": 1})
    with dataset.open_case("case_00003") as writer:
        writer.add_volume("train", "case_00003", image, sitk.Image(4, 4, 4, sitk.sitkUInt8), {"case": "case_00003"})
        writer.commit({"a": 1}, {})
    assert dataset.is_done("case_00003", {"a": 1})
    dataset.clear()  # --rebuild
    assert sorted(p for p in dataset.folder.rglob("*") if p.is_file()) == sorted(theirs)


@pytest.mark.parametrize("options", [["--size", "64"], ["--preset", "kits"], ["--window", "-79", "304"],
                                     ["--no-denoise"], ["--preset", "paper", "--size", "256"]])
def test_2d_options_are_an_error_with_the_volume_task(tmp_path, capsys, options):
    make_synthetic_kits19(tmp_path / "kits19", [0], seed=36, shape=SHAPE)
    assert convert(tmp_path / "kits19", tmp_path / "raw", *options) == 2
    message = capsys.readouterr().err
    assert "not apply to --task volume" in message and options[0].lstrip("-").split("-")[-1] in message
    assert not (tmp_path / "raw").exists()  # checked before anything is created


def test_a_bad_case_is_named_and_skipped_and_nan_is_replaced_on_request(tmp_path, capsys):
    kits19, raw = tmp_path / "kits19", tmp_path / "raw"
    make_synthetic_kits19(kits19, [0, 1], seed=37, shape=SHAPE)
    make_synthetic_case(kits19 / "case_00002", seed=38, shape=SHAPE, dtype="float32")
    labels_path = kits19 / "case_00001" / "segmentation.nii.gz"
    labels = sitk.ReadImage(str(labels_path))
    wrong = sitk.GetImageFromArray(np.where(sitk.GetArrayFromImage(labels) == 2, 3, sitk.GetArrayFromImage(labels)))
    wrong.CopyInformation(labels)
    sitk.WriteImage(sitk.Cast(wrong, sitk.sitkUInt8), str(labels_path))
    ct_path = kits19 / "case_00002" / "imaging.nii.gz"
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path)))
    with_nan = ct.copy()
    with_nan[2, 3, 4] = np.nan
    nan_image = sitk.GetImageFromArray(with_nan)
    nan_image.CopyInformation(sitk.ReadImage(str(ct_path)))
    sitk.WriteImage(nan_image, str(ct_path))

    assert convert(kits19, raw) == 1
    report = capsys.readouterr().out
    assert "2 bad case(s) skipped" in report
    lines = {case: next(line for line in report.splitlines() if line.strip().startswith(f"{case}:"))
             for case in ("case_00001", "case_00002")}
    assert "labels in [0, 3]" in lines["case_00001"] and str(kits19 / "case_00001") in lines["case_00001"]
    assert "NaN or infinite" in lines["case_00002"]
    dataset = raw / VOLUMES
    assert sorted(path.name for path in dataset.glob("*/*.nii.gz")) == ["case_00000.nii.gz", "case_00000_0000.nii.gz"]
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 1

    assert convert(kits19, raw, "--non-finite", "replace") == 1  # case 1 is still bad; case 2 is converted now
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "imagesTr" / "case_00002_0000.nii.gz")))
    expected = ct.copy()
    expected[2, 3, 4] = np.delete(ct.ravel(), np.ravel_multi_index((2, 3, 4), ct.shape)).min()
    assert written.dtype == np.float32 and np.array_equal(written, expected)
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 2


def test_help_names_the_volume_task(capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(["convert-kits19", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--task {kidney,tumor,both,volume}" in text
    assert "Dataset703_KiTS19Volumes" in text and "703 volume" in text
    assert "--task volume" in text


@pytest.mark.slow
def test_nnunet_plans_and_preprocesses_the_volumes_in_3d_fullres(tmp_path, monkeypatch):
    raw, preprocessed = tmp_path / "raw", tmp_path / "preprocessed"
    make_synthetic_kits19(tmp_path / "kits19", [0, 1, 2, 3, 180], seed=39, shape=(12, 48, 48))
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(preprocessed),
           "nnUNet_results": str(tmp_path / "results")}
    env.pop("nnUNet_n_proc_DA", None)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    assert cli_main(["convert-kits19", str(tmp_path / "kits19"), "--task", "volume", "--workers", "1"]) == 0
    folds = json.loads((preprocessed / VOLUMES / "splits_final.json").read_text())

    done = subprocess.run(
        [nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", "703", "-c", "3d_fullres",
         "--verify_dataset_integrity", "-np", "1", "-npfp", "1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plans = json.loads((preprocessed / VOLUMES / "nnUNetPlans.json").read_text())
    assert len(plans["configurations"]["3d_fullres"]["patch_size"]) == 3
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["CTNormalization"]
    assert len(list((preprocessed / VOLUMES / "nnUNetPlans_3d_fullres").glob("*_seg.b2nd"))) == 4
    assert json.loads((preprocessed / VOLUMES / "splits_final.json").read_text()) == folds
