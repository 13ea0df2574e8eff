"""Masks for a folder of 3D CT volumes with a 2D model trained on `convert-kits19` slices.

Each volume's axial slices (found from the header's direction matrix, any orientation) get the preprocessing
recorded in the model's dataset.json (HU window, filters, resize), are predicted by nnU-Net's nnUNetPredictor
(all folds of the model folder unless -f, with mirroring as nnU-Net does), mapped back to the original slice
size (nearest neighbour), and written as {case}.nii.gz with the input's exact geometry (shape, spacing, origin,
direction). Rerunning skips volumes whose mask exists; unreadable volumes are reported and skipped.

example:
  nnunet-qpg predict -i ct_volumes/ -o masks/ -m $nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainerQPG__nnUNetPlans__2d -f 0
QPG models need `export nnUNet_extTrainer=$(nnunet-qpg trainers-path)`, as for nnUNetv2_predict.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_qpg.volume_batch import add_batch_arguments, default_device, run_prediction_batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_batch_arguments(parser)
    parser.add_argument("-m", "--model", type=Path, required=True,
                        help="trained model folder (holds plans.json, dataset.json, fold_X/)")
    parser.add_argument("-f", "--folds", nargs="+", default=None,
                        help="folds to ensemble (default: every fold_X with the checkpoint)")


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.inference import SlicePreprocessing, load_predictor, predict_volume

    def make_predict():
        preprocessing = SlicePreprocessing.from_model_folder(args.model)
        predictor = load_predictor(args.model, args.folds, default_device(args.device), args.checkpoint,
                                   use_mirroring=not args.disable_tta)
        return lambda volume, tick: predict_volume(predictor, preprocessing, volume, tick)

    return run_prediction_batch("predict", args, make_predict)
