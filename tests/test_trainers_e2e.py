"""The QPG trainers through nnU-Net's own commands, as real subprocesses on a tiny 2D dataset (CPU).

One dataset is planned per module; short variants of the shipped trainers (1 epoch of 2 iterations) live in a
temporary folder that ``nnUNet_extTrainer`` lists before this repository's ``trainers/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_helpers import (make_tiny_2d_dataset, nnunet_env, plan_and_preprocess, run_command,
                            write_trainer_module)

pytestmark = pytest.mark.slow

DATASET_ID = 901
DATASET_NAME = "Dataset901_TinySquares"
NUM_CASES = 8
SIZE = 32  # nnU-Net plans a 4-stage PlainConvUNet (32..256 features) for 32x32: fast on 2 cores

SHORT_VARIANTS = '''
"""Short variants of the shipped trainers for the tests: 1 epoch (QPG_TEST_EPOCHS) of 2 iterations."""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_qpg.trainers.nnUNetTrainerConvLoRA import nnUNetTrainerConvLoRA
from nnunet_qpg.trainers.nnUNetTrainerQPG import nnUNetTrainerQPG
from nnunet_qpg.trainers.nnUNetTrainerQPGA import nnUNetTrainerQPGA
from nnunet_qpg.trainers.nnUNetTrainerQPG_Shots import nnUNetTrainerQPG_Noisy
from nnunet_qpg.trainers.nnUNetTrainerQLayer import nnUNetTrainerQLayer

EPOCHS = int(os.environ.get("QPG_TEST_EPOCHS", "1"))


class Short:
    schedule_epochs = EPOCHS
    schedule_iterations_per_epoch = 2
    schedule_val_iterations_per_epoch = 1


class nnUNetTrainerQPG_Test(Short, nnUNetTrainerQPG):
    pass


class nnUNetTrainerQPGA_Test(Short, nnUNetTrainerQPGA):
    pass


class nnUNetTrainerConvLoRA_Test(Short, nnUNetTrainerConvLoRA):
    pass


class nnUNetTrainerQPG_Noisy_Test(Short, nnUNetTrainerQPG_Noisy):
    pass


class nnUNetTrainerQLayer_Test(Short, nnUNetTrainerQLayer):
    pass


class nnUNetTrainerQPG_BadPattern(Short, nnUNetTrainerQPG):
    qpg_targets = ("decoder.seg_layers.*", "decoder.no_such_block.*")


class nnUNetTrainerQPG_BadStrategy(Short, nnUNetTrainerQPG):
    qpg_post = "cosine"


class nnUNetTrainer_Test(nnUNetTrainer):
    """The classical baseline, as short."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        # nnU-Net records these exact argument names in the checkpoint: no *args here
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1
'''


class Planned:
    """The planned tiny dataset: folders, environment, helpers to train and predict."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ext = root / "ext_trainers"
        write_trainer_module(self.ext, "qpg_test_variants", SHORT_VARIANTS)
        self.env = nnunet_env(root, [self.ext])
        self.raw = make_tiny_2d_dataset(root / "raw", DATASET_ID, NUM_CASES, SIZE)
        plan_and_preprocess(self.env, DATASET_ID)
        self.inputs = root / "predict_in"
        self.inputs.mkdir()
        for case in (0, 1):
            name = f"case_{case:03d}_0000.nii.gz"
            (self.inputs / name).write_bytes((self.raw / "imagesTr" / name).read_bytes())

    def fold_dir(self, trainer: str) -> Path:
        return self.root / "results" / DATASET_NAME / f"{trainer}__nnUNetPlans__2d" / "fold_0"

    def train(self, trainer: str, *extra: str, env: dict | None = None, check: bool = True):
        return run_command(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", trainer, "-device", "cpu",
                            *extra], env or self.env, check=check)

    def predict(self, trainer: str, output: Path) -> list[Path]:
        run_command(["nnUNetv2_predict", "-i", str(self.inputs), "-o", str(output), "-d", str(DATASET_ID),
                     "-c", "2d", "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"], self.env)
        return sorted(output.glob("case_*.nii.gz"))


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def settings(planned: Planned, trainer: str) -> dict:
    return json.loads((planned.fold_dir(trainer) / "qpg_settings.json").read_text())


def assert_masks(paths: list[Path]) -> None:
    assert [p.name for p in paths] == ["case_000.nii.gz", "case_001.nii.gz"]
    for path in paths:
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert mask.shape == (SIZE, SIZE)
        assert set(np.unique(mask).tolist()) <= {0, 1}


def strict_predictor_load(planned: Planned, trainer: str, monkeypatch) -> torch.nn.Module:
    """What nnUNetv2_predict does: find the trainer by the checkpoint's name, build, load_state_dict strictly."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(key, planned.env[key])
    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, verbose=False)
    predictor.initialize_from_trained_model_folder(str(planned.fold_dir(trainer).parent), use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    return predictor.network


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Planned:
    return Planned(tmp_path_factory.mktemp("nnunet_qpg_trainers"))


@pytest.fixture(scope="module")
def baseline_checkpoint(planned: Planned) -> Path:
    planned.train("nnUNetTrainer_Test")
    return planned.fold_dir("nnUNetTrainer_Test") / "checkpoint_final.pth"


def test_qpg_trains_resumes_and_predicts(planned: Planned, tmp_path: Path, monkeypatch) -> None:
    trainer = "nnUNetTrainerQPG_Test"
    first = planned.train(trainer)
    fold = planned.fold_dir(trainer)
    checkpoint = load_checkpoint(fold / "checkpoint_final.pth")
    weights = checkpoint["network_weights"]
    heads = sorted({k.rsplit(".", 1)[0] for k in weights if k.endswith(".theta")})
    assert heads == ["decoder.seg_layers.0", "decoder.seg_layers.1", "decoder.seg_layers.2"]
    assert "decoder.seg_layers.2.weight" not in weights  # the kernel is generated, not stored
    assert not any(k.endswith(".theta") and not k.startswith("decoder.seg_layers.") for k in weights)
    assert checkpoint["current_epoch"] == 1

    # the parameter table in the log, the settings beside the checkpoint
    assert "QPG layers of nnUNetTrainerQPG_Test" in first.stdout and "decoder.seg_layers.2  QPGConv" in first.stdout
    saved = settings(planned, trainer)
    assert saved["qpg"]["mode"] == "replace" and saved["qpg"]["settings"]["post"] == "lpp"
    assert [layer["name"] for layer in saved["qpg"]["layers"]] == heads
    assert saved["trainable_parameters"] == saved["qpg"]["trainable_after"] < saved["qpg"]["trainable_before"]

    # --c resumes from the checkpoint: epoch 1 runs, epoch 0 does not run again
    resumed = planned.train(trainer, "--c", env={**planned.env, "QPG_TEST_EPOCHS": "2"})
    assert "Epoch 1" in resumed.stdout and "Epoch 0" not in resumed.stdout
    after = load_checkpoint(fold / "checkpoint_final.pth")
    assert after["current_epoch"] == 2
    assert not torch.equal(after["network_weights"]["decoder.seg_layers.2.theta"], weights["decoder.seg_layers.2.theta"])

    assert_masks(planned.predict(trainer, tmp_path / "pred_qpg"))
    network = strict_predictor_load(planned, trainer, monkeypatch)
    assert type(network.decoder.seg_layers[2]).__name__ == "QPGConv"


def test_shots_parameter_shift_and_noise_train_through_nnunet_and_predict(planned: Planned, tmp_path: Path) -> None:
    trainer = "nnUNetTrainerQPG_Noisy_Test"
    planned.train(trainer)
    saved = settings(planned, trainer)["qpg"]["settings"]
    assert saved["shots"] == 1000 and saved["gradient"] == "parameter-shift"
    assert saved["noise"]["readout_error"] == [0.02, 0.02] and saved["noise"]["two_qubit_depolarizing"] == 0.01
    weights = load_checkpoint(planned.fold_dir(trainer) / "checkpoint_final.pth")["network_weights"]
    assert all(torch.isfinite(weights[f"decoder.seg_layers.{i}.theta"]).all() for i in range(3))
    assert_masks(planned.predict(trainer, tmp_path / "pred_noisy"))
    exported = run_command(["nnunet-qpg", "export", str(planned.fold_dir(trainer).parent), str(tmp_path / "baked"),
                            "-f", "0"], planned.env)
    assert "3 layer(s) trained as a device would run them" in exported.stdout
    assert "baked from the exact distribution" in exported.stdout


def test_data_path_circuits_train_predict_and_refuse_export(planned: Planned, tmp_path: Path, monkeypatch) -> None:
    trainer = "nnUNetTrainerQLayer_Test"
    log = planned.train(trainer).stdout
    block = "encoder.stages.3.1"  # appended to the last stage of the 4-stage PlainConvUNet (bottleneck 4x4)
    assert f"data-path circuits at {block}: 5 circuit(s) x 5 qubits, depth 2, amplitude embedding" in log
    assert "circuit executions per forward pass: 80 (4x4 bottleneck voxels x 5)" in log
    assert "circuit executions per predicted 32x32 image: 320 (1 patch(es) x 4 mirrorings" in log
    saved = settings(planned, trainer)
    assert saved["qpg"] is None
    (data_path,) = saved["data_path"]
    assert data_path["name"] == block and data_path["settings"]["embedding"] == "amplitude"
    assert data_path["parameters"] == {"projection": 256 * 160 + 160, "circuit_weights": 100, "back": 25 * 256 + 256}
    assert data_path["cost"]["executions_per_image"] == 320

    weights = load_checkpoint(planned.fold_dir(trainer) / "checkpoint_final.pth")["network_weights"]
    assert weights[f"{block}.quantum.weights"].shape == (5, 2, 2, 5)
    assert weights[f"{block}.back.weight"].abs().sum() > 0  # the map back left zero: the circuits were trained in
    assert_masks(planned.predict(trainer, tmp_path / "pred_qlayer"))
    network = strict_predictor_load(planned, trainer, monkeypatch)
    assert type(network.encoder.stages[3][1]).__name__ == "QuantumBottleneck"

    target = tmp_path / "baked"
    refused = run_command(["nnunet-qpg", "export", str(planned.fold_dir(trainer).parent), str(target), "-f", "0"],
                          planned.env, check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "variational circuits in the data path (encoder.stages.3.1.quantum" in refused.stderr
    assert "cannot be baked" in refused.stderr and "Traceback" not in refused.stderr
    assert not target.exists()

    info = run_command(["nnunet-qpg", "info", "-d", str(DATASET_ID), "-c", "2d", "-tr", "nnUNetTrainerQLayerAngle",
                        "--image-size", "256", "256"], planned.env).stdout
    assert "1 circuit(s) x 4 qubits, depth 2, angle embedding" in info
    # 256x256 with 32x32 patches at step 0.5: 15 x 15 tiles, 4 mirrorings, 4x4 voxels x 1 circuit
    assert "circuit executions per predicted 256x256 image: 14,400 (225 patch(es) x 4 mirrorings" in info


@pytest.mark.parametrize("trainer, layer_type, added", [
    ("nnUNetTrainerQPGA_Test", "QPGAConv", "theta"),
    ("nnUNetTrainerConvLoRA_Test", "ConvLoRA", "lora_A"),
])
def test_adapters_fine_tune_from_pretrained_weights(planned: Planned, baseline_checkpoint: Path, tmp_path: Path,
                                                    monkeypatch, trainer: str, layer_type: str, added: str) -> None:
    planned.train(trainer, "-pretrained_weights", str(baseline_checkpoint))
    baseline = load_checkpoint(baseline_checkpoint)["network_weights"]
    weights = load_checkpoint(planned.fold_dir(trainer) / "checkpoint_final.pth")["network_weights"]

    # the adapters wrap the pretrained kernels, which stayed frozen through training
    for key in ("encoder.stages.0.0.convs.0.conv.weight", "decoder.stages.2.convs.1.conv.weight",
                "decoder.transpconvs.0.weight"):
        assert torch.equal(weights[key], baseline[key]), key
    assert f"encoder.stages.0.0.convs.0.conv.{added}" in weights
    assert f"decoder.transpconvs.0.{added}" in weights
    assert not any(k.startswith("decoder.seg_layers.") and k.endswith(added) for k in weights)

    saved = settings(planned, trainer)
    baseline_trainable = saved["qpg"]["trainable_before"]  # the plain network: what nnUNetTrainer trains
    # nnU-Net's state dicts hold each conv / norm twice (.conv / .norm and .all_modules.N), the encoder twice
    # (encoder. and decoder.encoder.)
    assert baseline_trainable == sum(v.numel() for k, v in baseline.items()
                                     if ".all_modules." not in k and not k.startswith("decoder.encoder."))
    assert {layer["layer_type"] for layer in saved["qpg"]["layers"]} == {layer_type}
    assert len(saved["qpg"]["layers"]) == 17  # 8 encoder + 6 decoder stage convs + 3 transposed convs
    assert saved["trainable_parameters"] < 0.25 * baseline_trainable

    if layer_type == "QPGAConv":
        assert_masks(planned.predict(trainer, tmp_path / "pred"))
    network = strict_predictor_load(planned, trainer, monkeypatch)
    assert type(network.encoder.stages[0][0].convs[0].conv).__name__ == layer_type


def test_new_trainer_file_places_qpg_on_the_named_layers(planned: Planned, tmp_path: Path) -> None:
    folder = tmp_path / "my_trainers"
    chosen = ["decoder.stages.0.convs.1.conv", "decoder.transpconvs.1"]
    run_command(["nnunet-qpg", "new-trainer", "nnUNetTrainerQPGChosen",
                 "--targets", *chosen, "--post", "sst", "--epochs", "1", "--iterations-per-epoch", "2",
                 "-o", str(folder)], planned.env)
    env = {**planned.env, "nnUNet_extTrainer": os.pathsep.join([str(folder), planned.env["nnUNet_extTrainer"]])}
    planned.train("nnUNetTrainerQPGChosen", env=env)
    saved = settings(planned, "nnUNetTrainerQPGChosen")
    assert [layer["name"] for layer in saved["qpg"]["layers"]] == chosen
    assert saved["qpg"]["settings"]["post"] == "sst"
    weights = load_checkpoint(planned.fold_dir("nnUNetTrainerQPGChosen") / "checkpoint_final.pth")["network_weights"]
    # state dicts list nnU-Net's second reference (.all_modules.0) too
    swapped = {k.rsplit(".", 1)[0].replace(".all_modules.0", ".conv") for k in weights if k.endswith(".theta")}
    assert swapped == set(chosen)


@pytest.mark.parametrize("trainer, expected", [
    ("nnUNetTrainerQPG_BadPattern", ["'decoder.no_such_block.*' matches no module", "encoder.stages.0.0.convs.0.conv",
                                     "decoder.seg_layers.2", "qpg_variants_file"]),
    ("nnUNetTrainerQPG_BadStrategy", ["qpg_post='cosine'", "'rce', 'lpp', 'sst'", "qpg_variants_file"]),
])
def test_wrong_setting_stops_before_the_first_epoch(planned: Planned, trainer: str, expected: list[str]) -> None:
    done = planned.train(trainer, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Epoch 0" not in output
    for text in expected:
        assert text.replace("qpg_variants_file", "qpg_test_variants.py") in output, (text, output[-3000:])
