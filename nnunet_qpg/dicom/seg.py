"""Writing a label mask as a DICOM Segmentation (SEG) on the CT series it was predicted from, with highdicom.

One segment per label present (numbered 1, 2, ... in label order, as DICOM requires; ``segment_label`` is the
label's name), BINARY segmentation type (what viewers read most widely), frames only where a segment is present,
each frame referencing its CT slice. Marked research use: ContentQualification RESEARCH, SeriesDescription and
ContentDescription.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.dicom._shared import (MANUFACTURER, PALETTE, SEG_SERIES_DESCRIPTION, mask_labels,
                                      software_version)
from nnunet_qpg.dicom.series import CtSeries, check_dicom_support

__all__ = ["SEG_SERIES_NUMBER", "segment_codes", "write_seg"]

SEG_SERIES_NUMBER = 9902


def segment_codes(name: str):
    """(segmented property category, type) codes for a label name: SNOMED CT kidney / neoplasm for KiTS19's
    names, else the generic Tissue (the name itself is always the segment label)."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    key = name.strip().lower().replace("_", " ")
    if key in ("kidney", "kidneys"):
        return codes.SCT.AnatomicalStructure, codes.SCT.Kidney
    if key in ("tumor", "tumour", "kidney tumor", "kidney tumour", "neoplasm"):
        return Code("49755003", "SCT", "Morphologically Altered Structure"), codes.SCT.Neoplasm
    return codes.SCT.Tissue, codes.SCT.Tissue


def write_seg(mask: sitk.Image, series: CtSeries, label_names: dict[int, str], path: Path) -> None:
    """Write ``mask`` (integer labels on the grid :func:`~nnunet_qpg.dicom.read_ct_series` returned for
    ``series``) as a DICOM SEG at ``path`` (written whole: temporary file, then renamed).

    One segment per label present (a mask without any label: one empty segment per named label > 0). Raises
    ValueError when the mask is not on the series' grid, UnsafeOutputError for a link at ``path``.
    """
    check_dicom_support()
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from nnunet_qpg.safe_io import atomic_path

    array, labels = mask_labels(mask, series, label_names)
    segment_of = np.zeros(256, dtype=np.uint8)
    for number, (label, _) in enumerate(labels, start=1):
        segment_of[label] = number
    segments = segment_of[array]  # (slices, rows, columns): segment numbers, 0 background
    algorithm = hd.AlgorithmIdentificationSequence(
        name="nnunet-qpg", family=codes.cid7162.ArtificialIntelligence, version=software_version())
    descriptions = []
    for number, (label, name) in enumerate(labels, start=1):
        category, kind = segment_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*PALETTE[(number - 1) % len(PALETTE)]),
        ))
    seg = hd.seg.Segmentation(
        source_images=list(series.headers),
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=software_version(),
        device_serial_number="none",
        content_description="RESEARCH USE ONLY, not for clinical use",
        content_label="NNUNET_QPG",
        series_description=SEG_SERIES_DESCRIPTION,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        omit_empty_frames=bool(segments.any()),  # an empty mask still gets its (empty) frames
    )
    with atomic_path(path, suffix=".dcm") as temporary:
        seg.save_as(temporary, enforce_file_format=True)
