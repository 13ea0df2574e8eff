"""Export a QPG-trained nnU-Net model as a plain nnU-Net model: "QPG operates only during training".

The paper's QPG layers generate a kernel from VQC angles (Eqs. 6-9); once trained, that kernel is just a
tensor. Exporting therefore:

1. rebuilds the trained network exactly as nnUNetv2_predict does: the trainer class is found by the
   `trainer_name` stored in the checkpoint (nnU-Net's `recursive_find_trainer_class_by_name`, which searches
   `nnUNet_extTrainer`), its `build_network_architecture(...)` builds the QPG network, and the checkpoint's
   weights are loaded strictly;
2. bakes every QPG / adapter / LoRA layer into the plain convolution it replaced (`surgery.bake`);
3. checks that stock `nnUNetTrainer.build_network_architecture` loads the baked weights strictly, and that the
   baked network computes what the QPG network computes;
4. writes `OUT/<DatasetName>/nnUNetTrainer__<plans>__<configuration>/` with plans.json, dataset.json,
   dataset_fingerprint.json and fold_X/checkpoint_*.pth whose `trainer_name` is 'nnUNetTrainer'. OUT works as
   an `nnUNet_results` folder, so stock `nnUNetv2_predict -d ... -tr nnUNetTrainer` and
   `nnUNetv2_export_model_to_zip` use it with neither nnunet-qpg nor TorchQuantum installed.

The optimizer and grad-scaler states are not exported: they belong to the QPG parameters (angles), which the
exported model no longer has, so an exported checkpoint is for inference and `-pretrained_weights`, not `--c`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnunet_qpg.safe_io import save_torch_atomically
from nnunet_qpg.surgery import bake

STOCK_TRAINER = "nnUNetTrainer"
# what stock nnUNetTrainer.__init__ accepts; QPG trainers must not add init arguments nnU-Net cannot pass
STOCK_INIT_ARGS = ("plans", "configuration", "fold", "dataset_json", "device")
FOLDER_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
# nnUNetv2_export_model_to_zip requires these in every fold; the cross-validation results stay valid because the
# exported network computes what the QPG network computes
FOLD_SIDE_FILES = ("progress.png", "validation/summary.json")


class ExportError(Exception):
    """A model folder that cannot be exported; the message names the file and the fix."""


@dataclass
class ExportResult:
    model_folder: Path
    folds: list[str]
    baked_layers: list[str]
    source_trainer: str
    max_abs_difference: float = 0.0
    checkpoints: list[str] = field(default_factory=list)
    missing_for_zip: list[str] = field(default_factory=list)  # files nnUNetv2_export_model_to_zip will ask for


def build_network(trainer_name: str, plans: dict, dataset_json: dict, configuration: str) -> nn.Module:
    """The network `trainer_name` builds for inference, made by nnU-Net's own machinery (as the predictor does)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    if trainer_class is None:
        raise ExportError(
            f"trainer class {trainer_name!r} (stored in the checkpoint) was not found in nnU-Net nor in "
            f"nnUNet_extTrainer={os.environ.get('nnUNet_extTrainer', '')!r}; run "
            f"`export nnUNet_extTrainer=$(nnunet-qpg trainers-path)` (plus the folder of your own trainer files)"
        )
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    return trainer_class.build_network_architecture(
        plans_manager, configuration_manager, num_inputs, num_outputs, enable_deep_supervision=False
    )


def _load_strict(network: nn.Module, weights: dict, what: str) -> None:
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise ExportError(f"{what}: the weights do not fit the network the trainer builds: {error}") from None


def _probe_difference(qpg_network: nn.Module, baked: nn.Module, patch_size: list[int], channels: int) -> float:
    """Largest output difference between the QPG and the baked network on a random patch (should be ~1e-6)."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, channels, *patch_size, generator=generator)
    qpg_network.eval()
    baked.eval()
    with torch.no_grad():
        return float((qpg_network(probe) - baked(probe)).abs().max())


def exported_model_folder(model_folder: Path, results_root: Path) -> Path:
    """Where the export of `model_folder` goes under `results_root`: <DatasetName>/nnUNetTrainer__<plans>__<cfg>."""
    parts = model_folder.name.split("__")  # nnU-Net names it {trainer}__{plans identifier}__{configuration}
    if len(parts) != 3 or not all(parts):
        raise ExportError(f"{model_folder} is not an nnU-Net model folder name (TRAINER__PLANS__CONFIGURATION); "
                          f"give e.g. $nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainerQPG__nnUNetPlans__2d")
    return results_root / model_folder.parent.name / f"{STOCK_TRAINER}__{parts[1]}__{parts[2]}"


def export_model(model_folder: Path | str, results_root: Path | str,
                 checkpoint_names: tuple[str, ...] = ("checkpoint_final.pth", "checkpoint_best.pth"),
                 check_tolerance: float = 1e-4) -> ExportResult:
    """Bake and write every fold of `model_folder` under `results_root` (see the module docstring)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model_folder, results_root = Path(model_folder), Path(results_root)
    for name in ("plans.json", "dataset.json"):
        if not (model_folder / name).is_file():
            raise ExportError(f"{model_folder / name} is missing: give a trained nnU-Net model folder "
                              f"(holding plans.json, dataset.json and fold_X/)")
    target = exported_model_folder(model_folder, results_root)
    if target.resolve() == model_folder.resolve():
        raise ExportError(f"{target} is the model folder itself; export into another results folder")
    plans = json.loads((model_folder / "plans.json").read_text())
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    fold_folders = sorted(p for p in model_folder.glob("fold_*") if p.is_dir())
    if not any((f / name).is_file() for f in fold_folders for name in checkpoint_names):
        raise ExportError(f"no fold_X/{' or '.join(checkpoint_names)} in {model_folder}: train the model first")

    target.mkdir(parents=True, exist_ok=True)
    for name in FOLDER_FILES:
        if (model_folder / name).is_file():
            shutil.copyfile(model_folder / name, target / name)
    result = ExportResult(target, [], [], source_trainer="")
    for fold in fold_folders:
        for checkpoint_name in checkpoint_names:
            source = fold / checkpoint_name
            if not source.is_file():
                continue
            checkpoint = torch.load(source, map_location="cpu", weights_only=False)
            trainer_name = checkpoint["trainer_name"]
            configuration = checkpoint["init_args"]["configuration"]
            network = build_network(trainer_name, plans, dataset_json, configuration)
            _load_strict(network, checkpoint["network_weights"], f"{source} ({trainer_name})")
            network.eval()
            baked = build_network(trainer_name, plans, dataset_json, configuration)
            baked.load_state_dict(checkpoint["network_weights"], strict=True)
            baked_names = bake(baked)
            plain = build_network(STOCK_TRAINER, plans, dataset_json, configuration)
            _load_strict(plain, baked.state_dict(), f"baked {source}: stock {STOCK_TRAINER}")

            configuration_manager = PlansManager(plans).get_configuration(configuration)
            channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {0: ""})))
            difference = _probe_difference(network, plain, list(configuration_manager.patch_size), channels)
            if difference > check_tolerance:
                raise ExportError(f"{source}: the baked network differs from the QPG network by {difference:.3g} "
                                  f"(> {check_tolerance}); this is a bug in bake(), please report it")

            exported = {
                "network_weights": plain.state_dict(),
                "init_args": {key: checkpoint["init_args"][key] for key in STOCK_INIT_ARGS
                              if key in checkpoint["init_args"]},
                "trainer_name": STOCK_TRAINER,
                "inference_allowed_mirroring_axes": checkpoint.get("inference_allowed_mirroring_axes"),
                "current_epoch": checkpoint.get("current_epoch"),
                "logging": checkpoint.get("logging"),
                "_best_ema": checkpoint.get("_best_ema"),
                "exported_from": {"trainer_name": trainer_name, "baked_layers": baked_names,
                                  "source": str(source.resolve())},
            }
            (target / fold.name).mkdir(exist_ok=True)
            save_torch_atomically(exported, target / fold.name / checkpoint_name)
            result.source_trainer = trainer_name
            result.baked_layers = baked_names
            result.max_abs_difference = max(result.max_abs_difference, difference)
            result.checkpoints.append(f"{fold.name}/{checkpoint_name}")
            if fold.name not in result.folds:
                result.folds.append(fold.name)
        for name in FOLD_SIDE_FILES:
            if (fold / name).is_file() and (target / fold.name).is_dir():
                (target / fold.name / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(fold / name, target / fold.name / name)
    for crossval in model_folder.glob("crossval_results_folds_*"):
        shutil.copytree(crossval, target / crossval.name, dirs_exist_ok=True)
    result.missing_for_zip = [f"{fold}/validation/summary.json" for fold in result.folds
                              if not (target / fold / "validation" / "summary.json").is_file()]
    return result
