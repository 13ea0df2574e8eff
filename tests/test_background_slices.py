"""convert-kits19 --background-slices: slices without label join the kidney task's training set, empty masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_qpg.cli import main as cli_main
from nnunet_qpg.dataset_conversion.kits19_slices import background_slice_count, background_slices
from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_kits19

KIDNEY, TUMOR = "Dataset701_KiTS19Kidney2D", "Dataset702_KiTS19Tumor2D"
SHAPE = (16, 40, 40)  # 16 slices, about half of them without label


def convert(kits19: Path, output: Path, *options: str) -> int:
    return cli_main(["convert-kits19", str(kits19), "--output", str(output), "--workers", "1", "--size", "16",
                     *options])


def labelled_slices(case_dir: Path) -> list[int]:
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "segmentation.nii.gz"))).transpose(2, 1, 0)
    return [k for k in range(labels.shape[0]) if labels[k].max() > 0]


def images(folder: Path) -> set[str]:
    return {path.name.replace("_0000.nii.gz", "") for path in folder.glob("*_0000.nii.gz")}


def test_count_rounds_halves_up_and_one_takes_all():
    assert [background_slice_count(f, 3) for f in (0.0, 0.1, 0.5, 0.9, 1.0)] == [0, 0, 2, 3, 3]
    assert background_slice_count(0.25, 8) == 2 and background_slice_count(1.0, 0) == 0
    with pytest.raises(ValueError):
        background_slice_count(1.5, 4)


def test_draw_is_fixed_per_case_nested_and_never_a_labelled_slice():
    labelled = np.arange(40, 60)
    draws = {f: background_slices("case_00007", 100, labelled, f) for f in (0.0, 0.1, 0.5, 1.0)}
    assert [len(draw) for draw in draws.values()] == [0, 8, 40, 80]
    assert np.array_equal(draws[1.0], np.setdiff1d(np.arange(100), labelled))
    assert set(draws[0.1]) <= set(draws[0.5]) <= set(draws[1.0])  # a larger fraction keeps the smaller one's
    assert not set(draws[0.5]) & set(labelled.tolist())
    assert np.array_equal(draws[0.5], np.sort(draws[0.5]))
    # seeded by the case name only (zlib.crc32, not Python's per-process hash()): fixed across runs and versions
    assert background_slices("case_00007", 100, labelled, 0.1).tolist() == draws[0.1].tolist()
    assert draws[0.1].tolist() == [3, 4, 16, 28, 35, 68, 82, 90]
    assert background_slices("case_00008", 100, labelled, 0.1).tolist() != draws[0.1].tolist()


@pytest.fixture(scope="module")
def kits19(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bg") / "kits19"
    make_synthetic_kits19(folder, [0, 1, 180], seed=3, shape=SHAPE)
    return folder


def test_training_cases_get_their_drawn_empty_slices_and_the_test_split_and_tumour_task_stay(kits19, tmp_path,
                                                                                               capsys):
    raw = tmp_path / "raw"
    assert convert(kits19, raw, "--task", "both", "--background-slices", "0.5") == 0
    out = capsys.readouterr().out
    kidney, tumour = raw / KIDNEY, raw / TUMOR
    rows = json.loads((kidney / "manifest.json").read_text())["images"]
    expected_empty = 0
    for case in ("case_00000", "case_00001"):
        labelled = labelled_slices(kits19 / case)
        drawn = background_slices(case, SHAPE[0], np.array(labelled), 0.5)
        assert len(drawn) == background_slice_count(0.5, SHAPE[0] - len(labelled)) > 0
        expected_empty += len(drawn)
        names = {name for name in images(kidney / "imagesTr") if name.startswith(case)}
        assert names == ({f"{case}_{k:04d}" for k in labelled} | {f"{case}_{k:04d}_bg" for k in drawn})
        for k in drawn:
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(kidney / "labelsTr" / f"{case}_{k:04d}_bg.nii.gz")))
            assert mask.shape == (16, 16) and not mask.any()
            row = next(r for r in rows if r["image_id"] == f"{case}_{k:04d}_bg")
            assert row["background"] is True and row["slice_index"] == k and row["split"] == "train"
    # the test split is the paper's: labelled slices only
    assert images(kidney / "imagesTs") == {f"case_00180_{k:04d}" for k in labelled_slices(kits19 / "case_00180")}
    assert not any("_bg" in name for name in images(tumour / "imagesTr") | images(tumour / "imagesTs"))
    # recorded: kidney dataset.json and manifest say 0.5; the tumour dataset has no such setting
    assert json.loads((kidney / "dataset.json").read_text())["conversion"]["background_slices"] == 0.5
    assert json.loads((kidney / "manifest.json").read_text())["settings"]["background_slices"] == 0.5
    assert "background_slices" not in json.loads((tumour / "dataset.json").read_text())["conversion"]
    assert f"({expected_empty} of them slices without label, empty masks)" in out
    # the folds group an empty slice with its case
    for fold in json.loads((kidney / "splits_final.json").read_text()):
        assert {i[:10] for i in fold["val"]}.isdisjoint({i[:10] for i in fold["train"]})
    assert sorted(i for fold in json.loads((kidney / "splits_final.json").read_text()) for i in fold["val"]) == \
        sorted(images(kidney / "imagesTr"))

    # a rerun with the same fraction does nothing; another fraction is refused like any other setting change
    capsys.readouterr()
    assert convert(kits19, raw, "--task", "both", "--background-slices", "0.5") == 0
    assert "0 case(s) to convert, 3 already done" in capsys.readouterr().err
    before = images(kidney / "imagesTr")
    assert convert(kits19, raw, "--background-slices", "0.25") == 2
    err = capsys.readouterr().err
    assert "background slices 0.25 here, 0.5 in the existing" in err and "--background-slices 0.5" in err
    assert images(kidney / "imagesTr") == before
    assert convert(kits19, raw) == 2  # the default, 0, is a different setting too
    assert "background slices 0 here, 0.5 in the existing" in capsys.readouterr().err
    assert convert(kits19, raw, "--background-slices", "1", "--rebuild") == 0
    after = images(kidney / "imagesTr")
    assert before < after  # nested draws: 1 takes every slice, the earlier 0.5 ones included
    assert len([n for n in after if n.endswith("_bg")]) == sum(
        SHAPE[0] - len(labelled_slices(kits19 / case)) for case in ("case_00000", "case_00001"))


def test_default_is_the_papers_protocol_and_older_datasets_count_as_fraction_0(kits19, tmp_path, capsys):
    raw = tmp_path / "raw"
    assert convert(kits19, raw) == 0
    kidney = raw / KIDNEY
    assert not any(name.endswith("_bg") for name in images(kidney / "imagesTr"))
    assert json.loads((kidney / "dataset.json").read_text())["conversion"]["background_slices"] == 0.0
    # a dataset made before the option existed records no background_slices: it is the same as fraction 0
    for path in [*(kidney / ".cases").glob("*.json"), kidney / "dataset.json"]:
        content = json.loads(path.read_text())
        (content["settings"] if "settings" in content else content["conversion"]).pop("background_slices")
        path.write_text(json.dumps(content))
    capsys.readouterr()
    assert convert(kits19, raw, "--background-slices", "0") == 0
    assert "0 case(s) to convert, 3 already done" in capsys.readouterr().err
    assert convert(kits19, raw, "--background-slices", "0.3") == 2
    assert "background slices 0.3 here, 0 in the existing" in capsys.readouterr().err


@pytest.mark.parametrize("options, words", [
    (["--task", "tumor", "--background-slices", "0.1"], "applies to the kidney task only"),
    (["--task", "volume", "--background-slices", "0.1"], "--background-slices does not apply to --task volume"),
    (["--background-slices", "1.5"], "between 0 and 1, got 1.5"),
    (["--background-slices", "nan"], "between 0 and 1"),
])
def test_refused_options_leave_nothing(kits19, tmp_path, capsys, options, words):
    cli_args = ["convert-kits19", str(kits19), "--output", str(tmp_path / "raw"), *options]
    assert cli_main(cli_args) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()
