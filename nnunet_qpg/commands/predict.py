"""Masks for a folder of 3D CT volumes (NIfTI files, and DICOM CT series anywhere below it) with a 2D model
trained on `convert-kits19` slices; on request an RT Structure Set and a DICOM SEG per series, 3D cleanup, overlay
PNGs. A per-volume summary (summary.csv, summary.json: each structure's volume in mL, components, axial slice
range) is written with the masks.

Each volume's axial slices (found from the header's direction matrix, any orientation) get the preprocessing
recorded in the model's dataset.json (HU window, filters, resize), are predicted by nnU-Net's nnUNetPredictor
(all folds of the model folder unless -f, with mirroring as nnU-Net does), mapped back to the original slice
size (nearest neighbour), and written as {case}.nii.gz with the input's exact geometry (shape, spacing, origin,
direction).

Data safety: -o is created if missing and must be writable, and may not be the input folder, lie inside or hold
it, or lie inside the model folder; this is checked before the model is loaded. Every checkpoint is checked to
hold data only before nnU-Net loads it. Volumes that are unreadable (corrupt, truncated, NaN/inf unless
--non-finite replace) or whose names map to one case (scan.nii, scan.nii.gz, scan_0000.nii.gz) are named and
skipped (exit 1).

Rerunning the same command finishes an interrupted batch: a mask counts as done only if it records this very
input, command and model (each mask's NIfTI header description holds `nnunet-qpg COMMAND input:<SHA-256 of the
input file> model:<SHA-256 of plans.json, dataset.json and the checkpoints used>`). An existing mask of another
input or model, or a file nnunet-qpg did not write, is named and kept (exit 1); --overwrite replaces it.

DICOM series are named after their folder path below -i (never after header contents); a series that is not one
consistent CT volume (other modality, missing slices, gantry tilt, ...) is named with the reason and skipped.
RT Structure Sets and SEGs (--rtstruct, --dicom-seg; the 'dicom' extra) reference the input series and are marked
research use only. A rerun makes what is missing from finished masks.

examples:
  nnunet-qpg predict -i ct_volumes/ -o masks/ -m $nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainerQPG__nnUNetPlans__2d -f 0
  nnunet-qpg predict -i dicom_in/ -o contours/ -m MODEL --largest-components 2 --rtstruct --dicom-seg --overlays
Models of the shipped trainers need no `nnUNet_extTrainer`; models of your own trainer files need their folder
there, as for nnUNetv2_predict.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_qpg.volume_batch import add_batch_arguments, fold_argument, run_prediction_batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_batch_arguments(parser)
    parser.add_argument("-m", "--model", type=Path, required=True,
                        help="trained model folder (holds plans.json, dataset.json, fold_X/)")
    parser.add_argument("-f", "--folds", nargs="+", type=fold_argument, default=None,
                        help="folds to ensemble: integers or 'all' (default: every fold_X with the checkpoint)")


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.inference import SlicePreprocessing, choose_model, load_predictor, predict_volume

    def setup(device: str):
        choice = choose_model(args.model, args.folds, args.checkpoint, option="-m")
        preprocessing = SlicePreprocessing.from_model_folder(args.model)

        def load():
            predictor = load_predictor(choice, device=device, use_mirroring=not args.disable_tta)
            return lambda volume, tick: predict_volume(predictor, preprocessing, volume, tick)

        return load, choice.files

    return run_prediction_batch("predict", args, setup, models=[args.model], label_names=model_label_names(args.model))


def model_label_names(model_folder: Path) -> dict[int, str]:
    """{value: name} from the model's dataset.json (ROI names, summary, overlays); {} when it names none."""
    from nnunet_qpg.overlays import OverlayError, label_names_of

    try:
        return label_names_of(model_folder) or {}
    except OverlayError:  # an unreadable dataset.json: setup names that problem itself
        return {}
