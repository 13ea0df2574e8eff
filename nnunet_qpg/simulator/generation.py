"""A QPG layer's generated tensor in its convolution's weight layout (Eqs. 6-9, SPEC section 3).

Layers say what they need (:class:`KernelLayout`: which weight, which axis holds the targets; the
post-processing; an optional base kernel) and get back a weight-shaped tensor from :func:`generate_kernel`.
Everything about circuits stays in this package: which simulation path applies, the ring's source order, the
fused one-block pass.

The layout (Eq. 8): for a weight whose input- and output-channel sizes are C_in and C_out, the targets are the
input channels when C_in <= C_out, else the output channels; one VQC per (target channel, kernel position),
row-major; each VQC has n = max(1, ceil(log2 C_other)) qubits and fills its target channel's weights at its kernel
position along the other channel axis with its first C_other post-processed outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from nnunet_qpg.simulator.backends import simulate
from nnunet_qpg.simulator.measurement import Execution, measured_readout
from nnunet_qpg.simulator.one_block import half_register_factors, ring_outer_product, to_ring_source_order

__all__ = ["KernelLayout", "PostProcessingLike", "SourceOrderBase", "generate_kernel", "num_qubits_for",
           "one_block_fusable"]


def num_qubits_for(channels: int) -> int:
    """n = max(1, ceil(log2(channels))): enough amplitudes to fill ``channels`` weights (SPEC section 3)."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    return max(1, (channels - 1).bit_length())


class PostProcessingLike(Protocol):
    """What generation needs of a post-processing strategy (:mod:`nnunet_qpg.postprocessing`, Eqs. 3-5)."""

    readout: str

    def __call__(self, values: torch.Tensor) -> torch.Tensor: ...

    def affine(self, dtype: torch.dtype) -> tuple[torch.Tensor | float, torch.Tensor | None] | None: ...

    def coefficient_count(self) -> int | None: ...

    def coefficients(self, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor] | None: ...


@dataclass(frozen=True)
class KernelLayout:
    """Where each VQC's outputs go in a convolution weight (Eq. 8).

    ``weight_shape`` is ``[C_out, C_in/groups, *kernel]`` for a convolution and ``[C_in, C_out/groups, *kernel]``
    for a transposed one (``transposed=True``).
    """

    weight_shape: tuple[int, ...]
    transposed: bool = False

    @property
    def target_axis(self) -> int:
        """0 or 1: the weight axis of the target channels (Eq. 8)."""
        in_axis, out_axis = (0, 1) if self.transposed else (1, 0)
        return in_axis if self.weight_shape[in_axis] <= self.weight_shape[out_axis] else out_axis

    @property
    def target_channels(self) -> int:
        return self.weight_shape[self.target_axis]

    @property
    def other_channels(self) -> int:
        """C_other: the outputs each VQC contributes."""
        return self.weight_shape[1 - self.target_axis]

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.weight_shape[2:])

    @property
    def num_qubits(self) -> int:
        return num_qubits_for(self.other_channels)

    @property
    def num_vqcs(self) -> int:
        """C_target * prod(kernel): one VQC per (target channel, kernel position)."""
        return self.target_channels * math.prod(self.kernel_size)

    def vqc_rows_view(self, values: torch.Tensor) -> torch.Tensor:
        """``[num_vqcs, C_other]`` (rows ordered (target, k_1, k_2, ...)) seen in the weight layout (a view)."""
        last = 1 + len(self.kernel_size)
        values = values.reshape(self.target_channels, *self.kernel_size, self.other_channels)
        order = [0, last, *range(1, last)] if self.target_axis == 0 else [last, 0, *range(1, last)]
        return values.permute(order)

    def from_vqc_rows(self, values: torch.Tensor) -> torch.Tensor:
        """``[num_vqcs, C_other]`` -> the weight, contiguous."""
        return self.vqc_rows_view(values).contiguous()

    def output_rows_view(self, out: torch.Tensor) -> torch.Tensor:
        """``[C_other, num_vqcs]`` (outputs-major; a column block of a wider tensor is fine) seen in the weight
        layout (a view)."""
        values = out.view(self.other_channels, self.target_channels, *self.kernel_size)
        return values if self.target_axis == 1 else values.transpose(0, 1)

    def from_output_rows(self, out: torch.Tensor) -> torch.Tensor:
        """``[C_other, num_vqcs]`` -> the weight, contiguous."""
        return self.output_rows_view(out).contiguous()

    def to_output_rows(self, weight: torch.Tensor) -> torch.Tensor:
        """A weight-shaped tensor as ``[C_other, num_vqcs]`` (the inverse of :meth:`from_output_rows`)."""
        if self.target_axis == 1:
            return weight.reshape(self.other_channels, self.num_vqcs)
        rows = weight.reshape(self.target_channels, self.other_channels, -1).transpose(0, 1)
        return rows.reshape(self.other_channels, self.num_vqcs)


def one_block_fusable(blocks: int, num_qubits: int, post: PostProcessingLike, dtype: torch.dtype,
                      backend: str = "native") -> bool:
    """Whether the fused one-block pass applies: native backend, K = 1, n >= 2, RCE or an affine strategy."""
    foldable = post.readout == "real" or post.affine(dtype) is not None
    return backend == "native" and blocks == 1 and num_qubits >= 2 and foldable


class SourceOrderBase:
    """QPGAConv's base kernel (Eq. 7) kept in the fused pass's ring source order, rebuilt when it changes.

    A derived copy, not a buffer: the layer's state dict keeps the plain weight.
    """

    def __init__(self) -> None:
        self._cached: tuple[tuple, torch.Tensor] | None = None

    def get(self, layout: KernelLayout, *tensors: torch.Tensor) -> torch.Tensor:
        """``tensors[0] - tensors[1]`` (or ``tensors[0]``) as ``[2^n, num_vqcs]`` rows in ring source order."""
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        if self._cached is None or self._cached[0] != key:
            with torch.no_grad():
                base = tensors[0] - tensors[1] if len(tensors) > 1 else tensors[0]
                self._cached = (key, to_ring_source_order(layout.to_output_rows(base), layout.num_qubits))
        return self._cached[1]


def generate_kernel(theta: torch.Tensor, layout: KernelLayout, post: PostProcessingLike, *,
                    backend: str = "native", base_source: torch.Tensor | None = None,
                    execution: Execution | None = None) -> torch.Tensor:
    """Eq. 1's circuits, their readout and post-processing (Eqs. 3-5), laid out as the weight (Eq. 6 / Eq. 8).

    Args:
        theta: ``[num_vqcs, K, 2, n]``.
        layout: the weight's geometry.
        post: the post-processing strategy (reads ``post.readout`` of the final states).
        backend: a registered simulation backend.
        base_source: only with :func:`one_block_fusable`: a base kernel from :class:`SourceOrderBase`, added in
            the same pass (QPGAConv's W, Eq. 7).
        execution: how the circuits run (:mod:`~nnunet_qpg.simulator.measurement`: shots, parameter shift,
            noise, no ring); None or the default ``Execution()`` is exact simulation on the paths below.
    """
    if execution is not None and not execution.is_exact:
        if base_source is not None:
            raise ValueError("base_source needs the fused one-block path, which exact execution alone takes")
        readout = measured_readout(theta, layout.other_channels, post.readout, execution, backend=backend)
        return layout.from_vqc_rows(post(readout))
    blocks = theta.shape[1]
    if one_block_fusable(blocks, layout.num_qubits, post, theta.dtype, backend):
        return _fused_one_block(theta, layout, post, base_source)
    if base_source is not None:
        raise ValueError("base_source needs the fused one-block path (see one_block_fusable)")
    readout = simulate(theta, num_outputs=layout.other_channels, backend=backend, readout=post.readout)
    return layout.from_vqc_rows(post(readout))


def _fused_one_block(theta: torch.Tensor, layout: KernelLayout, post: PostProcessingLike,
                     base_source: torch.Tensor | None) -> torch.Tensor:
    """One block: the readout is a sum of outer products of half-register vectors; an affine strategy folds into
    them and the ring is one row gather (:func:`ring_outer_product`)."""
    x, y = half_register_factors(theta, post.readout)
    affine = post.affine(x.dtype)
    offset = None
    if affine is not None:
        scale, offset = affine
        x = x * scale
    if base_source is not None and base_source.dtype != x.dtype:
        base_source = base_source.to(x.dtype)
    return layout.from_output_rows(ring_outer_product(x, y, layout.other_channels, offset, base_source))
