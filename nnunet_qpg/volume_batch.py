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

from nnunet_qpg.commands.arguments import non_negative_float, non_negative_int, positive_int
from nnunet_qpg.dicom import DicomSeriesError
from nnunet_qpg.imaging.case_names import collision_problem, files_by_case, list_volumes
from nnunet_qpg.imaging.reading import (NON_FINITE_CHOICES, UnreadableImageError, error_line, read_image,
                                        read_image_header)
from nnunet_qpg.inference import AxialVolume, ModelFolderError, parse_fold, read_axial_volume, this_part
from nnunet_qpg.volume_outputs import Cleanup, structure_rows, write_overlay, write_summary
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

DICOM_MAGIC_OFFSET = 128  # a DICOM file (Part 10) holds "DICM" after a 128-byte preamble


@dataclass(frozen=True)
class VolumeInput:
    """One volume to predict: a NIfTI file, or a DICOM CT series (``series``: a ``nnunet_qpg.dicom.SeriesRef``).

    ``files`` are the files whose bytes define the input (their digest is recorded in the mask); ``label`` names
    it in messages (the file name, or the series' folder).
    """

    case: str
    files: tuple[Path, ...]
    label: str
    series: object = None

    def read(self, non_finite: str) -> tuple[AxialVolume, object]:
        """(the volume, the DICOM series' metadata or None). Raises UnreadableImageError or DicomSeriesError."""
        if self.series is None:
            return read_axial_volume(self.files[0], non_finite=non_finite), None
        from nnunet_qpg.dicom import read_ct_series
        from nnunet_qpg.imaging.axial import axial_pixels

        image, metadata = read_ct_series(self.series)
        return AxialVolume(self.series.folder, image, axial_pixels(image)), metadata


def holds_dicom(folder: Path) -> bool:
    """Whether any file below ``folder`` (hidden ones left out) starts like a DICOM Part 10 file."""
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        if path.name.endswith((".nii", ".nii.gz")):
            continue
        try:
            with open(path, "rb") as stream:
                stream.seek(DICOM_MAGIC_OFFSET)
                if stream.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def find_inputs(input_folder: Path) -> dict[str, list[VolumeInput]]:
    """case name -> the input(s) that would write its mask: the folder's NIfTI files (by case name) and the DICOM
    CT series anywhere below it (by folder path, ``nnunet_qpg.dicom.find_series``). More than one input per case
    is kept as a list, so the batch names them all instead of picking one."""
    inputs: dict[str, list[VolumeInput]] = {}
    for case, paths in files_by_case(input_folder).items():
        inputs[case] = [VolumeInput(case, (path,), path.name) for path in paths]
    if holds_dicom(input_folder):
        from nnunet_qpg.dicom import find_series

        for ref in find_series(input_folder):
            inputs.setdefault(ref.name, []).append(
                VolumeInput(ref.name, tuple(ref.files), f"{ref.folder} (DICOM series)", ref))
    return inputs


def input_collision_problem(case: str, inputs: Sequence[VolumeInput]) -> str:
    """One sentence naming every input that maps to ``case``, and the fix."""
    if all(item.series is None for item in inputs):
        return collision_problem(case, [item.files[0] for item in inputs])
    names = ", ".join(item.label for item in inputs)
    return (f"{names} all map to the case name {case!r} (output {case}.nii.gz), so nnunet-qpg cannot tell which "
            f"one is meant; rename or move all but one of them")

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
    def of(cls, command: str, input_files: Path | Sequence[Path], model_digest: str) -> "MaskSource":
        files = [input_files] if isinstance(input_files, Path) else list(input_files)
        return cls(command, file_digest(files)[:NOTE_DIGITS], model_digest[:NOTE_DIGITS])

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
                    f"checkpoints differ) or with other cleanup options (--largest-components, --min-component-ml)")
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
    completed: list[str] = field(default_factory=list)  # "name: kinds" made for masks already done
    structures: dict[str, list] = field(default_factory=dict)  # case -> summary rows (volume_outputs)
    summary_files: tuple[Path, ...] = ()
    summary_note: str | None = None  # why no summary was written
    nifti_only: list[str] = field(default_factory=list)  # NIfTI inputs of a run asking for DICOM outputs

    def summary(self, command: str, output_folder: Path) -> str:
        lines = [f"{command}: {len(self.predicted)} volume(s) predicted, {len(self.already_done)} already done, "
                 f"{len(self.skipped)} skipped; masks in {output_folder}"]
        if self.summary_files:
            lines.append(f"per-volume summary (structure volumes in mL, axial slice ranges, components): "
                         f"{', '.join(path.name for path in self.summary_files)}")
        if self.summary_note:
            lines.append(f"no per-volume summary: {self.summary_note}")
        if self.nifti_only:
            lines.append(f"no RT Structure Set / SEG for {len(self.nifti_only)} NIfTI volume(s) "
                         f"({', '.join(self.nifti_only[:3])}{', ...' if len(self.nifti_only) > 3 else ''}): DICOM "
                         f"objects must reference a DICOM CT series; give the series instead")
        if self.completed:
            lines.append("made from masks already done:")
            lines += [f"  {entry}" for entry in self.completed]
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


@dataclass(frozen=True)
class MaskOutputs:
    """What the batch makes of each mask besides writing it (all off by default: the paper's per-slice output).

    ``cleanup``: 3D connected-component cleanup before writing (:class:`nnunet_qpg.volume_outputs.Cleanup`);
    ``rtstruct`` / ``dicom_seg``: a DICOM RT Structure Set / SEG beside the mask, for DICOM inputs;
    ``overlays``: a PNG per volume in OUT/overlays/; ``label_names``: {value: name} for ROIs, summary, overlays.
    """

    cleanup: Cleanup = field(default_factory=Cleanup)
    rtstruct: bool = False
    dicom_seg: bool = False
    overlays: bool = False
    label_names: dict = field(default_factory=dict)

    def derived_files(self, output_folder: Path, case: str, dicom: bool) -> dict[str, Path]:
        """kind -> path of every file this run makes from the mask of ``case`` (DICOM objects only for DICOM)."""
        files = {}
        if dicom and self.rtstruct:
            files["RT Structure Set"] = output_folder / f"{case}_rtstruct.dcm"
        if dicom and self.dicom_seg:
            files["DICOM SEG"] = output_folder / f"{case}_seg.dcm"
        if self.overlays:
            files["overlay"] = output_folder / "overlays" / f"{case}.png"
        return files


def _write_derived(kind: str, path: Path, mask: sitk.Image, item: VolumeInput, volume: AxialVolume | None,
                   metadata, outputs: MaskOutputs) -> None:
    from nnunet_qpg.safe_io import make_output_folder

    if kind == "overlay":
        make_output_folder(path.parent, "-o")
        write_overlay(path, volume.image, mask, outputs.label_names, item.case)
    elif kind == "RT Structure Set":
        from nnunet_qpg.dicom import write_rtstruct

        write_rtstruct(mask, metadata, outputs.label_names, path)
    else:
        from nnunet_qpg.dicom import write_seg

        write_seg(mask, metadata, outputs.label_names, path)


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
    outputs: MaskOutputs | None = None,
) -> BatchOutcome:
    """Predict every volume of `input_folder` (this part of it) into `output_folder/{case}.nii.gz`.

    Inputs are the folder's NIfTI files and the DICOM CT series below it (:func:`find_inputs`).
    `predict(volume, tick)` returns the mask image and calls `tick()` once per slice (for the progress bar).
    Collisions are found over the whole folder before it is split, so no two parts write one mask. Each mask
    records its :class:`MaskSource` (``command``, the input, ``model_digest``: :func:`file_digest` of the model
    files, with the cleanup settings); an existing mask counts as done only if it records the same. The files
    ``outputs`` asks for are made from the mask; a rerun makes the missing ones from a finished mask.
    """
    from tqdm import tqdm

    outputs = outputs or MaskOutputs()
    if not input_folder.is_dir():
        raise FileNotFoundError(f"{input_folder} is not a folder; give a folder of CT volumes (NIfTI files or "
                                f"DICOM series) with -i")
    grouped = find_inputs(input_folder)
    cases = this_part(sorted(grouped), num_parts, part_id)
    outcome = BatchOutcome()
    progress = tqdm(cases, desc="volumes", unit="volume", file=sys.stderr)

    def skip(problem: str) -> None:
        outcome.skipped.append(problem)
        progress.write(f"skipped {problem}")

    for case in progress:
        if len(grouped[case]) > 1:
            skip(f"{input_folder}: {input_collision_problem(case, grouped[case])}")
            continue
        item = grouped[case][0]
        if item.series is None and (outputs.rtstruct or outputs.dicom_seg):
            outcome.nifti_only.append(item.label)
        target = output_folder / f"{case}.nii.gz"
        derived = outputs.derived_files(output_folder, case, dicom=item.series is not None)
        links = [path for path in (target, *derived.values()) if path.is_symlink()]
        if links:
            skip(f"{links[0]} is a symbolic link; nnunet-qpg never writes through a link (it would change the "
                 f"link's target). Remove the link, or choose another -o")
            continue
        try:
            source = MaskSource.of(command, item.files, model_digest)
        except OSError as error:
            skip(f"{item.label}: cannot be read ({error.strerror or error})")
            continue
        volume = metadata = mask = None
        done = target.exists() and not overwrite
        if done:
            problem = _existing_output_problem(target, item.files[0], source)
            if problem is not None:
                skip(f"{problem}; it is kept. Pass --overwrite to predict {item.label} again and replace it, or "
                     f"choose another -o")
                continue
            try:
                mask = read_image(target, dimension=3)
            except UnreadableImageError as error:
                skip(str(error))
                continue
            # a later --rtstruct / --dicom-seg / --overlays for a finished mask reuses the mask
            todo = {kind: path for kind, path in derived.items() if not path.exists()}
        else:
            foreign = [path for path in derived.values() if path.exists()] if not overwrite else []
            if foreign:
                skip(f"{foreign[0]} exists but its mask {target.name} does not, so it is not known to be made from "
                     f"{item.label}; it is kept. Remove it, pass --overwrite, or choose another -o")
                continue
            todo = derived
        if not done or todo:
            try:
                volume, metadata = item.read(non_finite)
            except (UnreadableImageError, DicomSeriesError) as error:
                skip(str(error))
                continue
        if not done:
            with tqdm(total=volume.slices_rows_cols.shape[0], desc=case, unit="slice", leave=False,
                      file=sys.stderr) as slices:
                mask = outputs.cleanup.apply(predict(volume, slices.update))
            mask.SetMetaData(ITK_NOTE_KEY, source.note)
        try:
            if not done:
                write_image_atomically(mask, target)
            for kind, path in todo.items():
                _write_derived(kind, path, mask, item, volume, metadata, outputs)
        except UnsafeOutputError as error:  # a link planted while the volume was predicted
            skip(str(error))
            continue
        except (OSError, RuntimeError) as error:  # ITK reports a full disk as RuntimeError
            raise MaskWriteError(f"cannot write the outputs of {case}: {error_line(error)}") from None
        outcome.structures[case] = structure_rows(case, mask, outputs.label_names)
        if done:
            outcome.already_done.append(item.label)
            if todo:
                outcome.completed.append(f"{item.label}: {', '.join(todo)}")
            continue
        outcome.predicted.append(item.label)
        if volume.non_finite_replaced:
            outcome.replaced_non_finite.append(f"{item.label}: {volume.non_finite_replaced} voxel(s)")
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


def mask_outputs(args: argparse.Namespace, label_names: dict[int, str]) -> MaskOutputs:
    """The :class:`MaskOutputs` of a command line (add_batch_arguments' options)."""
    return MaskOutputs(Cleanup(args.largest_components, args.min_component_ml), rtstruct=args.rtstruct,
                       dicom_seg=args.dicom_seg, overlays=args.overlays, label_names=dict(label_names))


def run_prediction_batch(command: str, args: argparse.Namespace,
                         setup: Callable[[str], tuple[Callable[[], PredictFn], Sequence[Path]]],
                         models: Sequence[Path] = (), label_names: dict[int, str] | None = None) -> int:
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
        dicom = holds_dicom(args.input)
        if not list_volumes(args.input) and not dicom:
            raise FileNotFoundError(f"-i {args.input} holds no .nii.gz or .nii volume and no DICOM series (hidden "
                                    f"files are left out); give the folder of the CT volumes")
        outputs = mask_outputs(args, label_names or {})
        if dicom or outputs.rtstruct or outputs.dicom_seg:
            from nnunet_qpg.dicom import check_dicom_support

            check_dicom_support()
        check_output_location(args.output, inputs=[args.input], models=models, option="-o")
        device = checked_device(args.device)  # imports torch: after the checks that need nothing
        load, model_files = setup(device)
        created = missing_folders(args.output)
        make_output_folder(args.output, "-o")
        predict = load()
        digest = _model_digest(model_files)
        if outputs.cleanup.active:  # the cleanup changes the mask: it belongs to what made it
            digest = hashlib.sha256(f"{digest} {outputs.cleanup.describe()}".encode()).hexdigest()
        outcome = predict_folder(args.input, args.output, predict, num_parts=args.num_parts,
                                 part_id=args.part_id, overwrite=args.overwrite, non_finite=args.non_finite,
                                 command=command, model_digest=digest, outputs=outputs)
        outcome.summary_files, outcome.summary_note = write_summary(
            args.output, outcome.structures, {"command": command, "cleanup": outputs.cleanup.describe() or "none",
                                              "labels": {str(k): v for k, v in sorted(outputs.label_names.items())}},
            args.num_parts, args.part_id)
    except (BatchSetupError, ModelFolderError, UnsafeOutputError, UnsafeCheckpointError, FileNotFoundError,
            NotADirectoryError, ValueError, ImportError) as error:
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
    parser.add_argument("-i", "--input", type=Path, required=True,
                        help="folder of 3D CT volumes: NIfTI files (.nii.gz or .nii) in it and/or DICOM CT series "
                             "anywhere below it (one series per folder, or several told apart by SeriesInstanceUID)")
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
    volume = parser.add_argument_group("whole-volume cleanup (off by default: the paper's per-slice output)")
    volume.add_argument("--largest-components", type=positive_int, default=None, metavar="N",
                        help="keep the N largest 3D connected components (26-connected, over the stacked slices) of "
                             "each label, e.g. 2 for two kidneys")
    volume.add_argument("--min-component-ml", type=non_negative_float, default=None, metavar="ML",
                        help="drop 3D components smaller than this volume in mL")
    extra = parser.add_argument_group("more outputs beside each mask")
    extra.add_argument("--rtstruct", action="store_true",
                       help="a DICOM RT Structure Set per DICOM input series ({case}_rtstruct.dcm: one ROI per label, "
                            "named from dataset.json, referencing the series); needs the 'dicom' extra")
    extra.add_argument("--dicom-seg", action="store_true",
                       help="a DICOM SEG per DICOM input series ({case}_seg.dcm); needs the 'dicom' extra")
    extra.add_argument("--overlays", action="store_true",
                       help="an overlay PNG per volume (overlays/{case}.png): the axial slice with the most structures")
