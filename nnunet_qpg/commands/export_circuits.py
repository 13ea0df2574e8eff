"""Write a trained model's VQCs as OpenQASM 2 files, to run on a quantum computer (SPEC section 7).

For each chosen fold and checkpoint (chosen exactly as `nnunet-qpg export` chooses them) and each QPG layer
(QPGConv, QPGAConv) of the trained network, one file per VQC with the trained angles:

  OUT/index.json                                         what was exported, from which model
  OUT/fold_0/checkpoint_final/index.json                 per layer: geometry, post-processing, VQC -> weights
  OUT/fold_0/checkpoint_final/decoder.seg_layers.0/vqc_00000.qasm ...

Each program is Eq. 1 as SPEC section 7 writes it: `qreg q[n]; creg c[n];`, H on every qubit, per block RY and RX
on every qubit and the CNOT ring, then `measure q[j] -> c[j];`. Our qubit 0 (the most significant bit of our basis
index) is q[0]; Qiskit prints classical bit 0 rightmost, so its bitstrings are our indices reversed. Run the
circuits, keep the counts (one dict per file, in file order) and rebuild the layer's kernel with the network of
the same checkpoint:

  layer = network.get_submodule("decoder.seg_layers.0")
  kernel = layer.kernel_from_counts(counts)      # LPP/SST applied, laid out as the weight (QPGAConv: W + increment)

index.json says which target channel and kernel position every VQC fills and holds the post-processing's
numbers (LPP's weights and bias, SST's constants). RCE layers are written too, but their kernels cannot be rebuilt
from counts (RCE reads amplitudes, which no measurement gives).

What it writes and refuses: OUT is built aside and moved into place whole. An OUT that exists must be empty or an
earlier export-circuits output (which is replaced whole); a folder holding anything else is refused untouched.
OUT may not lie inside a model folder or hold the model. Checkpoints are read as data only. A model without QPG
layers (classical, or ConvLoRA only) has no circuits: that is an error. Exit 2 on any such problem.

examples:
  nnunet-qpg export-circuits $nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainerQPG__nnUNetPlans__2d circuits/
  nnunet-qpg export-circuits MODEL circuits/ -f 0 -chk checkpoint_best.pth
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from torch import nn

__all__ = ["CIRCUITS_FORMAT", "CircuitsExport", "add_arguments", "export_circuits", "layer_index", "run"]

CIRCUITS_FORMAT = 1
WRITTEN_BY = "nnunet-qpg export-circuits"
INDEX = "index.json"


@dataclass
class CircuitsExport:
    """What one export wrote."""

    out: Path
    checkpoints: list[str] = field(default_factory=list)  # "fold_0/checkpoint_final.pth"
    layers: list[str] = field(default_factory=list)  # qualified names (the same in every checkpoint)
    circuits: int = 0  # .qasm files, all checkpoints together
    files: int = 0  # every file written, index files included
    not_measurable: list[str] = field(default_factory=list)  # RCE layers
    skipped_folds: list[str] = field(default_factory=list)
    replaced_earlier_output: bool = False


# -- the index ------------------------------------------------------------------------------------------------------

def _vqc_position(vqc: int, kernel_size: Sequence[int]) -> tuple[int, list[int]]:
    """(target channel, kernel position) of VQC ``vqc``: row-major over (target, k_1, k_2, ...) (SPEC section 3)."""
    position = []
    rest = vqc
    for size in reversed(kernel_size):
        rest, index = divmod(rest, size)
        position.append(index)
    return rest, position[::-1]


def _post_description(layer: nn.Module) -> dict[str, Any]:
    post = layer.post
    if post.name == "lpp":
        weight = post.projection.weight.detach().to("cpu").double().view(-1).tolist()
        return {"name": "lpp", "readout": post.readout, "measurable": True,
                "formula": "y_i = w[0] p_i + sum_k w[1+k] d_k(i) + bias, d_k bit k of i (d_0 least significant), "
                           "Eq. 4",
                "weight": weight, "bias": float(post.projection.bias.detach().double().item())}
    if post.name == "sst":
        return {"name": "sst", "readout": post.readout, "measurable": True,
                "formula": "y_i = (pi/2) (p_i - 0.5), Eq. 5", "scale": math.pi / 2, "offset": -math.pi / 4}
    return {"name": post.name, "readout": post.readout, "measurable": post.readout == "probabilities",
            "formula": "y_i = Re(psi_i), Eq. 3: real parts of amplitudes, which no measurement gives; this layer's "
                       "kernel cannot be rebuilt from counts" if post.name == "rce" else ""}


def layer_index(name: str, layer: nn.Module, folder: str) -> dict[str, Any]:
    """The index.json entry of one QPG layer whose circuits lie in ``folder`` (relative to the index)."""
    kernel_size = list(layer.layout.kernel_size)
    width = max(5, len(str(layer.num_vqcs - 1)))
    noise = getattr(layer, "noise", None)
    entry: dict[str, Any] = {
        "name": name,
        "class": type(layer).__name__,
        "conv_class": layer.conv_class.__name__,
        "weight_shape": list(layer.weight_shape),
        "transposed": bool(layer.transposed),
        "target_axis": layer.layout.target_axis,
        "target_channels": layer.layout.target_channels,
        "other_channels": layer.layout.other_channels,
        "kernel_size": kernel_size,
        "qubits": layer.num_qubits,
        "blocks": layer.blocks,
        "entangle": bool(getattr(layer, "entangle", True)),
        "num_vqcs": layer.num_vqcs,
        "post": _post_description(layer),
        "shots": getattr(layer, "shots", None),
        "gradient": getattr(layer, "gradient", "backprop"),
        "noise": None if noise is None else noise.to_dict(),
        "folder": folder,
        "vqcs": [],
    }
    if type(layer).__name__ == "QPGAConv":
        entry["base_kernel"] = (f"W' = W + generated tensor (Eq. 7); W is '{name}.weight' in the checkpoint's "
                                f"network_weights" + (f", minus '{name}.initial_increment' (start_at_base)"
                                                      if getattr(layer, "start_at_base", False) else ""))
    for vqc in range(layer.num_vqcs):
        target, position = _vqc_position(vqc, kernel_size)
        entry["vqcs"].append({"file": f"vqc_{vqc:0{width}d}.qasm", "target_channel": target,
                              "kernel_position": position})
    return entry


_CONVENTIONS = {
    "circuit": "Eq. 1 as SPEC section 7 writes it: H on every qubit; per block RY(theta[k,0,q]) and RX(theta[k,1,q]) "
               "on every qubit q, then CNOT(q, (q+1) mod n) for q = 0..n-1 (none for n = 1 or entangle false); "
               "measure q[j] -> c[j]",
    "bit_order": "our basis index i = sum_q b_q 2^(n-1-q) (qubit 0 most significant) is Qiskit's counts key "
                 "format(i, '0nb') reversed (classical bit 0 rightmost)",
    "vqc_order": "VQC v = (target channel, kernel position) row-major; its first other_channels post-processed "
                 "outputs fill the weight along the other channel axis (target_axis 0: W[t, c, *pos], 1: "
                 "W[c, t, *pos])",
    "rebuild": "network = nnunet_qpg.export.build_network(trainer_name, plans, dataset_json, configuration); "
               "network.load_state_dict(nnunet_qpg.safe_io.load_checkpoint(source_checkpoint)['network_weights']); "
               "kernel = network.get_submodule(name).kernel_from_counts(counts) with counts one dict per file of "
               "the layer, in file order",
}


# -- output location ------------------------------------------------------------------------------------------------

def _is_earlier_output(out: Path) -> bool:
    """False when ``out`` does not exist or is an empty folder; True when it is an earlier export-circuits output;
    ExportError for anything else (left alone)."""
    from nnunet_qpg.export import ExportError

    if out.is_symlink():
        raise ExportError(f"OUT {out} is a symbolic link (to {os.readlink(out)}); nnunet-qpg never replaces a link or "
                          f"what it points to. Remove the link or give another OUT.")
    if not out.exists():
        return False
    if not out.is_dir():
        raise ExportError(f"OUT {out} is a file; give a folder (new, empty, or an earlier export-circuits output)")
    if not any(out.iterdir()):
        return False
    index = out / INDEX
    reason = f"it holds other files and no {INDEX} of export-circuits"
    if index.is_file() and not index.is_symlink():
        try:
            written_by = json.loads(index.read_text()).get("written_by")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            written_by, reason = None, f"its {INDEX} cannot be read"
        if written_by == WRITTEN_BY:
            return True
        if written_by is not None:
            reason = f"its {INDEX} was written by {written_by!r}"
    raise ExportError(f"OUT {out} is not empty and is not an earlier export-circuits output ({reason}); "
                      f"export-circuits replaces only its own earlier output. Give a new or empty folder, or move "
                      f"that folder's files away.")


def _check_out(model_folder: Path, out: Path) -> None:
    from nnunet_qpg.export import ExportError, enclosing_model_folder
    from nnunet_qpg.safe_io import check_output_location

    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ExportError(f"OUT {out} is the current folder or holds it; OUT is replaced whole, so give a folder "
                          f"of its own, e.g. circuits/")

    check_output_location(out, models=[model_folder], option="OUT")
    enclosing = enclosing_model_folder(out)
    if enclosing is not None:
        check_output_location(out, models=[enclosing], option="OUT")


# -- the export -----------------------------------------------------------------------------------------------------

def _qpg_layers(network: nn.Module) -> list[tuple[str, nn.Module]]:
    from nnunet_qpg.layers import QuantumKernelConv

    return [(name, module) for name, module in network.named_modules() if isinstance(module, QuantumKernelConv)]


def _load_network(checkpoint_path: Path, plans: dict, dataset_json: dict):
    """(network with the checkpoint's weights, trainer name, configuration); the checkpoint is read as data."""
    from nnunet_qpg.export import ExportError, build_network, checkpoint_origin
    from nnunet_qpg.safe_io import load_checkpoint

    checkpoint = load_checkpoint(checkpoint_path)
    trainer_name, configuration = checkpoint_origin(checkpoint, checkpoint_path, plans)
    network = build_network(trainer_name, plans, dataset_json, configuration)
    try:
        network.load_state_dict(checkpoint["network_weights"], strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ExportError(f"{checkpoint_path} ({trainer_name}): the weights do not fit the network the trainer "
                          f"builds: {first}") from None
    network.eval()
    return network, trainer_name, configuration


def export_circuits(model_folder: Path | str, out: Path | str, checkpoint_names: Sequence[str] | None = None,
                    folds: Sequence[str | int] | None = None) -> CircuitsExport:
    """Write the VQCs of every QPG layer of the chosen folds/checkpoints of ``model_folder`` under ``out``.

    Folds and checkpoints as ``nnunet-qpg export`` chooses them (default: every fold_X with checkpoint_final.pth or
    checkpoint_best.pth, both where present). Raises ExportError / UnsafeOutputError / UnsafeCheckpointError
    naming the problem; nothing is written then.
    """
    from nnunet_qpg.export import ExportError, read_model_json, select_checkpoints, parse_model_folder
    from nnunet_qpg.inference import missing_model_files
    from nnunet_qpg.safe_io import (make_output_folder, missing_folders, remove_empty_folders, replace_folder,
                                    staging_folder, write_json_atomically)

    model_folder, out = Path(model_folder), Path(os.path.abspath(out))  # "." named, links kept
    problem = missing_model_files(model_folder, "checkpoint_*.pth")
    if problem:
        raise ExportError(f"model folder {problem}")
    name = parse_model_folder(model_folder)
    selection, skipped = select_checkpoints(model_folder, folds, checkpoint_names)
    _check_out(model_folder, out)
    replaces = _is_earlier_output(out)
    plans = read_model_json(model_folder / "plans.json", "plans.json")
    dataset_json = read_model_json(model_folder / "dataset.json", "dataset.json")

    result = CircuitsExport(out, skipped_folds=skipped, replaced_earlier_output=replaces)
    created = missing_folders(out.parent)
    manifest_checkpoints = []
    try:
        make_output_folder(out.parent, "OUT's parent folder")
        with staging_folder(out) as staged:
            for fold, names in selection.items():
                for checkpoint_name in names:
                    checkpoint_path = model_folder / fold / checkpoint_name
                    network, trainer_name, configuration = _load_network(checkpoint_path, plans, dataset_json)
                    layers = _qpg_layers(network)
                    if not layers:
                        raise ExportError(
                            f"{checkpoint_path}: the network of {trainer_name} has no QPG layers (QPGConv, QPGAConv): "
                            f"a classical or ConvLoRA-only model runs no circuits, so there is nothing to export")
                    relative = Path(fold) / Path(checkpoint_name).stem
                    entries = []
                    for layer_name, layer in layers:
                        entry = layer_index(layer_name, layer, layer_name)
                        folder = staged / relative / layer_name
                        folder.mkdir(parents=True)
                        for vqc, text in zip(entry["vqcs"], layer.circuits_qasm()):
                            (folder / vqc["file"]).write_text(text)
                        result.circuits += layer.num_vqcs
                        result.files += layer.num_vqcs
                        if not entry["post"]["measurable"] and layer_name not in result.not_measurable:
                            result.not_measurable.append(layer_name)
                        if layer_name not in result.layers:
                            result.layers.append(layer_name)
                        entries.append(entry)
                    write_json_atomically(staged / relative / INDEX, {
                        "format": CIRCUITS_FORMAT,
                        "written_by": WRITTEN_BY,
                        "source_checkpoint": str(checkpoint_path.resolve()),
                        "model_folder": str(model_folder.resolve()),
                        "fold": fold,
                        "checkpoint": checkpoint_name,
                        "trainer_name": trainer_name,
                        "configuration": configuration,
                        "conventions": _CONVENTIONS,
                        "layers": entries,
                    })
                    result.files += 1
                    result.checkpoints.append(f"{fold}/{checkpoint_name}")
                    manifest_checkpoints.append({
                        "fold": fold, "checkpoint": checkpoint_name, "index": (relative / INDEX).as_posix(),
                        "layers": [entry["name"] for entry in entries],
                        "circuits": sum(entry["num_vqcs"] for entry in entries)})
            write_json_atomically(staged / INDEX, {
                "format": CIRCUITS_FORMAT,
                "written_by": WRITTEN_BY,
                "source": str(model_folder.resolve()),
                "dataset": name.dataset,
                "trainer": name.trainer,
                "plans": name.plans,
                "configuration": name.configuration,
                "checkpoints": manifest_checkpoints,
                "circuits": result.circuits,
            })
            result.files += 1
            _is_earlier_output(out)  # still ours (or absent/empty) right before the swap
            replace_folder(staged, out)
    except BaseException:
        remove_empty_folders(created)
        raise
    return result


# -- the command ----------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", type=Path,
                        help="trained model folder (DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION)")
    parser.add_argument("out_folder", type=Path,
                        help="folder to write the circuits into: new, empty, or an earlier export-circuits output "
                             "(replaced whole)")
    from nnunet_qpg.commands.export import add_model_selection_arguments

    add_model_selection_arguments(parser, "export circuits of")


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.export import ExportError
    from nnunet_qpg.safe_io import guarded

    def export() -> int:
        try:
            result = export_circuits(args.model_folder, args.out_folder, args.checkpoints, args.folds)
        except ExportError as error:
            print(f"export-circuits: {error}", file=sys.stderr)
            return 2
        _print_result(result)
        return 0

    return guarded("export-circuits", export)


def _print_result(result: CircuitsExport) -> None:
    shown = ", ".join(result.layers[:4]) + (" ..." if len(result.layers) > 4 else "")
    print(f"export-circuits: {len(result.layers)} QPG layer(s) ({shown}) x {len(result.checkpoints)} checkpoint(s): "
          f"{result.circuits:,} circuits, {result.files:,} files")
    print(f"  checkpoints: {', '.join(result.checkpoints)}")
    print(f"  written to: {result.out}" + (" (replaced its earlier export-circuits output)"
                                          if result.replaced_earlier_output else ""))
    print(f"  index: {result.out / INDEX}; rebuild a kernel from counts with layer.kernel_from_counts(counts)")
    if result.skipped_folds:
        print(f"  skipped (no checkpoint): {', '.join(result.skipped_folds)}")
    if result.not_measurable:
        print(f"  note: {', '.join(result.not_measurable)} use RCE, which reads amplitudes: their kernels cannot be "
              f"rebuilt from measured counts (use LPP or SST for hardware)")
