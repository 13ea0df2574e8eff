"""Bake QPG / adapter / LoRA layers into plain kernels and write a model stock nnU-Net predicts with.

OUT_FOLDER works as an nnUNet_results folder: the model lands in
OUT_FOLDER/<DatasetName>/nnUNetTrainer__<plans>__<configuration>/ (plans.json, dataset.json,
dataset_fingerprint.json, fold_X/checkpoint_final.pth with trainer_name 'nnUNetTrainer' and plain weights).
Prediction then needs neither nnunet-qpg nor TorchQuantum, and gives the same masks:

  nnunet-qpg export $nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainerQPG__nnUNetPlans__2d exported/
  nnUNet_results=exported nnUNetv2_predict -i imagesTs -o pred -d 701 -c 2d -tr nnUNetTrainer -f 0
  nnUNet_results=exported nnUNetv2_export_model_to_zip -d 701 -c 2d -tr nnUNetTrainer -f 0 -o model.zip

Reading the QPG model needs `export nnUNet_extTrainer=$(nnunet-qpg trainers-path)`, as for training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", type=Path, help="trained model folder (TRAINER__PLANS__CONFIGURATION)")
    parser.add_argument("out_folder", type=Path, help="results folder to write the plain model into")
    parser.add_argument("-chk", "--checkpoints", nargs="+", default=["checkpoint_final.pth", "checkpoint_best.pth"],
                        help="checkpoint files to export from each fold, where present "
                             "(default: checkpoint_final.pth checkpoint_best.pth)")


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.export import ExportError, export_model

    try:
        result = export_model(args.model_folder, args.out_folder, tuple(args.checkpoints))
    except ExportError as error:
        print(f"export: {error}", file=sys.stderr)
        return 2
    print(f"export: {result.source_trainer} -> nnUNetTrainer, {len(result.baked_layers)} layer(s) baked "
          f"({', '.join(result.baked_layers[:4])}{' ...' if len(result.baked_layers) > 4 else ''})")
    print(f"  checkpoints: {', '.join(result.checkpoints)}")
    print(f"  largest output difference QPG vs baked on a random patch: {result.max_abs_difference:.2e}")
    print(f"  model folder: {result.model_folder}")
    print(f"  use it with: nnUNet_results={args.out_folder} nnUNetv2_predict -d {result.model_folder.parent.name} "
          f"-c {result.model_folder.name.split('__')[2]} -tr nnUNetTrainer -f "
          f"{' '.join(f.removeprefix('fold_') for f in result.folds)} -i IN -o OUT")
    if result.missing_for_zip:
        print(f"  note: {', '.join(result.missing_for_zip)} missing (training ended before nnU-Net's final validation);"
              f" nnUNetv2_export_model_to_zip needs them: run `nnUNetv2_train ... --val` on the QPG model, then export "
              f"again")
    return 0
