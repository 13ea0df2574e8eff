"""nnU-Net itself accepts the converted dataset: real nnUNetv2_plan_and_preprocess with integrity checks."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from nnunet_qpg.cli import main as cli_main
from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_kits19
from nnunet_helpers import nnunet_command

DATASET = "Dataset701_KiTS19Kidney2D"


@pytest.mark.slow
def test_plan_and_preprocess_verifies_the_converted_dataset(tmp_path, monkeypatch):
    raw, preprocessed, results = tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results"
    make_synthetic_kits19(tmp_path / "kits19", [0, 1, 2, 3, 4, 180], seed=21, shape=(10, 96, 96))
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(preprocessed),
           "nnUNet_results": str(results)}
    env.pop("nnUNet_n_proc_DA", None)  # the planner passes it to torch.set_num_threads and crashes on 0

    # the converter reads both from the environment: default output, and where splits_final.json goes
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    assert cli_main(["convert-kits19", str(tmp_path / "kits19"), "--workers", "1"]) == 0
    folds = json.loads((preprocessed / DATASET / "splits_final.json").read_text())

    done = subprocess.run(
        [nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", "701", "-c", "2d", "--verify_dataset_integrity",
         "-np", "1", "-npfp", "1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plans = json.loads((preprocessed / DATASET / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["2d"]["patch_size"] == [256, 256]
    num_training = json.loads((raw / DATASET / "dataset.json").read_text())["numTraining"]
    assert len(list((preprocessed / DATASET / "nnUNetPlans_2d").glob("*_seg.b2nd"))) == num_training
    # planning keeps our case-grouped folds, which nnU-Net's trainer then uses instead of its own split
    assert json.loads((preprocessed / DATASET / "splits_final.json").read_text()) == folds
