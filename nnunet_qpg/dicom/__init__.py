"""DICOM in and out for ``nnunet-qpg predict``: CT series in, RT Structure Sets and SEG out (research use only).

Needs the optional extra ``dicom`` (``pip install -e ".[dicom]"``: pydicom, highdicom, scikit-image).

- :func:`find_series` (folder -> [:class:`SeriesRef`]): every CT series below a folder, each with a stable output
  name from its folder path, never from header contents.
- :func:`read_ct_series` (ref -> (SimpleITK image in HU, :class:`CtSeries`)): checks and reads one series;
  a series that cannot be used raises :class:`DicomSeriesError` (folder, problem, fix).
- :func:`check_dicom_support`: raises ImportError naming the extra when it is not installed (the functions
  below call it too); importing this package needs none of it.
- :func:`write_rtstruct` / :func:`write_seg` (mask, series, label names, path): the mask as an RT Structure Set /
  a DICOM SEG referencing the CT, written atomically.
"""

from nnunet_qpg.dicom.rtstruct import write_rtstruct
from nnunet_qpg.dicom.seg import write_seg
from nnunet_qpg.dicom.series import (DICOM_EXTRA, CtSeries, DicomSeriesError, SeriesRef, check_dicom_support,
                                    find_series, read_ct_series)

__all__ = ["DICOM_EXTRA", "CtSeries", "DicomSeriesError", "SeriesRef", "check_dicom_support", "find_series",
           "read_ct_series", "write_rtstruct", "write_seg"]
