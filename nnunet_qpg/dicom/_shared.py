"""What the RT Structure Set and SEG writers share: the research-use marking, the equipment, the mask checks."""

from __future__ import annotations

import re

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.dicom.series import CtSeries

MANUFACTURER = "nnunet-qpg"
RESEARCH_USE = "RESEARCH USE ONLY, not for clinical use"
RTSTRUCT_SERIES_DESCRIPTION = f"nnunet-qpg contours - {RESEARCH_USE}"
SEG_SERIES_DESCRIPTION = f"nnunet-qpg segments - {RESEARCH_USE}"
GEOMETRY_TOLERANCE = 1e-3  # mm for origin, relative for spacing, absolute for direction cosines

# distinct colours (RGB) for ROIs / segments, in label order
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190))


def software_version() -> str:
    from nnunet_qpg import __version__

    return __version__


def long_string(text: str, limit: int = 64) -> str:
    """A value for an LO attribute: no backslash or control characters, at most ``limit`` characters."""
    return re.sub(r"[\\\x00-\x1f]", " ", str(text)).strip()[:limit] or "unnamed"


def mask_labels(mask: sitk.Image, series: CtSeries, label_names: dict[int, str]) -> tuple[np.ndarray, list]:
    """The mask as a (slices, rows, columns) uint8 array after checking it lies on the series' grid, and the
    (label, name) pairs to write: every label > 0 present in the mask (named from ``label_names``, else
    ``label N``); when the mask holds no label at all, every named label > 0 (written without contours / with
    empty frames, so the object says that nothing was found)."""
    label_names = {int(label): str(name) for label, name in label_names.items()}  # JSON keys may be strings
    if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"the mask must be a 3D single-channel image, got {mask.GetDimension()}D with "
                         f"{mask.GetNumberOfComponentsPerPixel()} component(s)")
    if mask.GetSize() != tuple(series.size):
        raise ValueError(f"the mask's size {mask.GetSize()} differs from the series' {tuple(series.size)} "
                         f"({series.ref.folder}); write masks on the grid read_ct_series returned")
    if (not np.allclose(mask.GetOrigin(), series.origin, atol=GEOMETRY_TOLERANCE)
            or not np.allclose(mask.GetSpacing(), series.spacing, rtol=GEOMETRY_TOLERANCE)
            or not np.allclose(mask.GetDirection(), series.direction, atol=GEOMETRY_TOLERANCE)):
        raise ValueError(f"the mask's geometry (origin {mask.GetOrigin()}, spacing {mask.GetSpacing()}, direction "
                         f"{mask.GetDirection()}) differs from the series' ({series.ref.folder}: origin "
                         f"{series.origin}, spacing {series.spacing}, direction {series.direction})")
    array = sitk.GetArrayFromImage(mask)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"the mask must hold integer labels, got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"mask labels must lie in 0..255, got {array.min()}..{array.max()}")
    array = array.astype(np.uint8, copy=False)
    counts = np.bincount(array.ravel(), minlength=256)
    present = [int(v) for v in np.flatnonzero(counts[1:]) + 1]
    if not present:
        present = sorted(label for label in label_names if label > 0)
    return array, [(label, long_string(label_names.get(label, f"label {label}"))) for label in present]
