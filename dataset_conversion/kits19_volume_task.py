"""`convert-kits19 --task volume`: KiTS19 as a 3D nnU-Net dataset (Dataset703_KiTS19Volumes), to compare QPG in
`3d_fullres` (and the other 3D configurations) on the same cases as the paper's 2D tasks.

  imagesTr/case_00000_0000.nii.gz  the CT of cases 0-179, voxels and geometry as stored (channel "CT")
  labelsTr/case_00000.nii.gz       its segmentation, uint8: 0 background, 1 kidney, 2 tumor
  imagesTs/ labelsTs/              cases 180-199, the same way

Nothing is windowed, filtered or resampled: nnU-Net's own CT normalisation (dataset-wide percentile clipping and
z-scoring, from the "CT" channel name) and its resampling to the planned spacing do that at preprocessing. The
labels are KiTS19's three classes, not nnU-Net's region form ("kidney and tumour", "tumour"): these files serve
both (a region-based dataset differs only in dataset.json's "labels" and "regions_class_order").

Each case is read and checked as for the 2D tasks (kits19_volumes.read_case: missing, corrupt and truncated
files, non-3D files, NaN or infinite CT values, mismatched grids, labels outside 0-2, no kidney) and written
through its staging folder, then moved into place with its record (nnunet_raw_dataset: rerunnable, only the
converter's own files deleted). The CT is not converted to float: an `imaging.nii.gz` is copied byte for byte
once it has passed the checks (same voxels, same header); a `.nii`, or a CT whose NaN/inf were replaced
(--non-finite replace), is written by SimpleITK in the pixel type it was read in. The mask is written on the
CT's grid (read_case accepts a segmentation whose header differs by rounding; nnU-Net does not), and the pair is
checked as nnU-Net's --verify_dataset_integrity does before it is moved into place.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.dataset_conversion.kits19_volumes import BadCaseError, case_file, read_case
from nnunet_qpg.dataset_conversion.nnunet_raw_dataset import SPLIT_FOLDERS, VolumeDataset, writing_into

TASK = "volume"
DATASET_ID, DATASET_NAME = 703, "KiTS19Volumes"
LABELS = {"background": 0, "kidney": 1, "tumor": 2}
DESCRIPTION = ("KiTS19 as 3D volumes: CT voxels and geometry as stored (nnU-Net's CT normalisation applies), "
               "labels 0 background, 1 kidney, 2 tumor; the paper's case split; made by nnunet-qpg")
FORMAT_VERSION = 1  # bump when the output of the same settings changes, so reruns redo old cases
SETTINGS = {
    "preset": "none",
    "window": None,
    "denoise": False,
    "size": None,
    "voxels": "as stored in imaging.nii.gz; nnU-Net's CT normalisation at preprocessing",
    "geometry": "original spacing, origin and direction; no resampling",
    "labels": "0 background, 1 kidney, 2 tumor, as in segmentation.nii.gz",
    "format_version": FORMAT_VERSION,
}
# the 2D tasks' options (argparse dest -> how the user wrote it); None means "not given"
TWO_D_OPTIONS = {"preset": "--preset", "window": "--window", "denoise": "--denoise/--no-denoise", "size": "--size",
                 "background_slices": "--background-slices"}


def conversion_settings(args: argparse.Namespace) -> dict:
    """The volume task's settings; ValueError (the command's exit 2) for an option that does not apply."""
    given = [flag for dest, flag in TWO_D_OPTIONS.items() if getattr(args, dest, None) is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --task volume: the 3D dataset "
            f"keeps every CT voxel as stored, on its own grid (nnU-Net's CT normalisation and resampling do the rest "
            f"at preprocessing); leave {'it' if len(given) == 1 else 'them'} out"
        )
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    return dict(SETTINGS)


class _GridMismatch(Exception):
    """The staged image and mask would fail nnU-Net's geometry check."""


def write_case(job) -> None:
    """Convert one case (a kits19_to_nnunet2d.CaseJob whose targets are {"volume": dataset folder}).

    Raises BadCaseError for a bad case, OutputWriteError if the dataset cannot be written; nothing of the case is
    kept then.
    """
    folder = Path(job.targets[TASK])
    dataset = VolumeDataset(folder)
    case_dir = Path(job.case_dir)
    case_id = case_dir.name
    with writing_into(folder):  # outputs of a broken run go first, even if the case then fails
        dataset.remove_case(case_id)
    source = case_file(case_dir, "imaging")
    before = _identity(source)
    volumes = read_case(case_dir, job.non_finite, whole_labels=True)
    image = volumes.image
    mask = volumes.labels if volumes.labels.GetPixelID() == sitk.sitkUInt8 else sitk.Cast(volumes.labels,
                                                                                         sitk.sitkUInt8)
    mask.CopyInformation(image)  # nnU-Net wants the mask on the image's grid exactly (read_case allowed rounding)
    slice_axis = volumes.sitk_axes_zyx[0]
    del volumes
    # a clean .nii.gz keeps its bytes; only a replaced NaN/inf (possible in float CTs) makes other voxels
    integer = np.issubdtype(sitk.GetArrayViewFromImage(image).dtype, np.integer)
    copy = source.name.endswith(".nii.gz") and (job.non_finite == "refuse" or integer)
    counts = _label_counts(sitk.GetArrayViewFromImage(mask))
    row = {
        "case": case_id,
        "image": f"{SPLIT_FOLDERS[job.split][0]}/{case_id}_0000.nii.gz",
        "label": f"{SPLIT_FOLDERS[job.split][1]}/{case_id}.nii.gz",
        "size_xyz": list(image.GetSize()),
        "spacing_mm_xyz": [float(value) for value in image.GetSpacing()],
        "origin_mm_xyz": [float(value) for value in image.GetOrigin()],
        "direction": [float(value) for value in image.GetDirection()],
        "axial_slices_along_sitk_axis": int(slice_axis),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "voxels": {"kidney": int(counts[1]), "tumor": int(counts[2])},
    }
    case_info = {"non_finite": job.non_finite}  # not a setting: it changes nothing for a CT without NaN or inf
    if copy:
        try:
            _stage_and_commit(dataset, job, case_id, source, mask, {**row, "image_file": f"copied from {source.name}"},
                              case_info, source, before)
            return
        except _GridMismatch:
            pass  # the source's header does not survive SimpleITK's rewrite of the mask: write both the same way
    how = f"written from {source.name} in its pixel type" + (" (read with --non-finite replace)"
                                                                if job.non_finite == "replace" else "")
    try:
        _stage_and_commit(dataset, job, case_id, image, mask, {**row, "image_file": how}, case_info, source, before)
    except _GridMismatch as error:
        raise RuntimeError(f"the written image and mask do not share one grid ({error}); please report this") from None


def _label_counts(labels: np.ndarray, chunk: int = 32) -> list[int]:
    """Voxels of each label 0-2, a few slices at a time (np.bincount would make an int64 copy of the volume)."""
    counts = np.zeros(3, dtype=np.int64)
    for start in range(0, labels.shape[0], chunk):
        counts += np.bincount(labels[start:start + chunk].ravel(), minlength=3)[:3]
    return [int(count) for count in counts]


def _stage_and_commit(dataset: VolumeDataset, job, case_id: str, image, mask: sitk.Image, row: dict, case_info: dict,
                      source: Path, before: tuple) -> None:
    with dataset.open_case(case_id) as writer:
        writer.add_volume(job.split, case_id, image, mask, row)
        if isinstance(image, Path) and _identity(image) != before:  # copied bytes must be the ones checked
            raise BadCaseError(case_id, source, "changed while it was being converted; rerun when it is complete")
        _check_same_grid(writer.staged(dataset.image_path(job.split, case_id)),
                         writer.staged(dataset.mask_path(job.split, case_id)))
        writer.commit(job.settings, case_info)


def _identity(path: Path) -> tuple:
    try:
        status = os.stat(path)
    except OSError:
        return ()  # missing: read_case names it
    return status.st_ino, status.st_size, status.st_mtime_ns


def _check_same_grid(image_path: Path, mask_path: Path) -> None:
    """nnU-Net's --verify_dataset_integrity test (same size; np.allclose spacing, origin, direction), on the
    headers as SimpleITK reads them back from the staged files."""
    headers = []
    for path in (image_path, mask_path):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        headers.append(reader)
    image, mask = headers
    if image.GetSize() != mask.GetSize():
        raise _GridMismatch(f"size {image.GetSize()} and {mask.GetSize()}")
    for name in ("Spacing", "Origin", "Direction"):
        of_image, of_mask = getattr(image, f"Get{name}")(), getattr(mask, f"Get{name}")()
        if not np.allclose(of_image, of_mask):
            raise _GridMismatch(f"{name.lower()} {of_image} and {of_mask}")
