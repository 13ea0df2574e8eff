"""Convert KiTS19 (case_XXXXX/imaging.nii.gz + segmentation.nii.gz) into nnU-Net v2 raw 2D datasets, the paper's way.

Cases 0-179 go to imagesTr/labelsTr, 180-199 to imagesTs/labelsTs, the rest are not used.
  kidney task (Dataset701_KiTS19Kidney2D): every axial slice with any label; mask = kidney or tumor.
                                          --background-slices FRACTION (default 0, the paper's protocol)
                                          adds, per TRAINING case, that fraction of its slices without
                                          label (rounded, halves up; a fixed draw seeded by the case name,
                                          nested across fractions), each with an empty mask and named
                                          case_00000_0012_bg; the test split stays the paper's.
  tumor task  (Dataset702_KiTS19Tumor2D): each 8-connected kidney+tumor region of a slice that contains tumor,
                                          cropped to its bounding box; mask = tumor.
Axial slices are found from the header's direction matrix. Every sample is resized to SIZE x SIZE (images
bilinear, masks nearest). Intensities (preset `paper`, the default): clip HU to [-30, 0], then 3x3 mean and
7x7 median filter, applied to the whole slice at native resolution before cropping and resizing. Preset `kits`:
soft-tissue window [-79, 304] (the KiTS19 winners' window), no filters, which keeps kidney/tumor contrast.
  volume task (Dataset703_KiTS19Volumes, 3D, for 3d_fullres): each case whole, CT voxels and geometry as stored
                                          (no window, filters or resizing: nnU-Net's CT normalisation does it),
                                          labels 0 background, 1 kidney, 2 tumor; --preset, --window,
                                          --denoise and --size do not apply (exit 2). See kits19_volume_task.py.

Writes, per dataset: 2D NIfTI images and masks (pixel spacing 1 x 1), dataset.json (settings under
"conversion", the kidney task's with background_slices), manifest.json (image id -> case, slice, crop box,
original size and spacing; "background": true on a slice without label) and splits_final.json (5 folds grouped
by case, a case's slices without label with it). All files get your umask's permissions.

Data safety:
  - dataset.json, manifest.json and splits_final.json appear only when every case of the run is done (converted,
    or reported as bad input). A run that stops early (Ctrl-C, --strict, an output that cannot be written) keeps
    its finished cases; rerun the same command to go on. Interrupted or failed cases leave nothing behind.
  - A dataset that holds cases converted with other settings (preset, window, denoise, size, background
    slices, format) is refused before anything is touched, naming the difference; --rebuild deletes its
    converted files and starts anew. (A kidney dataset converted before --background-slices existed counts as
    fraction 0.)
  - splits_final.json is copied to $nnUNet_preprocessed/DatasetXXX_Name/ only when --output is $nnUNet_raw
    (the dataset nnU-Net will preprocess; a dataset elsewhere gets its split only in its own folder), and only if
    none is there yet or the same one is: a different split there (its folds may already be trained) is left
    untouched and reported, unless --replace-splits.
  - Only the converter's own files are ever deleted: those its case records name and its exact file names
    (case_00000_0012_0000.nii.gz, ...); other files, e.g. in a folder that imagesTr links to, stay. No file is
    written or deleted through a symbolic link at its own name, and a same-named dataset that convert-kits19
    did not make is refused.
  - Cases are read through nnunet-qpg's image reader: truncated .nii/.nii.gz, corrupt files and CT volumes with
    NaN or infinite values are named and skipped (--non-finite replace converts the latter).

Exit codes: 0 every case converted (or already done); 1 some cases are bad input (named in the summary; the
dataset is written from the good ones), no case could be converted, or --strict stopped at a bad case;
2 bad options, a missing or empty input folder, a refused or unwritable output (the run stops at once, naming
the folder; finished cases are kept); 130 interrupted.

example: nnunet-qpg convert-kits19 /data/kits19/data --task both --workers 2
         nnunet-qpg convert-kits19 /data/kits19/data --task kidney --background-slices 0.1
         nnunet-qpg convert-kits19 /data/kits19/data --task volume --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from nnunet_qpg.dataset_conversion.kits19_slices import background_slices, tumor_regions
from nnunet_qpg.dataset_conversion.kits19_volumes import BadCaseError, read_case
from nnunet_qpg.dataset_conversion import kits19_volume_task as volume_task
from nnunet_qpg.dataset_conversion.nnunet_raw_dataset import (
    OutputWriteError,
    RawDataset,
    VolumeDataset,
    grouped_folds,
    images_by_case,
    writing_into,
)
from nnunet_qpg.imaging.intensity import MEAN_FILTER_SIZE, MEDIAN_FILTER_SIZE, window_and_denoise
from nnunet_qpg.imaging.reading import NON_FINITE_CHOICES
from nnunet_qpg.imaging.resizing import resize_image, resize_mask
from nnunet_qpg.safe_io import (
    UnsafeOutputError,
    check_output_location,
    make_output_folder,
    missing_folders,
    remove_empty_folders,
    remove_file,
    write_json_atomically,
)

TASKS = {
    # task: (default dataset id, dataset name, label name of mask value 1)
    "kidney": (701, "KiTS19Kidney2D", "kidney"),
    "tumor": (702, "KiTS19Tumor2D", "tumor"),
    # 3D, labels 0/1/2 (kits19_volume_task)
    volume_task.TASK: (volume_task.DATASET_ID, volume_task.DATASET_NAME, None),
}
PRESETS = {
    "paper": {"window": (-30.0, 0.0), "denoise": True},
    # Soft-tissue window of the KiTS19 winners (Isensee et al.); no median filter, which would erase small tumors.
    "kits": {"window": (-79.0, 304.0), "denoise": False},
}
LAST_TRAIN_CASE, LAST_TEST_CASE = 179, 199
CASE_FOLDER = re.compile(r"^case_(\d{5})$")
FORMAT_VERSION = 1  # bump when the output of the same settings changes, so reruns redo old cases
PROGRAM = "convert-kits19"
BACKGROUND_TASK = "kidney"  # the only task --background-slices applies to
# settings added after the first datasets were made, with the value that reproduces those datasets (per task)
SETTING_DEFAULTS = {BACKGROUND_TASK: {"background_slices": 0.0}}
BACKGROUND_SUFFIX = "_bg"  # image id of a slice without label: case_00000_0012_bg (never a foreground slice's name)


class SetupError(Exception):
    """A problem with the options, the input folder or the output folder: one message, exit 2, nothing written."""


def split_of(case_number: int) -> str | None:
    """'train' for cases 0-179, 'test' for 180-199, None (unused) above."""
    if case_number <= LAST_TRAIN_CASE:
        return "train"
    if case_number <= LAST_TEST_CASE:
        return "test"
    return None


def dataset_folder_name(task: str, dataset_id: int) -> str:
    return f"Dataset{dataset_id:03d}_{TASKS[task][1]}"


@dataclass
class CaseJob:
    """What one worker does: convert one case into the datasets of `targets` (task -> dataset folder)."""

    case_dir: str
    split: str
    targets: dict[str, str]
    settings: dict
    non_finite: str = "refuse"
    # task -> the settings recorded in that task's dataset, where they differ from `settings` (the kidney task's
    # hold background_slices)
    task_settings: dict[str, dict] = field(default_factory=dict)

    def settings_of(self, task: str) -> dict:
        return self.task_settings.get(task, self.settings)


@dataclass
class CaseOutcome:
    """`kind` says whose fault an error is: "input" (a bad case: skipped), "output" (the dataset cannot be
    written: the run stops), "error" (anything else: the case is named, no dataset.json is written)."""

    case_id: str
    error: str | None = None
    kind: str | None = None
    output_folder: str | None = None  # for kind "output": the folder that cannot be written, and why
    output_problem: str | None = None


def convert_case(job: CaseJob) -> CaseOutcome:
    """Convert one case; errors come back as an outcome naming the case, and nothing of the case is kept."""
    case_id = Path(job.case_dir).name
    try:
        _write_case(job)
    except BadCaseError as error:
        return CaseOutcome(case_id, error=str(error), kind="input")
    except OutputWriteError as error:
        return CaseOutcome(case_id, str(error), "output", output_folder=error.folder, output_problem=error.detail)
    except Exception as error:  # a bug or an unforeseen problem: still name the case
        return CaseOutcome(case_id, error=f"{case_id}: {job.case_dir}: {type(error).__name__}: {error}", kind="error")
    return CaseOutcome(case_id)


def _write_case(job: CaseJob) -> None:
    if volume_task.TASK in job.targets:  # the 3D task runs alone (no --task all): its own writer
        volume_task.write_case(job)
        return
    settings = job.settings
    for folder in job.targets.values():  # outputs of a broken run go first, even if the case then fails
        with writing_into(Path(folder)):
            RawDataset(Path(folder)).remove_case(Path(job.case_dir).name)
    window, denoise, size = tuple(settings["window"]), settings["denoise"], settings["size"]
    volumes = read_case(Path(job.case_dir), job.non_finite)
    case_id = volumes.case_id
    slice_spacing, row_spacing, col_spacing = volumes.spacing_zyx
    slice_count = volumes.image_zyx.shape[0]
    fraction = float(job.settings_of(BACKGROUND_TASK).get("background_slices", 0.0))
    if BACKGROUND_TASK in job.targets and job.split == "train" and fraction > 0:
        empty_slices = background_slices(case_id, slice_count, volumes.labelled_slices, fraction)
    else:
        empty_slices = np.zeros(0, dtype=np.int64)
    # slice index -> its labels (a view of the labelled slices), or None for a slice without label
    to_write: dict[int, np.ndarray | None] = dict.fromkeys((int(k) for k in empty_slices), None)
    to_write.update((int(k), labels) for k, labels in zip(volumes.labelled_slices, volumes.labelled_labels))
    case_info = {
        "sitk_axes_slice_row_col": list(volumes.sitk_axes_zyx),
        "volume_size_slice_row_col": list(volumes.image_zyx.shape),
        "spacing_mm_slice_row_col": [slice_spacing, row_spacing, col_spacing],
        "non_finite": job.non_finite,  # not a setting: it changes nothing for a CT without NaN or inf
    }
    with contextlib.ExitStack() as stack:
        writers = {
            task: stack.enter_context(RawDataset(Path(folder)).open_case(case_id))
            for task, folder in job.targets.items()
        }
        for slice_index in sorted(to_write):  # one slice at a time, in slice order
            labels_2d = to_write[slice_index]
            image_2d = window_and_denoise(np.ascontiguousarray(volumes.image_zyx[slice_index]), window, denoise)
            rows, cols = image_2d.shape
            common = {
                "case": case_id,
                "slice_index": int(slice_index),
                "original_slice_size": [rows, cols],
                "pixel_spacing_mm": [row_spacing, col_spacing],
                "slice_spacing_mm": slice_spacing,
            }
            base_id = f"{case_id}_{slice_index:04d}"
            if labels_2d is None:  # a slice without label, drawn for the kidney task's training set: empty mask
                writers[BACKGROUND_TASK].add(
                    job.split,
                    base_id + BACKGROUND_SUFFIX,
                    resize_image(image_2d, size),
                    np.zeros((size, size), dtype=np.uint8),
                    {**common, "region": None, "crop_box_rows_cols": [0, rows, 0, cols], "background": True},
                )
                continue
            if "kidney" in writers:
                writers["kidney"].add(
                    job.split,
                    base_id,
                    resize_image(image_2d, size),
                    resize_mask((labels_2d > 0).astype(np.uint8), size),
                    {**common, "region": None, "crop_box_rows_cols": [0, rows, 0, cols]},
                )
            if "tumor" in writers:
                for region in tumor_regions(labels_2d):
                    box = (slice(region.row_start, region.row_stop), slice(region.col_start, region.col_stop))
                    writers["tumor"].add(
                        job.split,
                        f"{base_id}_{region.region}",
                        resize_image(image_2d[box], size),
                        resize_mask((labels_2d[box] == 2).astype(np.uint8), size),
                        {
                            **common,
                            "region": region.region,
                            "crop_box_rows_cols": [region.row_start, region.row_stop, region.col_start, region.col_stop],
                        },
                    )
        for task, writer in writers.items():
            writer.commit(job.settings_of(task), case_info)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kits19", type=Path, help="KiTS19 data folder holding case_00000/ ... case_00209/")
    parser.add_argument(
        "--task",
        choices=("kidney", "tumor", "both", "volume"),
        default="kidney",
        help="kidney, tumor, both (kidney and tumor, 2D), or volume (3D, labels 0/1/2, for 3d_fullres); "
        "default: kidney",
    )
    parser.add_argument(
        "--dataset-id",
        type=int,
        help="nnU-Net dataset id (default 701 kidney, 702 tumor, 703 volume; with --task both: ID for kidney, "
        "ID+1 for tumor)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="nnU-Net raw folder (default: $nnUNet_raw). Only when it is $nnUNet_raw is splits_final.json also "
        "copied to $nnUNet_preprocessed/DatasetXXX_Name/",
    )
    parser.add_argument("--preset", choices=tuple(PRESETS), help="intensity preset of the 2D tasks (default: paper)")
    parser.add_argument("--window", nargs=2, type=float, metavar=("LOW", "HIGH"), help="HU window, overrides the preset")
    parser.add_argument(
        "--denoise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="3x3 mean + 7x7 median filter after windowing (default: per preset; paper on, kits off)",
    )
    parser.add_argument("--size", type=int, help="2D output images are SIZE x SIZE (default: 256)")
    parser.add_argument(
        "--background-slices",
        type=float,
        metavar="FRACTION",
        help="kidney task only: per training case (0-179), also take this fraction (0 to 1; rounded, halves up) "
        "of its axial slices without kidney or tumour, with empty masks (named case_XXXXX_SSSS_bg), so the "
        "model learns to leave such slices empty; drawn with a fixed seed per case (the same slices on every "
        "rerun, nested across fractions); 1 takes them all. The test split is unchanged. Default: 0, the "
        "paper's protocol (only slices with kidney or tumour). Refused with --task tumor or volume",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes converting cases in parallel (default: 2)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad case instead of skipping it")
    parser.add_argument(
        "--non-finite",
        choices=NON_FINITE_CHOICES,
        default="refuse",
        help="CT voxels that are NaN or infinite: refuse (default: the case is named and skipped) or replace "
        "(NaN and -inf by the volume's lowest finite value, +inf by its highest); segmentations are never repaired",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="delete the converter's own files in the target dataset(s) (images, masks, case records, dataset.json, "
        "manifest and split; files of other names stay) and convert every case anew, e.g. after changing --size",
    )
    parser.add_argument(
        "--replace-splits",
        action="store_true",
        help="replace a different splits_final.json in $nnUNet_preprocessed/DatasetXXX_Name/ (by default it is "
        "left untouched and reported: models may already be trained on its folds)",
    )


def _conversion_settings(args: argparse.Namespace) -> dict:
    if args.task == volume_task.TASK:  # 3D: no window, filters or resizing; 2D options are refused
        try:
            return volume_task.conversion_settings(args)
        except ValueError as error:
            raise SetupError(str(error)) from None
    preset_name = args.preset or "paper"
    size = 256 if args.size is None else args.size
    preset = PRESETS[preset_name]
    window = tuple(args.window) if args.window else preset["window"]
    if not all(np.isfinite(window)) or window[0] >= window[1]:
        raise SetupError(f"--window LOW HIGH needs finite LOW < HIGH, got {window[0]} {window[1]}")
    if size < 8:
        raise SetupError(f"--size must be at least 8, got {size}")
    fraction = getattr(args, "background_slices", None)
    if fraction is not None:
        if args.task not in (BACKGROUND_TASK, "both"):
            raise SetupError(
                f"--background-slices applies to the kidney task only (--task kidney or both): the tumour task's "
                f"samples are crops of kidney regions, and slices without label have none; leave it out with "
                f"--task {args.task}"
            )
        if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise SetupError(f"--background-slices needs a fraction between 0 and 1, got {fraction:g}")
    if args.workers < 1:
        raise SetupError(f"--workers must be at least 1, got {args.workers}")
    return {
        "preset": preset_name,
        "window": [float(window[0]), float(window[1])],
        "denoise": preset["denoise"] if args.denoise is None else bool(args.denoise),
        "mean_filter_size": MEAN_FILTER_SIZE,
        "median_filter_size": MEDIAN_FILTER_SIZE,
        "filter_order": "window, mean, median on the native slice; then crop; then resize",
        "size": int(size),
        "format_version": FORMAT_VERSION,
    }


def task_settings(task: str, settings: dict, args: argparse.Namespace) -> dict:
    """The settings recorded in `task`'s dataset: the run's settings, plus for the kidney task its fraction of
    background slices (0 unless --background-slices; recorded even then, so every kidney dataset says it)."""
    if task != BACKGROUND_TASK:
        return settings
    fraction = getattr(args, "background_slices", None)
    return {**settings, "background_slices": float(fraction or 0.0)}


def _find_cases(kits19: Path) -> list[tuple[int, Path]]:
    """The case folders of the input, checked before any output exists (a wrong input leaves nothing behind)."""
    if not kits19.is_dir():
        what = "does not exist" if not kits19.exists() else "is not a folder"
        raise SetupError(f"{kits19} {what}; give the KiTS19 'data' folder holding case_00000/ ...")
    try:
        cases = sorted(
            (int(m.group(1)), p) for p in kits19.iterdir() if p.is_dir() and (m := CASE_FOLDER.match(p.name))
        )
    except OSError as error:
        raise SetupError(f"cannot list {kits19}: {error.strerror or error}; check its permissions") from None
    if not cases:
        raise SetupError(f"no case_XXXXX folders in {kits19}; give the KiTS19 'data' folder holding case_00000/ ...")
    if all(split_of(number) is None for number, _ in cases):
        raise SetupError(f"{kits19} holds only cases above {LAST_TEST_CASE}, which the paper does not use; "
                         f"cases 0-{LAST_TRAIN_CASE} are converted for training, {LAST_TRAIN_CASE + 1}-"
                         f"{LAST_TEST_CASE} for testing")
    return cases


# -- settings of an existing dataset ------------------------------------------------------------------------------

_SETTING_ORDER = ("preset", "window", "denoise", "size", "background_slices", "format_version")


def _describe_setting(key: str, value) -> str:
    if value is None:
        return "none"
    if key == "denoise":
        return "on" if value else "off"
    if key == "window" and isinstance(value, list) and len(value) == 2:
        return f"[{value[0]:g}, {value[1]:g}]"
    if key == "background_slices" and isinstance(value, (int, float)):
        return f"{value:g}"
    return str(value)


def settings_difference(new: dict, old: dict, dataset_name: str) -> str:
    """e.g. 'size 64 here, 32 in the existing Dataset701_KiTS19Kidney2D'."""
    keys = [key for key in _SETTING_ORDER if key in new or key in old]
    keys += sorted(key for key in set(new) | set(old) if key not in _SETTING_ORDER)
    return "; ".join(
        f"{key.replace('_', ' ')} {_describe_setting(key, new.get(key))} here, "
        f"{_describe_setting(key, old.get(key))} in the existing {dataset_name}"
        for key in keys
        if new.get(key) != old.get(key)
    )


def _options_for(settings: dict) -> str | None:
    """The command-line options that reproduce `settings`, or None if this version cannot (other format)."""
    fixed = {"mean_filter_size": MEAN_FILTER_SIZE, "median_filter_size": MEDIAN_FILTER_SIZE,
             "format_version": FORMAT_VERSION}
    try:
        if any(settings.get(key) != value for key, value in fixed.items()) or settings["preset"] not in PRESETS:
            return None
        low, high = settings["window"]
        denoise = "--denoise" if settings["denoise"] else "--no-denoise"
        options = f"--preset {settings['preset']} --window {low:g} {high:g} {denoise} --size {settings['size']}"
        if settings.get("background_slices"):
            options += f" --background-slices {float(settings['background_slices']):g}"
        return options
    except (KeyError, TypeError, ValueError):
        return None


def _check_existing(dataset: RawDataset, settings: dict, rebuild: bool) -> None:
    """Refuse (SetupError) a dataset of another tool, or one converted with other settings unless `rebuild`."""
    name = dataset.folder.name
    if dataset.is_foreign():
        raise SetupError(
            f"{dataset.folder} exists and was not made by convert-kits19 (it has no .cases/ records), so the "
            f"converter will neither fill nor clean it; move it away or choose another --dataset-id or --output"
        )
    existing = dataset.existing_settings()
    others = [(old, cases) for old, cases in existing if old != settings]
    if others and not rebuild:
        count = sum(len(cases) for _, cases in others if cases != ["dataset.json"])
        holds = f"holds {count} case(s) converted" if count else "was converted"
        difference = " and ".join(settings_difference(settings, old, name) for old, _ in others)
        same = [options for options in (_options_for(old) for old, _ in others) if options]
        rerun = f"rerun with that dataset's settings ({same[0]}), " if len(others) == 1 and same else ""
        raise SetupError(
            f"{dataset.folder} {holds} with other settings: {difference}. Images made with "
            f"different settings must not mix in one dataset. Either {rerun}choose another --output or "
            f"--dataset-id, or pass --rebuild to delete its converted images, masks and records (files of other "
            f"names stay) and convert every case anew."
        )


# -- output folders -----------------------------------------------------------------------------------------------

def _create_output_folders(folders: list[tuple[Path, str]], created: list[Path]) -> None:
    """Create each folder and prove it writable (safe_io.make_output_folder), remembering the folders that did not
    exist before, so a run that converts nothing can take them away again."""
    for folder, option in folders:
        created.extend(path for path in reversed(missing_folders(folder)) if path not in created)
        make_output_folder(folder, option)


# -- dataset files --------------------------------------------------------------------------------------------------

def _dataset_json(task: str, dataset: RawDataset, settings: dict, source: Path, counts: dict) -> dict:
    """nnU-Net's dataset.json content, made by nnU-Net's own generator (in a scratch folder outside the dataset)."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    with tempfile.TemporaryDirectory(prefix="nnunet-qpg-dataset-json-") as scratch:
        generate_dataset_json(
            scratch,
            channel_names={0: "CT"},
            labels=volume_task.LABELS if task == volume_task.TASK else {"background": 0, TASKS[task][2]: 1},
            num_training_cases=counts["train"]["images"],
            file_ending=".nii.gz",
            dataset_name=dataset.folder.name,
            description=volume_task.DESCRIPTION if task == volume_task.TASK else
            f"KiTS19 {task} task as 2D images, following Sun et al. (HQC-TF); made by nnunet-qpg",
            reference="https://kits19.grand-challenge.org/",
            license="CC BY-NC-SA 4.0 (KiTS19)",
            converted_by="nnunet-qpg convert-kits19",
            numTest=counts["test"]["images"],
            conversion={**settings, "task": task, "source": str(source.resolve())},
        )
        return json.loads((Path(scratch) / "dataset.json").read_text())


def _write_dataset_files(task: str, dataset: RawDataset, settings: dict, source: Path):
    """dataset.json, manifest.json and splits_final.json from the case records; returns (counts per split, folds).

    A dataset without any image gets none of them (folds None): a dataset.json would make it look usable.
    """
    rows = [row for record in dataset.records() for row in record.get("images", [])]
    counts = {
        split: {"cases": len(images_by_case(rows, split)), "images": sum(r["split"] == split for r in rows),
                "background": sum(r["split"] == split and r.get("background") is True for r in rows)}
        for split in ("train", "test")
    }
    with writing_into(dataset.folder):
        if not rows:
            dataset.remove_dataset_files()
            return counts, None
        write_json_atomically(dataset.folder / "dataset.json", _dataset_json(task, dataset, settings, source, counts))
        write_json_atomically(dataset.folder / "manifest.json", {"settings": settings, "images": rows})
        train = images_by_case(rows, "train")
        folds = grouped_folds(train) if train else None
        if folds:
            write_json_atomically(dataset.folder / "splits_final.json", folds)
        else:
            remove_file(dataset.folder / "splits_final.json")  # a split of earlier cases would name missing images
    return counts, folds


def _same_folder(first: Path | str, second: Path | str) -> bool:
    return Path(first).resolve() == Path(second).resolve()


def place_preprocessed_splits(dataset: RawDataset, folds: list, output: Path, replace: bool) -> str:
    """Copy the split to $nnUNet_preprocessed/DatasetXXX_Name/ where nnU-Net will look for it, never silently
    over a different one; returns the summary line. Raises OutputWriteError if it cannot be written.

    Only a dataset written to $nnUNet_raw gets its split copied: that is the dataset nnU-Net preprocesses under
    this name. A dataset written elsewhere would otherwise overwrite the split of the dataset of the same name
    that nnU-Net actually uses.
    """
    name, own = dataset.folder.name, dataset.folder / "splits_final.json"
    ours = f"splits_final.json ({_folds(len(folds))} by case) in the dataset folder"
    raw, preprocessed = os.environ.get("nnUNet_raw"), os.environ.get("nnUNet_preprocessed")
    where = Path(preprocessed) / name if preprocessed else Path("$nnUNet_preprocessed") / name
    if not raw or not _same_folder(output, raw):
        why = "nnUNet_raw is not set" if not raw else f"--output is not $nnUNet_raw ({raw})"
        return (f"{ours} only: {why}, so it is not copied to "
                f"{where}/; if you preprocess this dataset, copy it there: cp {own} {where}/")
    if not preprocessed:
        return (f"{ours}; set nnUNet_preprocessed and copy it to "
                f"{where}/ before training (nnU-Net otherwise makes its own split)")
    target = where / "splits_final.json"
    if target.exists() or target.is_symlink():
        try:
            existing = json.loads(target.read_text())
        except (OSError, ValueError):
            existing = None
        if existing == folds:
            return f"{ours}; the same split is already in {target}"
        if not replace:
            what = _folds(len(existing)) if isinstance(existing, list) else "not a list of folds"
            return (f"NOTE: {target} holds a different split ({what}); it is left untouched, since models may "
                    f"already be trained on its folds. To use the new one ({_folds(len(folds))}): rerun with "
                    f"--replace-splits, or cp {own} {target}")
    with writing_into(target.parent):
        replaced = target.exists()
        write_json_atomically(target, folds)
    done = "replaced in" if replaced else "copied to"
    return f"{ours} and {done} {target}"


def _folds(count: int) -> str:
    return f"{count} fold{'' if count == 1 else 's'}"


# -- running ------------------------------------------------------------------------------------------------------

def _run_jobs(jobs: list[CaseJob], workers: int, strict: bool) -> tuple[list[CaseOutcome], str | None]:
    """Run the jobs with a progress bar; returns outcomes and why the run stopped early (None, "strict" or
    "output": a write failed, which every further case would hit too)."""
    from tqdm import tqdm

    outcomes: list[CaseOutcome] = []
    progress = tqdm(total=len(jobs), desc="KiTS19 cases", unit="case", file=sys.stderr)

    def record(outcome: CaseOutcome) -> str | None:
        outcomes.append(outcome)
        progress.update()
        if outcome.kind == "output":
            return "output"
        if outcome.error:
            progress.write(f"skipped {outcome.error}")
            if strict:
                return "strict"
        return None

    try:
        if workers <= 1:
            for job in jobs:
                stop = record(convert_case(job))
                if stop:
                    return outcomes, stop
            return outcomes, None
        # spawn: SimpleITK/ITK hold threads, and forking a threaded process is unsafe
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            pending = set()
            queue = iter(jobs)
            for job in queue:
                pending.add(pool.submit(convert_case, job))
                if len(pending) >= workers:
                    break
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    stop = record(future.result())
                    if stop:
                        for other in pending:
                            other.cancel()
                        return outcomes, stop
                for job in queue:  # one new case per finished one: at most `workers` volumes in memory
                    pending.add(pool.submit(convert_case, job))
                    if len(pending) >= workers:
                        break
        return outcomes, None
    finally:
        progress.close()


def run(args: argparse.Namespace) -> int:
    """The command: exit 0 all converted, 1 some cases bad (or none converted), 2 setup or output problem."""
    try:
        return _run(args)
    except (SetupError, UnsafeOutputError, OutputWriteError) as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside the case loop (which says more): every file is whole, rerun to go on
        print(f"\n{PROGRAM}: interrupted; finished cases are kept, rerun the same command to go on.", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    # everything is checked before anything is created: a wrong input or option leaves no trace
    output = args.output or (Path(os.environ["nnUNet_raw"]) if os.environ.get("nnUNet_raw") else None)
    if output is None:
        raise SetupError("no output folder: pass --output DIR or set nnUNet_raw")
    settings = _conversion_settings(args)
    cases = _find_cases(args.kits19)
    tasks = ["kidney", "tumor"] if args.task == "both" else [args.task]
    datasets: dict[str, RawDataset] = {}
    for offset, task in enumerate(tasks):
        dataset_id = TASKS[task][0] if args.dataset_id is None else args.dataset_id + offset
        if not 1 <= dataset_id <= 999:
            raise SetupError(f"--dataset-id must give ids between 1 and 999 (nnU-Net's), got {dataset_id}")
        kind = VolumeDataset if task == volume_task.TASK else RawDataset
        datasets[task] = kind(output / dataset_folder_name(task, dataset_id), SETTING_DEFAULTS.get(task))
        check_output_location(datasets[task].folder, inputs=[args.kits19], option="dataset folder")
    settings_by_task = {task: task_settings(task, settings, args) for task in datasets}
    for task, dataset in datasets.items():
        _check_existing(dataset, settings_by_task[task], args.rebuild)

    created: list[Path] = []
    try:
        folders = [(output, "--output folder")]
        folders += [(folder, "dataset folder") for dataset in datasets.values() for folder in dataset.folders()]
        _create_output_folders(folders, created)
        return _convert(args, output, settings, settings_by_task, cases, datasets)
    finally:
        # a run that converted nothing leaves no empty Dataset skeleton behind (datasets with cases stay whole)
        kept = [dataset.folder for dataset in datasets.values() if _has_records(dataset)]
        remove_empty_folders(path for path in created if not any(path == k or k in path.parents for k in kept))


def _has_records(dataset: RawDataset) -> bool:
    try:
        return bool(dataset.records())
    except (OSError, UnsafeOutputError):  # cannot tell: keep everything
        return True


def _convert(args, output: Path, settings: dict, settings_by_task: dict[str, dict], cases,
             datasets: dict[str, RawDataset]) -> int:
    with writing_into(output):
        for dataset in datasets.values():
            if args.rebuild:
                dataset.clear()
            dataset.prepare()

    jobs, unused, already_done = [], [], 0
    for case_number, case_dir in cases:
        split = split_of(case_number)
        if split is None:
            unused.append(case_dir.name)
            continue
        targets = {t: str(d.folder) for t, d in datasets.items()
                   if not d.is_done(case_dir.name, settings_by_task[t])}
        if targets:
            own = {t: settings_by_task[t] for t in targets if settings_by_task[t] is not settings}
            jobs.append(CaseJob(str(case_dir), split, targets, settings, args.non_finite, own))
        else:
            already_done += 1
    # a dataset this run changes has no dataset.json until the run is done: it never describes half a dataset
    changing = {target for job in jobs for target in job.targets.values()}
    with writing_into(output):
        for dataset in datasets.values():
            if str(dataset.folder) in changing:
                dataset.remove_dataset_files()
    print(
        f"{PROGRAM}: {len(jobs)} case(s) to convert, {already_done} already done, "
        f"{len(unused)} outside the paper's cases 0-{LAST_TEST_CASE} not used",
        file=sys.stderr,
    )
    try:
        outcomes, stopped = _run_jobs(jobs, args.workers, args.strict)
    except KeyboardInterrupt:
        print(f"\n{PROGRAM}: interrupted; finished cases are kept (no dataset.json yet), rerun the same command to "
              f"go on.", file=sys.stderr)
        return 130
    failures = [outcome for outcome in outcomes if outcome.error]
    if stopped == "output":
        failure = failures[-1]
        raise OutputWriteError(failure.output_folder, f"{failure.output_problem}; free disk space or fix the folder's "
                               f"permissions, then rerun the same command (finished cases are kept; no dataset.json "
                               f"was written)")
    if stopped == "strict":
        print(f"{PROGRAM}: --strict: stopped at the first bad case (no dataset.json written; finished cases are "
              f"kept):\n  {failures[-1].error}", file=sys.stderr)
        return 1
    unexpected = [outcome for outcome in failures if outcome.kind == "error"]
    if unexpected:
        print(f"{PROGRAM}: {len(unexpected)} case(s) failed for a reason that is not their input, so no "
              f"dataset.json was written (finished cases are kept; rerun to retry them):", file=sys.stderr)
        for outcome in unexpected:
            print(f"  {outcome.error}", file=sys.stderr)
        return 1
    return _finish(args, output, settings_by_task, datasets, [outcome.error for outcome in failures])


def _finish(args, output: Path, settings_by_task: dict[str, dict], datasets: dict[str, RawDataset],
            failures: list[str]) -> int:
    """Write each dataset's files, print the summary; returns the exit code."""
    print("\nSummary")
    empty = []
    for task, dataset in datasets.items():
        counts, folds = _write_dataset_files(task, dataset, settings_by_task[task], args.kits19)
        print(f"  {dataset.folder}")
        for split in ("train", "test"):
            without = counts[split]["background"]
            print(f"    {split:5s}: {counts[split]['cases']:4d} cases, {counts[split]['images']:6d} images"
                  + (f" ({without} of them slices without label, empty masks)" if without else ""))
        if folds is None and not any(counts[split]["images"] for split in counts):
            empty.append(dataset.folder)
            print("    no image: no dataset.json written")
        elif folds is None:
            print("    no training case: no splits_final.json")
        else:
            print(f"    {place_preprocessed_splits(dataset, folds, output, args.replace_splits)}")
        orphans = dataset.unrecorded_files()
        if orphans:
            print(f"    NOTE: {len(orphans)} file(s) named like the converter's belong to no converted case (e.g. "
                  f"{orphans[0]}): left by an interrupted case that is no longer in the input, or not the "
                  f"converter's. nnU-Net would read them; delete them, or rerun with --rebuild")
        stale = Path(os.environ.get("nnUNet_preprocessed", "")) / dataset.folder.name
        if args.rebuild and os.environ.get("nnUNet_preprocessed") and (stale / "nnUNetPlans.json").is_file():
            print(f"    NOTE: {stale} was preprocessed from the earlier conversion; rerun nnUNetv2_plan_and_preprocess")
    if failures:
        print(f"\n{len(failures)} bad case(s) skipped, nothing written for them:")
        for failure in failures:
            print(f"  {failure}")
    if empty:
        print(f"\n{PROGRAM}: no case could be converted into {', '.join(str(folder) for folder in empty)}",
              file=sys.stderr)
    return 1 if failures or empty else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kits19_to_nnunet2d.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
