"""The paper's CT intensities (SPEC section 6): clip to the HU window, then (if denoising) a 3x3 mean and a 7x7
median filter, both with edge replication.

Filtering runs on the whole slice at its native resolution, BEFORE cropping and resizing: the filters then mean
the same physical neighbourhood for every sample, and small crops get no artificial border effects. A model is
trained on these pixels, so prediction calls the same function with the settings its dataset.json records.

The median is :func:`median_filter_nearest`, an exact median equal bit for bit to
``scipy.ndimage.median_filter(image, size, mode="nearest")`` (the filter the converter has always used; tests
compare them on random data with ties and at the borders) and about 9x faster (a 512 x 512 slice in ~20 ms instead
of ~200 ms on one core; benchmarks/bench_volume_inference.py). It is a comparator network run with ``np.minimum``
/ ``np.maximum`` on whole rows of pixels at once, in the spirit of Adams' separable sorting networks ("Fast median
filters using separable sorting networks", SIGGRAPH 2021): every column of ``size`` pixels is sorted once, and sorted
runs of neighbouring columns are merged once and shared by every window that contains them (a 7 x 7 window is
the union of a merged run of 4 columns and one of 3). The median is then the ``k``-th smallest element of the
union of two sorted lists ``a`` and ``b``: ``min over i of max(a_i, b_(k-i))``. Every output is one of the window's
own values picked by comparisons, never computed, so the result is exact; NaN and -0.0 (where the order of
comparisons could matter) are left to scipy.
"""

from __future__ import annotations

import threading
from typing import Iterator

import numpy as np
from scipy import ndimage

__all__ = ["MEAN_FILTER_SIZE", "MEDIAN_FILTER_SIZE", "median_filter_nearest", "window_and_denoise"]

MEAN_FILTER_SIZE = 3
MEDIAN_FILTER_SIZE = 7


def window_and_denoise(slice_hu: np.ndarray, window: tuple[float, float], denoise: bool) -> np.ndarray:
    """Clip to the HU window, then 3x3 mean and 7x7 median filters if `denoise` (float32 result).

    `slice_hu` is one slice (rows, cols) or a stack of slices (slices, rows, cols); the filters act within each
    slice, and a stack gives, slice for slice, the same pixels as the slices one at a time.
    """
    clipped = np.clip(slice_hu.astype(np.float32, copy=False), window[0], window[1])
    if not denoise:
        return clipped
    # size 1 along the stack axis: scipy skips that axis, so each slice is filtered exactly as on its own
    in_plane = (1,) * (clipped.ndim - 2) + (MEAN_FILTER_SIZE, MEAN_FILTER_SIZE)
    smoothed = ndimage.uniform_filter(clipped, size=in_plane, mode="nearest")
    return median_filter_nearest(smoothed, MEDIAN_FILTER_SIZE)


def median_filter_nearest(image: np.ndarray, size: int = MEDIAN_FILTER_SIZE) -> np.ndarray:
    """``scipy.ndimage.median_filter(image, size, mode="nearest")`` on a 2D image, bit for bit, only faster; on a
    stack (..., rows, cols) each 2D slice is filtered on its own (scipy's ``size=(1, ..., size, size)``).

    Odd sizes run the comparator network of the module docstring; even sizes, dtypes other than real numbers,
    and images holding NaN or -0.0 go to scipy itself.
    """
    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"median_filter_nearest filters 2D slices; got an array of shape {image.shape}")
    in_plane = (1,) * (image.ndim - 2) + (size, size)
    if size % 2 == 0 or image.dtype.kind not in "fiu" or image.size == 0 or _order_ambiguous(image):
        return ndimage.median_filter(image, size=in_plane, mode="nearest")
    if size == 1:
        return image.copy()
    rows, cols = image.shape[-2:]
    slices = image.reshape(-1, rows, cols)
    result = np.empty(slices.shape, dtype=image.dtype)
    _median_of_stack(slices, size, result)
    return result.reshape(image.shape)


def _order_ambiguous(image: np.ndarray) -> bool:
    """NaN compares with nothing, and -0.0 == 0.0 while their bits differ: which of them a median picks depends
    on the order of comparisons, so only scipy's own order gives scipy's bits."""
    if image.dtype.kind != "f":
        return False
    return bool(np.isnan(image).any()) or bool(np.signbit(image[image == 0]).any())


# ---------------------------------------------------------------------------------------------------------------
# The comparator network. Values are numbered; an operand is either ("input", row_shift) (the padded input rows
# shifted down by row_shift) or (value, column_shift). Each op computes one value as min or max of two operands
# over a width of `columns + extra` pixels per row.

_INF = -1  # a +inf sentinel wire of Batcher's networks for lengths that are not powers of two


def _oddeven_merge(low: int, length: int, stride: int) -> Iterator[tuple[int, int]]:
    """Batcher's odd-even merge of wires low..low+length-1 (length a power of two), as comparator pairs."""
    step = stride * 2
    if step < length:
        yield from _oddeven_merge(low, length, step)
        yield from _oddeven_merge(low + stride, length, step)
        for i in range(low + stride, low + length - stride, step):
            yield i, i + stride
    else:
        yield low, low + stride


def _oddeven_sort(low: int, length: int) -> Iterator[tuple[int, int]]:
    if length > 1:
        half = length // 2
        yield from _oddeven_sort(low, half)
        yield from _oddeven_sort(low + half, half)
        yield from _oddeven_merge(low, length, 1)


def _power_of_two_at_least(n: int) -> int:
    power = 1
    while power < n:
        power *= 2
    return power


class _Program:
    """The straight-line program of one median size: ``ops`` are (value, is_max, operand, operand, extra)."""

    def __init__(self) -> None:
        self.ops: list[tuple[int, bool, tuple, tuple, int]] = []
        self.count = 0

    def op(self, is_max: bool, first: tuple, second: tuple, extra: int) -> tuple:
        self.count += 1
        self.ops.append((self.count, is_max, first, second, extra))
        return self.count, 0

    def network(self, pairs: Iterator[tuple[int, int]], wires: list, needed_ranks, extra: int) -> list:
        """Run comparator `pairs` on `wires` (operands, or _INF sentinels at the ends), keeping only the ops the
        output ranks `needed_ranks` depend on; returns the operands of all output ranks (None where not needed)."""
        ops, labels = [], list(range(len(wires)))
        known = {index: wire for index, wire in enumerate(wires)}
        fresh = len(wires)
        sentinel = {index for index, wire in enumerate(wires) if wire is _INF}
        for i, j in pairs:
            a, b = labels[i], labels[j]
            if b in sentinel:  # min(x, inf) = x stays below, inf stays above
                continue
            if a in sentinel:
                labels[i], labels[j] = b, a
                continue
            ops.append((fresh, False, a, b))
            ops.append((fresh + 1, True, a, b))
            labels[i], labels[j] = fresh, fresh + 1
            fresh += 2
        outputs = [label for label in labels if label not in sentinel]
        needed = {outputs[rank] for rank in needed_ranks}
        kept = []
        for op in reversed(ops):
            if op[0] in needed:
                kept.append(op)
                needed.update(op[2:])
        for label, is_max, a, b in reversed(kept):
            known[label] = self.op(is_max, known[a], known[b], extra)
        wanted = set(needed_ranks)
        return [known[label] if rank in wanted else None for rank, label in enumerate(outputs)]

    def merge(self, first: list, second: list, needed_ranks, extra: int) -> list:
        width = _power_of_two_at_least(max(len(first), len(second)))
        wires = (list(first) + [_INF] * (width - len(first)) + list(second) + [_INF] * (width - len(second)))
        return self.network(_oddeven_merge(0, 2 * width, 1), wires, needed_ranks, extra)


def _shifted(operands: list, columns: int) -> list:
    return [None if operand is None else (operand[0], operand[1] + columns) for operand in operands]


def _median_program(size: int) -> tuple[list, tuple]:
    """The ops computing the median of a size x size window (odd size >= 3) from the padded input rows, and the
    operand holding the result. Output pixel j's window covers padded columns j..j+size-1."""
    program = _Program()
    last = size - 1
    all_ranks = range(size)
    # columns of `size` pixels, sorted; value at column position p covers padded column p (width columns + last)
    sort_wires = [("input", shift) for shift in range(size)] + [_INF] * (_power_of_two_at_least(size) - size)
    blocks = {1: program.network(_oddeven_sort(0, len(sort_wires)), sort_wires, all_ranks, last)}
    left_columns = 1
    while left_columns * 2 < size:
        left_columns *= 2
    # sorted runs of 2, 4, ... neighbouring columns below the left run, shared by every window holding them
    run = 1
    while run * 2 < left_columns:
        blocks[run * 2] = program.merge(blocks[run], _shifted(blocks[run], run), range(2 * run * size),
                                        last - (2 * run - 1))
        run *= 2
    rank = (size * size + 1) // 2  # the median, 1-based
    # the right part: the columns after the left run, merged from the largest runs down
    parts, offset, remaining = [], left_columns, size - left_columns
    while remaining:
        part = 1
        while part * 2 <= remaining:
            part *= 2
        parts.append(_shifted(blocks[part], offset))
        offset += part
        remaining -= part
    left_length, right_length = left_columns * size, (size - left_columns) * size
    first_i, last_i = max(0, rank - right_length), min(rank, left_length)  # min over i of max(a_i, b_(rank - i))
    left_needed = [i - 1 for i in range(max(first_i, 1), last_i + 1)]
    right_needed = [rank - i - 1 for i in range(first_i, last_i + 1) if rank - i >= 1]
    right = parts[0]
    for index, part in enumerate(parts[1:], start=2):
        ranks = right_needed if index == len(parts) else range(len(right) + len(part))
        right = program.merge(right, part, ranks, 0)
    half = left_columns // 2
    left = program.merge(blocks[half], _shifted(blocks[half], half), left_needed, 0)
    best = None
    for i in range(first_i, last_i + 1):
        a = left[i - 1] if i >= 1 else None
        b = right[rank - i - 1] if rank - i >= 1 else None
        term = b if a is None else a if b is None else program.op(True, a, b, 0)
        best = term if best is None else program.op(False, best, term, 0)
    return program.ops, best


_PROGRAMS: dict[int, tuple[list, tuple]] = {}


def _program(size: int) -> tuple[list, tuple]:
    if size not in _PROGRAMS:
        _PROGRAMS[size] = _median_program(size)
    return _PROGRAMS[size]


# elements per work array: the 7 x 7 program keeps about 46 of them alive; 64 rows of a 512-wide slice stay in cache
_TARGET_ELEMENTS = 1 << 15


class _Runner:
    """Work arrays and precomputed views to run the program on a block of ``tall`` padded input rows of ``wide``
    pixels (``tall - size + 1`` output rows): one ufunc call per op, no allocation.

    Every array is flat, one row after the other, so every op is one contiguous ufunc call (twice as fast as on
    2D views): a column shift is a flat offset. An op computes all ``wide`` columns of each row; the last ones mix
    in pixels of the next row, but no valid output depends on them (an output column j reads operand columns up
    to j + size - 1 of its own row, all valid), and they are cut off at the end.
    """

    def __init__(self, tall: int, wide: int, dtype: np.dtype, size: int):
        ops, result = _program(size)
        length = (tall - size + 1) * wide  # flat output pixels
        self.shape = (tall - size + 1, wide)
        self.input = np.zeros(tall * wide, dtype)
        last_use: dict[int, int] = {}
        for index, (_, _, first, second, _) in enumerate(ops):
            for operand in (first, second):
                if operand[0] != "input":
                    last_use[operand[0]] = index
        last_use[result[0]] = len(ops)
        buffers: list[np.ndarray] = []
        free: list[int] = []
        home: dict[int, int] = {}

        def view(operand: tuple) -> np.ndarray:
            if operand[0] == "input":
                return self.input[operand[1] * wide:operand[1] * wide + length]
            return buffers[home[operand[0]]][operand[1]:operand[1] + length]

        self.calls = []
        for index, (value, is_max, first, second, _) in enumerate(ops):
            if free:
                home[value] = free.pop()
            else:
                home[value] = len(buffers)
                buffers.append(np.zeros(length + size - 1, dtype))  # room for column shifts up to size - 1
            ufunc = np.maximum if is_max else np.minimum
            self.calls.append((ufunc, view(first), view(second), view((value, 0))))
            for operand in {first[0], second[0]}:
                if operand != "input" and last_use.get(operand) == index:
                    free.append(home[operand])
        self.output = view(result).reshape(self.shape)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """The (tall - size + 1, wide) medians of a (tall, wide) block of padded rows (columns past the last valid
        one hold garbage)."""
        self.input.reshape(-1, self.shape[1])[...] = block
        for ufunc, first, second, out in self.calls:
            ufunc(first, second, out=out)
        return self.output


_local = threading.local()


def _runner(tall: int, wide: int, dtype: np.dtype, size: int) -> _Runner:
    """The thread's runner for this shape (one kept per thread: prediction and conversion reuse one shape)."""
    key = (tall, wide, np.dtype(dtype), size)
    cached = getattr(_local, "runner", None)
    if cached is None or cached[0] != key:
        cached = (key, _Runner(tall, wide, dtype, size))
        _local.runner = cached
    return cached[1]


def _median_of_stack(slices: np.ndarray, size: int, result: np.ndarray) -> None:
    count, rows, columns = slices.shape
    half, border = size // 2, size - 1
    wide = columns + border
    blocks = max(1, -(-rows * wide // _TARGET_ELEMENTS))
    if blocks == 1:
        # whole slices, several at a time, stacked into one tall image (the rows between slices are discarded)
        group = max(1, min(count, _TARGET_ELEMENTS // ((rows + border) * wide)))
        groups = -(-count // group)
        padded = np.pad(slices, ((0, groups * group - count), (half, half), (half, half)), mode="edge")
        runner = _runner(group * (rows + border), wide, slices.dtype, size)
        for start in range(0, count, group):
            stop = min(count, start + group)
            medians = runner(padded[start:start + group].reshape(-1, wide))
            # output row r of slice s is tall row s * (rows + border) + r
            step, item = medians.strides
            stacked = np.lib.stride_tricks.as_strided(medians, (group, rows, columns),
                                                      ((rows + border) * step, step, item), writeable=False)
            result[start:stop] = stacked[:stop - start]
        return
    # each slice in blocks of rows; extra rows below (copies of the edge, discarded) fill the last block
    block_rows = -(-rows // blocks)
    padded = np.pad(slices, ((0, 0), (half, half + blocks * block_rows - rows), (half, half)), mode="edge")
    runner = _runner(block_rows + border, wide, slices.dtype, size)
    for index in range(count):
        for top in range(0, rows, block_rows):
            medians = runner(padded[index, top:top + block_rows + border])
            bottom = min(rows, top + block_rows)
            result[index, top:bottom] = medians[:bottom - top, :columns]
