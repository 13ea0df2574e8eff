"""The paper's metrics for a folder of predicted masks: per-image IoU and DSC (Eqs. 10-11), their mean and
standard deviation over images, and a 3D Dice per volume for 3D volumes.

Predictions ({case}.nii.gz) are matched by name to the ground truth: an nnU-Net labels folder (labelsTs/) or a
KiTS19 data folder (case_XXXXX/segmentation.nii.gz). 3D volumes contribute every axial slice with ground-truth
foreground as one image. Empty masks: both empty -> IoU = DSC = 1; exactly one empty -> 0.
The evaluated structure is any label > 0 (the paper's kidney mask: kidney or tumour) unless --label is given.

examples:
  nnunet-qpg evaluate pred_2d/ $nnUNet_raw/Dataset701_KiTS19Kidney2D/labelsTs -o metrics.json
  nnunet-qpg evaluate pred_volumes/ /data/kits19/data --label 2        # tumour only, on whole volumes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", type=Path, help="folder of predicted masks ({case}.nii.gz)")
    parser.add_argument("ground_truth", type=Path, help="folder of ground-truth masks, or a KiTS19 data folder")
    parser.add_argument("--label", type=int, nargs="+", default=None,
                        help="label value(s) forming the evaluated structure (default: any label > 0)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="JSON file for the results (default: PREDICTIONS/evaluation.json)")


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.safe_io import write_json_atomically
    from nnunet_qpg.evaluation import EvaluationError, evaluate_folders, format_table

    try:
        evaluation = evaluate_folders(args.predictions, args.ground_truth, args.label)
    except EvaluationError as error:
        print(f"evaluate: {error}", file=sys.stderr)
        return 2
    output = args.output or args.predictions / "evaluation.json"
    write_json_atomically(output, evaluation.to_dict())
    summary = evaluation.summary()
    rows = [["IoU (Eq. 10)", f"{summary['iou_mean']:.4f}", f"{summary['iou_std']:.4f}", str(summary["images"])],
            ["DSC (Eq. 11)", f"{summary['dsc_mean']:.4f}", f"{summary['dsc_std']:.4f}", str(summary["images"])]]
    if "volumes" in summary:
        rows.append(["3D Dice per volume", f"{summary['dice_3d_mean']:.4f}", f"{summary['dice_3d_std']:.4f}",
                     str(summary["volumes"])])
    print(format_table(rows, ["metric", "mean", "std", "n"]))
    if evaluation.missing_predictions:
        print(f"{len(evaluation.missing_predictions)} ground-truth case(s) without a prediction (not scored): "
              f"{', '.join(evaluation.missing_predictions[:10])}{' ...' if len(evaluation.missing_predictions) > 10 else ''}")
    print(f"per-image results: {output}")
    return 0
