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
    """Per-(n, device) ring permutation tensors, built once."""

    _store: dict[tuple, tuple[torch.Tensor, ...]] = {}

    @classmethod
    def get(cls, num_qubits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(perm, inverse): ``after = before[..., perm]`` and ``before = after[..., inverse]``."""
        key = ("perm", num_qubits, str(device))
        if key not in cls._store:
            perm = cnot_ring_permutation(num_qubits, device)
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(perm.numel(), device=device)
            cls._store[key] = (perm, inverse)
        return cls._store[key]

    @classmethod
    def split_sources(cls, num_qubits: int, m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The ring's first ``m`` source indices split into (high-half index, low-half index)."""
        key = ("split", num_qubits, m, str(device))
        if key not in cls._store:
            low_qubits = num_qubits - (num_qubits + 1) // 2
            sources = cnot_ring_permutation(num_qubits, device)[:m]
            cls._store[key] = (sources >> low_qubits, sources & ((1 << low_qubits) - 1))
        return cls._store[key]


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


def _apply_rotation_layer(state: torch.Tensor, gates: torch.Tensor, num_qubits: int) -> torch.Tensor:
    """Apply U_0 (x) ... (x) U_{n-1} (gates ``[B, n, 2, 2]``) to states ``[B, 2^n]``."""
    n = num_qubits
    high = (n + 1) // 2
    low = n - high
    u_high = _kron_matrices(gates[:, :high])
    matrix = state.unflatten(-1, (1 << high, 1 << low))
    matrix = torch.bmm(u_high, matrix)
    if low:
        u_low = _kron_matrices(gates[:, high:])
        matrix = torch.bmm(matrix, u_low.transpose(-1, -2))
    return matrix.flatten(-2)


def simulate_vqcs(theta: torch.Tensor, num_outputs: int | None = None) -> torch.Tensor:
    """Final states of a batch of VQCs (Eq. 1).

    Args:
        theta: angles ``[num_vqcs, K, 2, n]``; ``theta[:, k, 0]`` are block k's RY angles and
            ``theta[:, k, 1]`` its RX angles. float32 gives complex64 states, float64 complex128.
        num_outputs: if given, only the first ``num_outputs`` amplitudes are returned (cheaper).

    Returns:
        complex tensor ``[num_vqcs, num_outputs or 2^n]``, differentiable with respect to ``theta``.
    """
    if theta.dim() != 4 or theta.shape[2] != 2:
        raise ValueError(f"theta must have shape [num_vqcs, blocks, 2, num_qubits], got {tuple(theta.shape)}")
    num_blocks, n = theta.shape[1], theta.shape[3]
    if num_outputs is not None and not 1 <= num_outputs <= (1 << n):
        raise ValueError(f"num_outputs must be in [1, 2^{n}], got {num_outputs}")
    if not theta.is_floating_point():
        raise TypeError(f"theta must be a real floating tensor, got {theta.dtype}")
    if theta.dtype in (torch.float16, torch.bfloat16):
        theta = theta.float()

    gates = rotation_matrices(theta[:, :, 0], theta[:, :, 1])  # [B, K, n, 2, 2]
    # Block 0 on H|0>: each qubit is U_q |+>, i.e. (column 0 + column 1) / sqrt(2) of U_q. The product state
    # is high (x) low, the Kronecker products of the first ceil(n/2) and the last floor(n/2) qubit vectors.
    first = gates[:, 0].sum(dim=-1) * (1.0 / math.sqrt(2.0))  # [B, n, 2]
    high_qubits = (n + 1) // 2
    high = _kron_vectors(first[:, :high_qubits])
    low = _kron_vectors(first[:, high_qubits:]) if n > high_qubits else None
    if num_blocks == 1:
        # Only the requested amplitudes after the ring: psi[src] = high[src >> l] * low[src & (2^l - 1)],
        # two gathers from vectors of 2^(n/2) entries instead of building all 2^n amplitudes.
        m = (1 << n) if num_outputs is None else num_outputs
        high_index, low_index = _RingCache.split_sources(n, m, high.device)
        out = high.index_select(-1, high_index)
        return out if low is None else out * low.index_select(-1, low_index)
    state = high if low is None else (high.unsqueeze(-1) * low.unsqueeze(-2)).flatten(-2)
    for k in range(1, num_blocks):
        state = _apply_ring(state, n)
        state = _apply_rotation_layer(state, gates[:, k], n)
    return _apply_ring(state, n, num_outputs)


def num_qubits_for(channels: int) -> int:
    """n = max(1, ceil(log2(channels))): enough amplitudes to fill ``channels`` weights (SPEC section 3)."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    return max(1, (channels - 1).bit_length())
