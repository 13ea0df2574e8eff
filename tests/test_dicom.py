"""nnunet_qpg.dicom: CT series found and read (pixels in HU and geometry exact), bad series refused with one
exception, RT Structure Sets and SEGs that read back as the mask on the CT's grid and reference the CT."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
highdicom = pytest.importorskip("highdicom")

from dicom_data import PATIENT_ID, PATIENT_NAME, rasterise_rtstruct, write_ct_series  # noqa: E402

from nnunet_qpg.dicom import (DicomSeriesError, check_dicom_support, find_series, read_ct_series,  # noqa: E402
                              write_rtstruct, write_seg)
from nnunet_qpg.safe_io import UnsafeOutputError  # noqa: E402

LABELS = {0: "background", 1: "kidney", 2: "tumor"}
# in-plane rotation and unequal row / column spacing: a swapped spacing or axis shows in every check
ROTATED = dict(row_cosine=(np.cos(0.5), np.sin(0.5), 0.0), column_cosine=(-np.sin(0.5), np.cos(0.5), 0.0),
               pixel_spacing=(0.9, 0.6), origin=(10.5, -30.25, -80.0))


def read_only_series(root: Path):
    refs = find_series(root)
    assert len(refs) == 1, refs
    return read_ct_series(refs[0])


def blob_mask(image: sitk.Image) -> sitk.Image:
    """The bright blobs thresholded and labelled 1 (left) and 2 (right), with a hole punched into blob 1."""
    from scipy import ndimage

    hu = sitk.GetArrayFromImage(image)
    components, count = ndimage.label(hu > 150)
    assert count == 2
    left = components[..., : hu.shape[2] // 2].max()
    labels = np.where(components == left, 1, np.where(components > 0, 2, 0)).astype(np.uint8)
    k = int(np.argmax((labels == 1).sum(axis=(1, 2))))
    rows, columns = np.nonzero(labels[k] == 1)
    r, c = int(rows.mean()), int(columns.mean())
    labels[k, r - 1:r + 2, c - 1:c + 2] = 0  # a hole: an inner contour of its own
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(image)
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# -- reading ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("geometry", [{}, ROTATED], ids=["axial", "rotated-anisotropic"])
def test_series_reads_back_as_written(tmp_path, geometry):
    written = write_ct_series(tmp_path / "Doe_case" / "CT", **geometry)
    image, series = read_only_series(tmp_path)

    assert sitk.GetArrayFromImage(image).tolist() == written.hu.tolist()
    assert np.allclose(image.GetOrigin(), written.origin, atol=1e-4)
    assert np.allclose(image.GetSpacing(), written.spacing, atol=1e-6)
    assert np.allclose(image.GetDirection(), written.direction, atol=1e-6)
    for k, path in enumerate(written.files):  # slice k of the image is file k, position and all
        position = [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]
        assert np.allclose(image.TransformIndexToPhysicalPoint((0, 0, k)), position, atol=1e-3)
    assert series.files == tuple(written.files)
    assert series.sop_instance_uids == tuple(written.sop_uids)
    assert (series.study_instance_uid, series.series_instance_uid, series.frame_of_reference_uid) == (
        written.study_uid, written.series_uid, written.frame_uid)
    assert series.patient_study.PatientName == PATIENT_NAME
    assert series.ref.name == "Doe_case_CT"  # from the folders, nothing from the headers
    assert image.GetMetaDataKeys() == ()


def test_rescale_slope_gives_float_hu(tmp_path):
    written = write_ct_series(tmp_path / "ct", slope=0.5, intercept=-1000.0)
    image, _ = read_only_series(tmp_path)
    assert image.GetPixelID() == sitk.sitkFloat32
    assert np.array_equal(sitk.GetArrayFromImage(image), written.hu.astype(np.float32))


def test_find_series_nested_several_per_folder_and_non_images_left_out(tmp_path):
    root = tmp_path / "input"
    nested = write_ct_series(root / "patient 1" / "CT")
    first = write_ct_series(root / "mixed", series_number=2, name_prefix="A")
    second = write_ct_series(root / "mixed", series_number=5, name_prefix="B", study_uid=first.study_uid,
                             frame_uid=first.frame_uid, slices=6)
    direct = write_ct_series(root, name_prefix="C", slices=5)
    # an RT Structure Set and a SEG stored beside the CT are no series to predict
    image, series = read_ct_series(next(ref for ref in find_series(root) if ref.name == "patient_1_CT"))
    write_rtstruct(blob_mask(image), series, LABELS, root / "patient 1" / "CT" / "contours.dcm")
    write_seg(blob_mask(image), series, LABELS, root / "patient 1" / "CT" / "seg.dcm")

    refs = find_series(root)
    suffix = {uid: hashlib.sha256(uid.encode()).hexdigest()[-8:] for uid in (first.series_uid, second.series_uid)}
    by_name = {ref.name: ref for ref in refs}
    assert sorted(by_name) == sorted(["patient_1_CT", f"mixed_{suffix[first.series_uid]}",
                                      f"mixed_{suffix[second.series_uid]}", "input"])
    assert all(PATIENT_ID not in name and "Doe" not in name for name in by_name)
    for name, written in ((f"mixed_{suffix[first.series_uid]}", first), (f"mixed_{suffix[second.series_uid]}",
                                                                         second), ("patient_1_CT", nested),
                          ("input", direct)):
        image, series = read_ct_series(by_name[name])
        assert series.series_instance_uid == written.series_uid
        assert np.array_equal(sitk.GetArrayFromImage(image), written.hu)
    assert find_series(root) == refs  # stable


def test_folders_that_would_share_a_name_are_all_refused(tmp_path):
    write_ct_series(tmp_path / "case 1")
    write_ct_series(tmp_path / "case_1")
    refs = find_series(tmp_path)
    assert len(refs) == 2 and all(ref.problem for ref in refs)
    for ref in refs:
        with pytest.raises(DicomSeriesError, match="output name 'case_1'.*rename the folders"):
            read_ct_series(ref)


BAD_SERIES = {
    "mixed-modality": (dict(slice_modality={3: "MR"}), "mixes CT with other images"),
    "not-ct": (dict(modality="MR"), r"is not a CT series \(Modality MR\)"),
    "missing-slice": (dict(drop_slices=(4,)), r"about 1 slice\(s\) missing: 5.000 mm .* slice spacing is 2.500"),
    "gantry-tilt": (dict(gantry_tilt=15.0, tilt_positions=True), "gantry tilt of about 15.0 degrees"),
    "gantry-tilt-tag": (dict(gantry_tilt=12.0), "GantryDetectorTilt 12 degrees"),
    "odd-size": (dict(odd_size_slice=2), r"image size \(rows x columns\) differs"),
    "no-pixel-data": (dict(no_pixel_data_slice=5), "holds no pixel data"),
}


@pytest.mark.parametrize("case", sorted(BAD_SERIES))
def test_bad_series_raise_one_error_and_others_go_on(tmp_path, case):
    arguments, message = BAD_SERIES[case]
    write_ct_series(tmp_path / "bad", **arguments)
    good = write_ct_series(tmp_path / "good")
    read, problems = {}, {}
    for ref in find_series(tmp_path):  # the way a batch goes through them
        try:
            read[ref.name] = read_ct_series(ref)
        except DicomSeriesError as error:
            problems[ref.name] = str(error)
    assert list(read) == ["good"] and list(problems) == ["bad"]
    assert np.array_equal(sitk.GetArrayFromImage(read["good"][0]), good.hu)
    assert problems["bad"].startswith(str(tmp_path / "bad"))
    assert re.search(message, problems["bad"]), problems["bad"]


def test_truncated_slice_is_named(tmp_path):
    written = write_ct_series(tmp_path / "ct")
    broken = written.files[3]
    os.truncate(broken, broken.stat().st_size - 3000)
    with pytest.raises(DicomSeriesError, match=f"{broken.name} is truncated .*3000 bytes after the end"):
        read_only_series(tmp_path)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_series(tmp_path / "nothing")


def test_missing_extra_is_named(monkeypatch, tmp_path):
    check_dicom_support()
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if it were not installed
    with pytest.raises(ImportError, match=re.escape('highdicom: pip install "nnunet-qpg[dicom]"')):
        find_series(tmp_path)


# -- writing ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("geometry", [{}, ROTATED], ids=["axial", "rotated-anisotropic"])
def test_rtstruct_contours_give_back_the_mask_and_reference_the_ct(tmp_path, geometry):
    written = write_ct_series(tmp_path / "in" / "ct", **geometry)
    image, series = read_only_series(tmp_path / "in")
    mask = blob_mask(image)
    target = tmp_path / "out" / "ct_rtstruct.dcm"
    write_rtstruct(mask, series, LABELS, target)
    assert sorted(os.listdir(target.parent)) == ["ct_rtstruct.dcm"]  # no temporary file left

    labels = sitk.GetArrayFromImage(mask)
    masks = rasterise_rtstruct(target, image, series)
    assert sorted(masks) == ["kidney", "tumor"]
    for label, name in ((1, "kidney"), (2, "tumor")):
        assert dice(masks[name], labels == label) >= 0.95, name

    ds = pydicom.dcmread(target)
    assert ds.SOPClassUID == pydicom.uid.RTStructureSetStorage and ds.Modality == "RTSTRUCT"
    assert "RESEARCH USE ONLY" in ds.SeriesDescription and len(ds.SeriesDescription) <= 64
    assert ds.ApprovalStatus == "UNAPPROVED" and ds.Manufacturer == "nnunet-qpg" and ds.SoftwareVersions
    assert ds.StudyInstanceUID == written.study_uid and ds.PatientName == PATIENT_NAME
    assert ds.PatientID == PATIENT_ID
    assert ds.SeriesInstanceUID not in (written.series_uid, written.study_uid)
    assert ds.SOPInstanceUID not in written.sop_uids and ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == written.frame_uid
    referenced = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == written.series_uid
    assert [item.ReferencedSOPInstanceUID for item in referenced.ContourImageSequence] == written.sop_uids
    assert {roi.ReferencedFrameOfReferenceUID for roi in ds.StructureSetROISequence} == {written.frame_uid}
    referenced_slices = {contour.ContourImageSequence[0].ReferencedSOPInstanceUID
                         for roi in ds.ROIContourSequence for contour in roi.ContourSequence}
    assert referenced_slices <= set(written.sop_uids) and len(referenced_slices) > 2
    assert [int(roi.ROINumber) for roi in ds.StructureSetROISequence] == [1, 2]


@pytest.mark.parametrize("geometry", [{}, ROTATED], ids=["axial", "rotated-anisotropic"])
def test_seg_reads_back_as_the_mask(tmp_path, geometry):
    written = write_ct_series(tmp_path / "in" / "ct", **geometry)
    image, series = read_only_series(tmp_path / "in")
    mask = blob_mask(image)
    target = tmp_path / "out" / "ct_seg.dcm"
    write_seg(mask, series, LABELS, target)
    assert sorted(os.listdir(target.parent)) == ["ct_seg.dcm"]

    seg = highdicom.seg.segread(target)
    assert seg.SeriesDescription.startswith("nnunet-qpg") and "RESEARCH USE ONLY" in seg.SeriesDescription
    assert seg.ContentQualification == "RESEARCH"
    assert seg.StudyInstanceUID == written.study_uid and seg.FrameOfReferenceUID == written.frame_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == written.series_uid
    label_of = {number: {"kidney": 1, "tumor": 2}[seg.get_segment_description(number).segment_label]
                for number in seg.segment_numbers}
    assert sorted(label_of.values()) == [1, 2]
    numbers = seg.get_pixels_by_source_instance(list(series.sop_instance_uids), combine_segments=True)
    back = np.zeros(numbers.shape, dtype=np.uint8)
    for number, label in label_of.items():
        back[numbers == number] = label
    assert np.array_equal(back, sitk.GetArrayFromImage(mask))


def test_empty_mask_names_every_label_without_contours(tmp_path):
    write_ct_series(tmp_path / "in" / "ct")
    image, series = read_only_series(tmp_path / "in")
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    write_rtstruct(empty, series, {str(k): v for k, v in LABELS.items()}, tmp_path / "rt.dcm")  # JSON keys
    ds = pydicom.dcmread(tmp_path / "rt.dcm")
    assert [roi.ROIName for roi in ds.StructureSetROISequence] == ["kidney", "tumor"]
    assert not any("ContourSequence" in roi for roi in ds.ROIContourSequence)
    write_seg(empty, series, LABELS, tmp_path / "seg.dcm")
    seg = highdicom.seg.segread(tmp_path / "seg.dcm")
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == ["kidney", "tumor"]
    assert not seg.get_pixels_by_source_instance(list(series.sop_instance_uids), combine_segments=True).any()


def test_writers_refuse_a_mask_off_the_grid_and_a_link(tmp_path):
    write_ct_series(tmp_path / "in" / "ct")
    image, series = read_only_series(tmp_path / "in")
    mask = blob_mask(image)
    moved = sitk.Image(mask)
    moved.SetOrigin([v + 1.0 for v in mask.GetOrigin()])
    for write in (write_rtstruct, write_seg):
        with pytest.raises(ValueError, match="geometry"):
            write(moved, series, LABELS, tmp_path / "x.dcm")
        with pytest.raises(ValueError, match="size"):
            write(mask[:, :, :-1], series, LABELS, tmp_path / "x.dcm")
    (tmp_path / "target.dcm").write_text("not ours")
    (tmp_path / "link.dcm").symlink_to(tmp_path / "target.dcm")
    for write in (write_rtstruct, write_seg):
        with pytest.raises(UnsafeOutputError, match="symbolic link"):
            write(mask, series, LABELS, tmp_path / "link.dcm")
    assert (tmp_path / "target.dcm").read_text() == "not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "link.dcm", "target.dcm"]
