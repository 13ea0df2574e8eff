"""Independent dense-matrix constructions (numpy, full 2^n x 2^n gates), the tests' yardsticks: the paper's Eq. 1
for the reference circuit and the simulator, and the data-path circuits of SPEC section 8 (docs/method.md section 8)
for QuantumLayer. Qubit 0 is the most significant bit of the basis index."""

from __future__ import annotations

import numpy as np

__all__ = ["HADAMARD", "PAULI", "dense_cnot", "dense_data_path_expectations", "dense_final_state", "dense_rx",
           "dense_ry", "dense_rz", "kron_all"]

HADAMARD = np.array([[1, 1], [1, -1]], dtype=complex) / np.sqrt(2)


def dense_ry(angle: float) -> np.ndarray:
    c, s = np.cos(angle / 2), np.sin(angle / 2)
    return np.array([[c, -s], [s, c]], dtype=complex)


def dense_rz(angle: float) -> np.ndarray:
    return np.diag([np.exp(-0.5j * angle), np.exp(0.5j * angle)])


def dense_rx(angle: float) -> np.ndarray:
    c, s = np.cos(angle / 2), np.sin(angle / 2)
    return np.array([[c, -1j * s], [-1j * s, c]], dtype=complex)


def kron_all(matrices) -> np.ndarray:
    """M_0 (x) M_1 (x) ...: the first factor acts on the most significant bit, i.e. on qubit 0."""
    out = np.ones((1, 1), dtype=complex)
    for matrix in matrices:
        out = np.kron(out, matrix)
    return out


def dense_cnot(num_qubits: int, control: int, target: int) -> np.ndarray:
    """The full CNOT permutation matrix, built from the bits of each basis index (qubit q is bit n-1-q)."""
    dim = 2**num_qubits
    matrix = np.zeros((dim, dim), dtype=complex)
    for column in range(dim):
        bits = [(column >> (num_qubits - 1 - q)) & 1 for q in range(num_qubits)]
        if bits[control]:
            bits[target] ^= 1
        row = sum(bit << (num_qubits - 1 - q) for q, bit in enumerate(bits))
        matrix[row, column] = 1
    return matrix


def dense_final_state(theta: np.ndarray) -> np.ndarray:
    """Eq. 1 for one VQC, angles ``[K, 2, n]``, as a product of dense 2^n x 2^n matrices."""
    blocks, _, n = theta.shape
    state = np.zeros(2**n, dtype=complex)
    state[0] = 1
    state = kron_all([HADAMARD] * n) @ state
    for k in range(blocks):
        state = kron_all([dense_ry(a) for a in theta[k, 0]]) @ state
        state = kron_all([dense_rx(a) for a in theta[k, 1]]) @ state
        for q in range(n if n > 1 else 0):  # n = 1: no CNOT; n = 2: CNOT(0,1) then CNOT(1,0)
            state = dense_cnot(n, q, (q + 1) % n) @ state
    return state


PAULI = {
    "X": np.array([[0, 1], [1, 0]], dtype=complex),
    "Y": np.array([[0, -1j], [1j, 0]], dtype=complex),
    "Z": np.array([[1, 0], [0, -1]], dtype=complex),
}


def dense_data_path_expectations(inputs: np.ndarray, weights: np.ndarray, embedding: str, entangler: str,
                                 readout: str) -> np.ndarray:
    """SPEC section 8 for one input of one circuit, gate by gate: the embedded state (``inputs``: 2^n values for
    amplitude embedding, n angles for angle embedding), per layer RZ then RY on every qubit then the entangler
    (``weights`` ``[depth, 2, n]``, index 0 RZ, 1 RY), then <P_q> for P = ``readout`` on every qubit q."""
    depth, _, n = weights.shape
    if embedding == "amplitude":
        state = np.asarray(inputs, dtype=complex) / np.linalg.norm(inputs)
    else:
        state = np.zeros(2**n, dtype=complex)
        state[0] = 1
        state = kron_all([HADAMARD] * n) @ state
        state = kron_all([dense_ry(a) for a in inputs]) @ state
    pairs = [(q, (q + 1) % n) for q in range(n)] if entangler == "ring" else [(q, q + 1) for q in range(n - 1)]
    for layer in range(depth):
        state = kron_all([dense_rz(a) for a in weights[layer, 0]]) @ state
        state = kron_all([dense_ry(a) for a in weights[layer, 1]]) @ state
        for control, target in (pairs if n > 1 else []):
            state = dense_cnot(n, control, target) @ state
    eye = np.eye(2, dtype=complex)
    return np.array([np.real(state.conj() @ kron_all([PAULI[readout] if p == q else eye for p in range(n)]) @ state)
                     for q in range(n)])
