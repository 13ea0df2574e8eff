"""Cheap detection of truncated .nii.gz files, which ITK reads without complaint (the missing voxels come back
as zeros or garbage).

A gzip file ends with ISIZE, the uncompressed length mod 2**32. For a complete NIfTI that length is the header's
vox_offset plus the voxel data; a truncated file ends in compressed bytes instead, which match with probability
2**-32. Only the first few hundred bytes are decompressed, so the check costs nothing on a 1 GB volume.
Limitation: a multi-member gzip (concatenated streams; nibabel and ITK never write those) would be flagged too.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from math import prod
from pathlib import Path

NIFTI1_HEADER_BYTES, NIFTI2_HEADER_BYTES = 348, 540


def _expected_uncompressed_size(header: bytes) -> int | None:
    """vox_offset + voxel bytes from a NIfTI-1 or NIfTI-2 header; None if the header is neither."""
    for order in "<>":
        size_of_header = struct.unpack(f"{order}i", header[:4])[0]
        if size_of_header == NIFTI1_HEADER_BYTES:
            dims = struct.unpack(f"{order}8h", header[40:56])
            bits_per_voxel = struct.unpack(f"{order}h", header[72:74])[0]
            voxel_offset = int(struct.unpack(f"{order}f", header[108:112])[0])
        elif size_of_header == NIFTI2_HEADER_BYTES and len(header) >= NIFTI2_HEADER_BYTES:
            bits_per_voxel = struct.unpack(f"{order}h", header[14:16])[0]
            dims = struct.unpack(f"{order}8q", header[16:80])
            voxel_offset = struct.unpack(f"{order}q", header[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7:
            return None
        return voxel_offset + prod(dims[1 : dims[0] + 1]) * bits_per_voxel // 8
    return None


def truncation_problem(path: Path | str) -> str | None:
    """A sentence saying why the .nii.gz at `path` is incomplete, or None if it looks complete (or is not .gz)."""
    path = Path(path)
    if not path.name.endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as stream:
            header = stream.read(NIFTI2_HEADER_BYTES)
        with open(path, "rb") as raw:
            raw.seek(-4, 2)
            stored_size = struct.unpack("<I", raw.read(4))[0]
    except (OSError, EOFError, zlib.error) as error:
        return f"is not a readable gzip file ({error})"
    expected = _expected_uncompressed_size(header)
    if expected is None or expected % 2**32 == stored_size:
        return None
    return (
        f"is truncated or corrupt: its gzip trailer says {stored_size} bytes, the NIfTI header needs "
        f"{expected % 2**32} (mod 2**32); download or copy the file again"
    )
