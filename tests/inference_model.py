"""Tiny QPG models trained by real nnU-Net commands, shared by the inference, export, report and overlay tests.

Synthetic KiTS19 -> `nnunet-qpg convert-kits19 --task both --size 32` (kidney Dataset701 and tumour Dataset702)
-> `nnUNetv2_plan_and_preprocess -c 2d` -> `nnUNetv2_train -tr nnUNetTrainerQPG_Issue5Tiny` (nnUNetTrainerQPG,
1 epoch of 2 iterations) on the CPU, with one export worker for nnU-Net's final validation (its default of 8
spawned workers costs minutes on 2 cores). The models live under pytest's session base folder; each is planned
and trained once per session, only when a test asks for it (finished steps are reused), so the tests that need
only the kidney model do not pay for the tumour model.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from nnunet_helpers import nnunet_env, planning_env, run_command, write_trainer_module

from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_kits19

DATASET_ID, DATASET = 701, "Dataset701_KiTS19Kidney2D"
TUMOR_DATASET_ID, TUMOR_DATASET = 702, "Dataset702_KiTS19Tumor2D"
TINY_TRAINER = "nnUNetTrainerQPG_Issue5Tiny"
TRAINER_SOURCE = f'''
from nnunet_qpg.trainers.nnUNetTrainerQPG import nnUNetTrainerQPG


class {TINY_TRAINER}(nnUNetTrainerQPG):
    """nnUNetTrainerQPG (QPGConv on the segmentation heads, LPP) trained just enough to have a checkpoint."""

    schedule_epochs = 1
    schedule_iterations_per_epoch = 2
    schedule_val_iterations_per_epoch = 1
'''


@dataclass
class TrainedModel:
    root: Path
    env: dict[str, str]
    kits19: Path
    raw_dataset: Path
    model_folder: Path


def nnunet_qpg_command() -> str:
    beside = Path(sys.executable).with_name("nnunet-qpg")
    return str(beside) if beside.exists() else "nnunet-qpg"


def _tiny_env(root: Path) -> dict[str, str]:
    env = {**nnunet_env(root, ext_trainer_dirs=[root / "test_trainers"]), "nnUNet_def_n_proc": "1"}
    write_trainer_module(root / "test_trainers", "issue5_tiny_trainers", TRAINER_SOURCE)
    return env


def _train_tiny_model(root: Path, env: dict[str, str], dataset_id: int, dataset: str) -> TrainedModel:
    kits19 = root / "kits19"
    # both datasets come from one conversion; the tumour dataset's dataset.json is written last
    if not (Path(env["nnUNet_raw"]) / TUMOR_DATASET / "dataset.json").is_file():
        make_synthetic_kits19(kits19, [0, 1, 2, 3, 180], seed=5, shape=(8, 48, 48))
        run_command([nnunet_qpg_command(), "convert-kits19", str(kits19), "--task", "both", "--size", "32",
                     "--workers", "1"], env)
    model_folder = Path(env["nnUNet_results"]) / dataset / f"{TINY_TRAINER}__nnUNetPlans__2d"
    trained = model_folder / "fold_0" / "checkpoint_final.pth"
    if not trained.is_file():
        if not (Path(env["nnUNet_preprocessed"]) / dataset / "nnUNetPlans.json").is_file():
            run_command(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "2d", "-np", "1",
                         "-npfp", "1"], planning_env(env))
        run_command(["nnUNetv2_train", str(dataset_id), "2d", "0", "-tr", TINY_TRAINER, "-device", "cpu"], env)
    assert trained.is_file(), f"training did not write {trained}"
    return TrainedModel(root, env, kits19, Path(env["nnUNet_raw"]) / dataset, model_folder)


def trained_qpg_model(root: Path) -> TrainedModel:
    """Train (once) and return the tiny QPG kidney model under `root`."""
    return _train_tiny_model(root, _tiny_env(root), DATASET_ID, DATASET)


def trained_qpg_tumor_model(root: Path) -> TrainedModel:
    """Train (once) and return the tiny QPG tumour model (Dataset702, kidney-region crops) under `root`."""
    return _train_tiny_model(root, _tiny_env(root), TUMOR_DATASET_ID, TUMOR_DATASET)


def trained_kidney_and_tumor_models(tmp_path_factory) -> tuple[TrainedModel, TrainedModel]:
    """The session's tiny kidney and tumour models (the two stages of predict-kits19)."""
    root = shared_root(tmp_path_factory)
    return trained_qpg_model(root), trained_qpg_tumor_model(root)


def shared_root(tmp_path_factory) -> Path:
    return Path(tmp_path_factory.getbasetemp()) / "issue5_qpg_model"


def without_nnunet_qpg(env: dict[str, str], blocker: Path) -> dict[str, str]:
    """`env` for stock nnU-Net that cannot import nnunet_qpg or torchquantum (both shadowed by failing stubs)."""
    for package in ("nnunet_qpg", "torchquantum"):
        (blocker / package).mkdir(parents=True, exist_ok=True)
        (blocker / package / "__init__.py").write_text(
            f"raise ImportError('{package} must not be needed to predict with an exported model')\n")
    env = dict(env)
    env.pop("nnUNet_extTrainer", None)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), *filter(None, [env.get("PYTHONPATH")])])
    return env


def assert_bad_volume_skipped(output: Path, done) -> None:
    """A batch over two good volumes and `broken.nii.gz`: exit 1, the broken file named, nothing left of it."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "broken.nii.gz" in done.stdout and "2 volume(s) predicted" in done.stdout
    assert not (output / "broken.nii.gz").exists()
    assert not [p for p in output.iterdir() if p.name.startswith(".")], "a temporary file was left behind"
