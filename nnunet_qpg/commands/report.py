"""Several trained models side by side, like the paper's Table 1: trainer, strategy, train and test IoU / DSC
(mean ± std over images, Eqs. 10-11) and trainable parameters.

Train scores come from nnU-Net's cross-validation of each model (fold_X/validation/summary.json); test scores
from an `nnunet-qpg evaluate` JSON per model (--test, in the order of the model folders). Trainable parameters
come from fold_X/qpg_settings.json, which the nnunet-qpg trainers write. A folder that holds no fold_X/ with a
checkpoint, validation results or qpg_settings.json, an unreadable settings or summary file, or a --test file that
is not an evaluate JSON is refused with a message naming it (exit 2). -o must not lie inside a model folder.

example:
  nnunet-qpg report $nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainerQPG__nnUNetPlans__2d \\
                    $nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainer_Paper__nnUNetPlans__2d \\
                    --test eval_qpg.json eval_baseline.json -o table1.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", type=Path, nargs="+", help="trained model folders")
    parser.add_argument("--test", type=Path, nargs="+", default=None,
                        help="one `nnunet-qpg evaluate` JSON per model folder, same order")
    parser.add_argument("--names", nargs="+", default=None, help="row names (default: trainer names)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write the table as JSON here")


def _check_output(output: Path, args: argparse.Namespace) -> None:
    from nnunet_qpg.safe_io import UnsafeOutputError, check_output_location, make_output_folder, refuse_link

    refuse_link(output)
    if output.is_dir():
        raise UnsafeOutputError(f"-o {output} is a folder; give the path of a JSON file, e.g. {output / 'table1.json'}")
    make_output_folder(output.parent, "the output folder (-o)")
    check_output_location(output, inputs=args.test or [], models=args.models, option="-o")


def _run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from nnunet_qpg.evaluation import format_table
    from nnunet_qpg.model_report import ReportError, model_row, table_rows
    from nnunet_qpg.safe_io import write_json_atomically

    for option, values in (("--test", args.test), ("--names", args.names)):
        if values is not None and len(values) != len(args.models):
            print(f"report: {option} needs one entry per model folder ({len(args.models)}), got {len(values)}",
                  file=sys.stderr)
            return 2
    missing = [str(p) for p in [*args.models, *(args.test or [])] if not p.exists()]
    if missing:
        print(f"report: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.output:
        _check_output(args.output, args)
    try:
        rows = [model_row(folder, args.test[i] if args.test else None, args.names[i] if args.names else None)
                for i, folder in enumerate(args.models)]
    except ReportError as error:
        print(f"report: {error}", file=sys.stderr)
        return 2
    header, body = table_rows(rows)
    print(format_table(body, header))
    if args.output:
        write_json_atomically(args.output, [asdict(row) for row in rows])
    return 0


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.safe_io import guarded

    return guarded("report", lambda: _run(args))
