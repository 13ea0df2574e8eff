"""Bake QPG / adapter / LoRA layers into plain kernels and write a model stock nnU-Net predicts with.

OUT works as an nnUNet_results folder (it may be $nnUNet_results itself): the model lands in
OUT/<DatasetName>/<SourceTrainer>_baked__<plans>__<configuration>/, e.g. nnUNetTrainerQPG_baked__nnUNetPlans__2d
(plans.json, dataset.json, dataset_fingerprint.json, nnunet_qpg_export.json, fold_X/checkpoint_*.pth with
trainer_name 'nnUNetTrainer' and plain weights). nnU-Net finds the folder by its name and the network by the
checkpoint, so prediction needs neither nnunet-qpg nor TorchQuantum, and gives the same masks:

  nnunet-qpg export $nnUNet_results/Dataset701_KiTS19Kidney2D/nnUNetTrainerQPG__nnUNetPlans__2d exported/
  nnUNet_results=exported nnUNetv2_predict -i imagesTs -o pred -d 701 -c 2d -tr nnUNetTrainerQPG_baked -f 0
  nnUNet_results=exported nnUNetv2_export_model_to_zip -d 701 -c 2d -tr nnUNetTrainerQPG_baked -f 0 -o model.zip

What it writes and refuses: only its own export folder, built aside and swapped in whole. Exporting the same
model again replaces its earlier export (no stale folds); a folder of that name that is not an earlier export of
the same model (a model you trained, another model's export) is refused and left as it is. The model folder is
only read: an OUT inside it is refused, -chk takes file names (a path is refused), and checkpoints are read as
data only (a checkpoint that would need pickled code is refused, never run). Exit 2 on any such problem.

The shipped trainers are found without `nnUNet_extTrainer`; a model of your own trainer files needs their folder
there, as for training.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _fold(value: str) -> str:
    from nnunet_qpg.export import ExportError, fold_folder_name

    try:
        return fold_folder_name(value).removeprefix("fold_")
    except ExportError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix(f"-f {value}: ")) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", type=Path,
                        help="trained model folder (DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION)")
    parser.add_argument("out_folder", type=Path,
                        help="results folder to write the plain model into (created if missing; may be "
                             "$nnUNet_results: the export lands beside the model, in its own *_baked__ folder)")
    add_model_selection_arguments(parser)


def add_model_selection_arguments(parser: argparse.ArgumentParser, what: str = "export") -> None:
    """-f and -chk, choosing folds and checkpoints as `export` does (export-circuits shares them)."""
    parser.add_argument("-f", "--folds", nargs="+", type=_fold, default=None, metavar="FOLD",
                        help=f"folds to {what}, numbers or 'all' (default: every fold_X holding a checkpoint)")
    parser.add_argument("-chk", "--checkpoints", nargs="+", default=None, metavar="NAME",
                        help="checkpoint FILE NAMES inside each fold_X, e.g. checkpoint_final.pth (default: "
                             "checkpoint_final.pth and checkpoint_best.pth where present). A path such as "
                             "MODEL/fold_0/checkpoint_final.pth is refused: give the name, plus -f 0 for one fold")


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.export import ExportError, export_model
    from nnunet_qpg.safe_io import guarded

    def export() -> int:
        try:
            result = export_model(args.model_folder, args.out_folder, args.checkpoints, args.folds)
        except ExportError as error:
            print(f"export: {error}", file=sys.stderr)
            return 2
        _print_result(result, args.out_folder)
        return 0

    return guarded("export", export)


def _print_result(result, out_folder: Path) -> None:
    shown = ", ".join(result.baked_layers[:4]) + (" ..." if len(result.baked_layers) > 4 else "")
    print(f"export: {result.source_trainer} -> {result.exported_trainer} (checkpoints name the stock nnUNetTrainer), "
          f"{len(result.baked_layers)} layer(s) baked{f' ({shown})' if shown else ''}")
    print(f"  checkpoints: {', '.join(result.checkpoints)}")
    print(f"  largest output difference QPG vs baked on a random patch: {result.max_abs_difference:.2e}")
    print(f"  model folder: {result.model_folder}"
          + (" (replaced its earlier export)" if result.replaced_earlier_export else ""))
    if result.skipped_folds:
        print(f"  skipped (no checkpoint): {', '.join(result.skipped_folds)}")
    if result.measured_layers:
        print(f"  note: {len(result.measured_layers)} layer(s) trained as a device would run them "
              f"({result.measured_layers[0]}{', ...' if len(result.measured_layers) > 1 else ''}) are baked from the "
              f"exact distribution of their circuits (noise kept, no shot noise): the expectation of what training "
              f"sampled, as validation used it")
    _, plans, configuration = result.model_folder.name.split("__")
    folds = " ".join(f.removeprefix("fold_") for f in result.folds)
    selection = f"-d {shlex.quote(result.model_folder.parent.name)} -c {shlex.quote(configuration)} " \
                f"-tr {shlex.quote(result.exported_trainer)}" \
                + (f" -p {shlex.quote(plans)}" if plans != "nnUNetPlans" else "") + f" -f {folds}"
    # nnUNetv2_predict reads checkpoint_final.pth unless told otherwise
    names = {c.split("/", 1)[1] for c in result.checkpoints}
    chk = "" if "checkpoint_final.pth" in names else f" -chk {shlex.quote(sorted(names)[0])}"
    results = shlex.quote(str(out_folder))
    print(f"  use it with: nnUNet_results={results} nnUNetv2_predict {selection}{chk} -i IMAGES -o MASKS")
    print(f"  share it with: nnUNet_results={results} nnUNetv2_export_model_to_zip {selection}{chk} -o model.zip")
    if result.missing_for_zip:
        print(f"  note: {', '.join(result.missing_for_zip)} missing (training ended before nnU-Net's final validation);"
              f" nnUNetv2_export_model_to_zip needs them: run `nnUNetv2_train ... --val` on the QPG model, then export "
              f"again")
