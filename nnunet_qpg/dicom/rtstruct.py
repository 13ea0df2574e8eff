"""Writing a label mask as a DICOM RT Structure Set on the CT series it was predicted from.

The dataset is built with pydicom's dataset API; the contours come from scikit-image's marching squares
(:func:`skimage.measure.find_contours` at level 0.5 on each slice, so a contour runs half way between the pixel
centres inside and outside the mask and encloses the mask's area), without the points that lie on a straight
line between their neighbours. Each contour is a CLOSED_PLANAR polygon in patient
coordinates (mm) in the plane of its CT slice, referencing that slice's SOPInstanceUID; holes are contours of
their own inside the outer one (read with the even-odd rule, as treatment planning systems and
``skimage.draw.polygon``-based readers do).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.dicom._shared import (MANUFACTURER, PALETTE, RESEARCH_USE, RTSTRUCT_SERIES_DESCRIPTION,
                                      long_string, mask_labels, software_version)
from nnunet_qpg.dicom.series import PATIENT_STUDY_KEYWORDS, CtSeries, check_dicom_support

__all__ = ["RTSTRUCT_SERIES_NUMBER", "slice_contours", "write_rtstruct"]

RTSTRUCT_SERIES_NUMBER = 9901
# RT Referenced Study Sequence items reference the study through this SOP Class, as RT Structure Sets do
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """A closed polygon without the vertices that lie on the straight line through their neighbours (marching
    squares puts one on every pixel edge): the same polygon, a fraction of the points."""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    keep = (np.abs(cross) > 1e-9) | (np.einsum("ij,ij->i", before, after) <= 0)
    return points[keep]


def slice_contours(binary: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D binary slice as (N, 2) arrays of (row, column) pixel coordinates (pixel centres
    at integers), without the repeated closing point; outer boundaries and hole boundaries alike."""
    from skimage.measure import find_contours

    rows = np.flatnonzero(binary.any(axis=1))
    if rows.size == 0:
        return []
    columns = np.flatnonzero(binary.any(axis=0))
    r0, c0 = rows[0], columns[0]
    crop = binary[r0:rows[-1] + 1, c0:columns[-1] + 1].astype(np.uint8)
    padded = np.pad(crop, 1)  # every contour closes inside the padding
    contours = []
    for contour in find_contours(padded, 0.5):
        if np.allclose(contour[0], contour[-1]):
            contour = contour[:-1]
        contour = _drop_collinear(contour)
        if len(contour) >= 3:
            contours.append(contour + np.array([r0 - 1, c0 - 1], dtype=float))
    return contours


def _ds_values(points: np.ndarray) -> list[float]:
    # DS values hold at most 16 characters: micrometre precision is plenty and always fits
    return [float(v) for v in np.round(points.ravel(), 3) + 0.0]  # + 0.0 turns -0.0 into 0.0


def write_rtstruct(mask: sitk.Image, series: CtSeries, label_names: dict[int, str], path: Path) -> None:
    """Write ``mask`` (integer labels on the grid :func:`~nnunet_qpg.dicom.read_ct_series` returned for
    ``series``) as an RT Structure Set at ``path`` (written whole: temporary file, then renamed).

    One ROI per label present (ROI number = label, name from ``label_names``, else ``label N``); a mask without
    any label gets one ROI without contours per named label > 0. Marked research use only (SeriesDescription,
    StructureSetName, ROIGenerationDescription; ApprovalStatus UNAPPROVED). Raises ValueError when the mask is
    not on the series' grid, UnsafeOutputError for a link at ``path``.
    """
    check_dicom_support()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

    from nnunet_qpg.safe_io import atomic_path

    array, labels = mask_labels(mask, series, label_names)
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sop_uid = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: label names and copied patient names of any language
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for keyword in PATIENT_STUDY_KEYWORDS:  # patient and study, as the CT has them
        if keyword != "SpecificCharacterSet" and keyword in series.patient_study:
            value = series.patient_study[keyword].value
            setattr(ds, keyword, str(value) if series.patient_study[keyword].VR == "PN" else value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if keyword not in ds:  # type 2: present, possibly empty
            setattr(ds, keyword, "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = RTSTRUCT_SERIES_NUMBER
    ds.SeriesDescription = RTSTRUCT_SERIES_DESCRIPTION
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = series.headers[0].get("PositionReferenceIndicator", "") or ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER
    ds.SoftwareVersions = software_version()
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "nnunet-qpg RUO"
    ds.StructureSetName = "RESEARCH USE ONLY"
    ds.StructureSetDescription = (f"Contours predicted by nnunet-qpg {software_version()} from CT series "
                                  f"{series.series_instance_uid}. {RESEARCH_USE}: not reviewed, not approved.")
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.ApprovalStatus = "UNAPPROVED"

    contour_images = Sequence()
    for sop_instance_uid in series.sop_instance_uids:
        item = Dataset()
        item.ReferencedSOPClassUID = series.sop_class_uid
        item.ReferencedSOPInstanceUID = sop_instance_uid
        contour_images.append(item)
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series.series_instance_uid
    referenced_series.ContourImageSequence = contour_images
    referenced_study = Dataset()
    referenced_study.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    referenced_study.ReferencedSOPInstanceUID = series.study_instance_uid
    referenced_study.RTReferencedSeriesSequence = Sequence([referenced_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = Sequence([referenced_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])

    direction = np.asarray(series.direction, dtype=float).reshape(3, 3)
    step_column = direction[:, 0] * series.spacing[0]  # one column to the right, in mm
    step_row = direction[:, 1] * series.spacing[1]  # one row down
    rois, roi_contours, observations = Sequence(), Sequence(), Sequence()
    for index, (label, name) in enumerate(labels):
        roi = Dataset()
        roi.ROINumber = label
        roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = long_string(f"nnunet-qpg {software_version()} - RESEARCH USE ONLY")
        rois.append(roi)

        contours = Sequence()
        for k, position in enumerate(series.slice_positions):
            binary = array[k] == label
            for pixels in slice_contours(binary):
                points = (np.asarray(position) + pixels[:, 1:2] * step_column + pixels[:, 0:1] * step_row)
                image = Dataset()
                image.ReferencedSOPClassUID = series.sop_class_uid
                image.ReferencedSOPInstanceUID = series.sop_instance_uids[k]
                contour = Dataset()
                contour.ContourImageSequence = Sequence([image])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourNumber = len(contours) + 1
                contour.ContourData = _ds_values(points)
                contours.append(contour)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(PALETTE[index % len(PALETTE)])
        roi_contour.ReferencedROINumber = label
        if len(contours):
            roi_contour.ContourSequence = contours
        roi_contours.append(roi_contour)

        observation = Dataset()
        observation.ObservationNumber = label
        observation.ReferencedROINumber = label
        observation.RTROIInterpretedType = ""  # type 2: left to the reviewer
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = roi_contours
    ds.RTROIObservationsSequence = observations

    with atomic_path(path, suffix=".dcm") as temporary:
        ds.save_as(temporary, enforce_file_format=True)
