"""Finding and reading DICOM CT series: the DICOM side of ``nnunet-qpg predict``.

:func:`find_series` lists every series below an input folder (GDCM, through SimpleITK, tells the series of each
folder apart by SeriesInstanceUID) and gives each a stable output name made from its folder path relative to the
input folder, never from names or IDs in the headers. :func:`read_ct_series` checks a series and reads it as one
3D image in Hounsfield units (SimpleITK), with the metadata that derived objects (RT Structure Set, SEG) need,
read with pydicom.

A series that cannot be used raises :class:`DicomSeriesError`, whose message names the folder, the problem and
the fix; a batch names it and goes on with the other series. Refused:

- files of other modalities in the series (an MR slice among CT slices), and series that are not CT (MR, PT ...);
- missing slices and non-uniform slice spacing (gaps differing by more than :data:`SPACING_TOLERANCE`),
  two slices at one position;
- gantry tilt: slices not stacked along their normal (a sheared volume), or GantryDetectorTilt other than 0;
- slices of different size, orientation or pixel spacing, of different studies or frames of reference;
- slices without pixel data, multi-frame or colour images, missing geometry (position, orientation, spacing),
  files that cannot be read or decoded.

Non-image objects stored beside the images (RT Structure Sets, SEG, SR, RT plans and doses, presentation states,
key-object selections, registrations) are not series to segment: :func:`find_series` leaves them out.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.imaging.reading import error_line

__all__ = ["DICOM_EXTRA", "NON_IMAGE_MODALITIES", "SPACING_TOLERANCE", "TILT_TOLERANCE_MM", "CtSeries",
           "DicomSeriesError", "SeriesRef", "check_dicom_support", "find_series", "read_ct_series",
           "series_output_name"]

DICOM_EXTRA = 'pip install "nnunet-qpg[dicom]"  (from a clone: pip install -e ".[dicom]")'

# Slice gaps may differ from the series' median gap by this fraction of it (plus 0.01 mm for rounding in the
# headers); more is a missing slice or a series reconstructed with varying spacing.
SPACING_TOLERANCE = 0.01
# A slice may lie this far (mm) off the line through the first slice along the slice normal (rounding in the
# headers); further is a tilted gantry's shear.
TILT_TOLERANCE_MM = 0.05
ORIENTATION_TOLERANCE = 1e-3  # direction cosines: agreement between slices, unit length, orthogonality

NON_IMAGE_MODALITIES = frozenset({"RTSTRUCT", "SEG", "SR", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "PR", "KO",
                                  "REG", "DOC", "FID", "RWV", "PLAN"})

NAME_CLASH_FIX = "rename the folders so that their names differ; none of these series is predicted until then"

# Patient, General Study and Patient Study attributes that derived objects (RTSTRUCT, SEG) copy from the CT.
PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "PatientIdentityRemoved", "DeidentificationMethod",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription",
)


class DicomSeriesError(Exception):
    """A DICOM series that cannot be used; the message names the folder, the problem and the fix."""

    def __init__(self, folder: Path | str, problem: str, fix: str):
        self.folder = str(folder)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{folder}: {problem}; {fix}")


@dataclass(frozen=True)
class SeriesRef:
    """One series found by :func:`find_series`.

    ``name`` is the output name (file-name safe, from the folder path relative to the input folder, plus
    ``_`` and 8 hex digits of a hash of the SeriesInstanceUID when the folder holds several series).
    ``problem`` is set when the series was found but cannot be named (two series would share an output name);
    :func:`read_ct_series` then raises it.
    """

    folder: Path
    series_uid: str
    files: tuple[Path, ...]
    name: str
    modality: str = ""
    problem: str | None = None


@dataclass(frozen=True)
class CtSeries:
    """What :func:`read_ct_series` learnt about a series, for writing objects derived from it.

    ``files``, ``sop_instance_uids``, ``slice_positions`` and ``headers`` are in slice order: entry k is slice k
    (z index k) of the image. ``headers`` are the pydicom datasets without pixel data; ``patient_study`` holds
    the patient and study attributes derived objects copy. ``origin`` / ``spacing`` / ``direction`` / ``size``
    are the image's geometry, SimpleITK's order (x along rows, y down columns, z along the slice normal).
    """

    ref: SeriesRef
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    files: tuple[Path, ...]
    slice_positions: tuple[tuple[float, float, float], ...]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    size: tuple[int, int, int]
    headers: tuple = field(repr=False)
    patient_study: object = field(repr=False)  # pydicom Dataset


def check_dicom_support() -> None:
    """Raise ImportError, naming the extra to install, when pydicom 3, highdicom or scikit-image is missing."""
    import importlib

    missing = []
    for module, package in (("pydicom", "pydicom>=3"), ("highdicom", "highdicom"), ("skimage", "scikit-image")):
        try:
            imported = importlib.import_module(module)
        except ImportError:
            missing.append(package)
            continue
        if module == "pydicom" and int(imported.__version__.split(".")[0]) < 3:
            missing.append(f"pydicom>=3 (found {imported.__version__})")
    if missing:
        raise ImportError(f"DICOM input and output need {', '.join(missing)}: {DICOM_EXTRA}")


# -- finding ------------------------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_part(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "series"


def series_output_name(root: Path, folder: Path, series_uid: str, several: bool) -> str:
    """The output name of a series: the folder path below ``root`` joined with ``_`` (only letters, digits,
    ``.``, ``_`` and ``-``; the input folder's own name for series directly in it), plus ``_`` and the last 8 hex
    digits of the SHA-256 of the SeriesInstanceUID when ``several`` series share the folder."""
    relative = folder.relative_to(root)
    parts = relative.parts if relative.parts else (root.resolve().name,)
    name = "_".join(_safe_part(part) for part in parts)
    if several:
        name += "_" + hashlib.sha256(series_uid.encode()).hexdigest()[-8:]
    return name


def _folders(root: Path):
    """``root`` and every folder below it that holds files (hidden folders and files left out), sorted, with
    those files."""
    for current, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        files = sorted(Path(current) / name for name in files if not name.startswith("."))
        if files:
            yield Path(current), files


def _series_and_modality(path: Path) -> tuple[str, str]:
    """(SeriesInstanceUID, Modality) of a DICOM file, ("", "") for a file that is not DICOM."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "Modality"])
    except Exception:  # not DICOM (a README, a DICOMDIR without series): no series of ours
        return "", ""
    return str(header.get("SeriesInstanceUID", "")), str(header.get("Modality", ""))


def _folder_series(folder: Path, files: list[Path]) -> list[tuple[str, tuple[Path, ...], str]]:
    """(SeriesInstanceUID, files, modality) of each image series in one folder.

    GDCM groups the images by SeriesInstanceUID; it leaves out some broken files (a slice without pixel data),
    so the folder's other DICOM files join the series they name, where :func:`read_ct_series` refuses them.
    """
    grouped: dict[str, list[Path]] = {}
    try:
        for series_uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
            names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
            grouped.setdefault(series_uid, []).extend(Path(name) for name in names)
    except RuntimeError:  # GDCM could not scan the folder: pydicom below still finds what is there
        pass
    listed = {path for paths in grouped.values() for path in paths}
    for path in files:
        if path not in listed:
            series_uid, _ = _series_and_modality(path)
            if series_uid:
                grouped.setdefault(series_uid, []).append(path)
    found = []
    for series_uid, paths in grouped.items():
        kind = _series_and_modality(paths[0])[1]
        if kind.strip().upper() not in NON_IMAGE_MODALITIES:
            found.append((series_uid, tuple(paths), kind))
    return found


def find_series(folder: Path) -> list[SeriesRef]:
    """Every DICOM image series anywhere below ``folder`` (included), sorted by output name.

    Each folder's files are grouped by SeriesInstanceUID (GDCM through SimpleITK, plus the DICOM files GDCM
    leaves out); non-image objects (:data:`NON_IMAGE_MODALITIES`) are left out. Series that would get the same
    output name are all returned with ``problem`` set, so that no two share an output and none is silently
    preferred. Raises FileNotFoundError when ``folder`` is not a folder.
    """
    check_dicom_support()
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; give the folder holding the DICOM series")
    refs: list[SeriesRef] = []
    for current, files in _folders(folder):
        found = _folder_series(current, files)
        for series_uid, paths, modality in found:
            name = series_output_name(folder, current, series_uid, several=len(found) > 1)
            refs.append(SeriesRef(current, series_uid, paths, name, modality))
    by_name: dict[str, list[SeriesRef]] = {}
    for ref in refs:
        by_name.setdefault(ref.name, []).append(ref)
    result = []
    for name, sharing in sorted(by_name.items()):
        if len(sharing) == 1:
            result += sharing
            continue
        folders = ", ".join(str(ref.folder) for ref in sharing)
        problem = (f"the series of {folders} would all get the output name {name!r} (folder names are reduced to "
                   f"letters, digits, '.', '_' and '-')")
        result += [SeriesRef(ref.folder, ref.series_uid, ref.files, ref.name, ref.modality, problem)
                   for ref in sharing]
    return result


# -- reading ------------------------------------------------------------------------------------------------------

def _read_headers(ref: SeriesRef) -> list:
    import pydicom

    headers = []
    for path in ref.files:
        try:
            # large values (pixel data) are left on disk: present in the dataset, not read
            header = pydicom.dcmread(path, defer_size=1024)
        except Exception as error:
            raise DicomSeriesError(ref.folder, f"{path.name} cannot be read as DICOM ({error_line(error)})",
                                   "copy or export the series again") from None
        headers.append(header)
    return headers


def _fail(ref: SeriesRef, problem: str, fix: str) -> DicomSeriesError:
    return DicomSeriesError(ref.folder, problem, fix)


def _describe_files(keyword: str, kinds: dict[str, list[str]]) -> str:
    shown = []
    for value, names in sorted(kinds.items()):
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        shown.append(f"{value or '(none)'}: {listed}")
    return f"{keyword} differs between its files ({'; '.join(shown)})"


def _same(ref: SeriesRef, headers, keyword: str, fix: str) -> str:
    """The value of ``keyword``, which every file must have and share."""
    kinds: dict[str, list[str]] = {}
    for path, header in zip(ref.files, headers):
        kinds.setdefault(str(header.get(keyword, "")).strip(), []).append(path.name)
    if len(kinds) > 1:
        raise _fail(ref, _describe_files(keyword, kinds), fix)
    value = next(iter(kinds))
    if not value:
        raise _fail(ref, f"its files lack {keyword}", fix)
    return value


def _numbers(ref: SeriesRef, path: Path, header, keyword: str, count: int) -> np.ndarray:
    value = header.get(keyword)
    try:
        numbers = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        numbers = np.zeros(0)
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        raise _fail(ref, f"{path.name} lacks a valid {keyword} ({count} numbers expected, found {value!r})",
                    "the slices' geometry is needed to stack them into a volume; export the series again with "
                    "its image plane attributes")
    return numbers


def _check_modality(ref: SeriesRef, headers) -> None:
    kinds: dict[str, list[str]] = {}
    for path, header in zip(ref.files, headers):
        kinds.setdefault(str(header.get("Modality", "")).strip().upper(), []).append(path.name)
    if set(kinds) == {"CT"}:
        return
    if "CT" not in kinds:
        found = ", ".join(sorted(k or "(none)" for k in kinds))
        raise _fail(ref, f"is not a CT series (Modality {found})",
                    "nnunet-qpg predicts CT only; move this series out of the input folder")
    raise _fail(ref, _describe_files("Modality", kinds) + ": the series mixes CT with other images",
                "move the files that are not CT out of the series folder")


def _check_pixels(ref: SeriesRef, headers) -> tuple[int, int]:
    for path, header in zip(ref.files, headers):
        if "PixelData" not in header:
            raise _fail(ref, f"{path.name} holds no pixel data",
                        "export the series again with its images, or remove that file")
        raw = header.get_item("PixelData", keep_deferred=True)  # its length and offset, the value left on disk
        length, offset = getattr(raw, "length", None), getattr(raw, "value_tell", None)
        if length is not None and offset is not None and length != 0xFFFFFFFF and \
                offset + length > path.stat().st_size:
            raise _fail(ref, f"{path.name} is truncated (its pixel data ends {offset + length - path.stat().st_size} "
                             f"bytes after the end of the file)", "copy or export the series again")
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            raise _fail(ref, f"{path.name} is a multi-frame image ({header.NumberOfFrames} frames); nnunet-qpg "
                             f"reads classic single-frame CT series",
                        "export the series as single-frame CT Image Storage files")
        if int(header.get("SamplesPerPixel", 1)) != 1:
            raise _fail(ref, f"{path.name} is a colour image (SamplesPerPixel {header.SamplesPerPixel})",
                        "give the original greyscale CT series")
    sizes: dict[str, list[str]] = {}
    for path, header in zip(ref.files, headers):
        if not header.get("Rows") or not header.get("Columns"):
            raise _fail(ref, f"{path.name} lacks Rows / Columns", "export the series again")
        sizes.setdefault(f"{header.get('Rows', '?')}x{header.get('Columns', '?')}", []).append(path.name)
    if len(sizes) > 1:
        raise _fail(ref, _describe_files("image size (rows x columns)", sizes),
                    "all slices of a series must have one size; remove the odd files or export the series again")
    return int(headers[0].Rows), int(headers[0].Columns)


def _slice_geometry(ref: SeriesRef, headers):
    """(order, positions in slice order, row cosine, column cosine, normal, pixel spacing (row, column),
    slice spacing)."""
    orientations = [_numbers(ref, p, h, "ImageOrientationPatient", 6) for p, h in zip(ref.files, headers)]
    spacings = [_numbers(ref, p, h, "PixelSpacing", 2) for p, h in zip(ref.files, headers)]
    positions = np.stack([_numbers(ref, p, h, "ImagePositionPatient", 3) for p, h in zip(ref.files, headers)])
    fix_mixed = "the slices must share one image plane; remove the odd files or export the series again"
    for path, orientation in zip(ref.files, orientations):
        if not np.allclose(orientation, orientations[0], atol=ORIENTATION_TOLERANCE):
            raise _fail(ref, f"{path.name} has another ImageOrientationPatient ({list(orientation)}) than "
                             f"{ref.files[0].name} ({list(orientations[0])})", fix_mixed)
    for path, spacing in zip(ref.files, spacings):
        if not np.allclose(spacing, spacings[0], rtol=1e-4, atol=1e-4):
            raise _fail(ref, f"{path.name} has another PixelSpacing ({list(spacing)}) than {ref.files[0].name} "
                             f"({list(spacings[0])})", fix_mixed)
    if np.any(spacings[0] <= 0):
        raise _fail(ref, f"PixelSpacing {list(spacings[0])} is not positive", "export the series again")
    row, column = orientations[0][:3], orientations[0][3:]
    if (abs(np.linalg.norm(row) - 1) > ORIENTATION_TOLERANCE or abs(np.linalg.norm(column) - 1) >
            ORIENTATION_TOLERANCE or abs(float(row @ column)) > ORIENTATION_TOLERANCE):
        raise _fail(ref, f"ImageOrientationPatient {list(orientations[0])} is not two orthogonal unit vectors",
                    "export the series again")
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    normal = np.cross(row, column)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    files = [ref.files[i] for i in order]
    gaps = np.diff(along)
    same = np.flatnonzero(gaps < 1e-3)
    if same.size:
        i = int(same[0])
        raise _fail(ref, f"{files[i].name} and {files[i + 1].name} lie at the same position "
                         f"({along[i]:.3f} mm along the slice normal)",
                    "the folder holds duplicate slices or two acquisitions under one SeriesInstanceUID; keep one")
    median = float(np.median(gaps))
    tolerance = SPACING_TOLERANCE * median + 0.01
    off = np.flatnonzero(np.abs(gaps - median) > tolerance)
    if off.size:
        i = int(off[0])
        what = (f"about {round(gaps[i] / median) - 1} slice(s) missing" if gaps[i] > 1.5 * median
                else "non-uniform slice spacing")
        raise _fail(ref, f"{what}: {gaps[i]:.3f} mm between {files[i].name} and {files[i + 1].name} where the "
                         f"series' slice spacing is {median:.3f} mm ({off.size} such gap(s))",
                    "export the complete series again; a volume needs evenly spaced slices")
    # gantry tilt: every slice must lie on the line through the first one along the normal
    offsets = positions - positions[0]
    drift = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if drift.max() > TILT_TOLERANCE_MM:
        k = int(np.argmax(drift))
        angle = np.degrees(np.arctan2(drift[k], abs(offsets[k] @ normal)))
        raise _fail(ref, f"the slices are not stacked along their normal (gantry tilt of about {angle:.1f} "
                         f"degrees: {files[k].name} lies {drift[k]:.2f} mm off the slice axis)",
                    "resample the series onto an orthogonal grid (e.g. dcm2niix's gantry-tilt correction) and "
                    "predict the resulting NIfTI volume")
    tilts = [(p.name, float(h.GantryDetectorTilt)) for p, h in zip(ref.files, headers)
             if h.get("GantryDetectorTilt") not in (None, "") and abs(float(h.GantryDetectorTilt)) > 1e-3]
    if tilts:
        raise _fail(ref, f"was acquired with gantry tilt (GantryDetectorTilt {tilts[0][1]:g} degrees in "
                         f"{tilts[0][0]})",
                    "resample the series onto an orthogonal grid (e.g. dcm2niix's gantry-tilt correction) and "
                    "predict the resulting NIfTI volume")
    return order, positions, row, column, normal, spacings[0], median


def read_ct_series(ref: SeriesRef) -> tuple[sitk.Image, CtSeries]:
    """Check a series and read it: the 3D CT image in HU (slice k of the image is ``CtSeries.files[k]``) and its
    :class:`CtSeries` metadata.

    The geometry is the series': origin = ImagePositionPatient of the lowest slice along the normal, direction
    from ImageOrientationPatient (x along rows, y down columns, z the normal), spacing (column spacing, row
    spacing, mean slice gap). Voxels are the stored values through RescaleSlope/Intercept (an integer image when
    those are integers, float32 otherwise). Raises :class:`DicomSeriesError`.
    """
    if ref.problem:
        raise DicomSeriesError(ref.folder, ref.problem, NAME_CLASH_FIX)
    if len(ref.files) < 2:
        raise _fail(ref, f"series {ref.series_uid} holds {len(ref.files)} slice; a CT volume needs at least 2",
                    "give the complete series")
    headers = _read_headers(ref)
    _check_modality(ref, headers)
    rows, columns = _check_pixels(ref, headers)
    fix_one = "the series mixes slices of different scans; keep one scan per series folder"
    study_uid = _same(ref, headers, "StudyInstanceUID", fix_one)
    frame_uid = _same(ref, headers, "FrameOfReferenceUID",
                      fix_one + " (FrameOfReferenceUID is needed to place contours on the CT)")
    sop_class = _same(ref, headers, "SOPClassUID", fix_one)
    order, positions, row, column, normal, pixel_spacing, _ = _slice_geometry(ref, headers)
    files = tuple(ref.files[i] for i in order)
    headers = [headers[i] for i in order]
    sop_uids = tuple(str(h.get("SOPInstanceUID", "")) for h in headers)
    if "" in sop_uids or len(set(sop_uids)) != len(sop_uids):
        raise _fail(ref, "its files lack SOPInstanceUIDs or share them",
                    "export the series again; contours must reference each slice by its own SOPInstanceUID")

    slopes = {float(h.get("RescaleSlope", 1) or 1) for h in headers}
    intercepts = {float(h.get("RescaleIntercept", 0) or 0) for h in headers}
    integral = all(float(v).is_integer() for v in slopes | intercepts)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in files])
    if len(slopes) > 1 or len(intercepts) > 1 or not integral:
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        syntax = str(headers[0].file_meta.get("TransferSyntaxUID", "?")) if hasattr(headers[0], "file_meta") else "?"
        raise _fail(ref, f"its pixel data cannot be decoded ({error_line(error)}; transfer syntax {syntax})",
                    "copy or export the series again, uncompressed or with a standard compression") from None
    if image.GetDimension() != 3 or image.GetSize() != (columns, rows, len(files)):
        raise _fail(ref, f"reads as an image of size {image.GetSize()}, not {(columns, rows, len(files))}",
                    "export the series again")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise _fail(ref, "reads as a multi-component image", "give the original greyscale CT series")
    span = float((positions[-1] - positions[0]) @ normal)
    origin = tuple(float(v) for v in positions[0])
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), span / (len(files) - 1))
    direction = tuple(float(v) for v in np.stack([row, column, normal], axis=1).ravel())
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    for key in image.GetMetaDataKeys():  # the first slice's header, patient name included: not ours to pass on
        image.EraseMetaData(key)

    from pydicom.dataset import Dataset

    patient_study = Dataset()
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in headers[0]:
            setattr(patient_study, keyword, headers[0][keyword].value)
    for header in headers:
        if "PixelData" in header:
            del header.PixelData
    series = CtSeries(
        ref=ref, study_instance_uid=study_uid, series_instance_uid=str(headers[0].SeriesInstanceUID),
        frame_of_reference_uid=frame_uid, sop_class_uid=sop_class, sop_instance_uids=sop_uids, files=files,
        slice_positions=tuple(tuple(float(v) for v in p) for p in positions), origin=origin, spacing=spacing,
        direction=direction, size=(columns, rows, len(files)), headers=tuple(headers),
        patient_study=patient_study,
    )
    return image, series
