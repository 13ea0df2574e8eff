"""`nnunet-qpg report` and `nnunet-qpg overlay` on the shared tiny kidney and tumour models (real files, real
commands): the Table 1 rows come from what the trainers and nnU-Net wrote, and the PNGs colour what labels mean."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from inference_model import TINY_TRAINER, nnunet_qpg_command, trained_kidney_and_tumor_models
from nnunet_helpers import run_command
from PIL import Image

from nnunet_qpg.figures import KIDNEY_COLOUR, TUMOR_COLOUR

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trained_kidney_and_tumor_models(tmp_path_factory)


@pytest.fixture(scope="module")
def test_predictions(models, tmp_path_factory):
    """Each model's nnUNetv2_predict masks on its dataset's 2D test images, and `nnunet-qpg evaluate` of them."""
    work = tmp_path_factory.mktemp("report")
    outcome = {}
    for task, model in zip(("kidney", "tumor"), models):
        dataset_id = model.raw_dataset.name[len("Dataset"):][:3]
        masks, evaluation = work / f"{task}_masks", work / f"{task}_evaluation.json"
        run_command(["nnUNetv2_predict", "-i", str(model.raw_dataset / "imagesTs"), "-o", str(masks), "-d",
                     dataset_id, "-c", "2d", "-tr", TINY_TRAINER, "-f", "0", "-device", "cpu", "-npp", "1",
                     "-nps", "1", "--disable_tta"], model.env)
        run_command([nnunet_qpg_command(), "evaluate", str(masks), str(model.raw_dataset / "labelsTs"), "-o",
                     str(evaluation)], model.env)
        outcome[task] = masks, evaluation
    return outcome


def test_report_rows_come_from_the_trainers_settings_and_the_evaluations(models, test_predictions, tmp_path):
    kidney, tumor = models
    table = tmp_path / "table1.json"
    done = run_command([nnunet_qpg_command(), "report", str(kidney.model_folder), str(tumor.model_folder),
                        "--test", str(test_predictions["kidney"][1]), str(test_predictions["tumor"][1]),
                        "--names", "QPG kidney", "QPG tumour", "-o", str(table)], kidney.env)
    for column in ("model", "strategy", "train IoU", "train DSC", "test IoU", "test DSC", "trainable params"):
        assert column in done.stdout
    rows = json.loads(table.read_text())
    assert [row["name"] for row in rows] == ["QPG kidney", "QPG tumour"]
    for row, model, task in zip(rows, models, ("kidney", "tumor")):
        settings = json.loads((model.model_folder / "fold_0" / "qpg_settings.json").read_text())
        assert row["trainer"] == TINY_TRAINER == settings["trainer"]
        # nnUNetTrainerQPG: QPGConv with LPP on the three segmentation heads of the 2D PlainConvUNet
        assert row["strategy"] == "QPGConv LPP, 3 layer(s)"
        assert row["trainable_parameters"] == settings["trainable_parameters"]
        # nnUNetTrainerQPG trains the whole network, the swapped heads included: all parameters after the swap
        assert row["trainable_parameters"] == settings["qpg"]["trainable_after"] == settings["total_parameters"]
        assert f"{row['trainable_parameters']:,}" in done.stdout
        evaluation = json.loads(test_predictions[task][1].read_text())["summary"]
        assert row["test"] == evaluation and row["test"]["images"] > 0
        # train scores: per-image IoU/DSC of nnU-Net's own fold-0 validation of this model
        validated = json.loads((model.model_folder / "fold_0" / "validation" / "summary.json").read_text())
        assert row["train"]["images"] == len(validated["metric_per_case"])
        for metric in ("iou", "dsc"):
            assert 0.0 <= row["train"][f"{metric}_mean"] <= 1.0
            assert f"{row['test'][f'{metric}_mean']:.3f} ± {row['test'][f'{metric}_std']:.3f}" in done.stdout


def test_report_refuses_a_test_json_count_that_does_not_match_the_models(models, test_predictions):
    kidney, _ = models
    done = run_command([nnunet_qpg_command(), "report", str(kidney.model_folder), "--test",
                        str(test_predictions["kidney"][1]), str(test_predictions["tumor"][1])], kidney.env,
                       check=False)
    assert done.returncode == 2 and "--test needs one entry per model folder" in done.stderr


def colour_pixels(picture: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    """Pixels tinted by a mask colour: the figure blends colour into grey, so the colour's dominant channel
    stands clearly above the other two (grey pixels have equal channels)."""
    dominant = int(np.argmax(colour))
    others = [channel for channel in range(3) if channel != dominant]
    rgb = picture[..., :3].astype(int)
    return (rgb[..., dominant] - rgb[..., others].max(axis=-1)) > 60


def panel_counts(png, panels: int, colour) -> list[int]:
    """Tinted pixels per panel (the figure is one row of equally wide panels)."""
    picture = np.asarray(Image.open(png).convert("RGB"))
    tinted = colour_pixels(picture, colour)
    edges = np.linspace(0, picture.shape[1], panels + 1).astype(int)
    return [int(tinted[:, start:stop].sum()) for start, stop in zip(edges[:-1], edges[1:])]


def test_overlay_colours_tumour_dataset_label_1_as_tumour(models, test_predictions, tmp_path):
    """In Dataset702 label 1 means tumour: the ground truth and a copy of it (a prediction folder with no
    dataset.json, which takes the ground truth's label names) are red, never kidney green."""
    _, tumor = models
    copy = tmp_path / "truth_copy"
    shutil.copytree(tumor.raw_dataset / "labelsTs", copy)
    output = tmp_path / "figures"
    done = run_command([nnunet_qpg_command(), "overlay", "--images", str(tumor.raw_dataset / "imagesTs"),
                        "--ground-truth", str(tumor.raw_dataset / "labelsTs"), "--prediction",
                        f"model={test_predictions['tumor'][0]}", "--prediction", f"copy={copy}", "-o",
                        str(output), "--max", "2"], tumor.env)
    figures = sorted(output.glob("*.png"))
    assert 1 <= len(figures) <= 2 and "figure(s)" in done.stdout
    for png in figures:
        with Image.open(png) as image:
            # 4 panels (image, ground truth, model, copy), 2.6 x 3.0 inches each at 110 dpi
            assert image.size == (round(4 * 2.6 * 110), round(3.0 * 110))
        red = panel_counts(png, 4, TUMOR_COLOUR)
        green = panel_counts(png, 4, KIDNEY_COLOUR)
        assert red[0] == 0 and red[1] > 0 and red[3] == pytest.approx(red[1], rel=0.05), (png.name, red)
        assert sum(green) == 0, (png.name, green)


def test_overlay_of_a_kits19_volume_shows_kidney_green_and_tumour_red(models, tmp_path):
    """KiTS19 segmentations: 1 kidney (green), 2 tumour (red); the slice drawn is one that shows the tumour."""
    kidney, _ = models
    reference = tmp_path / "reference"
    reference.mkdir()
    shutil.copy(kidney.kits19 / "case_00180" / "segmentation.nii.gz", reference / "case_00180.nii.gz")
    output = tmp_path / "figures"
    run_command([nnunet_qpg_command(), "overlay", "--images", str(kidney.kits19), "--ground-truth",
                 str(kidney.kits19), "--prediction", f"reference={reference}", "-o", str(output)], kidney.env)
    png = output / "case_00180.png"
    with Image.open(png) as image:
        assert image.size == (round(3 * 2.6 * 110), round(3.0 * 110))
    green, red = panel_counts(png, 3, KIDNEY_COLOUR), panel_counts(png, 3, TUMOR_COLOUR)
    assert green[0] == red[0] == 0, "the plain image panel must stay grey"
    assert green[1] > 0 and red[1] > 0, (green, red)
    assert green[2] == pytest.approx(green[1], rel=0.05) and red[2] == pytest.approx(red[1], rel=0.05)
    assert green[1] > red[1], "this slice has more kidney than tumour"
