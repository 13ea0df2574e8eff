"""Small synthetic DICOM CT series for the tests, written with pydicom's dataset API (no hand-made bytes).

:func:`write_ct_series` writes one valid CT Image Storage series (a body ellipse of soft tissue with two bright
spheres, "blobs", in air) slice by slice into a folder, under shuffled file names, and returns what it wrote: the
HU volume in slice order, the geometry as SimpleITK states it (origin, spacing, direction) and every UID. Its
keyword arguments make the broken series the reader must refuse (a missing slice, an MR slice, gantry tilt, a
slice of another size, a slice without pixel data).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "SECRET-PID-4711"  # must never appear in an output name
BLOB_HU = 300
BODY_HU = 40
AIR_HU = -1000


@dataclass
class SyntheticSeries:
    folder: Path
    files: list[Path]  # in slice order (ascending along the slice normal)
    hu: np.ndarray  # (slices, rows, columns) int16, slice order
    blobs: np.ndarray  # (slices, rows, columns) uint8: 1 and 2 inside the two spheres
    origin: tuple[float, float, float]  # ImagePositionPatient of the first slice
    spacing: tuple[float, float, float]  # (column spacing, row spacing, slice spacing) as SimpleITK orders it
    direction: tuple[float, ...]  # 3x3, row-major, columns = row cosine, column cosine, slice normal
    study_uid: str
    series_uid: str
    frame_uid: str
    sop_uids: list[str]  # slice order


def synthetic_volume(slices: int, rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """HU volume (int16) and blob labels (uint8) of a body ellipse holding two spheres."""
    z, y, x = np.meshgrid(np.arange(slices), np.arange(rows), np.arange(columns), indexing="ij")
    body = ((x - columns / 2) / (0.42 * columns)) ** 2 + ((y - rows / 2) / (0.36 * rows)) ** 2 <= 1
    centre_z = (slices - 1) / 2
    sphere_a = ((x - 0.33 * columns) ** 2 + (y - 0.5 * rows) ** 2) / (0.13 * columns) ** 2 + \
        ((z - centre_z) / (0.4 * slices)) ** 2 <= 1
    sphere_b = ((x - 0.68 * columns) ** 2 + (y - 0.45 * rows) ** 2) / (0.1 * columns) ** 2 + \
        ((z - centre_z - 0.5) / (0.3 * slices)) ** 2 <= 1
    hu = np.full((slices, rows, columns), AIR_HU, dtype=np.int16)
    hu[body] = BODY_HU
    # a little deterministic texture so that read-back errors cannot hide in constant regions
    hu[body] += ((x * 7 + y * 3 + z * 5) % 11 - 5).astype(np.int16)[body]
    blobs = np.zeros(hu.shape, dtype=np.uint8)
    blobs[sphere_a & body] = 1
    blobs[sphere_b & body] = 2
    hu[blobs > 0] = BLOB_HU
    return hu, blobs


def _unit(vector: Sequence[float]) -> np.ndarray:
    vector = np.asarray(vector, dtype=float)
    return vector / np.linalg.norm(vector)


def write_ct_series(
    folder: Path,
    *,
    slices: int = 8,
    rows: int = 64,
    columns: int = 64,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),  # DICOM order: (between rows, between columns)
    slice_spacing: float = 2.5,
    origin: tuple[float, float, float] = (-22.4, -25.6, 40.0),
    row_cosine: Sequence[float] = (1.0, 0.0, 0.0),
    column_cosine: Sequence[float] = (0.0, 1.0, 0.0),
    study_uid: str | None = None,
    frame_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 3,
    modality: str = "CT",
    slice_modality: dict[int, str] | None = None,
    drop_slices: Sequence[int] = (),
    gantry_tilt: float = 0.0,
    tilt_positions: bool = False,
    odd_size_slice: int | None = None,
    no_pixel_data_slice: int | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    name_prefix: str = "IM",
) -> SyntheticSeries:
    """Write one CT series into ``folder`` (created); see the module docstring.

    ``slice_modality`` {index: "MR"} writes those slices as MR images of the same series; ``drop_slices`` leaves
    slices out (a missing slice); ``gantry_tilt`` (degrees) is written as GantryDetectorTilt, and with
    ``tilt_positions`` the slice positions also shear along the column direction as a tilted gantry's do;
    ``odd_size_slice`` writes that slice at half the size; ``no_pixel_data_slice`` writes it without pixel data.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    row_cos, col_cos = _unit(row_cosine), _unit(column_cosine)
    normal = np.cross(row_cos, col_cos)
    hu, blobs = synthetic_volume(slices, rows, columns)
    stored = np.round((hu.astype(np.float64) - intercept) / slope).astype(np.uint16)
    shear = np.tan(np.radians(gantry_tilt)) * slice_spacing if tilt_positions else 0.0
    positions = [np.asarray(origin, dtype=float) + k * slice_spacing * normal + k * shear * col_cos
                 for k in range(slices)]

    files: list[Path] = []
    sop_uids: list[str] = []
    order = np.random.default_rng(len(name_prefix) + slices).permutation(slices)  # file names not in slice order
    for k in range(slices):
        if k in drop_slices:
            continue
        slice_kind = (slice_modality or {}).get(k, modality)
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage if slice_kind == "MR" else CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = "20240102"
        ds.StudyTime = "101500"
        ds.StudyID = "S1"
        ds.AccessionNumber = "ACC-1"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "synthetic abdomen"
        ds.Modality = slice_kind
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = "synthetic CT"
        ds.Laterality = ""
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "nnunet-qpg tests"
        ds.InstanceNumber = int(slices - k)  # reversed on purpose: readers must sort by position
        ds.ImagePositionPatient = [round(float(v), 4) for v in positions[k]]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = slice_spacing
        if gantry_tilt:
            ds.GantryDetectorTilt = gantry_tilt
        if slice_kind == "CT":
            ds.KVP = 120
            ds.AcquisitionNumber = 1
            ds.RescaleIntercept = intercept
            ds.RescaleSlope = slope
            ds.RescaleType = "HU"
        if k == no_pixel_data_slice:
            for name, value in (("SamplesPerPixel", 1), ("PhotometricInterpretation", "MONOCHROME2"),
                                ("Rows", rows), ("Columns", columns), ("BitsAllocated", 16), ("BitsStored", 12),
                                ("HighBit", 11), ("PixelRepresentation", 0)):
                setattr(ds, name, value)
        else:
            pixels = stored[k]
            if k == odd_size_slice:
                pixels = np.ascontiguousarray(pixels[: rows // 2, : columns // 2])
            ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=12,
                              generate_instance_uid=False)
        digest = hashlib.sha256(f"{name_prefix}{order[k]}".encode()).hexdigest()[:6]
        path = folder / f"{name_prefix}{digest}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        sop_uids.append(sop_uid)

    direction = tuple(float(v) for v in np.stack([row_cos, col_cos, normal], axis=1).ravel())
    kept = [k for k in range(slices) if k not in drop_slices]
    return SyntheticSeries(
        folder=folder, files=files, hu=hu[kept], blobs=blobs[kept],
        origin=tuple(float(v) for v in np.round(positions[0], 4)),
        spacing=(pixel_spacing[1], pixel_spacing[0], slice_spacing),
        direction=direction, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, sop_uids=sop_uids,
    )


def rasterise_rtstruct(path: Path, image: sitk.Image, series) -> dict[str, np.ndarray]:
    """ROI name -> (slices, rows, columns) bool, each contour filled on its CT slice with the even-odd rule."""
    import pydicom
    from skimage.draw import polygon

    ds = pydicom.dcmread(path)
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in ds.StructureSetROISequence}
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    slice_of = {uid: k for k, uid in enumerate(series.sop_instance_uids)}
    shape = sitk.GetArrayFromImage(image).shape
    masks = {}
    for roi_contour in ds.ROIContourSequence:
        raster = np.zeros(shape, dtype=bool)
        for contour in roi_contour.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            k = slice_of[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            assert len(points) == int(contour.NumberOfContourPoints)
            offsets = points - np.asarray(series.slice_positions[k])
            assert np.allclose(offsets @ direction[:, 2], 0, atol=1e-3)  # in the plane of its slice
            columns = offsets @ direction[:, 0] / spacing[0]
            rows = offsets @ direction[:, 1] / spacing[1]
            filled = np.zeros(shape[1:], dtype=bool)
            filled[polygon(rows, columns, shape[1:])] = True
            raster[k] ^= filled
        masks[names[int(roi_contour.ReferencedROINumber)]] = raster
    return masks
