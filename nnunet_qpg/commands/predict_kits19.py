"""Two-stage KiTS19 prediction on 3D CT volumes: kidney model on every axial slice, tumour model on each
8-connected kidney region crop (as the converter made the tumour training data), pasted back as KiTS19 labels
(0 background, 1 kidney, 2 tumour), written with the input's exact geometry.

Each model uses the preprocessing recorded in its own dataset.json. Same batch behaviour as `predict`: progress
bar, finished volumes skipped, unreadable volumes reported and skipped, --num-parts/--part-id.

example:
  nnunet-qpg predict-kits19 -i ct_volumes/ -o kits19_masks/ \\
      --kidney-model $nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainerQPG__nnUNetPlans__2d \\
      --tumor-model  $nnUNet_results/Dataset702_KiTS19Tumor2D/nnUNetTrainerQPG__nnUNetPlans__2d
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_qpg.volume_batch import add_batch_arguments, default_device, run_prediction_batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_batch_arguments(parser)
    parser.add_argument("--kidney-model", type=Path, required=True, help="model folder trained on --task kidney")
    parser.add_argument("--tumor-model", type=Path, required=True, help="model folder trained on --task tumor")
    parser.add_argument("--kidney-folds", nargs="+", default=None, help="folds of the kidney model (default: all)")
    parser.add_argument("--tumor-folds", nargs="+", default=None, help="folds of the tumour model (default: all)")


def _check_task(preprocessing, expected: str, folder: Path, option: str) -> None:
    if preprocessing.task not in (None, expected):
        raise ValueError(f"{folder / 'dataset.json'} records task {preprocessing.task!r}, but {option} needs a "
                         f"model trained on --task {expected}; swap --kidney-model and --tumor-model?")


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.inference import SlicePreprocessing, load_predictor
    from nnunet_qpg.two_stage import predict_kits19_volume

    def make_predict():
        device = default_device(args.device)
        kidney_preprocessing = SlicePreprocessing.from_model_folder(args.kidney_model)
        tumor_preprocessing = SlicePreprocessing.from_model_folder(args.tumor_model)
        _check_task(kidney_preprocessing, "kidney", args.kidney_model, "--kidney-model")
        _check_task(tumor_preprocessing, "tumor", args.tumor_model, "--tumor-model")
        kidney = load_predictor(args.kidney_model, args.kidney_folds, device, args.checkpoint,
                                use_mirroring=not args.disable_tta)
        tumor = load_predictor(args.tumor_model, args.tumor_folds, device, args.checkpoint,
                               use_mirroring=not args.disable_tta)
        return lambda volume, tick: predict_kits19_volume(volume, kidney, kidney_preprocessing, tumor,
                                                          tumor_preprocessing, tick)

    return run_prediction_batch("predict-kits19", args, make_predict)
