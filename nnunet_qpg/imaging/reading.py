"""The one reader of user images: every volume, mask and slice a command reads goes through :func:`read_image`.

ITK reads several broken files without a word, and what it returns then looks like data. This reader refuses:

- missing files, files ITK cannot decode, and truncated NIfTI files, ``.nii`` and ``.nii.gz`` alike (the missing
  voxels would come back as zeros; see :mod:`nnunet_qpg.imaging.nifti_check`);
- images with the wrong number of dimensions or more than one component per voxel, when the caller says;
- non-finite values (NaN, +-inf), unless the caller asks to replace them: ``non_finite="replace"`` sets NaN and
  -inf to the image's lowest finite value and +inf to its highest (for CT: air and the densest tissue), so a
  command that must go on can, and says it did.

Problems raise :class:`UnreadableImageError`, whose message names the file, the problem and the fix.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from nnunet_qpg.imaging.nifti_check import count_non_finite, locate_non_finite, truncation_problem

__all__ = ["NON_FINITE_CHOICES", "UnreadableImageError", "error_line", "read_image", "read_image_header"]

NON_FINITE_CHOICES = ("refuse", "replace")


class UnreadableImageError(Exception):
    """An image that cannot be used; the message names the file, the problem and the fix."""

    def __init__(self, path: Path | str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def error_line(error: Exception) -> str:
    """The last non-empty line of an error's message (ITK's multi-line exceptions end with the reason), else the
    error's type name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _check_shape(path: Path, dimension: int | None, components: int, actual_dimension: int) -> None:
    if dimension is not None and actual_dimension != dimension:
        raise UnreadableImageError(path, f"is {actual_dimension}D; a {dimension}D image is expected")
    if components != 1:
        raise UnreadableImageError(path, f"has {components} components per voxel; a single-channel image is "
                                         f"expected")


def read_image_header(path: Path | str, dimension: int | None = None) -> sitk.ImageFileReader:
    """The header of an image file (no voxels read), after the existence and truncation checks."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableImageError(path, "file is missing")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UnreadableImageError(path, f"cannot be read as an image (corrupt or not an image): "
                                         f"{error_line(error)}; re-export or copy the file again") from None
    problem = truncation_problem(path)
    if problem:
        raise UnreadableImageError(path, problem)
    _check_shape(path, dimension, reader.GetNumberOfComponents(), reader.GetDimension())
    return reader


def read_image(path: Path | str, dimension: int | None = None, non_finite: str = "refuse") -> sitk.Image:
    """Read and check an image (native pixel type, no float copy of a large CT).

    ``dimension``: the number of dimensions required (None: any). ``non_finite``: ``"refuse"`` (default) or
    ``"replace"`` (see the module docstring).
    """
    if non_finite not in NON_FINITE_CHOICES:
        raise ValueError(f"non_finite must be one of {NON_FINITE_CHOICES}, got {non_finite!r}")
    path = Path(path)
    read_image_header(path, dimension)
    try:
        # handed straight on: the replace path drops the image once it has its pixels (two copies at most)
        return _checked_finite(path, sitk.ReadImage(str(path)), non_finite)
    except RuntimeError as error:
        raise UnreadableImageError(path, f"is corrupt (its voxels cannot be decoded): {error_line(error)}; "
                                         f"re-export or copy the file again") from None


def _checked_finite(path: Path, image: sitk.Image, non_finite: str) -> sitk.Image:
    """ITK has already turned NaN into 0, so the raw voxels of float files say where the bad values were."""
    if not path.name.endswith((".nii", ".nii.gz")):
        return image
    bad = count_non_finite(path)  # streamed: a clean volume is never held twice
    if bad == 0:
        return image
    everything = bad == image.GetNumberOfPixels()
    if non_finite == "refuse" or everything:
        what = "every voxel is" if everything else f"{bad} voxel(s) are"
        fix = ("" if everything else
               " or pass --non-finite replace to set NaN and -inf to the lowest finite value and +inf to the highest")
        raise UnreadableImageError(path, f"{what} NaN or infinite; fix the file{fix}")
    bad_voxels = locate_non_finite(path)  # positions only: the raw volume is streamed, not held
    voxels = sitk.GetArrayFromImage(image)
    spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    del image  # at most two copies of the volume at once: the array and the image made from it
    voxels.flat[bad_voxels.low_indices] = bad_voxels.finite_min
    voxels.flat[bad_voxels.high_indices] = bad_voxels.finite_max
    fixed = sitk.GetImageFromArray(voxels)
    fixed.SetSpacing(spacing)
    fixed.SetOrigin(origin)
    fixed.SetDirection(direction)
    return fixed
