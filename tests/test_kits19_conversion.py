"""convert-kits19 on synthetic KiTS19 folders: split, counts, alignment, orientation, folds, reruns, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_qpg.cli import main as cli_main
from nnunet_qpg.dataset_conversion.nnunet_raw_dataset import RawDataset
from nnunet_qpg.dataset_conversion.synth_kits19 import HU, make_synthetic_case, make_synthetic_kits19

TRAIN_CASES, TEST_CASES, UNUSED_CASES = [0, 1, 2, 3, 4, 5], [180, 181], [200]
SHAPE = (18, 128, 128)  # 128 -> 256 is an exact 2x zoom, so nearest-neighbour masks can be checked with np.kron
KIDNEY, TUMOR = "Dataset701_KiTS19Kidney2D", "Dataset702_KiTS19Tumor2D"


def convert(kits19: Path, output: Path, *options: str) -> int:
    return cli_main(["convert-kits19", str(kits19), "--output", str(output), *options])


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def labels_rows_cols(case_dir: Path) -> np.ndarray:
    """Independent reading of a KiTS19-like segmentation: numpy (cols, rows, slices) -> (slices, rows, cols)."""
    return read(case_dir / "segmentation.nii.gz").transpose(2, 1, 0)


def expected_samples(labels: np.ndarray) -> tuple[list[int], list[tuple[int, tuple[slice, slice]]]]:
    """Direct count on the mask: labelled slices, and (slice, box) of every tumor-bearing 8-connected region."""
    slices = [k for k in range(labels.shape[0]) if labels[k].max() > 0]
    crops = []
    for k in slices:
        components, count = ndimage.label(labels[k] > 0, structure=np.ones((3, 3)))
        for component, box in zip(range(1, count + 1), ndimage.find_objects(components)):
            if np.any(labels[k][components == component] == 2):
                crops.append((k, box))
    return slices, crops


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Synthetic cases converted once with both tasks and two worker processes into $nnUNet_raw (so the split
    also goes to $nnUNet_preprocessed)."""
    root = tmp_path_factory.mktemp("kits19")
    make_synthetic_kits19(root / "kits19", TRAIN_CASES + TEST_CASES + UNUSED_CASES, seed=11, shape=SHAPE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("nnUNet_raw", str(root / "raw"))
        patch.setenv("nnUNet_preprocessed", str(root / "preprocessed"))
        assert convert(root / "kits19", root / "raw", "--task", "both", "--workers", "2") == 0
    return root


def manifest(root: Path, dataset: str) -> list[dict]:
    return json.loads((root / "raw" / dataset / "manifest.json").read_text())["images"]


def test_split_puts_cases_0_179_in_tr_180_199_in_ts_and_skips_200(converted):
    for dataset in (KIDNEY, TUMOR):
        folder = converted / "raw" / dataset
        cases_in = {name: {p.name[:10] for p in (folder / name).glob("*.nii.gz")} for name in
                    ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
        assert cases_in["imagesTr"] == cases_in["labelsTr"] == {f"case_{c:05d}" for c in TRAIN_CASES}
        assert cases_in["imagesTs"] == cases_in["labelsTs"] == {f"case_{c:05d}" for c in TEST_CASES}
        dataset_json = json.loads((folder / "dataset.json").read_text())
        assert dataset_json["numTraining"] == len(list((folder / "labelsTr").glob("*.nii.gz")))
        assert dataset_json["channel_names"] == {"0": "CT"} and dataset_json["file_ending"] == ".nii.gz"
        assert dataset_json["conversion"]["window"] == [-30.0, 0.0] and dataset_json["conversion"]["denoise"] is True
    assert json.loads((converted / "raw" / TUMOR / "dataset.json").read_text())["labels"] == {"background": 0, "tumor": 1}


def test_slice_and_crop_counts_match_a_direct_count_on_the_masks(converted):
    kidney_rows, tumor_rows = manifest(converted, KIDNEY), manifest(converted, TUMOR)
    total_crops = 0
    for case in TRAIN_CASES + TEST_CASES:
        case_id = f"case_{case:05d}"
        slices, crops = expected_samples(labels_rows_cols(converted / "kits19" / case_id))
        assert sorted(r["slice_index"] for r in kidney_rows if r["case"] == case_id) == slices
        split = "Tr" if case < 180 else "Ts"
        assert len(list((converted / "raw" / KIDNEY / f"images{split}").glob(f"{case_id}_*"))) == len(slices)
        assert len(list((converted / "raw" / TUMOR / f"images{split}").glob(f"{case_id}_*"))) == len(crops)
        got = sorted((r["slice_index"], tuple(r["crop_box_rows_cols"])) for r in tumor_rows if r["case"] == case_id)
        assert got == sorted((k, (b[0].start, b[0].stop, b[1].start, b[1].stop)) for k, b in crops)
        total_crops += len(crops)
    assert total_crops > len(TRAIN_CASES + TEST_CASES)  # the synthetic data really exercises the tumor task


def test_outputs_are_256_square_with_unit_spacing_and_masks_follow_the_slice(converted):
    case_dir = converted / "kits19" / "case_00001"
    labels = labels_rows_cols(case_dir)
    for row in manifest(converted, KIDNEY):
        if row["case"] != "case_00001":
            continue
        picture = sitk.ReadImage(str(converted / "raw" / KIDNEY / "imagesTr" / f"{row['image_id']}_0000.nii.gz"))
        assert picture.GetSize() == (256, 256) and picture.GetSpacing() == (1.0, 1.0)
        mask = read(converted / "raw" / KIDNEY / "labelsTr" / f"{row['image_id']}.nii.gz")
        # exact 2x nearest neighbour of the original slice's (label > 0), in the same row/column orientation
        expected = np.kron((labels[row["slice_index"]] > 0).astype(np.uint8), np.ones((2, 2), dtype=np.uint8))
        assert np.array_equal(mask, expected)
        assert row["original_slice_size"] == [128, 128] and row["crop_box_rows_cols"] == [0, 128, 0, 128]


def interior(mask: np.ndarray, source_shape: tuple[int, int] = (128, 128)) -> np.ndarray:
    """Output pixels at least one source pixel (plus one output pixel) inside the mask.

    Bilinear interpolation mixes source pixels up to one source pixel away, i.e. `zoom` output pixels; only
    deeper pixels must carry the label's intensity exactly.
    """
    reach = [int(np.ceil(mask.shape[axis] / source_shape[axis])) + 1 for axis in (0, 1)]
    return ndimage.binary_erosion(mask, structure=np.ones((2 * reach[0] + 1, 2 * reach[1] + 1)), border_value=1)


def test_a_mask_pixel_lands_on_its_label_intensity(tmp_path):
    make_synthetic_kits19(tmp_path / "kits19", [0, 1], seed=4, shape=(16, 96, 80), noise_std=0)
    assert convert(tmp_path / "kits19", tmp_path / "raw", "--task", "both", "--workers", "1",
                   "--window", "-1000", "1000", "--no-denoise") == 0
    checked = {"kidney": 0, "tumor": 0, "outside": 0}
    for dataset, value_inside in ((KIDNEY, None), (TUMOR, HU["tumor"])):
        crops = {row["image_id"]: row["crop_box_rows_cols"] for row in manifest(tmp_path, dataset)}
        for image_path in sorted((tmp_path / "raw" / dataset / "imagesTr").glob("*.nii.gz")):
            image = read(image_path)
            image_id = image_path.name.replace("_0000.nii.gz", "")
            mask = read(tmp_path / "raw" / dataset / "labelsTr" / f"{image_id}.nii.gz")
            row_start, row_stop, col_start, col_stop = crops[image_id]
            source_shape = (row_stop - row_start, col_stop - col_start)
            inside, outside = interior(mask == 1, source_shape), interior(mask == 0, source_shape)
            if value_inside is None:  # kidney task: the mask is kidney or tumor
                values = image[inside]  # kidney, tumor, or a bilinear mix of the two: never a background tissue
                assert np.all((values >= HU["tumor"] - 1e-3) & (values <= HU["kidney"] + 1e-3))
                checked["kidney"] += int(inside.sum())
            else:
                assert np.allclose(image[inside], value_inside)
                checked["tumor"] += int(inside.sum())
            # where the image is flat outside the mask (no interpolation between tissues), it is not the label's tissue
            flat_outside = outside & (ndimage.maximum_filter(image, 3) == ndimage.minimum_filter(image, 3))
            allowed = [HU["air"], HU["fat"], HU["soft_tissue"]] + ([HU["kidney"]] if value_inside is not None else [])
            assert np.all(np.isin(image[flat_outside], allowed))
            checked["outside"] += int(flat_outside.sum())
    assert min(checked.values()) > 1000


def test_paper_preset_keeps_kidney_distinct_from_background(converted):
    means = {"kidney": [], "background": []}
    for image_path in sorted((converted / "raw" / KIDNEY / "imagesTr").glob("case_00000_*"))[:5]:
        image = read(image_path)
        mask = read(converted / "raw" / KIDNEY / "labelsTr" / image_path.name.replace("_0000.nii.gz", ".nii.gz"))
        assert -30.0 <= image.min() and image.max() <= 0.0
        means["kidney"].append(image[interior(mask == 1)].mean())
        means["background"].append(image[interior(mask == 0)].mean())
    assert -20 < np.mean(means["kidney"]) < -10  # kidney is -15 HU, denoised
    assert abs(np.mean(means["kidney"]) - np.mean(means["background"])) > 3


def test_orientation_comes_from_the_header_not_the_array_axis(tmp_path):
    outputs = {}
    for slice_axis in (0, 1, 2):
        make_synthetic_case(tmp_path / f"axis{slice_axis}" / "case_00007", seed=9, shape=(14, 48, 56), slice_axis=slice_axis)
        assert convert(tmp_path / f"axis{slice_axis}", tmp_path / f"raw{slice_axis}", "--task", "both",
                       "--workers", "1", "--size", "64") == 0
        outputs[slice_axis] = {
            path.relative_to(tmp_path / f"raw{slice_axis}").as_posix(): read(path)
            for path in sorted((tmp_path / f"raw{slice_axis}").glob("Dataset*/*/*.nii.gz"))
        }
    assert len(outputs[0]) > 10
    for slice_axis in (1, 2):
        assert outputs[slice_axis].keys() == outputs[0].keys()
        for name, array in outputs[0].items():
            assert np.array_equal(outputs[slice_axis][name], array), name


def test_splits_group_images_by_case_and_reach_nnunet_preprocessed(converted):
    folds = json.loads((converted / "raw" / KIDNEY / "splits_final.json").read_text())
    assert folds == json.loads((converted / "preprocessed" / KIDNEY / "splits_final.json").read_text())
    assert len(folds) == 5
    train_images = sorted(p.name.replace(".nii.gz", "") for p in (converted / "raw" / KIDNEY / "labelsTr").iterdir())
    assert sorted(image for fold in folds for image in fold["val"]) == train_images  # each image validated once
    for fold in folds:
        train_cases, val_cases = {i[:10] for i in fold["train"]}, {i[:10] for i in fold["val"]}
        assert val_cases and not train_cases & val_cases
        assert sorted(fold["train"] + fold["val"]) == train_images


def test_rerun_skips_finished_cases_and_redoes_damaged_ones(tmp_path, capsys):
    kits19, raw = tmp_path / "kits19", tmp_path / "raw"
    make_synthetic_kits19(kits19, [0, 1, 2], seed=5, shape=(12, 48, 48))
    assert convert(kits19, raw, "--workers", "1") == 0
    images = raw / KIDNEY / "imagesTr"
    before = {p.name: p.stat().st_mtime_ns for p in images.iterdir()}
    capsys.readouterr()

    assert convert(kits19, raw, "--workers", "1") == 0
    assert "0 case(s) to convert, 3 already done" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in images.iterdir()} == before

    # damage: a deleted image of case 1; case 2 looks interrupted (no record, a stray file, staging leftovers of
    # this version and of earlier ones)
    deleted = sorted(images.glob("case_00001_*"))[0]
    deleted.unlink()
    (raw / KIDNEY / ".cases" / "case_00002.json").unlink()
    stray = images / "case_00002_9999_0000.nii.gz"
    stray.write_bytes(b"half")
    (raw / KIDNEY / ".case_00002.staging-x").mkdir()
    (raw / KIDNEY / ".staging" / "case_00002-x").mkdir(parents=True)
    assert convert(kits19, raw, "--workers", "1") == 0
    assert "2 case(s) to convert, 1 already done" in capsys.readouterr().err
    after = {p.name: p.stat().st_mtime_ns for p in images.iterdir()}
    assert after.keys() == before.keys() and deleted.exists() and not stray.exists()
    assert all(after[name] == before[name] for name in before if name.startswith("case_00000_"))
    assert not [p.name for p in (raw / KIDNEY).iterdir() if "staging" in p.name]

    # other settings: refused while the dataset holds cases of the earlier ones; --rebuild redoes every case
    assert convert(kits19, raw, "--workers", "1", "--preset", "kits") == 2
    assert "preset kits here, paper in the existing" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in images.iterdir()} == after
    assert convert(kits19, raw, "--workers", "1", "--preset", "kits", "--rebuild") == 0
    assert "3 case(s) to convert" in capsys.readouterr().err
    assert json.loads((raw / KIDNEY / "dataset.json").read_text())["conversion"]["window"] == [-79.0, 304.0]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_case_leaves_nothing_behind(tmp_path, failure):
    dataset = RawDataset(tmp_path / KIDNEY)
    dataset.prepare()
    with pytest.raises(failure):
        with dataset.open_case("case_00003") as writer:
            writer.add("train", "case_00003_0001", np.zeros((8, 8)), np.ones((8, 8)), {"case": "case_00003"})
            writer.commit({"a": 1}, {})  # even a committed case is removed again if the work fails after it
            raise failure()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert not dataset.is_done("case_00003", {"a": 1})


def break_cases(kits19: Path) -> dict[str, str]:
    """Damage cases 1-6 in different ways; returns case -> words the error message must contain."""
    (kits19 / "case_00001" / "segmentation.nii.gz").unlink()
    data = (kits19 / "case_00002" / "imaging.nii.gz").read_bytes()
    (kits19 / "case_00002" / "imaging.nii.gz").write_bytes(data[: len(data) // 2])  # truncated gzip
    labels = sitk.ReadImage(str(kits19 / "case_00003" / "segmentation.nii.gz"))
    sitk.WriteImage(labels[:, :, :-1], str(kits19 / "case_00003" / "segmentation.nii.gz"))
    for case, change in (("case_00004", lambda a: np.where(a == 2, 3, a)), ("case_00005", np.zeros_like)):
        labels = sitk.ReadImage(str(kits19 / case / "segmentation.nii.gz"))
        changed = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(labels)).astype(np.uint8))
        changed.CopyInformation(labels)
        sitk.WriteImage(changed, str(kits19 / case / "segmentation.nii.gz"))
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(kits19 / "case_00006" / "imaging.nii.gz"))
    return {
        "case_00001": "segmentation.nii.gz: file is missing",
        "case_00002": "imaging.nii.gz: is truncated or corrupt",
        "case_00003": "size",
        "case_00004": "labels in [0, 3]",
        "case_00005": "no kidney or tumor",
        "case_00006": "is 2D",
    }


def test_bad_cases_are_reported_and_skipped_and_strict_stops(tmp_path, capsys):
    kits19, raw = tmp_path / "kits19", tmp_path / "raw"
    make_synthetic_kits19(kits19, range(8), seed=6, shape=(10, 40, 40))
    problems = break_cases(kits19)
    assert convert(kits19, raw, "--task", "both", "--workers", "1") == 1  # some cases bad: exit 1, dataset written
    assert (raw / KIDNEY / "dataset.json").is_file()
    report = capsys.readouterr().out
    assert "6 bad case(s) skipped" in report
    for case, words in problems.items():
        line = next(line for line in report.splitlines() if line.strip().startswith(f"{case}:"))
        assert words in line and str(kits19 / case) in line, line
    for dataset in (KIDNEY, TUMOR):
        written = {p.name[:10] for p in (raw / dataset).glob("*/*.nii.gz")}
        assert written == {"case_00000", "case_00007"}

    shutil.rmtree(raw)
    assert convert(kits19, raw, "--workers", "1", "--strict") == 1
    assert "stopped at the first bad case" in capsys.readouterr().err
    assert {p.name[:10] for p in (raw / KIDNEY).glob("*/*.nii.gz")} == {"case_00000"}  # finished cases are kept
    assert not (raw / KIDNEY / "dataset.json").exists()  # but the dataset is not complete


def test_output_folder_is_required(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert cli_main(["convert-kits19", str(tmp_path)]) == 2
    assert "--output" in capsys.readouterr().err
