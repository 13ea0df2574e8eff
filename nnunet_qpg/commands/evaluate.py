"""The paper's metrics for a folder of predicted masks: per-image IoU and DSC (Eqs. 10-11), their mean and
standard deviation over images, and per-case scores for 3D volumes.

Predictions ({case}.nii.gz) are matched by name to the ground truth: an nnU-Net labels folder (labelsTs/) or a
KiTS19 data folder (case_XXXXX/segmentation.nii.gz). 3D volumes contribute every axial slice with ground-truth
foreground as one image. Empty masks: both empty -> IoU = DSC = 1; exactly one empty -> 0.
The evaluated structure is any label > 0 (the paper's kidney mask: kidney or tumour) unless --label is given.

Per 3D volume (case), beside the per-slice scores: the 3D Dice, surface Dice at --surface-tolerance mm (default 1)
and HD95 (mm) of the evaluated structure, using the voxel spacing of the ground truth's header; the number of
false-positive slices (axial slices where the prediction has foreground and the ground truth has none); and the
KiTS19 challenge's per-case Dice of kidney (labels 1 + 2) and tumour (label 2) when both masks hold only labels
0, 1, 2. Surface: foreground voxels with a background 6-neighbour; surface Dice: surface voxels of both masks
within the tolerance of the other's surface, over all; HD95: 95th percentile of both directions' surface
distances pooled. Both masks empty: surface Dice 1, HD95 0; one empty: surface Dice 0, HD95 null (left out of
its mean). The tumour Dice is n/a (null) when no prediction holds label 2 (a kidney-only model's masks).
Printed: the means (HD95 over the volumes where it is defined) and a row per volume; the JSON holds them all.

Each prediction must lie on its ground truth's voxel grid (same size, spacing, origin and direction). A pair
that cannot be scored (a truncated or corrupt file, another grid, two files for one case) is named, listed under
"unscored" in the JSON and left out of the means; the exit code is then 1. Folders whose names do not match
are refused (exit 2) and nothing is written.

examples:
  nnunet-qpg evaluate pred_2d/ $nnUNet_raw/Dataset701_KiTS19Kidney2D/labelsTs -o metrics.json
  nnunet-qpg evaluate pred_volumes/ /data/kits19/data --label 2        # tumour only, on whole volumes
  nnunet-qpg evaluate kits19_masks/ /data/kits19/data --surface-tolerance 2
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

SHOWN_VOLUMES = 30  # per-volume rows printed (all are in the JSON)


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"a distance in mm >= 0 is needed, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", type=Path, help="folder of predicted masks ({case}.nii.gz)")
    parser.add_argument("ground_truth", type=Path, help="folder of ground-truth masks, or a KiTS19 data folder")
    parser.add_argument("--label", type=int, nargs="+", default=None,
                        help="label value(s) forming the evaluated structure (default: any label > 0)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="JSON file for the results (default: PREDICTIONS/evaluation.json)")
    parser.add_argument("--surface-tolerance", type=_tolerance, default=1.0, metavar="MM",
                        help="tolerance of the per-volume surface Dice in mm (default: 1.0)")


def _score(summary: dict, metric: str, digits: int = 4) -> list[str]:
    mean, std = summary[f"{metric}_mean"], summary[f"{metric}_std"]
    return ["-", "-"] if mean is None else [f"{mean:.{digits}f}", f"{std:.{digits}f}"]


def _value(value, digits: int = 4, none: str = "-") -> str:
    if value is None:
        return none
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _volume_rows(summary: dict, tumor_scored: bool) -> list[list[str]]:
    """The per-volume means of the summary table."""
    tolerance = f"{summary['surface_tolerance_mm']:g}"
    volumes = str(summary["volumes"])
    rows = [["3D Dice per volume", *_score(summary, "dice_3d"), volumes],
            [f"surface Dice @ {tolerance} mm", *_score(summary, "surface_dice"), volumes],
            ["HD95 (mm)", *_score(summary, "hd95_mm", 2), str(summary["hd95_volumes"])],
            ["false-positive slices", *_score(summary, "false_positive_slices", 2), volumes]]
    if summary["kits19_volumes"]:
        kits = str(summary["kits19_volumes"])
        rows.append(["KiTS19 kidney Dice (1+2)", *_score(summary, "kits19_kidney_dice"), kits])
        if tumor_scored:
            rows.append(["KiTS19 tumour Dice (2)", *_score(summary, "kits19_tumor_dice"), kits])
            rows.append(["KiTS19 composite Dice", _value(summary["kits19_composite_dice"]), "", kits])
        else:
            rows.append(["KiTS19 tumour Dice (2)", "n/a", "", "-"])
    return rows


def _per_volume_table(volumes: list[dict], tolerance: float) -> str:
    from nnunet_qpg.evaluation import format_table

    rows = [[row["case"], _value(row["dice_3d"]), _value(row["surface_dice"]), _value(row["hd95_mm"], 2),
             f"{row['false_positive_slices']}/{row['predicted_slices']}", _value(row["kits19_kidney_dice"]),
             _value(row["kits19_tumor_dice"], none="n/a" if row["kits19_kidney_dice"] is not None else "-")]
            for row in volumes[:SHOWN_VOLUMES]]
    header = ["case", "3D Dice", f"surface Dice @ {tolerance:g} mm", "HD95 (mm)", "FP slices/predicted",
              "KiTS19 kidney", "KiTS19 tumour"]
    table = format_table(rows, header)
    if len(volumes) > SHOWN_VOLUMES:
        table += f"\n... {len(volumes) - SHOWN_VOLUMES} more volume(s) in the JSON"
    return table


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
    evaluation = evaluate_pairs(pairing, args.label, args.surface_tolerance)
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
        rows += _volume_rows(summary, evaluation.tumor_predicted)
    print(format_table(rows, ["metric", "mean", "std", "n"]))
    if summary.get("kits19_volumes") and not evaluation.tumor_predicted:
        print("KiTS19 tumour Dice: n/a, no prediction holds label 2 (a kidney-only model's masks)")
    if evaluation.volumes:
        print()
        print(_per_volume_table(evaluation.volumes, evaluation.surface_tolerance_mm))
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
