"""convert-kits19 under the adversarial review (items 5, 7, 8, 9, 11 and 14 of the data-safety issue): tiny
synthetic KiTS19 cases, one worker, the real converter; trees hashed before and after where data could be lost."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from snapshots import assert_unchanged, snapshot

from nnunet_qpg.cli import main as cli_main
from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_kits19

KIDNEY, TUMOR = "Dataset701_KiTS19Kidney2D", "Dataset702_KiTS19Tumor2D"
SHAPE = (8, 32, 32)  # slices, rows, columns: a few labelled slices per case, milliseconds to convert


@pytest.fixture(autouse=True)
def no_nnunet_folders(monkeypatch):
    """Each test decides whether nnUNet_raw / nnUNet_preprocessed are set."""
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)


def make_cases(folder: Path, cases=(0, 1, 180)) -> Path:
    make_synthetic_kits19(folder, cases, seed=3, shape=SHAPE)
    return folder


def convert(kits19: Path, output: Path, *options: str) -> int:
    return cli_main(["convert-kits19", str(kits19), "--output", str(output), "--workers", "1", *options])


def staging_left(folder: Path) -> list[str]:
    return [str(path) for path in folder.rglob("*") if "staging" in path.name] if folder.exists() else []


def image_sizes(dataset: Path) -> set[tuple[int, ...]]:
    return {sitk.ReadImage(str(path)).GetSize() for path in dataset.glob("*/*.nii.gz")}


# -- item 5: no mixed settings, no silently replaced split ----------------------------------------------------------

def test_rerun_with_other_settings_is_refused_untouched_and_rebuild_makes_one_uniform_dataset(tmp_path, capsys):
    kits19, raw = make_cases(tmp_path / "kits19"), tmp_path / "raw"
    assert convert(kits19, raw, "--size", "16") == 0
    notes = raw / KIDNEY / "imagesTr" / "case_00000_notes.txt"  # the user's own file in the dataset
    notes.write_text("checked by hand")
    before = snapshot(raw)
    capsys.readouterr()

    assert convert(kits19, raw, "--size", "24") == 2
    message = capsys.readouterr().err
    assert f"size 24 here, 16 in the existing {KIDNEY}" in message
    assert "--rebuild" in message and "--size 16" in message  # the two ways out
    assert_unchanged(before, snapshot(raw), "a refused rerun's output")

    assert convert(kits19, raw, "--size", "24", "--rebuild") == 0
    dataset = raw / KIDNEY
    assert image_sizes(dataset) == {(24, 24)}  # no 16 x 16 image left beside the new ones
    assert json.loads((dataset / "dataset.json").read_text())["conversion"]["size"] == 24
    rows = json.loads((dataset / "manifest.json").read_text())["images"]
    assert len(rows) == len(list(dataset.glob("imagesT*/*.nii.gz")))
    assert notes.read_text() == "checked by hand"  # --rebuild deletes only the converter's own files
    assert not staging_left(raw)


def test_preprocessed_split_is_written_only_for_nnunet_raw_and_never_replaced_silently(tmp_path, monkeypatch, capsys):
    kits19, raw, preprocessed = make_cases(tmp_path / "kits19", (0, 1, 2)), tmp_path / "raw", tmp_path / "pre"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    split = preprocessed / KIDNEY / "splits_final.json"  # the 5 folds another dataset state was trained on
    split.parent.mkdir(parents=True)
    split.write_text(json.dumps([{"train": [f"x{i}"], "val": [f"y{i}"]} for i in range(5)]))
    before = snapshot(preprocessed)

    # an unrelated --output is not the dataset nnU-Net preprocesses: its split stays in its own folder
    assert convert(kits19, tmp_path / "elsewhere", "--size", "16") == 0
    assert "not copied" in capsys.readouterr().out
    assert (tmp_path / "elsewhere" / KIDNEY / "splits_final.json").is_file()
    assert_unchanged(before, snapshot(preprocessed), "$nnUNet_preprocessed")

    # into $nnUNet_raw: a different split there is left alone, and the summary says how to replace it
    assert convert(kits19, raw, "--size", "16") == 0
    summary = capsys.readouterr().out
    assert f"{split} holds a different split (5 folds); it is left untouched" in summary
    assert "--replace-splits" in summary and f"cp {raw / KIDNEY / 'splits_final.json'} {split}" in summary
    assert_unchanged(before, snapshot(preprocessed), "$nnUNet_preprocessed")

    # asked to (through a link that resolves to $nnUNet_raw): replaced; absent: written
    (tmp_path / "raw_link").symlink_to(raw, target_is_directory=True)
    assert convert(kits19, tmp_path / "raw_link", "--size", "16", "--replace-splits") == 0
    own = json.loads((raw / KIDNEY / "splits_final.json").read_text())
    assert json.loads(split.read_text()) == own and len(own) == 3
    split.unlink()
    assert convert(kits19, raw, "--size", "16") == 0
    assert json.loads(split.read_text()) == own


# -- item 7: the user's umask -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_every_converted_file_and_folder_follows_the_umask(tmp_path, monkeypatch, mask):
    kits19, raw, preprocessed = make_cases(tmp_path / "kits19"), tmp_path / "raw", tmp_path / "pre"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    saved = os.umask(mask)
    try:
        assert convert(kits19, raw, "--size", "16", "--task", "both") == 0
    finally:
        os.umask(saved)
    written = [*raw.rglob("*"), *preprocessed.rglob("*")]
    assert any(path.name == "splits_final.json" for path in preprocessed.rglob("*"))
    for path in written:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert path.stat().st_mode & 0o777 == expected, f"{path}: {oct(path.stat().st_mode & 0o777)}"
    assert {p.suffix for p in written} >= {".gz", ".json"}


# -- item 8: only the converter's own files are deleted; no link is written or deleted through --------------------

@pytest.fixture
def shared_folder(tmp_path):
    """A folder for imagesTr to link to: on another file system when /dev/shm is there (as on a separate data
    disk, where files cannot simply be renamed into place)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        folder = Path(tempfile.mkdtemp(prefix="nnunet-qpg-test-", dir=shm))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)
    else:
        (tmp_path / "shared_images").mkdir()
        yield tmp_path / "shared_images"


def test_a_linked_images_folder_keeps_the_files_the_converter_did_not_write(tmp_path, shared_folder, capsys):
    kits19, raw = make_cases(tmp_path / "kits19"), tmp_path / "raw"
    shared = shared_folder  # a folder that imagesTr links to, holding the user's other files
    for name in ("case_00000_notes.txt", "case_00000_0002.png", "case_00001_scan_0000.nii.gz", "case_00000_0002_0000"):
        (shared / name).write_text(f"the user's {name}")
    dataset = raw / KIDNEY
    dataset.mkdir(parents=True)
    (dataset / "imagesTr").symlink_to(shared, target_is_directory=True)
    foreign = snapshot(shared)

    assert convert(kits19, raw, "--size", "16") == 0
    assert sorted(shared.glob("case_00000_*_0000.nii.gz"))  # written through the linked parent folder: fine
    (dataset / ".cases" / "case_00000.json").unlink()  # case 0 is redone, deleting its earlier files first
    assert convert(kits19, raw, "--size", "16") == 0
    assert convert(kits19, raw, "--size", "16", "--rebuild") == 0
    after = snapshot(shared)
    assert {key: after.get(key) for key in foreign} == foreign, "a file the converter did not write was changed"
    assert (dataset / "imagesTr").is_symlink()

    # a link planted under one of the converter's own names is neither deleted nor written through
    precious = tmp_path / "precious.nii.gz"
    precious.write_bytes(b"the user's real mask")
    planted = sorted((dataset / "labelsTr").glob("case_00000_*.nii.gz"))[0]
    planted.unlink()
    planted.symlink_to(precious)
    (dataset / ".cases" / "case_00000.json").unlink()
    capsys.readouterr()
    assert convert(kits19, raw, "--size", "16") == 2
    message = capsys.readouterr().err
    assert "symbolic link" in message and str(planted) in message
    assert planted.is_symlink() and precious.read_bytes() == b"the user's real mask"
    assert not staging_left(raw)


def test_a_dataset_of_another_tool_is_neither_filled_nor_cleaned(tmp_path, capsys):
    kits19, raw = make_cases(tmp_path / "kits19"), tmp_path / "raw"
    other = raw / KIDNEY  # same name, made by hand: a dataset.json and images named like the converter's
    (other / "imagesTr").mkdir(parents=True)
    (other / "imagesTr" / "case_00000_0001_0000.nii.gz").write_bytes(b"someone's image")
    (other / "dataset.json").write_text('{"name": "mine"}')
    before = snapshot(raw)
    assert convert(kits19, raw, "--size", "16") == 2
    assert "was not made by convert-kits19" in capsys.readouterr().err
    assert_unchanged(before, snapshot(raw), "another tool's dataset")


# -- item 9: truncated .nii / .nii.gz and non-finite CT, through the one image reader ---------------------------------

def test_truncated_and_non_finite_cases_are_named_and_skipped_or_replaced_on_request(tmp_path, capsys):
    kits19, raw = make_cases(tmp_path / "kits19", (0, 1, 2, 3)), tmp_path / "raw"
    case = {number: kits19 / f"case_{number:05d}" for number in range(4)}
    # case 0: a plain, complete .nii segmentation (uncompressed files are read too)
    sitk.WriteImage(sitk.ReadImage(str(case[0] / "segmentation.nii.gz")), str(case[0] / "segmentation.nii"))
    (case[0] / "segmentation.nii.gz").unlink()
    # case 1: truncated uncompressed .nii; case 2: truncated .nii.gz
    sitk.WriteImage(sitk.ReadImage(str(case[1] / "imaging.nii.gz")), str(case[1] / "imaging.nii"))
    (case[1] / "imaging.nii.gz").unlink()
    data = (case[1] / "imaging.nii").read_bytes()
    (case[1] / "imaging.nii").write_bytes(data[: len(data) - 2000])
    data = (case[2] / "imaging.nii.gz").read_bytes()
    (case[2] / "imaging.nii.gz").write_bytes(data[: len(data) // 2])
    # case 3: a float CT with NaN and inf voxels, which ITK alone would read as 0
    ct = sitk.ReadImage(str(case[3] / "imaging.nii.gz"))
    voxels = sitk.GetArrayFromImage(ct).astype(np.float32)
    voxels[:, 10:14, :] = np.nan
    voxels[:, 15, :3] = np.inf
    broken = sitk.GetImageFromArray(voxels)
    broken.CopyInformation(ct)
    sitk.WriteImage(broken, str(case[3] / "imaging.nii.gz"), useCompression=True)
    inputs = snapshot(kits19)

    assert convert(kits19, raw, "--size", "16") == 1  # some cases bad: named, the others converted
    report = capsys.readouterr().out
    expected = {
        "case_00001": f"{case[1] / 'imaging.nii'}: is truncated",
        "case_00002": f"{case[2] / 'imaging.nii.gz'}: is truncated or corrupt",
        "case_00003": f"{case[3] / 'imaging.nii.gz'}: ",
    }
    for name, words in expected.items():
        line = next(line for line in report.splitlines() if line.strip().startswith(f"{name}:"))
        assert words in line, line
    assert "NaN or infinite" in report and "--non-finite replace" in report
    dataset = raw / KIDNEY
    assert {path.name[:10] for path in dataset.glob("*/*.nii.gz")} == {"case_00000"}
    assert (dataset / "dataset.json").is_file()

    assert convert(kits19, raw, "--size", "16", "--non-finite", "replace") == 1  # cases 1 and 2 are still bad
    assert {path.name[:10] for path in dataset.glob("*/*.nii.gz")} == {"case_00000", "case_00003"}
    for path in dataset.glob("imagesTr/case_00003_*"):
        assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()
    assert_unchanged(inputs, snapshot(kits19), "the input cases")
    assert not staging_left(raw)


# -- item 11: honest exit codes, output failures stop the run, no skeleton, no staging --------------------------------

def test_all_cases_bad_exits_non_zero_and_leaves_no_dataset(tmp_path, capsys):
    kits19, raw = make_cases(tmp_path / "kits19", (0, 1)), tmp_path / "raw"
    (raw / "Dataset500_Other").mkdir(parents=True)  # the user's $nnUNet_raw with another dataset in it
    (raw / "Dataset500_Other" / "dataset.json").write_text("{}")
    for number in (0, 1):
        (kits19 / f"case_{number:05d}" / "segmentation.nii.gz").unlink()
    before = snapshot(raw)
    assert convert(kits19, raw, "--size", "16", "--task", "both") == 1
    captured = capsys.readouterr()
    assert "no case could be converted" in captured.err and "2 bad case(s) skipped" in captured.out
    assert_unchanged(before, snapshot(raw), "nnUNet_raw after a run that converted nothing")  # no skeleton


def test_an_unwritable_images_folder_stops_the_run_naming_it(tmp_path, read_only_folder, capsys):
    kits19, raw = make_cases(tmp_path / "kits19"), tmp_path / "raw"
    dataset = raw / KIDNEY
    (dataset / ".cases").mkdir(parents=True)
    (dataset / "imagesTr").symlink_to(read_only_folder, target_is_directory=True)  # e.g. a read-only disk
    before = snapshot(raw)
    assert convert(kits19, raw, "--size", "16") == 2
    captured = capsys.readouterr()
    assert f"cannot write into dataset folder {dataset / 'imagesTr'}" in captured.err
    assert "bad case" not in captured.out + captured.err  # an output problem is not the cases' fault
    assert_unchanged(before, snapshot(raw), "the dataset")


@pytest.mark.parametrize("kind", ["missing", "empty", "only unused cases"])
def test_a_missing_or_empty_input_creates_nothing(tmp_path, capsys, kind):
    kits19, raw = tmp_path / "kits19", tmp_path / "raw"
    if kind == "empty":
        kits19.mkdir()
    elif kind == "only unused cases":
        make_cases(kits19, (200,))
    assert convert(kits19, raw, "--size", "16") == 2
    assert str(kits19) in capsys.readouterr().err
    assert not raw.exists()


# -- item 14: read-only or impossible output folders ------------------------------------------------------------------

def test_a_read_only_or_impossible_output_is_named_and_nothing_is_left(tmp_path, read_only_folder, capsys):
    kits19 = make_cases(tmp_path / "kits19")
    before = snapshot(read_only_folder) if tmp_path in read_only_folder.parents else None
    for output in (read_only_folder, read_only_folder / "raw"):
        assert convert(kits19, output, "--size", "16") == 2
        message = capsys.readouterr().err
        assert f"cannot write into --output folder {output}" in message and "Traceback" not in message
        assert not (read_only_folder / KIDNEY).exists() and not (read_only_folder / "raw").exists()
    if before is not None:
        assert_unchanged(before, snapshot(read_only_folder), "the read-only folder")

    (tmp_path / "a_file").write_text("not a folder")
    assert convert(kits19, tmp_path / "a_file", "--size", "16") == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    inputs = snapshot(kits19)
    assert convert(kits19, kits19, "--size", "16") == 2  # the output must not lie inside the input
    assert "lies inside the input folder" in capsys.readouterr().err
    assert_unchanged(inputs, snapshot(kits19), "the input")
