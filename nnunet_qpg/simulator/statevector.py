"""Batched exact state-vector simulation of the paper's variational circuit (Eq. 1, SPEC section 1).

The fast twin of :mod:`nnunet_qpg.simulator.reference`. All VQCs of a call are simulated together; nothing loops
over VQCs or over basis states. The work per block is

* block 0 acts on H|0...0>, a product state, so each qubit's 2-vector is rotated on its own and the state is
  their Kronecker product (2^n complex multiplications per VQC);
* later blocks rotate an entangled state: the rotation layer U_0 (x) ... (x) U_{n-1} is applied group of qubits
  by group of qubits as small batched matmuls on the state viewed as a 2^a x 2^b (x 2^c) array;
* the CNOT ring of each block is one fixed permutation of basis indices (:mod:`nnunet_qpg.simulator.ring`).

Only the amplitudes a caller asks for (``num_outputs``) are gathered after the last ring.

Basis convention (TorchQuantum's): index i = sum_q b_q 2^(n-1-q), qubit 0 is the most significant bit.
"""

from __future__ import annotations

import math

import torch

from nnunet_qpg.simulator.ring import RingTables, apply_ring

__all__ = [
    "READOUTS",
    "complex_dtype_for",
    "kron_vectors",
    "readout_from_amplitudes",
    "rotation_matrices",
    "simulate_vqcs",
]


def complex_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """complex64 for float32 (and lower) angles, complex128 for float64."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def rotation_matrices(ry: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
    """U = RX(rx) @ RY(ry) for every angle pair, as a complex tensor of shape ``[..., 2, 2]``.

    RY(a) = [[c, -s], [s, c]] and RX(b) = [[c', -i s'], [-i s', c']] with half angles (SPEC section 1).
    """
    ca, sa = torch.cos(ry / 2), torch.sin(ry / 2)
    cb, sb = torch.cos(rx / 2), torch.sin(rx / 2)
    real = torch.stack([cb * ca, -cb * sa, cb * sa, cb * ca], dim=-1)
    imag = torch.stack([-sb * sa, -sb * ca, -sb * ca, sb * sa], dim=-1)
    return torch.complex(real, imag).unflatten(-1, (2, 2))


def kron_vectors(vectors: torch.Tensor) -> torch.Tensor:
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
    high = kron_vectors(first[:, :high_qubits])
    state = high if n == high_qubits else (high.unsqueeze(-1) * kron_vectors(first[:, high_qubits:]).unsqueeze(-2)).flatten(-2)
    for k in range(1, num_blocks):
        state = apply_ring(state, n)
        state = _apply_rotation_layer(state, gates[:, k], n)
    return readout_from_amplitudes(apply_ring(state, n, num_outputs), readout)


def _one_block_readout(first: torch.Tensor, high_qubits: int, num_outputs: int | None, readout: str) -> torch.Tensor:
    """One block: only the requested outputs after the ring, from the two half-register product states.

    psi[src] = high[src >> l] * low[src & (2^l - 1)], so each output is a product of two entries gathered from
    vectors of 2^(n/2) entries. Probabilities of a product state are the product of the qubits' probabilities, so
    that readout stays real throughout and never forms the 2^n amplitudes. The real part is formed for all 2^n
    states by one small matmul and then permuted, which on the CPU beats gathering two complex factors.
    """
    n = first.shape[1]
    m = (1 << n) if num_outputs is None else num_outputs
    high_index, low_index = RingTables.split_sources(n, m, first.device)
    halves = [first[:, :high_qubits], first[:, high_qubits:]] if n > high_qubits else [first]
    if readout == "probabilities":
        parts = [kron_vectors(torch.view_as_real(h).square().sum(-1)) for h in halves]
        if len(parts) == 1:
            return parts[0].index_select(-1, high_index)
        # Gathers as matmuls (see one_hot_sources): their backward is a matmul, not a scatter-add.
        gather_high, gather_low = RingTables.one_hot_sources(n, m, first.device, parts[0].dtype)
        return (parts[0] @ gather_high.T) * (parts[1] @ gather_low.T)
    parts = [kron_vectors(h) for h in halves]
    if readout == "amplitudes" or len(parts) == 1:
        out = parts[0].index_select(-1, high_index)
        out = out if len(parts) == 1 else out * parts[1].index_select(-1, low_index)
        return readout_from_amplitudes(out, readout)
    # Re(high (x) low) = high_re (x) low_re - high_im (x) low_im: one batched matmul with an inner size of 2
    # forms all 2^n real parts, then the ring's permutation gathers the outputs (its backward is a gather too).
    high = torch.view_as_real(parts[0])  # [B, 2^h, 2]
    low = torch.view_as_real(parts[1])
    real_parts = torch.bmm(high, torch.stack([low[..., 0], -low[..., 1]], dim=1)).flatten(-2)  # [B, 2^n]
    return apply_ring(real_parts, n, m)
