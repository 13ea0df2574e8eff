"""The paper's variational circuit (Eq. 1) written plainly, gate by gate: the truth every fast path is tested against.

One VQC with n qubits and K blocks (SPEC section 1)::

    |0...0>  ->  H on every qubit
             ->  for each block k:  RY(theta[k, 0, q]) on every qubit q,
                                    RX(theta[k, 1, q]) on every qubit q,
                                    CNOT(q, (q+1) mod n) for q = 0, 1, ..., n-1 (n = 1: none)

Basis index i = sum_q b_q 2^(n-1-q): qubit 0 is the most significant bit (TorchQuantum's convention).
Everything here runs in complex128 and is differentiable, so the tests compare states, readouts and gradients
of the fast paths (:mod:`~nnunet_qpg.simulator.statevector`, :mod:`~nnunet_qpg.simulator.one_block`,
:mod:`~nnunet_qpg.simulator.network`) with it in float64. Slow on purpose: one gate at a time.
"""

from __future__ import annotations

import math

import torch

__all__ = ["apply_cnot", "apply_one_qubit_gate", "reference_states", "rx_matrix", "ry_matrix"]


def ry_matrix(angle: torch.Tensor) -> torch.Tensor:
    """RY(a) = [[cos a/2, -sin a/2], [sin a/2, cos a/2]] for each angle: ``[B] -> [B, 2, 2]``."""
    c, s = torch.cos(angle / 2).to(torch.complex128), torch.sin(angle / 2).to(torch.complex128)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def rx_matrix(angle: torch.Tensor) -> torch.Tensor:
    """RX(a) = [[cos a/2, -i sin a/2], [-i sin a/2, cos a/2]] for each angle: ``[B] -> [B, 2, 2]``."""
    c, s = torch.cos(angle / 2).to(torch.complex128), torch.sin(angle / 2).to(torch.complex128)
    return torch.stack([torch.stack([c, -1j * s], -1), torch.stack([-1j * s, c], -1)], -2)


def apply_one_qubit_gate(state: torch.Tensor, gate: torch.Tensor, qubit: int, num_qubits: int) -> torch.Tensor:
    """Apply a 2x2 ``gate`` (``[B, 2, 2]`` or ``[2, 2]``) to ``qubit`` of states ``[B, 2^n]``."""
    batch = state.shape[0]
    # Qubit q is bit n-1-q of the index: 2^q indices above it, 2^(n-1-q) below it.
    psi = state.reshape(batch, 1 << qubit, 2, 1 << (num_qubits - 1 - qubit))
    gate = gate.expand(batch, 2, 2)
    return torch.einsum("bij,bajc->baic", gate, psi).reshape(batch, -1)


def apply_cnot(state: torch.Tensor, control: int, target: int, num_qubits: int) -> torch.Tensor:
    """CNOT(control, target) on states ``[B, 2^n]``: amplitudes of index pairs differing in the target bit swap
    wherever the control bit is 1."""
    index = torch.arange(1 << num_qubits, device=state.device)
    control_bit, target_bit = 1 << (num_qubits - 1 - control), 1 << (num_qubits - 1 - target)
    return state[:, torch.where(index & control_bit != 0, index ^ target_bit, index)]


def reference_states(theta: torch.Tensor, entangle: bool = True) -> torch.Tensor:
    """Final states of Eq. 1 for angles ``[num_vqcs, K, 2, n]`` (``theta[:, k, 0]`` RY, ``theta[:, k, 1]`` RX);
    ``entangle=False`` leaves the CNOT ring out (the no-entanglement ablation, SPEC section 7).

    Returns ``[num_vqcs, 2^n]`` complex128, differentiable with respect to ``theta``.
    """
    theta = theta.to(torch.float64)
    batch, blocks, _, n = theta.shape
    state = torch.zeros(batch, 1 << n, dtype=torch.complex128, device=theta.device)
    state[:, 0] = 1
    hadamard = torch.tensor([[1, 1], [1, -1]], dtype=torch.complex128, device=theta.device) / math.sqrt(2)
    for q in range(n):
        state = apply_one_qubit_gate(state, hadamard, q, n)
    for k in range(blocks):
        for q in range(n):
            state = apply_one_qubit_gate(state, ry_matrix(theta[:, k, 0, q]), q, n)
        for q in range(n):
            state = apply_one_qubit_gate(state, rx_matrix(theta[:, k, 1, q]), q, n)
        if entangle and n > 1:
            for q in range(n):
                state = apply_cnot(state, q, (q + 1) % n, n)
    return state
