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
4. writes `OUT/<DatasetName>/<SourceTrainer>_baked__<plans>__<configuration>/` with plans.json, dataset.json,
   dataset_fingerprint.json, fold_X/checkpoint_*.pth whose `trainer_name` is 'nnUNetTrainer', and
   `nnunet_qpg_export.json` (which source it was made from). OUT works as an `nnUNet_results` folder:
   nnU-Net finds a model folder by its name (`-tr nnUNetTrainerQPG_baked`) and the network class by the
   checkpoint's `trainer_name`, so stock `nnUNetv2_predict` and `nnUNetv2_export_model_to_zip` use it with
   neither nnunet-qpg nor TorchQuantum installed.

Data safety. The export folder is named after its source, so exports of QPG, QPGA and ConvLoRA models of one
configuration, and a user's own `nnUNetTrainer` model, never share a folder, and OUT may be `$nnUNet_results`
itself. The export is built in a staging folder and swapped in whole (`safe_io.replace_folder`): re-exporting
the same source replaces its earlier export (no stale folds), and a folder under the export's name that is not
an earlier export of the same source is refused untouched. The source model is only read: `-chk` takes file
names (never paths), the export folder may not lie inside the model folder, and every checkpoint is opened with
`safe_io.load_checkpoint` (data only; a checkpoint that needs pickled code is refused, never run).

The optimizer and grad-scaler states are not exported: they belong to the QPG parameters (angles), which the
exported model no longer has, so an exported checkpoint is for inference and `-pretrained_weights`, not `--c`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from nnunet_qpg.inference import missing_model_files
from nnunet_qpg.safe_io import (
    missing_folders,
    remove_empty_folders,
    check_output_location,
    copy_file_atomically,
    load_checkpoint,
    make_output_folder,
    replace_folder,
    save_torch_atomically,
    staging_folder,
    write_json_atomically,
)

if TYPE_CHECKING:  # torch is imported when a model is exported, so argument mistakes are answered at once
    from torch import nn

__all__ = [
    "DEFAULT_CHECKPOINTS",
    "EXPORT_MANIFEST",
    "EXPORT_SUFFIX",
    "ExportError",
    "ExportResult",
    "ModelName",
    "build_network",
    "checkpoint_file_name",
    "checkpoint_origin",
    "enclosing_model_folder",
    "export_model",
    "exported_model_folder",
    "exported_trainer_name",
    "fold_folder_name",
    "parse_model_folder",
    "read_model_json",
    "select_checkpoints",
]

STOCK_TRAINER = "nnUNetTrainer"
EXPORT_SUFFIX = "_baked"  # <SourceTrainer>_baked: the `-tr` name of the export, never a real trainer's name
EXPORT_MANIFEST = "nnunet_qpg_export.json"
MANIFEST_FORMAT = 1
DEFAULT_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
# what stock nnUNetTrainer.__init__ accepts; QPG trainers must not add init arguments nnU-Net cannot pass
STOCK_INIT_ARGS = ("plans", "configuration", "fold", "dataset_json", "device")
FOLDER_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
# nnUNetv2_export_model_to_zip requires these in every fold; the cross-validation results stay valid because the
# exported network computes what the QPG network computes
FOLD_SIDE_FILES = ("progress.png", "validation/summary.json")
CROSSVAL_PREFIX = "crossval_results_folds_"
_FOLD = re.compile(r"^(?:fold_)?(\d+|all)$")


class ExportError(Exception):
    """A model folder or option that cannot be exported; the message names the file or option and the fix."""


@dataclass(frozen=True)
class ModelName:
    """What nnU-Net reads from a model folder's path: <DatasetName>/<trainer>__<plans>__<configuration>."""

    dataset: str
    trainer: str
    plans: str
    configuration: str


@dataclass
class ExportResult:
    model_folder: Path
    folds: list[str]
    baked_layers: list[str]
    source_trainer: str
    exported_trainer: str = ""
    max_abs_difference: float = 0.0
    checkpoints: list[str] = field(default_factory=list)
    missing_for_zip: list[str] = field(default_factory=list)  # files nnUNetv2_export_model_to_zip will ask for
    skipped_folds: list[str] = field(default_factory=list)  # fold folders without any of the checkpoints
    replaced_earlier_export: bool = False
    # layers trained with shots, parameter shift or noise: "name (settings)"; baked from their exact distribution
    measured_layers: list[str] = field(default_factory=list)


# -- names -------------------------------------------------------------------------------------------------------

def parse_model_folder(model_folder: Path | str) -> ModelName:
    """Dataset, trainer, plans and configuration of an nnU-Net model folder, read from its path as nnU-Net does."""
    from nnunetv2.utilities.file_path_utilities import convert_identifier_to_trainer_plans_config

    folder = Path(os.path.abspath(model_folder))  # "." and ".." named, links kept (nnU-Net goes by these names)
    parts = convert_identifier_to_trainer_plans_config(folder.name)
    if len(parts) != 3 or not all(parts):
        raise ExportError(f"{model_folder} is not an nnU-Net model folder (named TRAINER__PLANS__CONFIGURATION); "
                          f"give e.g. $nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainerQPG__nnUNetPlans__2d")
    return ModelName(folder.parent.name, *parts)


def exported_trainer_name(source_trainer: str) -> str:
    """The `-tr` name of the export of a model trained by `source_trainer` (its folder name's first part)."""
    return f"{source_trainer}{EXPORT_SUFFIX}"


def exported_model_folder(model_folder: Path | str, results_root: Path | str) -> Path:
    """Where the export of `model_folder` goes: <results_root>/<DatasetName>/<trainer>_baked__<plans>__<cfg>."""
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

    name = parse_model_folder(model_folder)
    identifier = convert_trainer_plans_config_to_identifier(exported_trainer_name(name.trainer), name.plans,
                                                            name.configuration)
    return Path(results_root) / name.dataset / identifier


def fold_folder_name(fold: str | int) -> str:
    """`0` / `fold_0` / `all` -> the fold folder name nnU-Net uses (`fold_0`, `fold_all`)."""
    match = _FOLD.match(str(fold).strip())
    if not match:
        raise ExportError(f"-f {fold}: a fold is a number (0, 1, ...) or 'all', as for nnUNetv2_train; "
                          f"e.g. -f 0 1")
    value = match.group(1)
    return f"fold_{value if value == 'all' else int(value)}"


def checkpoint_file_name(value: str) -> str:
    """A `-chk` value as the checkpoint file name it must be; a path is refused (see ExportError's message).

    `-chk` names files inside each fold_X folder, and the export writes a file of the same name into its own
    fold_X. A path would name the source file itself (or any file), so it is never accepted.
    """
    seps = {os.sep, os.altsep or os.sep, "/"}
    if value in ("", ".", "..") or any(sep in value for sep in seps):
        suggestion = Path(value).name if Path(value).name not in ("", ".", "..") else "checkpoint_final.pth"
        parent = Path(value).parent.name
        fold = f" -f {parent.removeprefix('fold_')}" if _FOLD.match(parent) and parent.startswith("fold_") else ""
        raise ExportError(f"-chk {value!r} is not a checkpoint file name; -chk takes the NAME of a checkpoint inside "
                          f"each fold_X folder of the model (a path is refused: the export never writes where a "
                          f"path points). Give -chk {suggestion}{fold}")
    return value


# -- building the networks ------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _trainer_class(trainer_name: str):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    chatter = io.StringIO()  # nnU-Net narrates its search; shown only when it fails
    try:
        with contextlib.redirect_stdout(chatter):
            return recursive_find_trainer_class_by_name(trainer_name)
    except (RuntimeError, AssertionError):
        raise ExportError(
            f"trainer class {trainer_name!r} (stored in the checkpoint) was not found in nnU-Net nor in "
            f"nnUNet_extTrainer={os.environ.get('nnUNet_extTrainer', '')!r}; run "
            f"`export nnUNet_extTrainer=/folder/of/your/trainer/files` (nnunet-qpg adds its own trainers)"
        ) from None


def build_network(trainer_name: str, plans: dict, dataset_json: dict, configuration: str) -> nn.Module:
    """The network `trainer_name` builds for inference, made by nnU-Net's own machinery (as the predictor does)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    trainer_class = _trainer_class(trainer_name)
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    return trainer_class.build_network_architecture(
        plans_manager, configuration_manager, num_inputs, num_outputs, enable_deep_supervision=False
    )


def refuse_data_path_circuits(network: nn.Module, trainer_name: str, checkpoint_path: Path) -> None:
    """ExportError if ``network`` holds circuits in its data path (SPEC section 8), which no bake can remove."""
    from nnunet_qpg.quantum_bottleneck import find_quantum_layers

    found = find_quantum_layers(network)
    if found:
        names = ", ".join(name for name, _ in found)
        raise ExportError(
            f"{checkpoint_path}: {trainer_name} puts variational circuits in the data path ({names}). Their input "
            f"is the features of every voxel, so they must run for every predicted image and cannot be baked into "
            f"convolution weights; QPG's circuits have no input and generate fixed kernels, which is what export "
            f"bakes. Predict this model with nnUNetv2_predict -tr {trainer_name} (with nnunet-qpg installed), or "
            f"train a QPG trainer (e.g. nnUNetTrainerQPG) for a model that exports to stock nnU-Net.")


def _load_strict(network: nn.Module, weights: dict, what: str) -> None:
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]  # the rest lists every mismatching tensor
        raise ExportError(f"{what}: the weights do not fit the network the trainer builds: {first}") from None


def checkpoint_origin(checkpoint: dict, checkpoint_path: Path, plans: dict) -> tuple[str, str]:
    """(trainer name, configuration) of a checkpoint written by nnUNetv2_train for the model of ``plans``;
    ExportError naming the file otherwise."""
    init_args = checkpoint.get("init_args")
    trainer_name = checkpoint.get("trainer_name")
    if not isinstance(trainer_name, str) or not isinstance(init_args, dict) or "configuration" not in init_args:
        raise ExportError(f"{checkpoint_path} is not a checkpoint written by nnUNetv2_train (no trainer_name or "
                          f"init_args['configuration']); give a fold_X/checkpoint_*.pth of a trained model")
    configuration = init_args["configuration"]
    if configuration not in plans.get("configurations", {}):
        raise ExportError(f"{checkpoint_path}: configuration {configuration!r} is not in the model's plans.json; "
                          f"the checkpoint belongs to another model folder")
    return trainer_name, configuration


def _probe_difference(qpg_network: nn.Module, baked: nn.Module, patch_size: list[int], channels: int) -> float:
    """Largest output difference between the QPG and the baked network on a random patch (should be ~1e-6)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, channels, *patch_size, generator=generator)
    qpg_network.eval()
    baked.eval()
    with torch.no_grad():
        return float((qpg_network(probe) - baked(probe)).abs().max())


# -- what to export -----------------------------------------------------------------------------------------------

def _fold_sort_key(folder: Path) -> tuple:
    suffix = folder.name.removeprefix("fold_")
    return (1, 0) if suffix == "all" else (0, int(suffix))


def read_model_json(path: Path, what: str) -> dict:
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ExportError(f"{path} cannot be read as JSON ({error}); the model folder's {what} is damaged: copy it "
                          f"again from $nnUNet_preprocessed or the original training") from None
    if not isinstance(content, dict):
        raise ExportError(f"{path} is not an nnU-Net {what} (not a JSON object)")
    return content


def select_checkpoints(model_folder: Path, folds: Sequence[str | int] | None,
                        names: Sequence[str] | None) -> tuple[dict[str, list[str]], list[str]]:
    """fold folder name -> checkpoint names to export (in order), and the fold folders skipped.

    Default names are exported where present; names given with -chk must be in every chosen fold. Default folds
    are all fold_X folders holding a checkpoint; folds given with -f must hold one.
    """
    explicit_names = names is not None
    names = list(dict.fromkeys(checkpoint_file_name(n) for n in names)) if explicit_names else list(DEFAULT_CHECKPOINTS)
    fold_folders = sorted((p for p in model_folder.glob("fold_*") if p.is_dir() and _FOLD.match(p.name)),
                          key=_fold_sort_key)
    present = {p.name: [n for n in names if (p / n).is_file()] for p in fold_folders}
    with_checkpoint = [fold for fold, found in present.items() if found]
    if folds is None:
        if not with_checkpoint:
            held = sorted({p.name for folder in fold_folders for p in folder.glob("*.pth")})
            hint = (f"; its folds hold {', '.join(held)}: name them with -chk" if held
                    else ": train the model first")
            raise ExportError(f"no fold_X/{' or '.join(names)} in {model_folder}{hint}")
        chosen, skipped = with_checkpoint, [fold for fold in present if fold not in with_checkpoint]
    else:
        chosen = list(dict.fromkeys(fold_folder_name(f) for f in folds))
        skipped = []
        for fold in chosen:
            if not present.get(fold):
                available = ", ".join(f.removeprefix("fold_") for f in with_checkpoint) or "none"
                raise ExportError(f"-f {fold.removeprefix('fold_')}: {model_folder / fold} holds no "
                                  f"{' or '.join(names)}; folds with a checkpoint: {available}")
    if explicit_names:
        for fold in chosen:
            missing = [n for n in names if n not in present[fold]]
            if missing:
                raise ExportError(f"-chk {' '.join(missing)}: {model_folder / fold} holds no {', '.join(missing)}; "
                                  f"give the names of checkpoints present in every exported fold, or choose folds "
                                  f"with -f")
    return {fold: present[fold] for fold in chosen}, skipped


def _is_earlier_export(target: Path, source: Path) -> bool:
    """False when `target` does not exist; True when it is an export of `source` (its manifest says so);
    ExportError for anything else, which the export must leave alone."""
    if target.is_symlink():
        raise ExportError(f"{target} is a symbolic link (to {os.readlink(target)}); nnunet-qpg never replaces a "
                          f"link or what it points to. Remove the link or give another OUT.")
    if not target.exists():
        return False
    manifest = target / EXPORT_MANIFEST
    reason = f"it has no {EXPORT_MANIFEST}"
    if target.is_dir() and manifest.is_file() and not manifest.is_symlink():
        try:
            recorded = json.loads(manifest.read_text()).get("source")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            recorded, reason = None, f"its {EXPORT_MANIFEST} cannot be read"
        else:
            if recorded == str(source):
                return True
            reason = f"its {EXPORT_MANIFEST} names another source, {recorded}"
    elif not target.is_dir():
        reason = "it is a file"
    raise ExportError(f"{target} exists and is not an earlier export of {source} ({reason}); nnunet-qpg replaces "
                      f"only its own earlier export of the same model. Move or delete that folder, or give "
                      f"another OUT.")


def enclosing_model_folder(folder: Path) -> Path | None:
    """The nnU-Net model folder (TRAINER__PLANS__CONFIGURATION holding plans.json) that `folder` is or lies in."""
    resolved = folder.resolve()
    for candidate in (resolved, *resolved.parents):
        if len(candidate.name.split("__")) == 3 and (candidate / "plans.json").is_file():
            return candidate
    return None


# -- the export ---------------------------------------------------------------------------------------------------

def export_model(model_folder: Path | str, results_root: Path | str,
                 checkpoint_names: Sequence[str] | None = None,
                 folds: Sequence[str | int] | None = None,
                 check_tolerance: float = 1e-4) -> ExportResult:
    """Bake and write the chosen folds of `model_folder` under `results_root` (see the module docstring).

    `checkpoint_names`: file names inside fold_X (default: checkpoint_final.pth and checkpoint_best.pth where
    present); `folds`: fold numbers or 'all' (default: every fold with a checkpoint). Every argument and the
    output location are checked before any checkpoint is read; ExportError / UnsafeOutputError /
    UnsafeCheckpointError name the problem and leave everything as it was.
    """
    model_folder, results_root = Path(model_folder), Path(results_root)
    problem = missing_model_files(model_folder, "checkpoint_*.pth")
    if problem:
        raise ExportError(f"model folder {problem}")
    name = parse_model_folder(model_folder)
    selection, skipped = select_checkpoints(model_folder, folds, checkpoint_names)
    source = model_folder.resolve()
    target = exported_model_folder(model_folder, results_root)

    # where the export goes: never inside the source or any other model folder (OUT may hold them: it may be
    # $nnUNet_results), and never a folder that holds the source (a re-export replaces its folder whole)
    enclosing = enclosing_model_folder(results_root)
    if enclosing is not None:
        check_output_location(results_root, models=[enclosing], option="OUT")
    out = Path(os.path.abspath(results_root))
    if out.name == name.dataset:
        raise ExportError(f"OUT {results_root} is the dataset folder {name.dataset}; OUT is a results folder that "
                          f"holds dataset folders (like $nnUNet_results): give {out.parent}")
    check_output_location(target, models=[model_folder], option="export folder")
    replaces = _is_earlier_export(target, source)
    created = missing_folders(target.parent)
    try:
        make_output_folder(results_root, "OUT")
        make_output_folder(target.parent, "OUT's dataset folder")
        result = _write_export(model_folder, source, name, target, selection, check_tolerance)
    except BaseException:
        remove_empty_folders(created)  # only the empty folders this run made
        raise
    result.skipped_folds = skipped
    result.replaced_earlier_export = replaces
    return result


def _bake_checkpoint(checkpoint_path: Path, plans: dict, dataset_json: dict,
                     check_tolerance: float) -> tuple[dict, list[str], float]:
    """The exported checkpoint content of one source checkpoint, its baked layer names and the probe difference."""
    checkpoint = load_checkpoint(checkpoint_path)  # first: a refused checkpoint costs no further imports

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_qpg.simulator.measurement import Execution
    from nnunet_qpg.surgery import bake

    trainer_name, configuration = checkpoint_origin(checkpoint, checkpoint_path, plans)
    init_args = checkpoint["init_args"]
    configuration_manager = PlansManager(plans).get_configuration(configuration)
    network = build_network(trainer_name, plans, dataset_json, configuration)
    refuse_data_path_circuits(network, trainer_name, checkpoint_path)
    _load_strict(network, checkpoint["network_weights"], f"{checkpoint_path} ({trainer_name})")
    network.eval()
    baked = build_network(trainer_name, plans, dataset_json, configuration)
    baked.load_state_dict(checkpoint["network_weights"], strict=True)
    measured = [f"{layer_name} ({layer.execution.describe()})" for layer_name, layer in baked.named_modules()
                if isinstance(getattr(layer, "execution", None), Execution) and not layer.execution.is_exact]
    baked_names = bake(baked)
    plain = build_network(STOCK_TRAINER, plans, dataset_json, configuration)
    _load_strict(plain, baked.state_dict(), f"baked {checkpoint_path}: stock {STOCK_TRAINER}")

    channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {0: ""})))
    difference = _probe_difference(network, plain, list(configuration_manager.patch_size), channels)
    if not math.isfinite(difference) or difference > check_tolerance:
        raise ExportError(f"{checkpoint_path}: the baked network differs from the QPG network by {difference:.3g} "
                          f"(> {check_tolerance}); this is a bug in bake(), please report it")
    exported = {
        "network_weights": plain.state_dict(),
        "init_args": {key: init_args[key] for key in STOCK_INIT_ARGS if key in init_args},
        "trainer_name": STOCK_TRAINER,
        "inference_allowed_mirroring_axes": checkpoint.get("inference_allowed_mirroring_axes"),
        "current_epoch": checkpoint.get("current_epoch"),
        "logging": checkpoint.get("logging"),
        "_best_ema": checkpoint.get("_best_ema"),
        "exported_from": {"trainer_name": trainer_name, "baked_layers": baked_names,
                          "source": str(checkpoint_path.resolve())},
    }
    return exported, baked_names, difference, measured


def _crossval_folders(model_folder: Path, folds: Sequence[str]) -> list[Path]:
    """crossval_results_folds_A_B_... folders whose folds are all exported (others describe another ensemble)."""
    chosen = []
    for folder in sorted(model_folder.glob(f"{CROSSVAL_PREFIX}*")):
        members = [f"fold_{f}" for f in folder.name.removeprefix(CROSSVAL_PREFIX).split("_")]
        if folder.is_dir() and all(m in folds for m in members):
            chosen.append(folder)
    return chosen


def _write_export(model_folder: Path, source: Path, name: ModelName, target: Path,
                  selection: dict[str, list[str]], check_tolerance: float) -> ExportResult:
    plans = read_model_json(model_folder / "plans.json", "plans.json")
    dataset_json = read_model_json(model_folder / "dataset.json", "dataset.json")
    result = ExportResult(target, list(selection), [], source_trainer=name.trainer,
                          exported_trainer=exported_trainer_name(name.trainer))
    checkpoint_trainers: set[str] = set()
    with staging_folder(target) as staged:
        for file_name in FOLDER_FILES:
            if (model_folder / file_name).is_file():
                copy_file_atomically(model_folder / file_name, staged / file_name)
        for fold, checkpoint_names in selection.items():
            for checkpoint_name in checkpoint_names:
                exported, baked_names, difference, measured = _bake_checkpoint(
                    model_folder / fold / checkpoint_name, plans, dataset_json, check_tolerance)
                save_torch_atomically(exported, staged / fold / checkpoint_name)
                checkpoint_trainers.add(exported["exported_from"]["trainer_name"])
                result.baked_layers = baked_names
                result.measured_layers = measured
                result.max_abs_difference = max(result.max_abs_difference, difference)
                result.checkpoints.append(f"{fold}/{checkpoint_name}")
            for side_file in FOLD_SIDE_FILES:
                if (model_folder / fold / side_file).is_file():
                    copy_file_atomically(model_folder / fold / side_file, staged / fold / side_file)
        for crossval in _crossval_folders(model_folder, list(selection)):
            for root, _, files in os.walk(crossval):
                for file_name in files:
                    path = Path(root) / file_name
                    if path.is_file():
                        copy_file_atomically(path, staged / path.relative_to(model_folder))
        write_json_atomically(staged / EXPORT_MANIFEST, {
            "format": MANIFEST_FORMAT,
            "written_by": "nnunet-qpg export",
            "source": str(source),
            "source_trainer": name.trainer,
            "checkpoint_trainers": sorted(checkpoint_trainers),
            "exported_trainer": result.exported_trainer,
            "checkpoint_trainer_name": STOCK_TRAINER,
            "plans": name.plans,
            "configuration": name.configuration,
            "folds": list(selection),
            "checkpoints": result.checkpoints,
            "baked_layers": result.baked_layers,
            "max_abs_difference": result.max_abs_difference,
        })
        replace_folder(staged, target)
    result.missing_for_zip = [f"{fold}/{side_file}" for fold in result.folds for side_file in FOLD_SIDE_FILES
                              if not (target / fold / side_file).is_file()]
    return result
