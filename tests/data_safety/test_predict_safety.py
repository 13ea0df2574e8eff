"""Data safety of `nnunet-qpg predict` and `predict-kits19` (issue items 3, 6, 7, 9, 13 and 14).

The commands run in this process through ``nnunet_qpg.cli.main`` (torch and nnU-Net are imported once, so a run
on tiny volumes takes a second or two) with the session's tiny QPG model. Every test snapshots the input folder
and the model folder before and after and asserts that nothing there changed.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_model import shared_root, trained_qpg_model
from snapshots import assert_unchanged, changes, snapshot

from nnunet_qpg import cli

pytestmark = pytest.mark.slow

NNUNET_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(argv: list[str], env: dict[str, str], umask: int | None = None) -> Result:
    """`nnunet-qpg ARGV` in this process with the model's nnU-Net variables; argparse's exit becomes a code."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for name in NNUNET_VARIABLES:
            patch.setenv(name, env[name])
        previous = os.umask(umask) if umask is not None else None
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code
        finally:
            if previous is not None:
                os.umask(previous)
    return Result(int(code or 0), out.getvalue(), err.getvalue())


def write_volume(path: Path, seed: int, dtype=np.int16) -> np.ndarray:
    """A tiny CT-like volume (3 axial slices of 24 x 24, HU around the paper's window)."""
    voxels = np.random.default_rng(seed).integers(-120, 80, size=(3, 24, 24)).astype(dtype)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((0.8, 0.8, 3.0))
    sitk.WriteImage(image, str(path))
    return voxels


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return trained_qpg_model(shared_root(tmp_path_factory))


def predict_argv(input_folder: Path, output: Path, model_folder: Path, *extra: str) -> list[str]:
    return ["predict", "-i", str(input_folder), "-o", str(output), "-m", str(model_folder), "-device", "cpu",
            "--disable-tta", *extra]


@dataclass
class Batch:
    inputs: Path
    output: Path
    result: Result
    inputs_before: dict
    inputs_after: dict
    model_before: dict
    model_after: dict
    foreign_mask: bytes


@pytest.fixture(scope="module")
def batch(model, tmp_path_factory):
    """One `predict` under umask 027 over a folder holding every kind of volume the issue names, into an output
    folder where one mask slot already holds a file nnunet-qpg did not write."""
    work = tmp_path_factory.mktemp("predict_safety")
    inputs = work / "volumes"
    inputs.mkdir()
    write_volume(inputs / "good_0000.nii.gz", seed=1)
    write_volume(inputs / "same_0000.nii.gz", seed=2)
    # item 6: three files, one case name
    write_volume(inputs / "scan.nii", seed=3)
    write_volume(inputs / "scan.nii.gz", seed=4)
    write_volume(inputs / "scan_0000.nii.gz", seed=5)
    # item 9: an uncompressed volume cut short, and a float volume with a NaN and an inf
    write_volume(inputs / "truncated.nii", seed=6)
    data = (inputs / "truncated.nii").read_bytes()
    (inputs / "truncated.nii").write_bytes(data[: len(data) - 500])
    nan_voxels = np.random.default_rng(7).normal(-40, 30, size=(3, 24, 24)).astype(np.float32)
    nan_voxels[1, 5, 5], nan_voxels[2, 7, 7] = np.nan, np.inf
    sitk.WriteImage(sitk.GetImageFromArray(nan_voxels), str(inputs / "nan_0000.nii.gz"))
    # item 6: the mask slot of other_0000 holds a file nnunet-qpg did not write
    write_volume(inputs / "other_0000.nii.gz", seed=8)
    output = work / "masks"
    output.mkdir()
    write_volume(output / "other.nii.gz", seed=9, dtype=np.uint8)
    foreign = (output / "other.nii.gz").read_bytes()
    inputs_before, model_before = snapshot(inputs), snapshot(model.model_folder)
    result = run_cli(predict_argv(inputs, output, model.model_folder), model.env, umask=0o027)
    return Batch(inputs, output, result, inputs_before, snapshot(inputs), model_before,
                 snapshot(model.model_folder), foreign)


def assert_sources_unchanged(batch: Batch) -> None:
    assert_unchanged(batch.inputs_before, batch.inputs_after, "the input folder")
    assert_unchanged(batch.model_before, batch.model_after, "the model folder")


def masks(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# -- item 3 ---------------------------------------------------------------------------------------------------------

def test_item3_output_in_the_input_or_model_folder_is_refused_before_anything_is_loaded(model, tmp_path):
    """`-i d -o d` (with and without --overwrite, and through a link), -o inside -i, -o holding -i and -o inside
    the model folder: refused with exit 2 before the model is loaded; the CT is never replaced by its mask."""
    inputs = tmp_path / "d"
    inputs.mkdir()
    write_volume(inputs / "ct.nii.gz", seed=11)
    (tmp_path / "link_to_d").symlink_to(inputs)
    before_inputs, before_model = snapshot(tmp_path), snapshot(model.model_folder)
    cases = [
        (inputs, [], "is the input itself"),
        (inputs, ["--overwrite"], "is the input itself"),
        (tmp_path / "link_to_d", ["--overwrite"], "is the input itself"),
        (inputs / "masks", [], "lies inside the input folder"),
        (tmp_path, [], "holds the input"),
        (model.model_folder / "masks", [], "lies inside the model folder"),
    ]
    for output, extra, problem in cases:
        done = run_cli(predict_argv(inputs, output, model.model_folder, *extra), model.env)
        assert done.returncode == 2, (output, extra, done.stderr)
        assert f"-o {output} {problem}" in done.stderr and "Choose a separate -o" in done.stderr
        assert "Traceback" not in done.stderr and "Using trainer" not in done.stdout  # nnU-Net never started
    # predict-kits19 shares the check
    done = run_cli(["predict-kits19", "-i", str(inputs), "-o", str(inputs), "--kidney-model",
                    str(model.model_folder), "--tumor-model", str(model.model_folder), "-device", "cpu"], model.env)
    assert done.returncode == 2 and f"-o {inputs} is the input itself" in done.stderr
    assert_unchanged(before_inputs, snapshot(tmp_path), "the input folder")
    assert_unchanged(before_model, snapshot(model.model_folder), "the model folder")


# -- item 6 ---------------------------------------------------------------------------------------------------------

def test_item6_files_of_one_case_name_are_all_named_and_masks_are_only_kept_for_their_own_input(model, batch,
                                                                                            tmp_path):
    """scan.nii, scan.nii.gz and scan_0000.nii.gz are each named and skipped (no mask, no "already done"); the
    batch goes on and exits 1. A rerun keeps a mask as done only when it was made from the same input bytes by
    the same model; a mask of another input of the same case name, a mask of another model and a file
    nnunet-qpg did not write are named and kept, and --overwrite replaces them."""
    done = batch.result
    assert done.returncode == 1, done.stderr[-3000:]
    assert "2 volume(s) predicted, 0 already done, 4 skipped" in done.stdout
    assert "scan.nii, scan.nii.gz, scan_0000.nii.gz all map to the case name 'scan'" in done.stdout
    assert not (batch.output / "scan.nii.gz").exists()
    assert f"{batch.output / 'other.nii.gz'} exists and was not written by nnunet-qpg" in done.stdout
    assert (batch.output / "other.nii.gz").read_bytes() == batch.foreign_mask
    assert_sources_unchanged(batch)

    # a second folder: good_0000 is another volume of the same case name; same.nii.gz holds same_0000's bytes
    output = tmp_path / "masks"
    shutil.copytree(batch.output, output)
    second = tmp_path / "second"
    second.mkdir()
    write_volume(second / "good_0000.nii.gz", seed=21)
    shutil.copyfile(batch.inputs / "same_0000.nii.gz", second / "same.nii.gz")
    write_volume(second / "other_0000.nii.gz", seed=8)
    before_output, before_inputs = snapshot(output), snapshot(second)
    rerun = run_cli(predict_argv(second, output, model.model_folder), model.env)
    assert rerun.returncode == 1, rerun.stderr[-3000:]
    assert "0 volume(s) predicted, 1 already done, 2 skipped" in rerun.stdout
    assert f"{output / 'good.nii.gz'} is the mask of another input named like good_0000.nii.gz" in rerun.stdout
    assert "Pass --overwrite to predict good_0000.nii.gz again" in rerun.stdout
    assert_unchanged(before_output, snapshot(output), "the output folder")

    replaced = run_cli(predict_argv(second, output, model.model_folder, "--overwrite"), model.env)
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr[-3000:]
    assert "3 volume(s) predicted, 0 already done, 0 skipped" in replaced.stdout
    assert changes(before_output, snapshot(output))["changed"] == ["good.nii.gz", "other.nii.gz", "same.nii.gz",
                                                             "summary.csv", "summary.json"]
    assert_unchanged(before_inputs, snapshot(second), "the input folder")
    # now each mask records its input: a plain rerun finds them all done
    again = run_cli(predict_argv(second, output, model.model_folder), model.env)
    assert again.returncode == 0 and "0 volume(s) predicted, 3 already done, 0 skipped" in again.stdout
    # ... but not for another model (here: the same one with a changed plans.json)
    other_model = tmp_path / "other_model"
    shutil.copytree(model.model_folder, other_model)
    (other_model / "plans.json").write_text((other_model / "plans.json").read_text() + "\n")
    before_output = snapshot(output)
    other = run_cli(predict_argv(second, output, other_model), model.env)
    assert other.returncode == 1 and "0 volume(s) predicted, 0 already done, 3 skipped" in other.stdout
    assert f"{output / 'same.nii.gz'} was predicted from same.nii.gz by another model" in other.stdout
    assert_unchanged(before_output, snapshot(output), "the output folder")


# -- item 7 ---------------------------------------------------------------------------------------------------------

def test_item7_masks_and_the_output_folder_get_the_users_umask(batch):
    """Under umask 027 every mask is 0640 (not tempfile's 0600, not 0644)."""
    for name in ("good.nii.gz", "same.nii.gz"):
        assert (batch.output / name).stat().st_mode & 0o777 == 0o640, name
    assert not [name for name in masks(batch.output) if name.startswith(".")], "a temporary file was left behind"


# -- item 9 ---------------------------------------------------------------------------------------------------------

def test_item9_truncated_nii_and_non_finite_volumes_are_named_and_skipped_unless_replaced(model, batch, tmp_path):
    done = batch.result
    assert "truncated.nii: is truncated" in done.stdout
    assert "nan_0000.nii.gz: 2 voxel(s) are NaN or infinite" in done.stdout
    assert "--non-finite replace" in done.stdout
    assert not (batch.output / "truncated.nii.gz").exists() and not (batch.output / "nan.nii.gz").exists()
    assert_sources_unchanged(batch)

    inputs = tmp_path / "nan_only"
    inputs.mkdir()
    shutil.copyfile(batch.inputs / "nan_0000.nii.gz", inputs / "nan_0000.nii.gz")
    before = snapshot(inputs)
    replaced = run_cli(predict_argv(inputs, tmp_path / "out", model.model_folder, "--non-finite", "replace"),
                       model.env)
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr[-3000:]
    assert "1 volume(s) predicted" in replaced.stdout
    assert "predicted after replacing NaN/inf voxels" in replaced.stdout and "nan_0000.nii.gz: 2 voxel(s)" in \
        replaced.stdout
    mask = sitk.ReadImage(str(tmp_path / "out" / "nan.nii.gz"))
    assert mask.GetSize() == (24, 24, 3)
    assert_unchanged(before, snapshot(inputs), "the input folder")


# -- item 13 --------------------------------------------------------------------------------------------------------

class _Planted:
    """Unpickling this object opens (creates) a file: the code a crafted checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_item13_a_checkpoint_that_needs_pickled_code_is_refused_before_nnunet_loads_it(model, tmp_path):
    crafted = tmp_path / "crafted_model"
    (crafted / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(model.model_folder / name, crafted / name)
    checkpoint = torch.load(model.model_folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    marker = tmp_path / "pwned"
    checkpoint["planted"] = _Planted(marker)
    torch.save(checkpoint, crafted / "fold_0" / "checkpoint_final.pth")
    # the file is a real threat: loading it the way nnU-Net's predictor does runs the planted code
    probe = tmp_path / "probe_marker"
    checkpoint["planted"] = _Planted(probe)
    torch.save(checkpoint, tmp_path / "probe.pth")
    torch.load(tmp_path / "probe.pth", weights_only=False)
    assert probe.exists()

    inputs = tmp_path / "volumes"
    inputs.mkdir()
    write_volume(inputs / "ct_0000.nii.gz", seed=31)
    before_inputs, before_model = snapshot(inputs), snapshot(crafted)
    done = run_cli(predict_argv(inputs, tmp_path / "masks", crafted), model.env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{crafted / 'fold_0' / 'checkpoint_final.pth'} is not a plain nnU-Net checkpoint" in done.stderr
    assert "could run code" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists(), "the planted code ran"
    assert not (tmp_path / "masks").exists(), "the output folder made for this run was left behind"
    assert_unchanged(before_inputs, snapshot(inputs), "the input folder")
    assert_unchanged(before_model, snapshot(crafted), "the model folder")


# -- item 14 --------------------------------------------------------------------------------------------------------

def test_item14_bad_outputs_devices_parts_and_folds_get_messages_before_the_model_is_loaded(model, tmp_path,
                                                                                         read_only_folder):
    """Each mistake: exit 2, one message naming the option or file and the fix, no traceback, nothing written.
    The model folder's checkpoint is not a checkpoint at all, so a message about it would show that the model
    was loaded before the output was checked."""
    broken_model = tmp_path / "model"
    (broken_model / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(model.model_folder / name, broken_model / name)
    broken_checkpoint = broken_model / "fold_0" / "checkpoint_final.pth"
    broken_checkpoint.write_bytes(b"not a checkpoint")
    inputs = tmp_path / "volumes"
    inputs.mkdir()
    write_volume(inputs / "ct_0000.nii.gz", seed=41)
    a_file = tmp_path / "masks.nii.gz"
    a_file.write_bytes(b"a file, not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    before = snapshot(tmp_path)
    output = tmp_path / "out"

    def refused(*extra: str, out: Path = output, expected: str) -> None:
        done = run_cli(predict_argv(inputs, out, broken_model, *extra), model.env)
        assert done.returncode == 2, (extra, done.stdout, done.stderr)
        assert expected in done.stderr, (extra, done.stderr)
        assert "Traceback" not in done.stderr and str(broken_checkpoint) not in done.stderr

    refused(out=read_only_folder, expected=f"cannot write into -o {read_only_folder}")
    refused(out=a_file, expected=f"-o {a_file} is a file, not a folder")
    refused("--num-parts", "0", expected="argument --num-parts: must be at least 1, got 0")
    refused("--part-id", "-1", expected="argument --part-id: must be 0 or more, got -1")
    refused("--num-parts", "2", "--part-id", "2", expected="argument --part-id: must be in 0..1 for --num-parts 2")
    refused("-f", "abc", expected="argument -f/--folds: invalid fold 'abc': folds are non-negative integers")
    refused("-f", "7", expected=f"{broken_model / 'fold_7' / 'checkpoint_final.pth'} is missing (folds with "
                                f"checkpoint_final.pth: 0)")
    if not torch.cuda.is_available():
        done = run_cli(["predict", "-i", str(inputs), "-o", str(output), "-m", str(broken_model), "-device", "cuda"],
                       model.env)
        assert done.returncode == 2
        assert "argument -device cuda: no CUDA GPU is available here" in done.stderr
        assert "use -device cpu" in done.stderr
    for missing_input, expected in ((tmp_path / "nowhere", "is not a folder"), (empty, "holds no .nii.gz or .nii")):
        done = run_cli(predict_argv(missing_input, output, broken_model), model.env)
        assert done.returncode == 2 and f"-i {missing_input} {expected}" in done.stderr, done.stderr
    assert_unchanged(before, snapshot(tmp_path), "the work folder")
    # a missing output folder passes (it is created), so the model is read: its broken checkpoint is named, and
    # the folders this run created are removed again
    done = run_cli(predict_argv(inputs, tmp_path / "new" / "out", broken_model), model.env)
    assert done.returncode == 2 and f"predict: {broken_checkpoint} " in done.stderr
    assert_unchanged(before, snapshot(tmp_path), "the work folder")


def test_a_3d_volume_model_is_sent_to_nnunet_instead_of_crashing(tmp_path, capsys):
    import json

    from nnunet_qpg.cli import main

    model = tmp_path / "Dataset703_KiTS19Volumes" / "nnUNetTrainerQPG__nnUNetPlans__3d_fullres"
    model.mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    (model / "fold_0").mkdir()
    import torch

    torch.save({"network_weights": {}, "trainer_name": "nnUNetTrainerQPG"}, model / "fold_0" / "checkpoint_final.pth")
    (model / "dataset.json").write_text(json.dumps({"conversion": {"task": "volume", "preset": "none", "window": None,
                                                                   "denoise": False, "size": None}}))
    import numpy as np
    import SimpleITK as sitk

    (tmp_path / "ct").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.int16)), str(tmp_path / "ct" / "a.nii.gz"))
    code = main(["predict", "-i", str(tmp_path / "ct"), "-o", str(tmp_path / "masks"), "-m", str(model),
                 "-device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "whole 3D volumes" in err and "nnUNetv2_predict" in err and "Traceback" not in err
