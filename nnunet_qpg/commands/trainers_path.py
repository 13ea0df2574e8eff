"""Print the folder that holds the QPG trainers (nnUNetTrainerQPG, ...QPGA, ...ConvLoRA, ..._Paper).

nnU-Net (2.8+) also looks for trainers in the folders listed in nnUNet_extTrainer (os.pathsep-separated):

  export nnUNet_extTrainer=$(nnunet-qpg trainers-path)
  nnUNetv2_train 1 2d 0 -tr nnUNetTrainerQPG

With --append the printed value keeps the folders already in $nnUNet_extTrainer (e.g. your own trainer files).
"""

from __future__ import annotations

import argparse
import os
import sys


def trainers_path() -> str:
    """Absolute path of the installed ``nnunet_qpg.trainers`` package (the repository's ``trainers/`` folder)."""
    import importlib.util

    spec = importlib.util.find_spec("nnunet_qpg.trainers")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package nnunet_qpg.trainers is not installed; reinstall nnunet-qpg (pip install -e .)")
    return os.path.abspath(list(spec.submodule_search_locations)[0])


def with_shipped_trainers(ext_trainer: str | None) -> str:
    """An ``nnUNet_extTrainer`` value holding the user's folders (first, in their order) and the shipped ones."""
    path = trainers_path()
    existing = [p for p in (ext_trainer or "").split(os.pathsep) if p.strip()]
    return os.pathsep.join(existing if path in existing else [*existing, path])


def use_shipped_trainers() -> None:
    """Let nnU-Net's trainer search (``recursive_find_trainer_class_by_name``) in this process and the nnU-Net
    commands it starts find the shipped trainers, without the user exporting ``nnUNet_extTrainer``; the folders
    the user put there stay and are searched first. Every ``nnunet-qpg`` command runs this."""
    try:
        os.environ["nnUNet_extTrainer"] = with_shipped_trainers(os.environ.get("nnUNet_extTrainer"))
    except RuntimeError:
        pass  # not installed as a package: a command that needs a trainer says so itself


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--append", action="store_true",
                        help="print $nnUNet_extTrainer with this folder added (if missing) instead of the folder alone")


def run(args: argparse.Namespace) -> int:
    try:
        path = trainers_path()
    except RuntimeError as error:
        print(f"trainers-path: {error}", file=sys.stderr)
        return 1
    if args.append:
        print(with_shipped_trainers(os.environ.get("nnUNet_extTrainer")))
    else:
        print(path)
    return 0
