"""Data safety of evaluate, report, overlay, new-trainer and the trainers (issue items 7, 10, 12 and 14).

Each test builds tiny real files (SimpleITK NIfTI masks, JSON, a trainer file), runs the command through
`nnunet_qpg.cli.main` and asserts the exit code, the message and what was (not) written; tree snapshots show
that the inputs stay untouched.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from snapshots import assert_unchanged, snapshot

from nnunet_qpg.cli import main

SHAPE = (6, 16, 16)  # numpy (z, y, x)


def write_mask(path: Path, array: np.ndarray | None = None, spacing=None, origin=None, direction=None) -> Path:
    if array is None:
        array = np.zeros(SHAPE, np.uint8)
        array[1:5, 4:12, 4:12] = 1
    image = sitk.GetImageFromArray(array)
    for value, setter in ((spacing, image.SetSpacing), (origin, image.SetOrigin), (direction, image.SetDirection)):
        if value is not None:
            setter(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def strict_json(path: Path):
    """The file as JSON, failing on NaN / Infinity (which are not JSON)."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


# -- item 10: evaluate never scores a broken or misplaced mask, and never writes NaN ------------------------------

def test_evaluate_names_and_skips_truncated_and_off_grid_pairs(tmp_path, capsys):
    predictions, truth = tmp_path / "pred", tmp_path / "gt"
    for case in ("good", "pred_truncated", "truth_truncated", "spacing", "origin", "direction"):
        write_mask(truth / f"{case}.nii.gz")
    write_mask(predictions / "good.nii.gz")
    truncate(write_mask(predictions / "pred_truncated.nii"))  # a perfect prediction, cut short (uncompressed)
    write_mask(predictions / "truth_truncated.nii.gz")
    truncate(truth / "truth_truncated.nii.gz")
    write_mask(predictions / "spacing.nii.gz", spacing=(1.0, 1.0, 2.5))
    write_mask(predictions / "origin.nii.gz", origin=(0.0, 0.0, 4.0))
    write_mask(predictions / "direction.nii.gz", direction=(1, 0, 0, 0, -1, 0, 0, 0, 1))
    inputs = snapshot(tmp_path)

    output = tmp_path / "out" / "metrics.json"
    code, out, err = run(["evaluate", str(predictions), str(truth), "-o", str(output)], capsys)

    assert code == 1, "some pairs failed and the others were scored"
    result = strict_json(output)
    assert [row["case"] for row in result["per_volume"]] == ["good"]
    assert result["summary"]["dsc_mean"] == 1.0 and result["summary"]["volumes"] == 1
    problems = {row["case"]: row["problem"] for row in result["unscored"]}
    assert set(problems) == {"pred_truncated", "truth_truncated", "spacing", "origin", "direction"}
    assert "pred_truncated.nii" in problems["pred_truncated"] and "truncated" in problems["pred_truncated"]
    assert str(truth / "truth_truncated.nii.gz") in problems["truth_truncated"]
    assert "truncated" in problems["truth_truncated"]
    assert "spacing (1.0, 1.0, 2.5)" in problems["spacing"] and "origin (0.0, 0.0, 4.0)" in problems["origin"]
    assert "direction" in problems["direction"]
    for case, problem in problems.items():
        assert f"case {case} not scored" in err and problem in err
    assert "5 case(s) not scored" in err
    inputs_now = snapshot(tmp_path)
    assert_unchanged(inputs, {k: v for k, v in inputs_now.items() if not k.startswith("out")}, "the inputs")


def test_evaluate_refuses_unmatched_names_and_never_writes_nan(tmp_path, capsys):
    predictions, truth = tmp_path / "pred", tmp_path / "gt"
    for case in ("alpha", "beta", "gamma"):
        write_mask(predictions / f"{case}.nii.gz")
    for case in ("case_00001", "case_00002"):
        write_mask(truth / f"{case}.nii.gz")
    before = snapshot(tmp_path)
    code, _, err = run(["evaluate", str(predictions), str(truth)], capsys)
    assert code == 2
    assert "no prediction" in err and "alpha, beta, gamma" in err and "case_00001, case_00002" in err
    assert_unchanged(before, snapshot(tmp_path), "a refused evaluation's folders")  # no evaluation.json

    # matching names, but no foreground slice of the asked label: means over no image are null, never NaN
    write_mask(predictions / "case_00001.nii.gz")
    output = tmp_path / "label9.json"
    code, out, _ = run(["evaluate", str(predictions), str(truth), "--label", "9", "-o", str(output)], capsys)
    assert code == 0 and "no 2D image was scored" in out
    summary = strict_json(output)["summary"]
    assert summary["images"] == 0 and summary["iou_mean"] is None and summary["dsc_std"] is None


# -- item 12: new-trainer writes user strings as data, never as code ----------------------------------------------

INJECTION = 'x""";import os;os.system("touch {marker}");"""'


def test_new_trainer_writes_user_strings_as_data_only(tmp_path, capsys):
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    marker = tmp_path / "MARKER"
    patterns = [INJECTION.format(marker=marker), "a\nb.*", "c\\d\\\\", "e'''f", 'g"""h', "ü.*"]
    train_only = [f"z'''; open({str(marker)!r}, 'w')  #", "decoder.seg_layers.*"]
    folder = tmp_path / "trainers"
    code, out, _ = run(["new-trainer", "nnUNetTrainerInjected", "--targets", *patterns, "--mode", "adapter",
                        "--train-only", *train_only, "-o", str(folder)], capsys)
    assert code == 0 and "wrote" in out
    source = (folder / "nnUNetTrainerInjected.py").read_text(encoding="ascii")  # plain ASCII
    assert "os.system" not in source.split("CREATED_WITH")[0], "the docstring holds no user text"

    trainer = recursive_find_python_class(str(folder), "nnUNetTrainerInjected", current_module=None)
    assert not marker.exists(), "a pattern ran as code when nnU-Net imported the trainer"
    config = trainer.resolved_qpg_config()
    assert config.targets == tuple(patterns) and config.train_only == tuple(train_only)
    created_with = sys.modules[trainer.__module__].CREATED_WITH  # the command line, as one string literal
    assert shlex.split(created_with)[4:4 + len(patterns)] == patterns

    # the name must stay an ASCII identifier: newlines, quotes, backslashes and non-ASCII are refused
    for name in ("Bad\nName", "Bad'''Name", "Bad\\Name", 'X"""', "nnUNetTrainerﬁ", "class"):
        code, _, err = run(["new-trainer", name, "--targets", "x", "-o", str(tmp_path / "refused")], capsys)
        assert code == 2 and "not a valid class name" in err
    assert not (tmp_path / "refused").exists()


def test_generated_source_is_verified_before_writing():
    from nnunet_qpg.commands.new_trainer import (GeneratedSourceError, trainer_settings, trainer_source,
                                                 verify_trainer_source)

    source = trainer_source("nnUNetTrainerOk", ["a.*"], epochs=3, command_line="cmd")
    bases, (config, schedule) = ("nnUNetTrainerQPGBase",), trainer_settings(targets=["a.*"], epochs=3)
    verify_trainer_source(source, "nnUNetTrainerOk", bases, config, schedule, "cmd")
    for tampered in (source + "import os\n", source.replace("mode='replace'", "mode=str('replace')"),
                     source.replace("blocks=1", "blocks=2"), source.replace("QPGConfig(", "QPGConfig(*[], "),
                     source.replace("schedule_epochs = 3", "schedule_epochs = 4")):
        assert tampered != source
        with pytest.raises(GeneratedSourceError):
            verify_trainer_source(tampered, "nnUNetTrainerOk", bases, config, schedule, "cmd")


# -- item 7: what these commands write follows the user's umask ---------------------------------------------------

def fake_model_folder(root: Path) -> Path:
    """A model folder as the trainers and nnU-Net leave it, reduced to what `report` reads."""
    model = root / "nnUNetTrainerQPG__nnUNetPlans__2d"
    fold = model / "fold_0"
    (fold / "validation").mkdir(parents=True)
    (fold / "qpg_settings.json").write_text(json.dumps({
        "trainer": "nnUNetTrainerQPG", "trainable_parameters": 1234, "total_parameters": 1234,
        "qpg": {"mode": "replace", "settings": {"post": "lpp"}, "layers": ["decoder.seg_layers.0"]}}))
    (fold / "validation" / "summary.json").write_text(json.dumps({"metric_per_case": [
        {"metrics": {"1": {"TP": 3.0, "FP": 1.0, "FN": 0.0}}}]}))
    return model


@pytest.mark.parametrize("mask", [0o022, 0o002], ids=["umask022", "umask002"])
def test_outputs_follow_the_umask(tmp_path, capsys, umask, mask):
    predictions, truth, images = tmp_path / "pred", tmp_path / "gt", tmp_path / "images"
    write_mask(predictions / "a.nii.gz")
    write_mask(truth / "a.nii.gz")
    write_mask(images / "a_0000.nii.gz", np.random.default_rng(0).random(SHAPE).astype(np.float32))
    model = fake_model_folder(tmp_path / "results")
    umask(mask)
    expected = 0o666 & ~mask
    written = {"evaluate": tmp_path / "out" / "eval.json", "report": tmp_path / "out" / "table.json",
               "overlay": tmp_path / "figures" / "a.png", "new-trainer": tmp_path / "mine" / "nnUNetTrainerMine.py"}
    assert run(["evaluate", str(predictions), str(truth), "-o", str(written["evaluate"])], capsys)[0] == 0
    assert run(["report", str(model), "--test", str(written["evaluate"]), "-o", str(written["report"])],
               capsys)[0] == 0
    assert run(["overlay", "--images", str(images), "--ground-truth", str(truth), "--prediction",
                f"m={predictions}", "-o", str(tmp_path / "figures")], capsys)[0] == 0
    assert run(["new-trainer", "nnUNetTrainerMine", "--targets", "x", "-o", str(tmp_path / "mine")], capsys)[0] == 0
    for command, path in written.items():
        assert path.stat().st_mode & 0o777 == expected, (command, oct(path.stat().st_mode & 0o777))
    assert strict_json(written["report"])[0]["trainable_parameters"] == 1234


# -- item 14: one clear message and a non-zero exit instead of a traceback ----------------------------------------

@pytest.mark.parametrize("where", ["read-only", "file in the way"])
def test_evaluate_refuses_an_unwritable_output_before_reading(tmp_path, capsys, where, read_only_folder):
    predictions, truth = tmp_path / "pred", tmp_path / "gt"
    write_mask(predictions / "a.nii.gz")
    write_mask(truth / "a.nii.gz")
    if where == "read-only":
        folder = read_only_folder
    else:
        (tmp_path / "plain_file").write_text("not a folder")
        folder = tmp_path / "plain_file" / "sub"
    before = snapshot(tmp_path)
    code, _, err = run(["evaluate", str(predictions), str(truth), "-o", str(folder / "m.json")], capsys)
    assert code == 2 and f"cannot write into the output folder (-o) {folder}" in err
    assert_unchanged(before, snapshot(tmp_path))
    # nor may the JSON replace a mask
    code, _, err = run(["evaluate", str(predictions), str(truth), "-o", str(truth / "a.nii.gz")], capsys)
    assert code == 2 and "named like a mask" in err
    assert_unchanged(before, snapshot(tmp_path))


def test_overlay_names_a_case_whose_masks_do_not_fit_its_image(tmp_path, capsys):
    images, truth, predictions = tmp_path / "images", tmp_path / "gt", tmp_path / "pred"
    ct = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    for case in ("fits", "other_shape", "other_truth"):
        write_mask(images / f"{case}_0000.nii.gz", ct)
        write_mask(truth / f"{case}.nii.gz")
        write_mask(predictions / f"{case}.nii.gz")
    write_mask(predictions / "other_shape.nii.gz", np.zeros((6, 16, 8), np.uint8))
    write_mask(truth / "other_truth.nii.gz", np.zeros((6, 8, 16), np.uint8))
    output = tmp_path / "figures"
    code, out, err = run(["overlay", "--images", str(images), "--ground-truth", str(truth), "--prediction",
                          f"model={predictions}", "-o", str(output)], capsys)
    assert code == 1
    assert sorted(p.name for p in output.iterdir()) == ["fits.png"]
    assert f"case other_shape not drawn: {predictions / 'other_shape.nii.gz'} (model) has size (8, 16, 6)" in err
    assert f"case other_truth not drawn: {truth / 'other_truth.nii.gz'} (ground truth) has size (16, 8, 6)" in err
    assert "1 figure(s)" in out


def test_overlay_refuses_a_bad_max_and_an_unwritable_output(tmp_path, capsys, read_only_folder):
    images, predictions = tmp_path / "images", tmp_path / "pred"
    write_mask(images / "a_0000.nii.gz")
    write_mask(predictions / "a.nii.gz")
    for bad in ("-1", "0", "many"):
        with pytest.raises(SystemExit) as exit_info:
            main(["overlay", "--images", str(images), "--prediction", str(predictions), "-o", str(tmp_path / "f"),
                  "--max", bad])
        assert exit_info.value.code == 2 and "argument --max: must be" in capsys.readouterr().err
    (tmp_path / "plain_file").write_text("not a folder")
    unwritable = [tmp_path / "plain_file" / "figures", read_only_folder / "figures"]
    for output in unwritable:
        code, _, err = run(["overlay", "--images", str(images), "--prediction", str(predictions), "-o",
                            str(output)], capsys)
        assert code == 2 and f"cannot write into -o {output}" in err
    code, _, err = run(["overlay", "--images", str(images), "--prediction", str(predictions), "-o",
                        str(predictions / "figures")], capsys)
    assert code == 2 and "lies inside the input folder" in err and not (predictions / "figures").exists()


def test_report_refuses_what_is_not_a_model_folder_or_an_evaluation(tmp_path, capsys):
    model = fake_model_folder(tmp_path / "results")
    (tmp_path / "empty").mkdir()
    (tmp_path / "plain.txt").write_text("hello")
    (tmp_path / "broken.json").write_text('{"summary": ')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "other.json").write_text(json.dumps({"summary": {"images": 3, "iou_mean": "high"}}))
    cases = {
        "empty folder": ([str(tmp_path / "empty")], f"{tmp_path / 'empty'} holds no fold_X/ folder"),
        "plain file": ([str(tmp_path / "plain.txt")], f"{tmp_path / 'plain.txt'} is a file, not a model folder"),
        "bad JSON": ([str(model), "--test", str(tmp_path / "broken.json")],
                     f"{tmp_path / 'broken.json'} cannot be read as an `nnunet-qpg evaluate` JSON"),
        "a list": ([str(model), "--test", str(tmp_path / "list.json")],
                   f"{tmp_path / 'list.json'} is not an `nnunet-qpg evaluate` JSON (no 'summary' object)"),
        "wrong fields": ([str(model), "--test", str(tmp_path / "other.json")],
                         f"{tmp_path / 'other.json'} is not an `nnunet-qpg evaluate` JSON"),
    }
    for what, (argv, message) in cases.items():
        code, out, err = run(["report", *argv, "-o", str(tmp_path / "table.json")], capsys)
        assert code == 2 and message in err, (what, err)
        assert "-" * 10 not in out and not (tmp_path / "table.json").exists(), what
    assert "a trained model folder is" in run(["report", str(tmp_path / "empty")], capsys)[2]

    settings = model / "fold_0" / "qpg_settings.json"
    settings.write_text('{"trainer": "nnUNetTrainerQPG", ')
    code, _, err = run(["report", str(model)], capsys)
    assert code == 2 and f"{settings} cannot be read as the trainer's qpg_settings.json" in err and "--c" in err


def test_new_trainer_refuses_an_unwritable_output(tmp_path, capsys):
    (tmp_path / "plain_file").write_text("not a folder")
    code, _, err = run(["new-trainer", "nnUNetTrainerMine", "--targets", "x", "-o",
                        str(tmp_path / "plain_file" / "trainers")], capsys)
    assert code == 2 and f"cannot write into -o {tmp_path / 'plain_file' / 'trainers'}" in err


def plain_unet():
    """A small real nnU-Net 2D network (dynamic_network_architectures' PlainConvUNet)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    return PlainConvUNet(1, 3, (8, 16, 32), nn.Conv2d, 3, (1, 2, 2), 1, 2, 1, conv_bias=True,
                         norm_op=nn.InstanceNorm2d, nonlin=nn.LeakyReLU, deep_supervision=False)


def test_mismatched_pretrained_weights_name_keys_and_shapes_not_tensors(tmp_path):
    import torch

    from nnunet_qpg.nnunet_trainer import check_pretrained_weights, pretrained_weights_argument

    network = plain_unet()
    weights = network.state_dict()
    check_pretrained_weights(network, str(_save({"network_weights": weights}, tmp_path / "same.pth")))

    other = dict(weights)
    key = "encoder.stages.1.0.convs.0.conv.weight"
    other[key] = torch.randn(64, *weights[key].shape[1:])
    del other["decoder.stages.0.convs.0.conv.bias"]
    path = _save({"network_weights": other}, tmp_path / "other.pth")
    with pytest.raises(ValueError) as error:
        check_pretrained_weights(network, str(path), "nnUNetTrainerQPGA")
    message = str(error.value)
    assert f"{key}: shape (64, 8, 3, 3) in the pretrained weights, (16, 8, 3, 3) in this network" in message
    assert "decoder.stages.0.convs.0.conv.bias: not in the pretrained weights" in message
    assert "tensor(" not in message and len(message) < 1000

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'MARKER'}",))

    crafted = _save({"network_weights": weights, "extra": Payload()}, tmp_path / "crafted.pth")
    with pytest.raises(ValueError, match="not a plain nnU-Net checkpoint"):
        check_pretrained_weights(network, str(crafted))
    assert not (tmp_path / "MARKER").exists()

    argv = ["nnUNetv2_train", "1", "2d", "0", "-p", "nnUNetPlans", "-pretrained_weights", "w.pth"]
    assert pretrained_weights_argument(argv) == "w.pth"
    assert pretrained_weights_argument(["x", "-pretrained_weights=v.pth"]) == "v.pth"
    assert pretrained_weights_argument(argv[:5]) is None


def _save(content, path: Path) -> Path:
    import torch

    torch.save(content, path)
    return path


@pytest.mark.slow
def test_nnunet_train_with_mismatched_pretrained_weights_prints_shapes(tmp_path_factory, tmp_path):
    """nnUNetv2_train -tr nnUNetTrainerQPGA -pretrained_weights <other shape>: our message, no tensor dump."""
    import torch
    from inference_model import shared_root, trained_qpg_model
    from nnunet_helpers import run_command

    model = trained_qpg_model(shared_root(tmp_path_factory))
    checkpoint = torch.load(model.model_folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    key = "encoder.stages.0.0.convs.0.conv.weight"
    weights = checkpoint["network_weights"]
    weights[key] = torch.zeros(2 * weights[key].shape[0], *weights[key].shape[1:])
    pretrained = _save({"network_weights": weights}, tmp_path / "other_shape.pth")
    env = {**model.env, "nnUNet_results": str(tmp_path / "results")}  # the shared model's results stay as they are
    before = snapshot(model.root)
    done = run_command(["nnUNetv2_train", "701", "2d", "0", "-tr", "nnUNetTrainerQPGA", "-pretrained_weights",
                        str(pretrained), "-device", "cpu"], env, check=False)
    assert done.returncode != 0
    assert f"{key}: shape (64, 1, 3, 3) in the pretrained weights, (32, 1, 3, 3) in this network" in done.stderr
    assert "tensor(" not in done.stdout + done.stderr
    assert_unchanged(before, snapshot(model.root), "the shared model")


def test_overlay_names_files_that_share_a_case_name_instead_of_picking_one(tmp_path, capsys):
    images, predictions = tmp_path / "images", tmp_path / "pred"
    write_mask(images / "a_0000.nii.gz")
    write_mask(predictions / "a.nii.gz")
    write_mask(predictions / "a.nii")  # the same case name: which mask is meant?
    code, _, err = run(["overlay", "--images", str(images), "--prediction", f"m={predictions}", "-o",
                        str(tmp_path / "figures")], capsys)
    assert code == 2 and "a.nii, a.nii.gz all map to the case name 'a'" in err
    write_mask(images / "a.nii.gz")
    code, _, err = run(["overlay", "--images", str(images), "--prediction", f"m={tmp_path / 'elsewhere'}", "-o",
                        str(tmp_path / "figures")], capsys)
    assert code == 2 and "map to the case name 'a'" in err
    assert not (tmp_path / "figures").exists() or not list((tmp_path / "figures").iterdir())
