"""Batched exact state-vector simulation of the paper's variational circuit (Eq. 1, SPEC section 1).

All VQCs of one layer are simulated together. Nothing loops over VQCs or over basis states; the work per block is

* block 0 acts on H|0...0>, a product state, so each qubit's 2-vector is rotated on its own and the state is
  their Kronecker product (2^n complex multiplications per VQC);
* later blocks rotate an entangled state: the rotation layer is U_0 (x) ... (x) U_{n-1}, applied as
  ``U_high @ S @ U_low^T`` on the state viewed as a 2^h x 2^l matrix (two small batched matmuls);
* the CNOT ring of each block is one fixed permutation of basis indices, applied as a gather whose backward
  is the gather by the inverse permutation (no scatter-add).

Only the amplitudes a caller asks for (``num_outputs``) are gathered after the last ring.

Basis convention (TorchQuantum's): index i = sum_q b_q 2^(n-1-q), qubit 0 is the most significant bit.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = [
    "cnot_ring_permutation",
    "simulate_vqcs",
    "rotation_matrices",
    "complex_dtype_for",
    "num_qubits_for",
    "readout_from_amplitudes",
    "READOUTS",
    "half_register_factors",
    "ring_outer_product",
    "to_ring_source_order",
]


def complex_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """complex64 for float32 (and lower) angles, complex128 for float64."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


@lru_cache(maxsize=None)
def _cnot_ring_source_indices(num_qubits: int) -> tuple[int, ...]:
    """psi_after[i] = psi_before[src[i]] for one full CNOT ring (q = 0..n-1, control q, target q+1 mod n)."""
    n = num_qubits
    dim = 1 << n
    if n == 1:
        return tuple(range(dim))
    index = torch.arange(dim)
    # The ring is C_{n-1} ... C_1 C_0 (C_0 applied first). Each C is an involution on indices and
    # (C psi)[i] = psi[c(i)], so (C_{n-1}...C_0 psi)[i] = psi[c_0(c_1(...c_{n-1}(i)))]: apply c_{n-1} first.
    for q in reversed(range(n)):
        control_bit = 1 << (n - 1 - q)
        target_bit = 1 << (n - 1 - ((q + 1) % n))
        index = torch.where((index & control_bit) != 0, index ^ target_bit, index)
    return tuple(index.tolist())


def cnot_ring_permutation(num_qubits: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Source indices of the CNOT ring as a long tensor: ``psi_after = psi_before[..., perm]``."""
    return torch.tensor(_cnot_ring_source_indices(num_qubits), dtype=torch.long, device=device)


class _GatherPermutation(torch.autograd.Function):
    """out = x[..., perm[:m]], with the backward a gather by the inverse permutation of the zero-padded grad."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor, m: int) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.m = m
        ctx.dim = x.shape[-1]
        return x.index_select(-1, perm[:m])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        if ctx.m < ctx.dim:
            grad = torch.nn.functional.pad(grad, (0, ctx.dim - ctx.m))
        return grad.index_select(-1, inverse), None, None, None


class _RingCache:
    """Per-(n, device) ring permutation tensors, built once.

    Built with inference mode off: the first call may come from nnU-Net's predictor (``torch.inference_mode``),
    and an inference tensor kept here would break every later training step in the process.
    """

    _store: dict[tuple, tuple[torch.Tensor, ...]] = {}

    @classmethod
    def _cached(cls, key: tuple, build) -> tuple[torch.Tensor, ...]:
        if key not in cls._store:
            with torch.inference_mode(False):
                cls._store[key] = build()
        return cls._store[key]

    @classmethod
    def get(cls, num_qubits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(perm, inverse): ``after = before[..., perm]`` and ``before = after[..., inverse]``."""

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            perm = cnot_ring_permutation(num_qubits, device)
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(perm.numel(), device=device)
            return perm, inverse

        return cls._cached(("perm", num_qubits, str(device)), build)  # type: ignore[return-value]

    @classmethod
    def split_sources(cls, num_qubits: int, m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The ring's first ``m`` source indices split into (high-half index, low-half index)."""

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            low_qubits = num_qubits - (num_qubits + 1) // 2
            sources = cnot_ring_permutation(num_qubits, device)[:m]
            return sources >> low_qubits, sources & ((1 << low_qubits) - 1)

        return cls._cached(("split", num_qubits, m, str(device)), build)  # type: ignore[return-value]

    @classmethod
    def one_hot_sources(cls, num_qubits: int, m: int, device: torch.device,
                        dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`split_sources` as 0/1 matrices ``[m, 2^h]`` and ``[m, 2^l]``: ``matrix @ v.T`` gathers ``v``.

        A gather written as a matmul has a matmul as its backward, where ``index_select``'s is a scatter-add
        (several times slower on the CPU for these ``[num_vqcs, m]`` outputs).
        """

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            low_qubits = num_qubits - (num_qubits + 1) // 2
            high_index, low_index = cls.split_sources(num_qubits, m, device)
            return tuple(torch.nn.functional.one_hot(index, size).to(dtype)  # type: ignore[return-value]
                         for index, size in ((high_index, 1 << (num_qubits - low_qubits)), (low_index, 1 << low_qubits)))

        return cls._cached(("one-hot", num_qubits, m, str(device), dtype), build)  # type: ignore[return-value]


def _apply_ring(state: torch.Tensor, num_qubits: int, num_outputs: int | None = None) -> torch.Tensor:
    dim = state.shape[-1]
    m = dim if num_outputs is None else num_outputs
    if num_qubits == 1:
        return state[..., :m]
    perm, inverse = _RingCache.get(num_qubits, state.device)
    return _GatherPermutation.apply(state, perm, inverse, m)


def rotation_matrices(ry: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
    """U = RX(rx) @ RY(ry) for every angle pair, as a complex tensor of shape ``[..., 2, 2]``.

    RY(a) = [[c, -s], [s, c]] and RX(b) = [[c', -i s'], [-i s', c']] with half angles (SPEC section 1).
    """
    ca, sa = torch.cos(ry / 2), torch.sin(ry / 2)
    cb, sb = torch.cos(rx / 2), torch.sin(rx / 2)
    real = torch.stack([cb * ca, -cb * sa, cb * sa, cb * ca], dim=-1)
    imag = torch.stack([-sb * sa, -sb * ca, -sb * ca, sb * sa], dim=-1)
    return torch.complex(real, imag).unflatten(-1, (2, 2))


def _kron_vectors(vectors: torch.Tensor) -> torch.Tensor:
    """[B, n, 2] -> [B, 2^n]: v_0 (x) v_1 (x) ... (x) v_{n-1}, qubit 0 most significant."""
    state = vectors[:, 0]
    for q in range(1, vectors.shape[1]):
        state = (state.unsqueeze(-1) * vectors[:, q].unsqueeze(-2)).flatten(-2)
    return state


def _kron_matrices(mats: torch.Tensor) -> torch.Tensor:
    """[B, m, 2, 2] -> [B, 2^m, 2^m]: M_0 (x) ... (x) M_{m-1}."""
    out = mats[:, 0]
    for q in range(1, mats.shape[1]):
        a, b = out, mats[:, q]
        out = (a[:, :, None, :, None] * b[:, None, :, None, :]).flatten(3, 4).flatten(1, 2)
    return out


def _qubit_groups(num_qubits: int) -> list[int]:
    """Split the register into 1-3 groups whose gate Kronecker products are cheap to form (<= 16 x 16)."""
    n = num_qubits
    if n <= 6:
        return [n] if n == 1 else [(n + 1) // 2, n // 2]
    first = n // 3
    middle = (n - first) // 2
    return [first, middle, n - first - middle]


def _apply_rotation_layer(state: torch.Tensor, gates: torch.Tensor, num_qubits: int) -> torch.Tensor:
    """Apply U_0 (x) ... (x) U_{n-1} (gates ``[B, n, 2, 2]``) to states ``[B, 2^n]``.

    The register is split in groups (:func:`_qubit_groups`); each group's gates are combined into one small
    Kronecker matrix and applied to its axis of the state viewed as ``[B, d_0, d_1, d_2]``: the first group by a
    left batched matmul, the last by a right one, the middle one by a matmul broadcast over the first axis.
    This costs sum(d_t) multiply-adds per amplitude and never forms a 2^n x 2^n (or 2^(n/2)-sized) matrix.
    """
    sizes = _qubit_groups(num_qubits)
    batch = state.shape[0]
    dims = [1 << s for s in sizes]
    mats, start = [], 0
    for size in sizes:
        mats.append(_kron_matrices(gates[:, start:start + size]))
        start += size
    x = torch.bmm(mats[0], state.view(batch, dims[0], -1))
    if len(dims) == 3:
        x = torch.matmul(mats[1].unsqueeze(1), x.view(batch, dims[0], dims[1], dims[2]))
    if len(dims) > 1:
        x = torch.bmm(x.reshape(batch, -1, dims[-1]), mats[-1].transpose(-1, -2))
    return x.reshape(batch, -1)


READOUTS = ("amplitudes", "real", "probabilities")


def readout_from_amplitudes(amplitudes: torch.Tensor, readout: str) -> torch.Tensor:
    """What post-processing reads of a final state: the amplitudes, Re(psi_i), or p_i = |psi_i|^2."""
    if readout == "amplitudes":
        return amplitudes
    # view_as_real keeps the backward a view (Tensor.real / .imag would allocate and zero-fill complex grads).
    pairs = torch.view_as_real(amplitudes)
    if readout == "real":
        return pairs[..., 0]
    if readout == "probabilities":
        return pairs.square().sum(-1)
    raise ValueError(f"unknown readout {readout!r}; accepted: {', '.join(READOUTS)}")


def simulate_vqcs(theta: torch.Tensor, num_outputs: int | None = None, readout: str = "amplitudes") -> torch.Tensor:
    """Final states of a batch of VQCs (Eq. 1), or the part of them post-processing reads.

    Args:
        theta: angles ``[num_vqcs, K, 2, n]``; ``theta[:, k, 0]`` are block k's RY angles and
            ``theta[:, k, 1]`` its RX angles. float32 gives complex64 states, float64 complex128.
        num_outputs: if given, only the first ``num_outputs`` basis states are returned (cheaper).
        readout: ``"amplitudes"`` (complex psi_i), ``"real"`` (Re psi_i, for RCE) or ``"probabilities"``
            (|psi_i|^2, for LPP and SST). With one block the last two are computed in real arithmetic.

    Returns:
        ``[num_vqcs, num_outputs or 2^n]``, differentiable with respect to ``theta``.
    """
    if theta.dim() != 4 or theta.shape[2] != 2:
        raise ValueError(f"theta must have shape [num_vqcs, blocks, 2, num_qubits], got {tuple(theta.shape)}")
    num_blocks, n = theta.shape[1], theta.shape[3]
    if num_outputs is not None and not 1 <= num_outputs <= (1 << n):
        raise ValueError(f"num_outputs must be in [1, 2^{n}], got {num_outputs}")
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; accepted: {', '.join(READOUTS)}")
    if not theta.is_floating_point():
        raise TypeError(f"theta must be a real floating tensor, got {theta.dtype}")
    if theta.dtype in (torch.float16, torch.bfloat16):
        theta = theta.float()

    gates = rotation_matrices(theta[:, :, 0], theta[:, :, 1])  # [B, K, n, 2, 2]
    # Block 0 on H|0>: each qubit is U_q |+>, i.e. (column 0 + column 1) / sqrt(2) of U_q. The product state
    # is high (x) low, the Kronecker products of the first ceil(n/2) and the last floor(n/2) qubit vectors.
    first = gates[:, 0].sum(dim=-1) * (1.0 / math.sqrt(2.0))  # [B, n, 2]
    high_qubits = (n + 1) // 2
    if num_blocks == 1:
        return _one_block_readout(first, high_qubits, num_outputs, readout)
    high = _kron_vectors(first[:, :high_qubits])
    state = high if n == high_qubits else (high.unsqueeze(-1) * _kron_vectors(first[:, high_qubits:]).unsqueeze(-2)).flatten(-2)
    for k in range(1, num_blocks):
        state = _apply_ring(state, n)
        state = _apply_rotation_layer(state, gates[:, k], n)
    return readout_from_amplitudes(_apply_ring(state, n, num_outputs), readout)


def _one_block_readout(first: torch.Tensor, high_qubits: int, num_outputs: int | None, readout: str) -> torch.Tensor:
    """One block: only the requested outputs after the ring, from the two half-register product states.

    psi[src] = high[src >> l] * low[src & (2^l - 1)], so each output is a product of two entries gathered from
    vectors of 2^(n/2) entries. Probabilities of a product state are the product of the qubits' probabilities, so
    that readout stays real throughout and never forms the 2^n amplitudes. The real part is formed for all 2^n
    states by one small matmul and then permuted, which on the CPU beats gathering two complex factors.
    """
    n = first.shape[1]
    m = (1 << n) if num_outputs is None else num_outputs
    high_index, low_index = _RingCache.split_sources(n, m, first.device)
    halves = [first[:, :high_qubits], first[:, high_qubits:]] if n > high_qubits else [first]
    if readout == "probabilities":
        parts = [_kron_vectors(torch.view_as_real(h).square().sum(-1)) for h in halves]
        if len(parts) == 1:
            return parts[0].index_select(-1, high_index)
        # Gathers as matmuls (see one_hot_sources): their backward is a matmul, not a scatter-add.
        gather_high, gather_low = _RingCache.one_hot_sources(n, m, first.device, parts[0].dtype)
        return (parts[0] @ gather_high.T) * (parts[1] @ gather_low.T)
    parts = [_kron_vectors(h) for h in halves]
    if readout == "amplitudes" or len(parts) == 1:
        out = parts[0].index_select(-1, high_index)
        out = out if len(parts) == 1 else out * parts[1].index_select(-1, low_index)
        return readout_from_amplitudes(out, readout)
    # Re(high (x) low) = high_re (x) low_re - high_im (x) low_im: one batched matmul with an inner size of 2
    # forms all 2^n real parts, then the ring's permutation gathers the outputs (its backward is a gather too).
    high = torch.view_as_real(parts[0])  # [B, 2^h, 2]
    low = torch.view_as_real(parts[1])
    real_parts = torch.bmm(high, torch.stack([low[..., 0], -low[..., 1]], dim=1)).flatten(-2)  # [B, 2^n]
    perm, inverse = _RingCache.get(n, first.device)
    return _GatherPermutation.apply(real_parts, perm, inverse, m)


def num_qubits_for(channels: int) -> int:
    """n = max(1, ceil(log2(channels))): enough amplitudes to fill ``channels`` weights (SPEC section 3)."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    return max(1, (channels - 1).bit_length())


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
    high, low = (torch.view_as_real(_kron_vectors(h)) for h in halves)  # [B, 2^h, 2], [B, 2^l, 2]
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
        m = sources.numel()
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
    perm, inverse = _RingCache.get(n, x.device)
    return _RingOuterProduct.apply(x, y, offset, base_source, perm[:num_outputs], inverse)


def to_ring_source_order(values: torch.Tensor, num_qubits: int) -> torch.Tensor:
    """``[M, V]`` outputs-major values -> ``[2^n, V]`` in source order: row src(i) holds row i, other rows 0."""
    perm, inverse = _RingCache.get(num_qubits, values.device)
    m = values.shape[0]
    if m == perm.numel():
        return values.index_select(0, inverse)
    return values.new_zeros(perm.numel(), values.shape[1]).index_copy_(0, perm[:m], values)
