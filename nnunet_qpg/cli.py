"""The `nnunet-qpg` command line.

Each sub-command lives in its own module, which exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so `nnunet-qpg --help` answers without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module, one-line help). Keep in the order a new user meets them.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("nnunet_qpg.commands.demo", "synthetic KiTS19 end to end: convert, train QPG and baseline, predict, evaluate"),
    "trainers-path": ("nnunet_qpg.commands.trainers_path", "print the folder to export as nnUNet_extTrainer"),
    "info": ("nnunet_qpg.commands.info", "parameter table of QPG placed on a network planned by nnU-Net"),
    "hardware-cost": ("nnunet_qpg.commands.hardware_cost",
                      "circuits, shots, jobs and time QPG training would cost on a quantum computer"),
    "new-trainer": ("nnunet_qpg.commands.new_trainer", "write a trainer file that puts QPG on chosen layers"),
    "synth-kits19": ("nnunet_qpg.dataset_conversion.synth_kits19", "make a small synthetic KiTS19-like folder"),
    "convert-kits19": (
        "nnunet_qpg.dataset_conversion.kits19_to_nnunet2d",
        "KiTS19 to nnU-Net datasets: 2D (paper split and windowing) or 3D volumes",
    ),
    "predict": ("nnunet_qpg.commands.predict", "masks (and RT Structure Sets, SEG) for CT volumes, NIfTI or DICOM, "
                "with a trained 2D model"),
    "predict-kits19": ("nnunet_qpg.commands.predict_kits19", "two-stage kidney then tumour prediction, KiTS19 labels"),
    "export": ("nnunet_qpg.commands.export", "bake QPG layers into a model folder stock nnU-Net can use"),
    "export-circuits": ("nnunet_qpg.commands.export_circuits",
                        "write a trained model's VQCs as OpenQASM 2 files, to run on a quantum computer"),
    "evaluate": ("nnunet_qpg.commands.evaluate", "per-image IoU/DSC (Eqs. 10-11); per-case 3D Dice, surface Dice, HD95, "
                 "false-positive slices, KiTS19 scores"),
    "report": ("nnunet_qpg.commands.report", "several trained models side by side (paper Table 1)"),
    "overlay": ("nnunet_qpg.commands.overlay", "PNG figures: image, ground truth and predictions (paper Fig. 4)"),
}


def _top_level_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: nnunet-qpg COMMAND [options]",
        "",
        "Quantum Parameter Generation (HQC-TF) for nnU-Net v2. Commands:",
        "",
    ]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `nnunet-qpg COMMAND --help` for the options of one command."]
    return "\n".join(lines)


def build_parser(command: str) -> argparse.ArgumentParser:
    """The argument parser of one sub-command (imports its module)."""
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"nnunet-qpg {command}",
        description=(module.__doc__ or help_text).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_level_help())
        return 0
    if argv[0] in ("-V", "--version"):
        from nnunet_qpg import __version__

        print(__version__)
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"nnunet-qpg: unknown command {command!r}.\n\n{_top_level_help()}", file=sys.stderr)
        return 2
    args = build_parser(command).parse_args(argv[1:])
    from nnunet_qpg.commands.trainers_path import use_shipped_trainers

    use_shipped_trainers()  # our commands find our trainers; the user need not export nnUNet_extTrainer for them
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
