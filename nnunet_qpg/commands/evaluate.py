"""The paper's metrics for a folder of predicted masks: per-image IoU and DSC (Eqs. 10-11), their mean and
standard deviation over images, and a 3D Dice per volume for 3D volumes.

Predictions ({case}.nii.gz) are matched by name to the ground truth: an nnU-Net labels folder (labelsTs/) or a
KiTS19 data folder (case_XXXXX/segmentation.nii.gz). 3D volumes contribute every axial slice with ground-truth
foreground as one image. Empty masks: both empty -> IoU = DSC = 1; exactly one empty -> 0.
The evaluated structure is any label > 0 (the paper's kidney mask: kidney or tumour) unless --label is given.

Each prediction must lie on its ground truth's voxel grid (same size, spacing, origin and direction). A pair
that cannot be scored (a truncated or corrupt file, another grid, two files for one case) is named, listed under
"unscored" in the JSON and left out of the means; the exit code is then 1. Folders whose names do not match
are refused (exit 2) and nothing is written.

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


def _score(summary: dict, metric: str) -> list[str]:
    mean, std = summary[f"{metric}_mean"], summary[f"{metric}_std"]
    return ["-", "-"] if mean is None else [f"{mean:.4f}", f"{std:.4f}"]


def _check_output(output: Path, pairing, default: bool) -> None:
    """Before any mask is read: the JSON can be written there and is not one of the masks."""
    from nnunet_qpg.safe_io import UnsafeOutputError, check_output_location, make_output_folder, refuse_link

    if output.is_dir():
        raise UnsafeOutputError(f"-o {output} is a folder; give the path of a JSON file, e.g. "
                                f"{output / 'evaluation.json'}")
    if output.name.endswith((".nii", ".nii.gz")):
        raise UnsafeOutputError(f"-o {output} is named like a mask; give the path of a JSON file, e.g. evaluation.json")
    refuse_link(output)
    make_output_folder(output.parent, "the predictions folder (evaluation.json goes there unless -o names a file)"
                       if default else "the output folder (-o)")
    check_output_location(output, inputs=pairing.files(), option="-o")


def _run(args: argparse.Namespace) -> int:
    from nnunet_qpg.evaluation import EvaluationError, evaluate_pairs, format_table, pair_files
    from nnunet_qpg.safe_io import write_json_atomically

    try:
        pairing = pair_files(args.predictions, args.ground_truth)
    except EvaluationError as error:
        print(f"evaluate: {error}", file=sys.stderr)
        return 2
    output = args.output or args.predictions / "evaluation.json"
    _check_output(output, pairing, default=args.output is None)
    evaluation = evaluate_pairs(pairing, args.label)
    for row in evaluation.unscored:
        print(f"evaluate: case {row['case']} not scored: {row['problem']}", file=sys.stderr)
    if not evaluation.images and not evaluation.volumes:
        print(f"evaluate: no pair of {args.predictions} and {args.ground_truth} could be scored (see above); "
              f"{output} not written", file=sys.stderr)
        return 1
    write_json_atomically(output, evaluation.to_dict())
    summary = evaluation.summary()
    rows = [["IoU (Eq. 10)", *_score(summary, "iou"), str(summary["images"])],
            ["DSC (Eq. 11)", *_score(summary, "dsc"), str(summary["images"])]]
    if "volumes" in summary:
        rows.append(["3D Dice per volume", *_score(summary, "dice_3d"), str(summary["volumes"])])
    print(format_table(rows, ["metric", "mean", "std", "n"]))
    if not evaluation.images:
        print("no 2D image was scored: the ground truth of the scored volumes has no foreground slice"
              f"{' with label(s) ' + ', '.join(map(str, args.label)) if args.label else ''} (IoU / DSC: null)")
    missing = evaluation.missing_predictions
    if missing:
        print(f"{len(missing)} ground-truth case(s) without a prediction (not scored): "
              f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    print(f"per-image results: {output}")
    if evaluation.unscored:
        scored = len(pairing.pairs) + len(pairing.ambiguous) - len(evaluation.unscored)
        print(f"evaluate: {len(evaluation.unscored)} case(s) not scored (named above, listed under 'unscored' in "
              f"{output}); the scores cover the other {scored}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.safe_io import guarded

    return guarded("evaluate", lambda: _run(args))
