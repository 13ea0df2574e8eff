"""One block (the paper's setting): Eq. 1's readout fused with post-processing and a base tensor.

Block 0 acts on H|0...0>, so before its CNOT ring the state is a product state, and every VQC's readout over
all 2^n basis states is a sum of one or two outer products of half-register vectors (:func:`half_register_factors`).
The ring is one row gather, and an affine post-processing (LPP, SST) and QPGAConv's base kernel fold into the
same pass (:func:`ring_outer_product`). Nothing of size 2^n x num_vqcs is saved for the backward.
"""

from __future__ import annotations

import math

import torch

from nnunet_qpg.simulator.ring import RingTables
from nnunet_qpg.simulator.statevector import kron_vectors, rotation_matrices

__all__ = ["half_register_factors", "ring_outer_product", "to_ring_source_order"]


def half_register_factors(theta: torch.Tensor, readout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One block, before its CNOT ring: the readout of all 2^n basis states as a sum of outer products.

    Block 0 acts on H|0...0> (Eq. 1), so the state before the ring is the product state high (x) low of the first
    ceil(n/2) and the last floor(n/2) qubits, and for every VQC b the readout at source index j = (j_h, j_l) is
    ``sum_r X[r, j_h, b] * Y[r, j_l, b]``: rank 1 for probabilities (p = p_high (x) p_low) and rank 2 for the
    real parts (Re(h (x) l) = h_re (x) l_re - h_im (x) l_im). Returns ``X [R, 2^h, num_vqcs]`` and
    ``Y [R, 2^l, num_vqcs]`` (R = 1 or 2), the layout :func:`ring_outer_product` reads. Needs n >= 2.
    """
    if theta.dim() != 4 or theta.shape[1] != 1 or theta.shape[2] != 2 or theta.shape[3] < 2:
        raise ValueError(f"theta must have shape [num_vqcs, 1, 2, n >= 2], got {tuple(theta.shape)}")
    if readout not in ("real", "probabilities"):
        raise ValueError(f"readout must be 'real' or 'probabilities', got {readout!r}")
    if theta.dtype in (torch.float16, torch.bfloat16):
        theta = theta.float()
    n = theta.shape[3]
    high_qubits = (n + 1) // 2
    if readout == "probabilities":
        # Per qubit, RX(b) RY(a) |+> has p_0 = (1 - sin(a) cos(b)) / 2 and p_1 = (1 + sin(a) cos(b)) / 2.
        z = 0.5 * torch.sin(theta[:, 0, 0]) * torch.cos(theta[:, 0, 1])  # [B, n]
        qubits = torch.stack([0.5 - z.T, 0.5 + z.T], dim=1)  # [n, 2, B]
        return _kron_columns(qubits[:high_qubits]).unsqueeze(0), _kron_columns(qubits[high_qubits:]).unsqueeze(0)
    first = rotation_matrices(theta[:, 0, 0], theta[:, 0, 1]).sum(dim=-1) * (1.0 / math.sqrt(2.0))  # [B, n, 2]
    halves = (first[:, :high_qubits], first[:, high_qubits:])
    high, low = (torch.view_as_real(kron_vectors(h)) for h in halves)  # [B, 2^h, 2], [B, 2^l, 2]
    x = torch.stack([high[..., 0].T, -high[..., 1].T])
    y = torch.stack([low[..., 0].T, low[..., 1].T])
    return x, y


def _kron_columns(vectors: torch.Tensor) -> torch.Tensor:
    """[m, 2, B] -> [2^m, B]: column b is v_0[:, b] (x) ... (x) v_{m-1}[:, b], qubit 0 most significant."""
    state = vectors[0]
    for q in range(1, vectors.shape[0]):
        state = (state.unsqueeze(1) * vectors[q].unsqueeze(0)).flatten(0, 1)
    return state


class _RingOuterProduct(torch.autograd.Function):
    """out[i, b] = base[src(i), b] + sum_r X[r, j_h, b] Y[r, j_l, b] + offset[i], j = src(i) = (j_h, j_l).

    Forward: one pass writing the 2^n x num_vqcs sums in source order (``addcmul`` reading the base), one row
    gather by the ring's permutation, and the offset add. Backward: one row gather (scatter when fewer than 2^n
    outputs) of the output grad back to source order, then per high index j_h a multiply-add for grad Y and a dot
    product for grad X over slices that stay in cache; nothing of size 2^n x num_vqcs is saved.
    """

    @staticmethod
    def forward(ctx, x, y, offset, base, sources, inverse):
        rank, high_dim, vqcs = x.shape
        low_dim = y.shape[1]
        if base is None:
            state = torch.mul(x[0].unsqueeze(1), y[0].unsqueeze(0))
        else:
            state = torch.addcmul(base.view(high_dim, low_dim, vqcs), x[0].unsqueeze(1), y[0].unsqueeze(0))
        for r in range(1, rank):
            state.addcmul_(x[r].unsqueeze(1), y[r].unsqueeze(0))
        out = state.view(high_dim * low_dim, vqcs).index_select(0, sources)
        if offset is not None:
            out.add_(offset.unsqueeze(1))
        ctx.save_for_backward(x, y, sources, inverse)
        ctx.has_offset = offset is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, y, sources, inverse = ctx.saved_tensors
        rank, high_dim, vqcs = x.shape
        low_dim = y.shape[1]
        if sources.numel() == inverse.numel():
            grad_source = grad.index_select(0, inverse)
        else:
            grad_source = grad.new_zeros(inverse.numel(), vqcs).index_copy_(0, sources, grad)
        grad_source = grad_source.view(high_dim, low_dim, vqcs)
        grad_x, grad_y = torch.empty_like(x), torch.zeros_like(y)
        for h in range(high_dim):
            rows = grad_source[h]
            for r in range(rank):
                grad_y[r].addcmul_(rows, x[r, h])
                torch.linalg.vecdot(rows, y[r], dim=0, out=grad_x[r, h])
        grad_offset = grad.sum(1) if ctx.has_offset and ctx.needs_input_grad[2] else None
        return grad_x, grad_y, grad_offset, None, None, None


def ring_outer_product(x: torch.Tensor, y: torch.Tensor, num_outputs: int, offset: torch.Tensor | None = None,
                       base_source: torch.Tensor | None = None) -> torch.Tensor:
    """One block's outputs after the CNOT ring, outputs-major, fused with an affine map and a base tensor.

    ``out[i, b] = base_source[src(i), b] + sum_r x[r, j_h, b] * y[r, j_l, b] + offset[i]`` for the first
    ``num_outputs`` basis states i, with src the ring's source indices and j = src(i) = j_h * 2^l + j_l. With
    ``x, y`` from :func:`half_register_factors` (scaled as post-processing needs) this is Eq. 1's readout
    followed by Eqs. 3-5, in one pass over ``[2^n, num_vqcs]`` forward and two backward.

    Args:
        x, y: ``[R, 2^h, num_vqcs]`` and ``[R, 2^l, num_vqcs]`` (h = ceil(n/2), l = floor(n/2)).
        num_outputs: M <= 2^n.
        offset: ``[M]`` added to every VQC's outputs (differentiable), or None.
        base_source: ``[2^n, num_vqcs]`` (no grad) in source order, see :func:`to_ring_source_order`, or None.

    Returns:
        ``[M, num_vqcs]`` contiguous.
    """
    high_dim, low_dim = x.shape[1], y.shape[1]
    n = (high_dim * low_dim).bit_length() - 1
    perm, inverse = RingTables.get(n, x.device)
    return _RingOuterProduct.apply(x, y, offset, base_source, perm[:num_outputs], inverse)


def to_ring_source_order(values: torch.Tensor, num_qubits: int) -> torch.Tensor:
    """``[M, V]`` outputs-major values -> ``[2^n, V]`` in source order: row src(i) holds row i, other rows 0."""
    perm, inverse = RingTables.get(num_qubits, values.device)
    m = values.shape[0]
    if m == perm.numel():
        return values.index_select(0, inverse)
    return values.new_zeros(perm.numel(), values.shape[1]).index_copy_(0, perm[:m], values)
