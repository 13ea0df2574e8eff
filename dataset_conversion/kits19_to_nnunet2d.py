"""Convert KiTS19 (case_XXXXX/imaging.nii.gz + segmentation.nii.gz) into nnU-Net v2 raw 2D datasets, the paper's way.

Cases 0-179 go to imagesTr/labelsTr, 180-199 to imagesTs/labelsTs, the rest are not used.
  kidney task (Dataset701_KiTS19Kidney2D): every axial slice with any label; mask = kidney or tumor.
  tumor task  (Dataset702_KiTS19Tumor2D): each 8-connected kidney+tumor region of a slice that contains tumor,
                                          cropped to its bounding box; mask = tumor.
Axial slices are found from the header's direction matrix. Every sample is resized to SIZE x SIZE (images
bilinear, masks nearest). Intensities (preset `paper`, the default): clip HU to [-30, 0], then 3x3 mean and
7x7 median filter, applied to the whole slice at native resolution before cropping and resizing. Preset `kits`:
soft-tissue window [-79, 304] (the KiTS19 winners' window), no filters, which keeps kidney/tumor contrast.

Writes, per dataset: 2D NIfTI images and masks (pixel spacing 1 x 1), dataset.json (settings under
"conversion"), manifest.json (image id -> case, slice, crop box, original size and spacing) and
splits_final.json (5 folds grouped by case; copied to $nnUNet_preprocessed/DatasetXXX_Name/ when that is set).
Reruns skip finished cases; interrupted or failed cases leave nothing behind.

example: nnunet-qpg convert-kits19 /data/kits19/data --task both --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from nnunet_qpg.dataset_conversion.kits19_slices import (
    MEAN_FILTER_SIZE,
    MEDIAN_FILTER_SIZE,
    resize_image,
    resize_mask,
    tumor_regions,
    window_and_denoise,
)
from nnunet_qpg.dataset_conversion.kits19_volumes import BadCaseError, read_case
from nnunet_qpg.dataset_conversion.nnunet_raw_dataset import (
    RawDataset,
    grouped_folds,
    images_by_case,
)
from nnunet_qpg.safe_io import write_json_atomically

TASKS = {
    # task: (default dataset id, dataset name, label name of mask value 1)
    "kidney": (701, "KiTS19Kidney2D", "kidney"),
    "tumor": (702, "KiTS19Tumor2D", "tumor"),
}
PRESETS = {
    "paper": {"window": (-30.0, 0.0), "denoise": True},
    # Soft-tissue window of the KiTS19 winners (Isensee et al.); no median filter, which would erase small tumors.
    "kits": {"window": (-79.0, 304.0), "denoise": False},
}
LAST_TRAIN_CASE, LAST_TEST_CASE = 179, 199
CASE_FOLDER = re.compile(r"^case_(\d{5})$")
FORMAT_VERSION = 1  # bump when the output of the same settings changes, so reruns redo old cases


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


@dataclass
class CaseOutcome:
    case_id: str
    error: str | None = None
    images: dict[str, int] = field(default_factory=dict)


def convert_case(job: CaseJob) -> CaseOutcome:
    """Convert one case; bad input comes back as an outcome with `error`, and nothing of the case is kept."""
    case_id = Path(job.case_dir).name
    try:
        _write_case(job)
    except BadCaseError as error:
        return CaseOutcome(case_id, error=str(error))
    except Exception as error:  # a bug or an I/O problem: still name the case, keep the other cases going
        return CaseOutcome(case_id, error=f"{case_id}: {job.case_dir}: {type(error).__name__}: {error}")
    return CaseOutcome(case_id)


def _write_case(job: CaseJob) -> None:
    settings = job.settings
    for folder in job.targets.values():  # outputs of older settings or a broken run go first, even if this fails
        RawDataset(Path(folder)).remove_case(Path(job.case_dir).name)
    window, denoise, size = tuple(settings["window"]), settings["denoise"], settings["size"]
    volumes = read_case(Path(job.case_dir))
    case_id = volumes.case_id
    slice_spacing, row_spacing, col_spacing = volumes.spacing_zyx
    case_info = {
        "sitk_axes_slice_row_col": list(volumes.sitk_axes_zyx),
        "volume_size_slice_row_col": list(volumes.image_zyx.shape),
        "spacing_mm_slice_row_col": [slice_spacing, row_spacing, col_spacing],
    }
    with contextlib.ExitStack() as stack:
        writers = {task: stack.enter_context(RawDataset(Path(folder)).open_case(case_id)) for task, folder in job.targets.items()}
        for slice_index, labels_2d in zip(volumes.labelled_slices, volumes.labelled_labels):
            image_2d = window_and_denoise(np.ascontiguousarray(volumes.image_zyx[slice_index]), window, denoise)
            rows, cols = labels_2d.shape
            common = {
                "case": case_id,
                "slice_index": int(slice_index),
                "original_slice_size": [rows, cols],
                "pixel_spacing_mm": [row_spacing, col_spacing],
                "slice_spacing_mm": slice_spacing,
            }
            base_id = f"{case_id}_{slice_index:04d}"
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
        for writer in writers.values():
            writer.commit(settings, case_info)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kits19", type=Path, help="KiTS19 data folder holding case_00000/ ... case_00209/")
    parser.add_argument("--task", choices=("kidney", "tumor", "both"), default="kidney", help="default: kidney")
    parser.add_argument(
        "--dataset-id",
        type=int,
        help="nnU-Net dataset id (default 701 kidney, 702 tumor; with --task both: ID for kidney, ID+1 for tumor)",
    )
    parser.add_argument("--output", type=Path, help="nnU-Net raw folder (default: $nnUNet_raw)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="paper", help="intensity preset (default: paper)")
    parser.add_argument("--window", nargs=2, type=float, metavar=("LOW", "HIGH"), help="HU window, overrides the preset")
    parser.add_argument(
        "--denoise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="3x3 mean + 7x7 median filter after windowing (default: per preset; paper on, kits off)",
    )
    parser.add_argument("--size", type=int, default=256, help="output images are SIZE x SIZE (default: 256)")
    parser.add_argument("--workers", type=int, default=2, help="processes converting cases in parallel (default: 2)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad case instead of skipping it")


def _conversion_settings(args: argparse.Namespace) -> dict:
    preset = PRESETS[args.preset]
    window = tuple(args.window) if args.window else preset["window"]
    if window[0] >= window[1]:
        raise SystemExit(f"convert-kits19: --window LOW HIGH needs LOW < HIGH, got {window[0]} {window[1]}")
    if args.size < 8:
        raise SystemExit(f"convert-kits19: --size must be at least 8, got {args.size}")
    return {
        "preset": args.preset,
        "window": [float(window[0]), float(window[1])],
        "denoise": preset["denoise"] if args.denoise is None else bool(args.denoise),
        "mean_filter_size": MEAN_FILTER_SIZE,
        "median_filter_size": MEDIAN_FILTER_SIZE,
        "filter_order": "window, mean, median on the native slice; then crop; then resize",
        "size": int(args.size),
        "format_version": FORMAT_VERSION,
    }


def _find_cases(kits19: Path) -> list[tuple[int, Path]]:
    if not kits19.is_dir():
        raise SystemExit(f"convert-kits19: {kits19} is not a folder; give the KiTS19 'data' folder with case_XXXXX/")
    cases = sorted((int(m.group(1)), p) for p in kits19.iterdir() if p.is_dir() and (m := CASE_FOLDER.match(p.name)))
    if not cases:
        raise SystemExit(f"convert-kits19: no case_XXXXX folders in {kits19}; give the KiTS19 'data' folder")
    return cases


def _write_dataset_files(task: str, dataset: RawDataset, settings: dict, source: Path) -> dict[str, dict[str, int]]:
    """dataset.json, manifest.json and splits_final.json from the case records; returns counts per split."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    rows = [row for record in dataset.records() for row in record["images"]]
    counts = {
        split: {"cases": len(images_by_case(rows, split)), "images": sum(r["split"] == split for r in rows)}
        for split in ("train", "test")
    }
    with tempfile.TemporaryDirectory(dir=dataset.folder, prefix=".dataset-json-") as scratch:
        generate_dataset_json(
            scratch,
            channel_names={0: "CT"},
            labels={"background": 0, TASKS[task][2]: 1},
            num_training_cases=counts["train"]["images"],
            file_ending=".nii.gz",
            dataset_name=dataset.folder.name,
            description=f"KiTS19 {task} task as 2D images, following Sun et al. (HQC-TF); made by nnunet-qpg",
            reference="https://kits19.grand-challenge.org/",
            license="CC BY-NC-SA 4.0 (KiTS19)",
            converted_by="nnunet-qpg convert-kits19",
            numTest=counts["test"]["images"],
            conversion={**settings, "task": task, "source": str(source.resolve())},
        )
        os.replace(Path(scratch) / "dataset.json", dataset.folder / "dataset.json")
    write_json_atomically(dataset.folder / "manifest.json", {"settings": settings, "images": rows})

    folds = grouped_folds(images_by_case(rows, "train"))
    write_json_atomically(dataset.folder / "splits_final.json", folds)
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if preprocessed:
        write_json_atomically(Path(preprocessed) / dataset.folder.name / "splits_final.json", folds)
    return counts


def _run_jobs(jobs: list[CaseJob], workers: int, strict: bool) -> tuple[list[CaseOutcome], bool]:
    """Run the jobs with a progress bar; returns outcomes and whether a --strict stop happened."""
    from tqdm import tqdm

    outcomes: list[CaseOutcome] = []
    progress = tqdm(total=len(jobs), desc="KiTS19 cases", unit="case", file=sys.stderr)

    def record(outcome: CaseOutcome) -> bool:
        outcomes.append(outcome)
        progress.update()
        if outcome.error:
            progress.write(f"skipped {outcome.error}")
        return bool(outcome.error) and strict

    try:
        if workers <= 1:
            for job in jobs:
                if record(convert_case(job)):
                    return outcomes, True
            return outcomes, False
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
                    if record(future.result()):
                        for other in pending:
                            other.cancel()
                        return outcomes, True
                for job in queue:  # one new case per finished one: at most `workers` volumes in memory
                    pending.add(pool.submit(convert_case, job))
                    if len(pending) >= workers:
                        break
        return outcomes, False
    finally:
        progress.close()


def run(args: argparse.Namespace) -> int:
    output = args.output or (Path(os.environ["nnUNet_raw"]) if os.environ.get("nnUNet_raw") else None)
    if output is None:
        print("convert-kits19: no output folder: pass --output DIR or set nnUNet_raw.", file=sys.stderr)
        return 2
    settings = _conversion_settings(args)
    tasks = ["kidney", "tumor"] if args.task == "both" else [args.task]
    datasets = {}
    for offset, task in enumerate(tasks):
        dataset_id = TASKS[task][0] if args.dataset_id is None else args.dataset_id + offset
        datasets[task] = RawDataset(output / dataset_folder_name(task, dataset_id))
        datasets[task].prepare()

    jobs, unused, already_done = [], [], 0
    for case_number, case_dir in _find_cases(args.kits19):
        split = split_of(case_number)
        if split is None:
            unused.append(case_dir.name)
            continue
        targets = {t: str(d.folder) for t, d in datasets.items() if not d.is_done(case_dir.name, settings)}
        if targets:
            jobs.append(CaseJob(str(case_dir), split, targets, settings))
        else:
            already_done += 1
    print(
        f"convert-kits19: {len(jobs)} case(s) to convert, {already_done} already done, "
        f"{len(unused)} outside the paper's cases 0-199 not used",
        file=sys.stderr,
    )
    try:
        outcomes, stopped = _run_jobs(jobs, args.workers, args.strict)
    except KeyboardInterrupt:
        print("\nconvert-kits19: interrupted; finished cases are kept, rerun the same command to go on.", file=sys.stderr)
        return 130
    failures = [outcome.error for outcome in outcomes if outcome.error]
    if stopped:
        print(f"convert-kits19: --strict: stopped at the first bad case:\n  {failures[0]}", file=sys.stderr)
        return 1

    print("\nSummary")
    for task, dataset in datasets.items():
        counts = _write_dataset_files(task, dataset, settings, args.kits19)
        print(f"  {dataset.folder}")
        for split in ("train", "test"):
            print(f"    {split:5s}: {counts[split]['cases']:4d} cases, {counts[split]['images']:6d} images")
        where = os.environ.get("nnUNet_preprocessed")
        note = f" and {Path(where) / dataset.folder.name}" if where else " (set nnUNet_preprocessed to copy it there)"
        print(f"    splits_final.json (5 folds by case) in the dataset folder{note}")
    if failures:
        print(f"\n{len(failures)} bad case(s) skipped, nothing written for them:")
        for failure in failures:
            print(f"  {failure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kits19_to_nnunet2d.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
