"""An nnU-Net raw dataset folder that is written case by case and survives interruptions.

Layout of `Dataset{ID}_{Name}/`:
  imagesTr/ labelsTr/ imagesTs/ labelsTs/   nnU-Net's folders (2D NIfTI, `{id}_0000.nii.gz` and `{id}.nii.gz`)
  dataset.json, manifest.json, splits_final.json   written at the end of every run from the case records
  .cases/{case}.json                         a case's record: settings and manifest rows; written LAST, so it
                                             doubles as the "case finished" marker
  .staging/                                  a case's files before they are moved into place (removed after)

A case counts as done only when its record exists, was made with the same settings, and all its files exist;
anything else about the case is deleted and redone. Files are written under temporary names in the same
file system and moved with os.replace, so a crash never leaves a half-written NIfTI under a final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.safe_io import write_json_atomically

SPLIT_FOLDERS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
RECORDS_FOLDER = ".cases"
STAGING_FOLDER = ".staging"
SPLITS_SEED = 12345  # nnU-Net's own seed for its default 5-fold split


class RawDataset:
    """One nnU-Net raw dataset folder (e.g. Dataset701_KiTS19Kidney2D) filled one case at a time."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def prepare(self) -> None:
        """Create the folders; drop staging leftovers of a run that was killed hard."""
        for images, labels in SPLIT_FOLDERS.values():
            (self.folder / images).mkdir(parents=True, exist_ok=True)
            (self.folder / labels).mkdir(parents=True, exist_ok=True)
        (self.folder / RECORDS_FOLDER).mkdir(exist_ok=True)
        shutil.rmtree(self.folder / STAGING_FOLDER, ignore_errors=True)

    def _record_path(self, case_id: str) -> Path:
        return self.folder / RECORDS_FOLDER / f"{case_id}.json"

    def image_path(self, split: str, image_id: str) -> Path:
        return self.folder / SPLIT_FOLDERS[split][0] / f"{image_id}_0000.nii.gz"

    def mask_path(self, split: str, image_id: str) -> Path:
        return self.folder / SPLIT_FOLDERS[split][1] / f"{image_id}.nii.gz"

    def is_done(self, case_id: str, settings: dict) -> bool:
        """True when the case's record exists, matches `settings`, and every file it lists exists."""
        try:
            record = json.loads(self._record_path(case_id).read_text())
        except (OSError, ValueError):
            return False
        if record.get("settings") != settings:
            return False
        return all(
            self.image_path(row["split"], row["image_id"]).is_file()
            and self.mask_path(row["split"], row["image_id"]).is_file()
            for row in record.get("images", [])
        )

    def remove_case(self, case_id: str) -> None:
        """Delete the record and every image or mask of `case_id` (all names start with `{case_id}_`)."""
        self._record_path(case_id).unlink(missing_ok=True)
        for folders in SPLIT_FOLDERS.values():
            for folder in folders:
                for path in (self.folder / folder).glob(f"{case_id}_*"):
                    path.unlink(missing_ok=True)

    def open_case(self, case_id: str) -> "CaseWriter":
        return CaseWriter(self, case_id)

    def records(self) -> list[dict]:
        """All finished cases' records, sorted by case id."""
        paths = sorted((self.folder / RECORDS_FOLDER).glob("*.json"))
        return [json.loads(path.read_text()) for path in paths]


class CaseWriter:
    """Context manager: stage a case's images, then move them into place and write its record last.

    On any exception (KeyboardInterrupt included) everything of the case is removed again.
    """

    def __init__(self, dataset: RawDataset, case_id: str):
        self.dataset = dataset
        self.case_id = case_id
        self.rows: list[dict] = []
        self._staged: list[tuple[Path, Path]] = []

    def __enter__(self) -> "CaseWriter":
        self.dataset.remove_case(self.case_id)
        staging_root = self.dataset.folder / STAGING_FOLDER
        staging_root.mkdir(exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f"{self.case_id}-", dir=staging_root))
        return self

    def add(self, split: str, image_id: str, image: np.ndarray, mask: np.ndarray, row: dict) -> None:
        """Stage one 2D image (float32) and its mask (uint8), pixel spacing 1 x 1, plus its manifest row."""
        for array, final_path in (
            (image.astype(np.float32, copy=False), self.dataset.image_path(split, image_id)),
            (mask.astype(np.uint8, copy=False), self.dataset.mask_path(split, image_id)),
        ):
            staged_path = self.staging / final_path.name
            picture = sitk.GetImageFromArray(array)
            picture.SetSpacing((1.0, 1.0))
            sitk.WriteImage(picture, str(staged_path), useCompression=True)
            self._staged.append((staged_path, final_path))
        self.rows.append({"image_id": image_id, "split": split, **row})

    def commit(self, settings: dict, case_info: dict) -> None:
        for staged_path, final_path in self._staged:
            os.replace(staged_path, final_path)
        record = {"case": self.case_id, **case_info, "settings": settings, "images": self.rows}
        write_json_atomically(self.dataset._record_path(self.case_id), record)

    def __exit__(self, exc_type, exc, traceback) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        if exc_type is not None:
            self.dataset.remove_case(self.case_id)


def grouped_folds(case_images: dict[str, list[str]], num_folds: int = 5) -> list[dict[str, list[str]]]:
    """nnU-Net splits_final.json content: folds over CASES, so no case has images in both train and val.

    Cases are shuffled with nnU-Net's seed and dealt into `num_folds` groups (fewer if there are fewer cases;
    with a single case, train and val are that case, which nnU-Net accepts).
    """
    cases = sorted(case_images)
    if len(cases) < 2:
        everything = [image for case in cases for image in case_images[case]]
        return [{"train": everything, "val": everything}]
    order = np.random.RandomState(SPLITS_SEED).permutation(len(cases))
    groups = np.array_split(np.asarray(cases)[order], min(num_folds, len(cases)))
    folds = []
    for validation_cases in groups:
        held_out = set(validation_cases.tolist())
        folds.append(
            {
                "train": sorted(image for case in cases if case not in held_out for image in case_images[case]),
                "val": sorted(image for case in sorted(held_out) for image in case_images[case]),
            }
        )
    return folds


def images_by_case(rows: Iterable[dict], split: str) -> dict[str, list[str]]:
    """image ids of one split, grouped by their source case."""
    grouped: dict[str, list[str]] = {}
    for row in rows:
        if row["split"] == split:
            grouped.setdefault(row["case"], []).append(row["image_id"])
    return grouped
