"""Two-stage KiTS19 prediction on 3D CT volumes: kidney model on every axial slice, tumour model on each
8-connected kidney region crop (as the converter made the tumour training data), pasted back as KiTS19 labels
(0 background, 1 kidney, 2 tumour), written with the input's exact geometry.

Each model uses the preprocessing recorded in its own dataset.json. Same batch behaviour and data safety as
`predict`: progress bar, -o checked (writable; not the input folder, inside or holding it, nor inside a model
folder) before the models are loaded, checkpoints checked to hold data only, unreadable volumes and volumes whose
names map to one case named and skipped (exit 1), finished volumes skipped only when their mask records this very
input, command and both models (SHA-256s in the mask's NIfTI header; other masks are named and kept unless
--overwrite), --num-parts/--part-id.

example:
  nnunet-qpg predict-kits19 -i ct_volumes/ -o kits19_masks/ \\
      --kidney-model $nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainerQPG__nnUNetPlans__2d \\
      --tumor-model  $nnUNet_results/Dataset702_KiTS19Tumor2D/nnUNetTrainerQPG__nnUNetPlans__2d
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_qpg.volume_batch import add_batch_arguments, fold_argument, run_prediction_batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_batch_arguments(parser)
    parser.add_argument("--kidney-model", type=Path, required=True, help="model folder trained on --task kidney")
    parser.add_argument("--tumor-model", type=Path, required=True, help="model folder trained on --task tumor")
    parser.add_argument("--kidney-folds", nargs="+", type=fold_argument, default=None,
                        help="folds of the kidney model: integers or 'all' (default: all trained folds)")
    parser.add_argument("--tumor-folds", nargs="+", type=fold_argument, default=None,
                        help="folds of the tumour model: integers or 'all' (default: all trained folds)")


def _check_task(preprocessing, expected: str, folder: Path, option: str) -> None:
    if preprocessing.task not in (None, expected):
        raise ValueError(f"{folder / 'dataset.json'} records task {preprocessing.task!r}, but {option} needs a "
                         f"model trained on --task {expected}; swap --kidney-model and --tumor-model?")


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.inference import SlicePreprocessing, choose_model, load_predictor
    from nnunet_qpg.two_stage import predict_kits19_volume

    def setup(device: str):
        kidney_preprocessing = SlicePreprocessing.from_model_folder(args.kidney_model)
        tumor_preprocessing = SlicePreprocessing.from_model_folder(args.tumor_model)
        _check_task(kidney_preprocessing, "kidney", args.kidney_model, "--kidney-model")
        _check_task(tumor_preprocessing, "tumor", args.tumor_model, "--tumor-model")
        kidney_choice = choose_model(args.kidney_model, args.kidney_folds, args.checkpoint, option="--kidney-model")
        tumor_choice = choose_model(args.tumor_model, args.tumor_folds, args.checkpoint, option="--tumor-model")

        def load():
            mirroring = not args.disable_tta
            kidney = load_predictor(kidney_choice, device=device, use_mirroring=mirroring)
            tumor = load_predictor(tumor_choice, device=device, use_mirroring=mirroring)
            return lambda volume, tick: predict_kits19_volume(volume, kidney, kidney_preprocessing, tumor,
                                                              tumor_preprocessing, tick)

        return load, [*kidney_choice.files, *tumor_choice.files]

    from nnunet_qpg.figures import KITS19_LABEL_NAMES

    return run_prediction_batch("predict-kits19", args, setup, models=[args.kidney_model, args.tumor_model],
                                label_names=KITS19_LABEL_NAMES)
