"""An nnU-Net raw dataset folder that is written case by case and survives interruptions.

Layout of `Dataset{ID}_{Name}/`:
  imagesTr/ labelsTr/ imagesTs/ labelsTs/   nnU-Net's folders (`{id}_0000.nii.gz` and `{id}.nii.gz`: 2D slices,
                                             id case_00000_0012[_1], or case_00000_0012_bg for a slice without
                                             label (--background-slices); or, in a VolumeDataset, whole 3D
                                             volumes, id case_00000)
  dataset.json, manifest.json, splits_final.json   written from the case records once every case of a run is
                                             done; removed while a run changes the dataset, so a dataset.json is
                                             only ever seen beside a complete set of images
  .cases/{case}.json                         a case's record: settings and manifest rows; written LAST, so it
                                             doubles as the "case finished" marker
  .{case}.staging-XXXX/                      a case's files before they are moved into place (removed after)

A case counts as done only when its record exists, was made with the same settings, and all its files exist;
anything else about the case is deleted and redone. Files are staged under temporary names in the same
file system and moved with os.replace, so a crash never leaves a half-written NIfTI under a final name.

What is deleted is only what this converter wrote: the files named in a case's record, and files whose names
follow the converter's own exact patterns (`case_00000_0012_0000.nii.gz`, `case_00000_0012_1.nii.gz`,
`case_00000_0012_bg.nii.gz`, ...).
Other files in the dataset's folders (`case_00000_notes.txt`, files of a folder `imagesTr` links to) are never
touched, and no file is written or deleted through a symbolic link at its own name (:mod:`nnunet_qpg.safe_io`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.imaging.reading import error_line
from nnunet_qpg.safe_io import (
    UnsafeOutputError,
    copy_file_atomically,
    file_mode,
    make_output_folder,
    refuse_link,
    remove_file,
    staging_folder,
    write_json_atomically,
)

SPLIT_FOLDERS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
RECORDS_FOLDER = ".cases"
DATASET_FILES = ("dataset.json", "manifest.json", "splits_final.json")
SPLITS_SEED = 12345  # nnU-Net's own seed for its default 5-fold split

# The exact names this converter gives its files: image id = case, slice (4+ digits), then tumor region (1, 2,
# ...) or "bg" for a kidney-task slice without label (--background-slices), so the two never share a name
_IMAGE_ID = r"(case_\d{5})_\d{4,}(?:_[1-9]\d*|_bg)?"
IMAGE_NAME = re.compile(rf"^{_IMAGE_ID}_0000\.nii\.gz$")
MASK_NAME = re.compile(rf"^{_IMAGE_ID}\.nii\.gz$")
# temporaries of safe_io.atomic_path (".{final name}.{random}.tmp") of such files, left by a hard kill
TEMPORARY_NAME = re.compile(rf"^\.{_IMAGE_ID}(?:_0000)?\.nii\.gz\.[^./]+\.tmp$")
# a 3D dataset's image id is the case itself (case_00000_0000.nii.gz, case_00000.nii.gz)
_VOLUME_ID = r"(case_\d{5})"
RECORD_NAME = re.compile(r"^(case_\d{5})\.json$")
# staging folders (current and of earlier versions) and nnU-Net scratch folders of earlier versions
STAGING_NAME = re.compile(r"^(?:\.staging|\.case_\d{5}\.staging-[^/]+|\.dataset-json-[^/]+)$")


class OutputWriteError(Exception):
    """Writing into the dataset failed (read-only folder, disk full, a link in the way): a problem of the output,
    not of the case being converted, so the run stops instead of skipping case after case."""

    def __init__(self, folder: Path | str, detail: str):
        self.folder = str(folder)
        self.detail = detail
        super().__init__(f"cannot write into {folder}: {detail}")


@contextlib.contextmanager
def writing_into(folder: Path) -> Iterator[None]:
    """Turn the errors of writing into `folder` into OutputWriteError naming the folder."""
    try:
        yield
    except UnsafeOutputError as error:
        raise OutputWriteError(folder, str(error)) from None
    except OSError as error:  # name the folder of the file that failed (for a move: where it was going)
        failed = error.filename2 or error.filename
        where = Path(os.fsdecode(failed)).parent if isinstance(failed, (str, bytes, os.PathLike)) else folder
        raise OutputWriteError(where, error.strerror or str(error)) from None


class RawDataset:
    """One nnU-Net raw dataset folder (e.g. Dataset701_KiTS19Kidney2D) filled one case at a time."""

    # the converter's exact file names in this dataset: nothing else is ever deleted (VolumeDataset: its own)
    image_name, mask_name, temporary_name = IMAGE_NAME, MASK_NAME, TEMPORARY_NAME

    def __init__(self, folder: Path, setting_defaults: dict | None = None):
        self.folder = Path(folder)
        # values of settings that later versions added, for records made before them (e.g. background_slices 0:
        # a kidney dataset converted before --background-slices existed is the paper's protocol, fraction 0)
        self.setting_defaults = dict(setting_defaults or {})

    def _completed(self, settings):
        """Recorded settings with the defaults of settings added since (non-dicts as they are)."""
        return {**self.setting_defaults, **settings} if isinstance(settings, dict) else settings

    # -- folders and state ------------------------------------------------------------------------------------

    def folders(self) -> list[Path]:
        """Every folder the converter writes into, the dataset folder first."""
        inner = [name for pair in SPLIT_FOLDERS.values() for name in pair] + [RECORDS_FOLDER]
        return [self.folder] + [self.folder / name for name in inner]

    def is_foreign(self) -> bool:
        """True for another tool's dataset of the same name, which the converter must neither fill nor clean: no
        `.cases/` folder, but a dataset.json or images named like the converter's. (An empty folder, or one that
        only holds a linked imagesTr with other files, is fine.)"""
        if not self.folder.is_dir() or (self.folder / RECORDS_FOLDER).is_dir():
            return False
        return (self.folder / "dataset.json").exists() or bool(self.unrecorded_files())

    def unrecorded_files(self) -> list[Path]:
        """Files with the converter's own names whose case has no record: left by a case that was killed while
        its files were moved into place and that is no longer in the input, or not the converter's at all.
        They are reported, never deleted unasked (a case that is converted again replaces its own)."""
        recorded = {path.stem for path in self._record_paths()}
        return self._matching(lambda case: case not in recorded)

    def existing_settings(self) -> list[tuple[dict, list[str]]]:
        """The distinct conversion settings found in the dataset, each with the cases made with it.

        From the case records, and from dataset.json's "conversion" entry (so deleting `.cases/` does not hide
        what the images were made with).
        """
        found: list[tuple[dict, list[str]]] = []

        def add(settings: dict, case: str) -> None:
            for known, cases in found:
                if known == settings:
                    cases.append(case)
                    return
            found.append((settings, [case]))

        for record in self.records():
            add(self._completed(record.get("settings", {})), record.get("case", "?"))
        try:
            conversion = json.loads((self.folder / "dataset.json").read_text()).get("conversion")
        except (OSError, ValueError, AttributeError):
            conversion = None
        if isinstance(conversion, dict):
            settings = self._completed(
                {key: value for key, value in conversion.items() if key not in ("task", "source")}
            )
            if not any(known == settings for known, _ in found):
                found.append((settings, ["dataset.json"]))
        return found

    def prepare(self) -> None:
        """Create the folders (each checked for writing: UnsafeOutputError naming it otherwise), and drop what a
        run killed hard left behind: staging folders and temporary records."""
        for folder in self.folders():
            make_output_folder(folder, "dataset folder")
        for entry in self._entries(self.folder):
            if STAGING_NAME.match(entry.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
        for entry in self._entries(self.folder / RECORDS_FOLDER):
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                remove_file(entry.path)

    def clear(self) -> None:
        """Delete every converted file, record and dataset file of this converter (for --rebuild); files of
        other names stay."""
        for path in self._record_paths():
            self.remove_case(path.stem)
        for path in self._matching(lambda case: True):
            remove_file(path)
        self.remove_dataset_files()

    def remove_dataset_files(self) -> None:
        """dataset.json, manifest.json and splits_final.json: derived from the records, rewritten at the end of a
        run; removed while the run changes the dataset so they never describe half of it."""
        for name in DATASET_FILES:
            remove_file(self.folder / name)

    # -- cases ------------------------------------------------------------------------------------------------

    def _record_path(self, case_id: str) -> Path:
        return self.folder / RECORDS_FOLDER / f"{case_id}.json"

    def _record_paths(self) -> list[Path]:
        return sorted(
            Path(entry.path) for entry in self._entries(self.folder / RECORDS_FOLDER) if RECORD_NAME.match(entry.name)
        )

    def image_path(self, split: str, image_id: str) -> Path:
        return self.folder / SPLIT_FOLDERS[split][0] / f"{image_id}_0000.nii.gz"

    def mask_path(self, split: str, image_id: str) -> Path:
        return self.folder / SPLIT_FOLDERS[split][1] / f"{image_id}.nii.gz"

    def _read_record(self, case_id: str) -> dict | None:
        try:
            record = json.loads(self._record_path(case_id).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def is_done(self, case_id: str, settings: dict) -> bool:
        """True when the case's record exists, matches `settings`, and every file it lists exists."""
        record = self._read_record(case_id)
        if record is None or self._completed(record.get("settings")) != settings:
            return False
        try:
            return all(
                self.image_path(row["split"], row["image_id"]).is_file()
                and self.mask_path(row["split"], row["image_id"]).is_file()
                for row in record.get("images", [])
            )
        except (KeyError, TypeError):  # a damaged record: the case is redone
            return False

    def remove_case(self, case_id: str) -> None:
        """Delete the record and every image or mask of `case_id`: the files its record names, and files with the
        converter's own names for this case (left by a case that was killed before its record was written).

        Raises UnsafeOutputError (from safe_io) for a symbolic link under one of those names.
        """
        record = self._read_record(case_id) or {}
        for row in record.get("images", []):
            if isinstance(row, dict) and row.get("split") in SPLIT_FOLDERS and isinstance(row.get("image_id"), str):
                if self.mask_name.match(f"{row['image_id']}.nii.gz"):  # a damaged record never names other files
                    remove_file(self.image_path(row["split"], row["image_id"]))
                    remove_file(self.mask_path(row["split"], row["image_id"]))
        for path in self._matching(lambda case: case == case_id):
            remove_file(path)
        remove_file(self._record_path(case_id))

    def _matching(self, of_case) -> list[Path]:
        """Files with the converter's own exact names (and their temporaries) whose case satisfies
        `of_case(case_id)`; nothing else in the folders ever matches."""
        found = []
        for images, labels in SPLIT_FOLDERS.values():
            for folder, pattern in ((images, self.image_name), (labels, self.mask_name)):
                for entry in self._entries(self.folder / folder):
                    match = pattern.match(entry.name) or self.temporary_name.match(entry.name)
                    if match and of_case(match.group(1)):
                        found.append(Path(entry.path))
        return sorted(found)

    @staticmethod
    def _entries(folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as entries:
                return list(entries)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as error:  # e.g. no read permission: the dataset's state cannot be known, so nothing is done
            raise UnsafeOutputError(f"cannot read {folder}: {error.strerror or error}; fix its permissions") from None

    def open_case(self, case_id: str) -> "CaseWriter":
        return CaseWriter(self, case_id)

    def records(self) -> list[dict]:
        """All finished cases' records, sorted by case id (unreadable records count as unfinished)."""
        records = [self._read_record(path.stem) for path in self._record_paths()]
        return [record for record in records if record is not None]


class CaseWriter:
    """Context manager: stage a case's images, then move them into place and write its record last.

    On any exception (KeyboardInterrupt included) everything of the case is removed again. Errors of writing
    come out as OutputWriteError naming the folder.
    """

    def __init__(self, dataset: RawDataset, case_id: str):
        self.dataset = dataset
        self.case_id = case_id
        self.rows: list[dict] = []
        self._staged: list[tuple[Path, Path]] = []

    def __enter__(self) -> "CaseWriter":
        with writing_into(self.dataset.folder):
            self.dataset.remove_case(self.case_id)
            self._stage = staging_folder(self.dataset.folder / self.case_id)
            self.staging = self._stage.__enter__()
        return self

    def add(self, split: str, image_id: str, image: np.ndarray, mask: np.ndarray, row: dict) -> None:
        """Stage one 2D image (float32) and its mask (uint8), pixel spacing 1 x 1, plus its manifest row."""
        for array, final_path in (
            (image.astype(np.float32, copy=False), self.dataset.image_path(split, image_id)),
            (mask.astype(np.uint8, copy=False), self.dataset.mask_path(split, image_id)),
        ):
            picture = sitk.GetImageFromArray(array)
            picture.SetSpacing((1.0, 1.0))
            self._stage_file(picture, final_path)
        self.rows.append({"image_id": image_id, "split": split, **row})

    def add_volume(self, split: str, image_id: str, image: sitk.Image | Path, mask: sitk.Image, row: dict) -> None:
        """Stage one whole image and its mask as given, plus its manifest row: an sitk.Image is written in its own
        pixel type and geometry; a Path (an already validated .nii.gz) is copied byte for byte."""
        self._stage_file(image, self.dataset.image_path(split, image_id))
        self._stage_file(mask, self.dataset.mask_path(split, image_id))
        self.rows.append({"image_id": image_id, "split": split, **row})

    def staged(self, final_path: Path) -> Path:
        """Where the file that goes to `final_path` is staged (to check it before commit)."""
        return self.staging / final_path.name

    def _stage_file(self, picture: sitk.Image | Path, final_path: Path) -> None:
        staged_path = self.staged(final_path)
        with writing_into(self.staging):
            if isinstance(picture, (str, os.PathLike)):
                shutil.copyfile(picture, staged_path)
            else:
                try:
                    sitk.WriteImage(picture, str(staged_path), useCompression=True)
                except RuntimeError as error:  # ITK reports a full disk or a lost folder as a RuntimeError
                    raise OutputWriteError(self.staging, error_line(error))
            os.chmod(staged_path, file_mode())  # the user's umask, whatever ITK's writer did
        if (staged_path, final_path) not in self._staged:  # staged again (e.g. rewritten): moved once
            self._staged.append((staged_path, final_path))

    def commit(self, settings: dict, case_info: dict) -> None:
        for staged_path, final_path in self._staged:
            with writing_into(final_path.parent):
                refuse_link(final_path)
                try:
                    os.replace(staged_path, final_path)
                except OSError as error:
                    if error.errno != errno.EXDEV:  # a linked imagesTr on another file system: copy instead
                        raise
                    copy_file_atomically(staged_path, final_path)
        record = {"case": self.case_id, **case_info, "settings": settings, "images": self.rows}
        with writing_into(self.dataset.folder / RECORDS_FOLDER):
            write_json_atomically(self.dataset._record_path(self.case_id), record)

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._stage.__exit__(None, None, None)
        if exc_type is not None:
            # the original error is what the user must see; a cleanup that fails too (read-only folder) is the
            # same problem, and the next run's `prepare` removes what is left
            with contextlib.suppress(OSError, UnsafeOutputError):
                self.dataset.remove_case(self.case_id)


class VolumeDataset(RawDataset):
    """A 3D nnU-Net raw dataset (e.g. Dataset703_KiTS19Volumes): one image per case, named after the case
    (imagesTr/case_00000_0000.nii.gz, labelsTr/case_00000.nii.gz); only these exact names are its own."""

    image_name = re.compile(rf"^{_VOLUME_ID}_0000\.nii\.gz$")
    mask_name = re.compile(rf"^{_VOLUME_ID}\.nii\.gz$")
    temporary_name = re.compile(rf"^\.{_VOLUME_ID}(?:_0000)?\.nii\.gz\.[^./]+\.tmp$")


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
