"""Running a per-volume prediction over a folder the way a clinic needs it: resumable, robust, splittable, safe.

Before anything is loaded or written, the whole setup is checked, and a problem ends the run with one message
and exit code 2: the options (--num-parts, --part-id, -f, -device), the input folder, the output location (never
the input folder, inside it, holding it, or inside a model folder; links resolved), the model folders, then the
output folder is created and proven writable, and only then are the checkpoints checked (data only, see
:mod:`nnunet_qpg.safe_io`) and the models loaded.

Then, volume by volume:

- every mask records where it came from: the NIfTI header's description field holds the command, a SHA-256
  of the input file and a SHA-256 of the model files (plans.json, dataset.json and the checkpoints used), see
  :class:`MaskSource`. A mask counts as "already done" only when it records this very input, command and model;
  an existing mask of another input or model, or a file nnunet-qpg did not write, is never kept as done and
  never replaced silently: it is named and skipped (--overwrite predicts the volume again and replaces it). The
  record lives in the mask itself, so it is written atomically with it and concurrent --num-parts runs share no
  index file;
- files whose names map to one case name (``scan.nii``, ``scan.nii.gz``, ``scan_0000.nii.gz``) would share one
  mask: every one of them is named and skipped, the others go on;
- an unreadable volume (missing, corrupt, truncated .nii or .nii.gz, not 3D, NaN/inf voxels unless
  ``--non-finite replace``) is reported with the reason and skipped, the batch goes on;
- masks are written under a temporary name with the user's umask and renamed, so a mask under its final name is
  always complete, and a link at a mask's name is never written through;
- `num_parts` / `part_id` split the cases (sorted by case name) across machines like nnUNetv2_predict.

The run ends 0 when every volume of this part has its mask, 1 when some were skipped (listed), 2 on bad setup.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import SimpleITK as sitk

from nnunet_qpg.commands.arguments import non_negative_int, positive_int
from nnunet_qpg.imaging.case_names import collision_problem, files_by_case, list_volumes
from nnunet_qpg.imaging.reading import NON_FINITE_CHOICES, UnreadableImageError, error_line, read_image_header
from nnunet_qpg.inference import AxialVolume, ModelFolderError, parse_fold, read_axial_volume, this_part
from nnunet_qpg.safe_io import (
    UnsafeCheckpointError,
    UnsafeOutputError,
    check_output_location,
    make_output_folder,
    missing_folders,
    remove_empty_folders,
    write_image_atomically,
)

PredictFn = Callable[[AxialVolume, Callable[[], None]], sitk.Image]

ITK_NOTE_KEY = "ITK_FileNotes"  # ITK's name for the NIfTI header's description ("descrip", 79 characters at most)
NOTE_DIGITS = 20  # hex digits (80 bits) of each SHA-256 kept in the note: identity, not a signature


class BatchSetupError(Exception):
    """A problem with the options or the environment, found before anything is loaded or written (exit 2)."""


class MaskWriteError(Exception):
    """The output side failed mid-batch (disk full, folder removed): the batch stops; finished masks stay."""


def file_digest(paths: Sequence[Path]) -> str:
    """SHA-256 (hex) of the bytes of ``paths`` in order, each prefixed by its length, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.stat().st_size}:".encode())
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class MaskSource:
    """What a mask was predicted from, as recorded in its NIfTI header: the command, the input file's SHA-256
    and the model files' SHA-256 (both shortened to NOTE_DIGITS hex digits)."""

    command: str
    input: str
    model: str

    @classmethod
    def of(cls, command: str, input_path: Path, model_digest: str) -> "MaskSource":
        return cls(command, file_digest([input_path])[:NOTE_DIGITS], model_digest[:NOTE_DIGITS])

    @property
    def note(self) -> str:
        # at most 79 characters: "nnunet-qpg predict-kits19 input:" + 20 + " model:" + 20
        return f"nnunet-qpg {self.command} input:{self.input} model:{self.model}"

    @classmethod
    def parse(cls, note: str) -> "MaskSource | None":
        parts = note.split()
        if (len(parts) != 4 or parts[0] != "nnunet-qpg" or not parts[2].startswith("input:")
                or not parts[3].startswith("model:")):
            return None
        return cls(parts[1], parts[2][len("input:"):], parts[3][len("model:"):])

    def difference(self, recorded: "MaskSource", input_name: str) -> str | None:
        """How ``recorded`` (an existing mask's source) differs from this one, or None if it is the same."""
        if recorded.input != self.input:
            return f"is the mask of another input named like {input_name} (different file content)"
        if recorded.command != self.command:
            return f"was made by `nnunet-qpg {recorded.command}`, not `nnunet-qpg {self.command}`"
        if recorded.model != self.model:
            return (f"was predicted from {input_name} by another model (its plans.json, dataset.json or "
                    f"checkpoints differ)")
        return None


def recorded_source(mask_path: Path) -> MaskSource | None:
    """The source recorded in an existing mask's header, or None when it holds none (not written by nnunet-qpg).

    Raises UnreadableImageError when the mask file is not a readable image.
    """
    reader = read_image_header(mask_path)
    note = reader.GetMetaData("descrip").strip() if reader.HasMetaDataKey("descrip") else ""
    return MaskSource.parse(note)


@dataclass
class BatchOutcome:
    predicted: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: problem", nothing written for them
    replaced_non_finite: list[str] = field(default_factory=list)  # "name: N voxel(s)" under --non-finite replace

    def summary(self, command: str, output_folder: Path) -> str:
        lines = [f"{command}: {len(self.predicted)} volume(s) predicted, {len(self.already_done)} already done, "
                 f"{len(self.skipped)} skipped; masks in {output_folder}"]
        if self.replaced_non_finite:
            lines.append("predicted after replacing NaN/inf voxels (--non-finite replace: NaN and -inf set to the "
                         "volume's lowest finite value, +inf to its highest):")
            lines += [f"  {entry}" for entry in self.replaced_non_finite]
        if self.skipped:
            lines.append("skipped (nothing written for them):")
            lines += [f"  {problem}" for problem in self.skipped]
        return "\n".join(lines)


def _existing_output_problem(target: Path, source: Path, expected: MaskSource) -> str | None:
    """None when ``target`` is the mask this run would write for ``source``, else why it may not be kept as done."""
    try:
        recorded = recorded_source(target)
    except UnreadableImageError as error:
        return f"{target} exists but is not a readable mask ({error.problem})"
    if recorded is None:
        return f"{target} exists and was not written by nnunet-qpg, so it is not known to be the mask of {source.name}"
    difference = expected.difference(recorded, source.name)
    return None if difference is None else f"{target} {difference}"


def predict_folder(
    input_folder: Path,
    output_folder: Path,
    predict: PredictFn,
    num_parts: int = 1,
    part_id: int = 0,
    overwrite: bool = False,
    non_finite: str = "refuse",
    command: str = "predict",
    model_digest: str = "",
) -> BatchOutcome:
    """Predict every volume of `input_folder` (this part of it) into `output_folder/{case}.nii.gz`.

    `predict(volume, tick)` returns the mask image and calls `tick()` once per slice (for the progress bar).
    Collisions are found over the whole folder before it is split, so no two parts write one mask. Each mask
    records its :class:`MaskSource` (``command``, the input, ``model_digest``: :func:`file_digest` of the model
    files); an existing mask counts as done only if it records the same.
    """
    from tqdm import tqdm

    if not input_folder.is_dir():
        raise FileNotFoundError(f"{input_folder} is not a folder; give a folder of .nii.gz CT volumes with -i")
    grouped = files_by_case(input_folder)
    cases = this_part(sorted(grouped), num_parts, part_id)
    outcome = BatchOutcome()
    progress = tqdm(cases, desc="volumes", unit="volume", file=sys.stderr)

    def skip(problem: str) -> None:
        outcome.skipped.append(problem)
        progress.write(f"skipped {problem}")

    for case in progress:
        if len(grouped[case]) > 1:
            skip(f"{input_folder}: {collision_problem(case, grouped[case])}")
            continue
        path = grouped[case][0]
        target = output_folder / f"{case}.nii.gz"
        if target.is_symlink():
            skip(f"{target} is a symbolic link; nnunet-qpg never writes through a link (it would change the "
                 f"link's target). Remove the link, or choose another -o")
            continue
        try:
            source = MaskSource.of(command, path, model_digest)
        except OSError as error:
            skip(f"{path}: cannot be read ({error.strerror or error})")
            continue
        if target.exists() and not overwrite:
            problem = _existing_output_problem(target, path, source)
            if problem is None:
                outcome.already_done.append(path.name)
            else:
                skip(f"{problem}; it is kept. Pass --overwrite to predict {path.name} again and replace it, or "
                     f"choose another -o")
            continue
        try:
            volume = read_axial_volume(path, non_finite=non_finite)
        except UnreadableImageError as error:
            skip(str(error))
            continue
        with tqdm(total=volume.slices_rows_cols.shape[0], desc=path.name, unit="slice", leave=False,
                  file=sys.stderr) as slices:
            mask = predict(volume, slices.update)
        mask.SetMetaData(ITK_NOTE_KEY, source.note)
        try:
            write_image_atomically(mask, target)
        except UnsafeOutputError as error:  # a link planted while the volume was predicted
            skip(str(error))
            continue
        except (OSError, RuntimeError) as error:  # ITK reports a full disk as RuntimeError
            raise MaskWriteError(f"cannot write {target}: {error_line(error)}") from None
        outcome.predicted.append(path.name)
        if volume.non_finite_replaced:
            outcome.replaced_non_finite.append(f"{path.name}: {volume.non_finite_replaced} voxel(s)")
    return outcome


def check_batch_arguments(args: argparse.Namespace) -> None:
    """The checks argparse cannot make alone (--part-id against --num-parts), as argparse words them."""
    if not 0 <= args.part_id < args.num_parts:
        raise BatchSetupError(f"argument --part-id: must be in 0..{args.num_parts - 1} for --num-parts "
                              f"{args.num_parts}, got {args.part_id}")


def checked_device(choice: str | None) -> str:
    """The torch device to use: ``choice`` if this machine has it (else BatchSetupError naming the fix); by
    default cuda when available, else cpu."""
    import torch

    if choice is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise BatchSetupError("argument -device cuda: no CUDA GPU is available here (torch.cuda.is_available() is "
                              "False); use -device cpu, or leave -device out to use a GPU only when there is one")
    if choice == "mps" and not torch.backends.mps.is_available():
        raise BatchSetupError("argument -device mps: Apple's MPS backend is not available here; use -device cpu")
    return choice


def _model_digest(files: Sequence[Path]) -> str:
    try:
        return file_digest(files)
    except OSError as error:
        raise ModelFolderError(f"cannot read {error.filename}: {error.strerror or error}") from None


def run_prediction_batch(command: str, args: argparse.Namespace,
                         setup: Callable[[str], tuple[Callable[[], PredictFn], Sequence[Path]]],
                         models: Sequence[Path] = ()) -> int:
    """A volume-prediction command's whole run: exit 0 all predicted, 1 some volumes skipped, 2 bad setup.

    ``setup(device)`` makes the cheap checks of the model folders (dataset.json, folds, checkpoint files) and
    returns ``(load, model_files)``: ``load()`` checks the checkpoints and loads the model(s), returning
    ``predict(volume, tick)`` for :func:`predict_folder`; ``model_files`` are every file that defines the
    prediction (plans.json, dataset.json, the checkpoints used), whose digest each mask records. ``models`` are
    the model folders, which the output must not lie in. The order of the checks is the module docstring's:
    nothing is loaded before the output folder is known to be writable.
    """
    created: list[Path] = []
    try:
        check_batch_arguments(args)
        if not args.input.is_dir():
            raise FileNotFoundError(f"-i {args.input} is not a folder; give a folder of .nii.gz CT volumes")
        if not list_volumes(args.input):
            raise FileNotFoundError(f"-i {args.input} holds no .nii.gz or .nii volume (hidden files are left out); "
                                    f"give the folder of the CT volumes")
        check_output_location(args.output, inputs=[args.input], models=models, option="-o")
        device = checked_device(args.device)  # imports torch: after the checks that need nothing
        load, model_files = setup(device)
        created = missing_folders(args.output)
        make_output_folder(args.output, "-o")
        predict = load()
        outcome = predict_folder(args.input, args.output, predict, num_parts=args.num_parts,
                                 part_id=args.part_id, overwrite=args.overwrite, non_finite=args.non_finite,
                                 command=command, model_digest=_model_digest(model_files))
    except (BatchSetupError, ModelFolderError, UnsafeOutputError, UnsafeCheckpointError, FileNotFoundError,
            NotADirectoryError, ValueError) as error:
        remove_empty_folders(created)
        prefix = f"nnunet-qpg {command}: error:" if isinstance(error, BatchSetupError) else f"{command}:"
        print(f"{prefix} {error}", file=sys.stderr)
        return 2
    except MaskWriteError as error:
        print(f"{command}: {error}; the masks written so far are complete: fix the problem (disk space, "
              f"permissions) and rerun the same command to finish", file=sys.stderr)
        return 2
    print(outcome.summary(command, args.output))
    return 1 if outcome.skipped else 0


def fold_argument(text: str) -> int | str:
    """argparse ``type=`` for folds: a non-negative integer or 'all' (argparse prints the rule otherwise)."""
    try:
        return parse_fold(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """-i, -o, --num-parts, --part-id, --overwrite, --non-finite, -device, -chk, --disable-tta: the options every
    volume-prediction command shares."""
    parser.add_argument("-i", "--input", type=Path, required=True, help="folder of 3D CT volumes (.nii.gz or .nii)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="folder for the masks ({case}.nii.gz); created if missing. It must not be the input "
                             "folder, lie inside it or hold it, nor lie inside a model folder")
    parser.add_argument("--num-parts", type=positive_int, default=1,
                        help="split the batch into this many parts (default 1)")
    parser.add_argument("--part-id", type=non_negative_int, default=0,
                        help="which part this run predicts, 0..num-parts-1")
    parser.add_argument("--overwrite", action="store_true",
                        help="predict again volumes whose mask exists and replace it, also masks of other inputs "
                             "or models and files nnunet-qpg did not write (which are otherwise named and kept)")
    parser.add_argument("--non-finite", choices=NON_FINITE_CHOICES, default="refuse",
                        help="volumes with NaN or infinite voxels: 'refuse' (default: named and skipped, exit 1) "
                             "or 'replace' (NaN and -inf become the volume's lowest finite value, +inf its highest; "
                             "predicted, and listed in the summary)")
    parser.add_argument("-device", "--device", choices=("cuda", "cpu", "mps"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name in fold_X/ (default checkpoint_final.pth)")
    parser.add_argument("--disable-tta", action="store_true",
                        help="no mirroring at test time (faster; nnU-Net mirrors by default)")
