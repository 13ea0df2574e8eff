"""Cheap detection of truncated NIfTI files (.nii and .nii.gz), which ITK reads without complaint (the missing
voxels come back as zeros or garbage).

An uncompressed .nii must be at least the header's vox_offset plus the voxel data long; its size on disk says so
at once. A gzip file ends with ISIZE, the uncompressed length mod 2**32. For a complete NIfTI that length is the header's
vox_offset plus the voxel data; a truncated file ends in compressed bytes instead, which match with probability
2**-32. Only the first few hundred bytes are decompressed, so the check costs nothing on a 1 GB volume.

ITK's NIfTI reader also replaces NaN by 0 without a word, so non-finite voxels can only be seen in the file's raw
voxel stream: :func:`count_non_finite` and :func:`locate_non_finite` stream it for floating-point files (integer CT cannot hold NaN).
Limitation: a multi-member gzip (concatenated streams; nibabel and ITK never write those) would be flagged too.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from math import prod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NIFTI1_HEADER_BYTES, NIFTI2_HEADER_BYTES = 348, 540


@dataclass(frozen=True)
class _Header:
    """The fields of a NIfTI-1 or NIfTI-2 header that the checks need."""

    byte_order: str  # struct's "<" or ">"
    datatype: int
    bits_per_voxel: int
    dims: tuple[int, ...]  # dim[1..dim[0]]: x fastest
    voxel_offset: int

    @property
    def expected_size(self) -> int:
        """vox_offset + voxel bytes: the uncompressed length of a complete file."""
        return self.voxel_offset + prod(self.dims) * self.bits_per_voxel // 8


NIFTI1_FIELDS_END = 112  # the NIfTI-1 fields read below end with vox_offset at bytes 108..112


def _parse_header(header: bytes) -> _Header | None:
    """The header's fields, in whichever byte order its sizeof_hdr reads right; None if it is neither a NIfTI-1
    nor a NIfTI-2 header (or too short to hold the fields), or its dim[0] is not 1..7."""
    for order in "<>":
        size_of_header = struct.unpack(f"{order}i", header[:4])[0]
        if size_of_header == NIFTI1_HEADER_BYTES and len(header) >= NIFTI1_FIELDS_END:
            dims = struct.unpack(f"{order}8h", header[40:56])
            datatype, bits_per_voxel = struct.unpack(f"{order}2h", header[70:74])
            voxel_offset = int(struct.unpack(f"{order}f", header[108:112])[0])
        elif size_of_header == NIFTI2_HEADER_BYTES and len(header) >= NIFTI2_HEADER_BYTES:
            datatype, bits_per_voxel = struct.unpack(f"{order}2h", header[12:16])
            dims = struct.unpack(f"{order}8q", header[16:80])
            voxel_offset = struct.unpack(f"{order}q", header[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7:
            return None
        return _Header(order, datatype, bits_per_voxel, tuple(dims[1 : dims[0] + 1]), voxel_offset)
    return None


def _expected_uncompressed_size(header: bytes) -> int | None:
    """vox_offset + voxel bytes from a NIfTI-1 or NIfTI-2 header; None if the header is neither."""
    fields = _parse_header(header)
    return None if fields is None else fields.expected_size


# NIfTI datatype codes of the real floating-point types, and their numpy types
FLOAT_DATATYPES = {16: "f4", 64: "f8"}


def _float_layout(header: bytes) -> tuple[str, int, tuple[int, ...]] | None:
    """(numpy dtype with byte order, vox_offset, numpy shape) for a float NIfTI header, else None."""
    fields = _parse_header(header)
    if fields is None or fields.datatype not in FLOAT_DATATYPES:
        return None
    # NIfTI stores x fastest: in C order the shape is reversed, as SimpleITK's GetArrayFromImage gives it
    return f"{fields.byte_order}{FLOAT_DATATYPES[fields.datatype]}", fields.voxel_offset, tuple(reversed(fields.dims))


CHUNK_BYTES = 1 << 24


def _float_chunks(path: Path):
    """(flat offset, values) chunks of a float NIfTI's raw voxels, 16 MiB at a time; nothing for integer files."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as stream:
        layout = _float_layout(stream.read(NIFTI2_HEADER_BYTES))
        if layout is None:
            return
        dtype, voxel_offset, shape = layout
        stream.seek(voxel_offset)
        item = np.dtype(dtype).itemsize
        remaining, offset = prod(shape) * item, 0
        while remaining > 0:
            chunk = stream.read(min(CHUNK_BYTES - CHUNK_BYTES % item, remaining))
            if not chunk:
                return
            values = np.frombuffer(chunk[: len(chunk) - len(chunk) % item], dtype=dtype)
            yield offset, values
            offset += values.size
            remaining -= len(chunk)


def count_non_finite(path: Path | str) -> int:
    """How many voxels of a floating-point NIfTI file are NaN or infinite (0 for integer files), read from the
    raw stream in chunks, so a large CT is never held twice."""
    return sum(int(values.size - np.count_nonzero(np.isfinite(values))) for _, values in _float_chunks(Path(path)))


@dataclass
class NonFiniteVoxels:
    """Where a float NIfTI's NaN / -inf / +inf voxels are (flat indices in C order) and its finite range."""

    low_indices: np.ndarray  # NaN and -inf
    high_indices: np.ndarray  # +inf
    finite_min: float | None
    finite_max: float | None


def locate_non_finite(path: Path | str) -> NonFiniteVoxels:
    """One streamed pass over the raw voxels (see :func:`count_non_finite`) that keeps only the bad positions."""
    low, high, minimum, maximum = [], [], None, None
    for offset, values in _float_chunks(Path(path)):
        finite = np.isfinite(values)
        low.append(offset + np.flatnonzero(np.isnan(values) | np.isneginf(values)))
        high.append(offset + np.flatnonzero(np.isposinf(values)))
        if finite.any():
            kept = values[finite]
            minimum = float(kept.min()) if minimum is None else min(minimum, float(kept.min()))
            maximum = float(kept.max()) if maximum is None else max(maximum, float(kept.max()))
    empty = np.zeros(0, dtype=np.int64)
    return NonFiniteVoxels(np.concatenate(low) if low else empty, np.concatenate(high) if high else empty,
                           minimum, maximum)


def _uncompressed_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as stream:
            header = stream.read(NIFTI2_HEADER_BYTES)
        on_disk = path.stat().st_size
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    expected = _expected_uncompressed_size(header) if len(header) >= 4 else None
    if expected is None or on_disk >= expected:
        return None
    return (f"is truncated: {on_disk} bytes on disk, the NIfTI header needs {expected}; "
            f"download or copy the file again")


def truncation_problem(path: Path | str) -> str | None:
    """A sentence saying why the NIfTI file at `path` is incomplete, or None if it looks complete.

    Files that are neither .nii nor .nii.gz are not checked (None).
    """
    path = Path(path)
    if path.name.endswith(".nii"):
        return _uncompressed_problem(path)
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
