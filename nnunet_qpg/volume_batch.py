"""Running a per-volume prediction over a folder the way a clinic needs it: resumable, robust, splittable.

- finished volumes (their mask exists) are skipped, so an interrupted batch is rerun with the same command;
- an unreadable volume is reported with the reason and skipped, the batch goes on, and the run ends non-zero
  with the list of skipped files;
- masks are written under a temporary name and renamed, so a mask under its final name is always complete;
- `num_parts` / `part_id` split one batch across machines exactly like nnUNetv2_predict's options.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import SimpleITK as sitk

from nnunet_qpg.inference import (
    AxialVolume,
    UnreadableVolumeError,
    case_name,
    list_volumes,
    read_axial_volume,
    this_part,
)
from nnunet_qpg.safe_io import write_image_atomically


@dataclass
class BatchOutcome:
    predicted: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "path: problem"

    def summary(self, command: str, output_folder: Path) -> str:
        lines = [f"{command}: {len(self.predicted)} volume(s) predicted, {len(self.already_done)} already done, "
                 f"{len(self.unreadable)} unreadable; masks in {output_folder}"]
        if self.unreadable:
            lines.append("skipped (nothing written for them):")
            lines += [f"  {problem}" for problem in self.unreadable]
        return "\n".join(lines)


def predict_folder(
    input_folder: Path,
    output_folder: Path,
    predict: Callable[[AxialVolume, Callable[[], None]], sitk.Image],
    num_parts: int = 1,
    part_id: int = 0,
    overwrite: bool = False,
) -> BatchOutcome:
    """Predict every volume of `input_folder` (this part of it) into `output_folder/{case}.nii.gz`.

    `predict(volume, tick)` returns the mask image and calls `tick()` once per slice (for the progress bar).
    """
    from tqdm import tqdm

    if not input_folder.is_dir():
        raise FileNotFoundError(f"{input_folder} is not a folder; give a folder of .nii.gz CT volumes with -i")
    volumes = this_part(list_volumes(input_folder), num_parts, part_id)
    output_folder.mkdir(parents=True, exist_ok=True)
    outcome = BatchOutcome()
    progress = tqdm(volumes, desc="volumes", unit="volume", file=sys.stderr)
    for path in progress:
        target = output_folder / f"{case_name(path)}.nii.gz"
        if target.exists() and not overwrite:
            outcome.already_done.append(path.name)
            continue
        try:
            volume = read_axial_volume(path)
        except UnreadableVolumeError as error:
            outcome.unreadable.append(str(error))
            progress.write(f"skipped {error}")
            continue
        with tqdm(total=volume.slices_rows_cols.shape[0], desc=path.name, unit="slice", leave=False,
                  file=sys.stderr) as slices:
            mask = predict(volume, slices.update)
        write_image_atomically(mask, target)
        outcome.predicted.append(path.name)
    return outcome


def run_prediction_batch(command: str, args, make_predict: Callable[[], Callable]) -> int:
    """A volume-prediction command's whole run: exit 0 all predicted, 1 some volumes unreadable, 2 bad setup.

    ``make_predict()`` loads the model(s) and returns ``predict(volume, tick)`` for :func:`predict_folder`; a
    model-folder problem there or a bad input folder is reported with the command's name and ends the run.
    """
    from nnunet_qpg.inference import ModelFolderError

    try:
        outcome = predict_folder(args.input, args.output, make_predict(), num_parts=args.num_parts,
                                 part_id=args.part_id, overwrite=args.overwrite)
    except (ModelFolderError, FileNotFoundError, ValueError) as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
    print(outcome.summary(command, args.output))
    return 1 if outcome.unreadable else 0


def add_batch_arguments(parser) -> None:
    """-i, -o, --num-parts, --part-id, --overwrite: the options every volume-prediction command shares."""
    parser.add_argument("-i", "--input", type=Path, required=True, help="folder of 3D CT volumes (.nii.gz or .nii)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the masks ({case}.nii.gz)")
    parser.add_argument("--num-parts", type=int, default=1, help="split the batch into this many parts (default 1)")
    parser.add_argument("--part-id", type=int, default=0, help="which part this run predicts, 0..num-parts-1")
    parser.add_argument("--overwrite", action="store_true", help="predict again volumes whose mask already exists")
    parser.add_argument("-device", "--device", choices=("cuda", "cpu", "mps"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name in fold_X/ (default checkpoint_final.pth)")
    parser.add_argument("--disable-tta", action="store_true",
                        help="no mirroring at test time (faster; nnU-Net mirrors by default)")


def default_device(choice: str | None) -> str:
    if choice:
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
