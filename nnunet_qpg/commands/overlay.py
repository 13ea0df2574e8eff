"""PNG figures like the paper's Fig. 4: CT image, ground truth and each model's prediction side by side.

Works on the converted 2D test images (imagesTs/{case}_0000.nii.gz with labelsTs/) and on 3D volumes (a folder of
{case}_0000.nii.gz or {case}.nii.gz, or a KiTS19 data folder); for a volume the axial slice with the largest
ground-truth area is shown. Each prediction column is titled with its per-image DSC (Eq. 11).

Masks must be on their image's voxel grid; a case whose files cannot be read or do not fit is named and not drawn
(exit 1). The PNG folder (-o) must be writable and separate from the input folders.

example:
  nnunet-qpg overlay --images $nnUNet_raw/Dataset701_KiTS19Kidney2D/imagesTs \\
      --ground-truth $nnUNet_raw/Dataset701_KiTS19Kidney2D/labelsTs \\
      --prediction QPG=pred_qpg --prediction classical=pred_baseline -o figures/ --max 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnunet_qpg.commands.arguments import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="folder of images or volumes (or KiTS19 folder)")
    parser.add_argument("--ground-truth", type=Path, default=None, help="folder of ground-truth masks (optional)")
    parser.add_argument("--prediction", action="append", default=[], metavar="NAME=FOLDER", required=True,
                        help="a model's predicted masks; repeat for several models")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the PNG files")
    parser.add_argument("--max", type=positive_int, default=8, help="at most this many figures (default 8)")
    parser.add_argument("--cases", nargs="+", default=None, help="only these case names")


def _parse_predictions(items: list[str]) -> dict[str, Path]:
    predictions = {}
    for item in items:
        name, separator, folder = item.partition("=")
        if not separator:
            name, folder = Path(item).name, item
        predictions[name] = Path(folder)
    return predictions


def _run(args: argparse.Namespace) -> int:
    from nnunet_qpg.overlays import OverlayError, draw_overlays, plan_overlays
    from nnunet_qpg.safe_io import check_output_location, make_output_folder

    predictions = _parse_predictions(args.prediction)
    try:
        plan = plan_overlays(args.images, args.ground_truth, predictions, args.max, args.cases)
    except OverlayError as error:
        print(f"overlay: {error}", file=sys.stderr)
        return 2
    inputs = [args.images, *([args.ground_truth] if args.ground_truth else []), *predictions.values()]
    check_output_location(args.output, inputs=inputs, option="-o")
    make_output_folder(args.output, "-o")
    result = draw_overlays(plan, args.output)
    for case, problem in result.failed:
        print(f"overlay: case {case} not drawn: {problem}", file=sys.stderr)
    print(f"overlay: {len(result.written)} figure(s) in {args.output}")
    for path in result.written:
        print(f"  {path}")
    return 1 if result.failed else 0


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.safe_io import guarded

    return guarded("overlay", lambda: _run(args))
