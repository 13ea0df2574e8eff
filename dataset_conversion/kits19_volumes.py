"""Reading one KiTS19 case (imaging + segmentation) safely, and finding its axial axis from the header.

Everything that can be wrong with a case's files is checked here (the files are read through the one image
reader, :mod:`nnunet_qpg.imaging.reading`: truncated .nii/.nii.gz, corrupt data, NaN or infinite voxels) and
reported as a `BadCaseError` that names the case, the file, the problem and the fix, so the converter can skip
the case (or stop, with --strict) without writing anything for it. A case's files are `imaging.nii.gz` and
`segmentation.nii.gz` as KiTS19 ships them; uncompressed `.nii` files are read too.

Axial axis: the slice axis is taken from the direction matrix (the sitk index axis whose direction is closest to
the patient's superior-inferior axis), never assumed to be an array axis. In the KiTS19 files it is sitk index
axis 0 (nibabel's axis 0), which `sitk.GetArrayFromImage` puts LAST (numpy axis 2).
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.dataset_conversion.kits19_slices import slices_with_labels
from nnunet_qpg.imaging.axial import axial_view, sitk_axes_from_direction
from nnunet_qpg.imaging.reading import UnreadableImageError, error_line, read_image, read_image_header

KITS19_LABELS = (0, 1, 2)  # background, kidney, tumor


class BadCaseError(Exception):
    """A case whose files cannot be converted; the message names the file and the problem."""

    def __init__(self, case_id: str, path: Path | str, problem: str):
        self.case_id = case_id
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{case_id}: {path}: {problem}")


@dataclass
class CaseVolumes:
    """A case's image as an (axial, row, column) numpy view, and the labels of its labelled slices only.

    `image_zyx[k]` is axial slice k as stored in the file (index k along the file's slice axis); rows follow
    the index axis closest to the patient's anterior-posterior axis, columns the one closest to left-right.
    `labelled_labels[i]` is the label slice of `labelled_slices[i]` (the slices with any label > 0): keeping only
    those lets the full label volume go before the image is read, which lowers the peak memory.
    The sitk image is kept so the numpy view (no copy) stays valid.
    """

    case_id: str
    image_zyx: np.ndarray
    labelled_slices: np.ndarray
    labelled_labels: np.ndarray
    sitk_axes_zyx: tuple[int, int, int]  # sitk index axis holding the slices, the rows, the columns
    spacing_zyx: tuple[float, float, float]  # mm: slice distance, row spacing, column spacing
    _keep_alive: tuple = ()
    image: sitk.Image | None = None  # the CT as read (native pixel type, file geometry)
    labels: sitk.Image | None = None  # the whole segmentation as read, only with read_case(whole_labels=True)


def case_file(case_dir: Path, name: str) -> Path:
    """`case_dir/{name}.nii.gz`, or `{name}.nii` when only that exists; both at once is ambiguous (which one is
    the case?), so the case is refused rather than one of them silently chosen."""
    compressed, plain = case_dir / f"{name}.nii.gz", case_dir / f"{name}.nii"
    if compressed.exists() and plain.exists():
        raise BadCaseError(case_dir.name, plain, f"and {compressed.name} are both present; keep only one")
    return plain if plain.exists() else compressed


def _read_header(case_id: str, path: Path) -> sitk.ImageFileReader:
    if not path.is_file():
        raise BadCaseError(case_id, path, "file is missing; every case needs imaging.nii.gz and segmentation.nii.gz")
    with _as_bad_case(case_id, path):
        return read_image_header(path, dimension=3)


@contextlib.contextmanager
def _as_bad_case(case_id: str, path: Path) -> Iterator[None]:
    """The image reader's refusals (and decoding errors it does not name) as a BadCaseError of this case."""
    try:
        yield
    except UnreadableImageError as error:
        raise BadCaseError(case_id, error.path, error.problem) from None
    except (OSError, EOFError, zlib.error, RuntimeError, ValueError) as error:  # e.g. a gzip stream broken inside
        raise BadCaseError(case_id, path, f"cannot be read ({error_line(error)}); download or copy it again") from None


def _read_pixels(case_id: str, path: Path, non_finite: str) -> sitk.Image:
    """The voxels in their native pixel type (no float copy of the whole volume), checked by the one reader."""
    with _as_bad_case(case_id, path):
        return read_image(path, dimension=3, non_finite=non_finite)


def _read_labels(case_id: str, path: Path) -> sitk.Image:
    """Labels are never repaired: NaN or inf in a segmentation is a broken file, whatever --non-finite says."""
    try:
        return _read_pixels(case_id, path, "refuse")
    except BadCaseError as error:
        if "NaN or infinite" not in error.problem:
            raise
        raise BadCaseError(case_id, path, "has NaN or infinite label values; KiTS19 labels are 0, 1, 2 "
                                          "(--non-finite replace applies to imaging.nii.gz only)") from None


def _check_same_geometry(case_id: str, image: sitk.ImageFileReader, labels: sitk.ImageFileReader, path: Path) -> None:
    if image.GetSize() != labels.GetSize():
        raise BadCaseError(
            case_id, path, f"size {labels.GetSize()} differs from imaging.nii.gz size {image.GetSize()}"
        )
    checks = (
        ("spacing", image.GetSpacing(), labels.GetSpacing(), 1e-3),
        ("origin", image.GetOrigin(), labels.GetOrigin(), 1e-2),
        ("direction", image.GetDirection(), labels.GetDirection(), 1e-3),
    )
    for name, of_image, of_labels, tolerance in checks:
        if not np.allclose(of_image, of_labels, atol=tolerance, rtol=1e-4):
            raise BadCaseError(
                case_id,
                path,
                f"{name} {tuple(round(v, 4) for v in of_labels)} differs from imaging.nii.gz "
                f"{tuple(round(v, 4) for v in of_image)}; the mask is not on the image's voxel grid",
            )


def _check_labels(case_id: str, labels: np.ndarray, path: Path) -> None:
    low, high = labels.min(), labels.max()
    if low < 0 or high > 2:
        raise BadCaseError(case_id, path, f"has labels in [{low}, {high}]; KiTS19 labels are 0, 1 (kidney), 2 (tumor)")
    if np.issubdtype(labels.dtype, np.floating) and not np.all(np.mod(labels, 1) == 0):
        raise BadCaseError(case_id, path, "has non-integer label values; KiTS19 labels are 0, 1, 2")
    if high == 0:
        raise BadCaseError(case_id, path, "has no kidney or tumor voxel (all labels 0); nothing to convert")


def read_case(case_dir: Path, non_finite: str = "refuse", whole_labels: bool = False) -> CaseVolumes:
    """Read and check `case_dir/imaging.nii.gz` and `case_dir/segmentation.nii.gz` through the one image reader
    (:mod:`nnunet_qpg.imaging.reading`).

    Raises BadCaseError for missing, corrupt, truncated (.nii and .nii.gz) or non-3D files, NaN or infinite CT
    values (unless `non_finite` is "replace"), mismatched grids, unknown labels, or no kidney.
    `whole_labels`: keep the whole segmentation (`labels`) for the 3D task; the 2D tasks drop it before the image
    is read, which lowers the peak memory.
    """
    case_id = case_dir.name
    image_path, labels_path = case_file(case_dir, "imaging"), case_file(case_dir, "segmentation")
    image_header = _read_header(case_id, image_path)
    labels_header = _read_header(case_id, labels_path)
    _check_same_geometry(case_id, image_header, labels_header, labels_path)

    direction = image_header.GetDirection()
    axes_zyx = sitk_axes_from_direction(direction)

    labels_image = _read_labels(case_id, labels_path)
    labels_zyx = axial_view(sitk.GetArrayViewFromImage(labels_image), direction)
    _check_labels(case_id, labels_zyx, labels_path)
    labelled_slices = slices_with_labels(labels_zyx)
    labelled_labels = np.ascontiguousarray(labels_zyx[labelled_slices])
    del labels_zyx
    if not whole_labels:
        labels_image = None  # free the label volume before the (larger) image is read

    image = _read_pixels(case_id, image_path, non_finite)
    spacing = image_header.GetSpacing()
    return CaseVolumes(
        case_id=case_id,
        image_zyx=axial_view(sitk.GetArrayViewFromImage(image), direction),
        labelled_slices=labelled_slices,
        labelled_labels=labelled_labels,
        sitk_axes_zyx=axes_zyx,
        spacing_zyx=tuple(float(spacing[axis]) for axis in axes_zyx),  # type: ignore[arg-type]
        _keep_alive=(image,),
        image=image,
        labels=labels_image,
    )
