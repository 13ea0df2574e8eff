"""Noise of a NISQ device on QPG's circuits: depolarizing gates and readout error (SPEC section 7; issue "towards
hardware").

:class:`NoiseModel` holds the settings. Conventions (those of Qiskit Aer, so a model here and a Qiskit
``NoiseModel`` built from the same numbers describe the same channel):

* depolarizing after every gate: a one-qubit gate (H, RY, RX) is followed on its qubit by
  E(rho) = (1 - p1) rho + p1 Tr_q(rho) (x) I/2, a CNOT on its two qubits by
  E(rho) = (1 - p2) rho + p2 Tr_ab(rho) (x) I/4 (Qiskit's ``depolarizing_error(p, 1)`` / ``(p, 2)``);
* readout error: every qubit's measured bit flips with P(read 1 | 0) = e01 and P(read 0 | 1) = e10, independently
  per qubit (the confusion matrix [[1 - e01, e01], [e10, 1 - e10]], rows the true bit, columns the read bit);
  mitigation applies the inverse of the per-qubit confusion to the measured distribution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import math
from typing import Any

import torch

from nnunet_qpg.simulator.ring import RingTables
from nnunet_qpg.simulator.statevector import complex_dtype_for, kron_vectors, rotation_matrices, simulate_vqcs

__all__ = [
    "NoiseModel",
    "apply_readout_error",
    "mitigate_readout_error",
    "noisy_probabilities",
    "pure_amplitudes",
    "pure_probabilities",
    "readout_confusion",
]


def _probability(name: str, value: Any, limit: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < limit:
        raise ValueError(f"{name} must be a probability in [0, {limit:g}), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class NoiseModel:
    """Depolarizing gate noise and readout error of a device (conventions in the module docstring).

    Attributes:
        readout_error: P(read 1 | 0) and P(read 0 | 1), the same for every qubit; one number sets both.
        one_qubit_depolarizing: p1, after every H, RY and RX.
        two_qubit_depolarizing: p2, after every CNOT of the ring.
        mitigate_readout: invert the readout confusion on the measured (or exact) distribution.
        trajectories: Pauli trajectories averaged when the exact (density-matrix) simulation is too large.
        exact_max_qubits: circuits up to this many qubits are simulated exactly as density matrices.
    """

    readout_error: tuple[float, float] = (0.0, 0.0)
    one_qubit_depolarizing: float = 0.0
    two_qubit_depolarizing: float = 0.0
    mitigate_readout: bool = False
    trajectories: int = 256
    exact_max_qubits: int = 8

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        readout = self.readout_error
        if isinstance(readout, (int, float)) and not isinstance(readout, bool):
            readout = (readout, readout)
        if not isinstance(readout, (tuple, list)) or len(readout) != 2:
            raise ValueError(f"readout_error must be a probability or a pair (P(read 1|0), P(read 0|1)), "
                             f"got {self.readout_error!r}")
        e01, e10 = (_probability("readout_error", value, 0.5) for value in readout)
        set_(self, "readout_error", (e01, e10))
        set_(self, "one_qubit_depolarizing", _probability("one_qubit_depolarizing", self.one_qubit_depolarizing))
        set_(self, "two_qubit_depolarizing", _probability("two_qubit_depolarizing", self.two_qubit_depolarizing))
        if not isinstance(self.mitigate_readout, bool):
            raise ValueError(f"mitigate_readout must be True or False, got {self.mitigate_readout!r}")
        for name in ("trajectories", "exact_max_qubits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    @property
    def has_gate_noise(self) -> bool:
        return self.one_qubit_depolarizing > 0 or self.two_qubit_depolarizing > 0

    @property
    def has_readout_error(self) -> bool:
        return self.readout_error != (0.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (``qpg_settings.json``)."""
        data = dataclasses.asdict(self)
        data["readout_error"] = list(self.readout_error)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NoiseModel":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown noise setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        data = dict(data)
        if isinstance(data.get("readout_error"), list):
            data["readout_error"] = tuple(data["readout_error"])
        return cls(**data)

    def describe(self) -> str:
        """One line, e.g. "readout 2%, depolarizing 0.1% (1q) / 1% (CNOT)"."""
        e01, e10 = self.readout_error
        readout = f"{e01:.3g}" if e01 == e10 else f"{e01:.3g}/{e10:.3g}"
        parts = [f"readout {readout}", f"depolarizing {self.one_qubit_depolarizing:.3g} (1q) / "
                 f"{self.two_qubit_depolarizing:.3g} (CNOT)"]
        if self.mitigate_readout:
            parts.append("readout mitigated")
        return ", ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Simulation of the noisy circuit (Eq. 1 with the channels above) and the readout error.
# ----------------------------------------------------------------------------------------------------------------

# At most this many complex elements per chunk of VQCs (density matrices or trajectory states).
_CHUNK_ELEMENTS = 1 << 26


def readout_confusion(noise: NoiseModel, dtype: torch.dtype = torch.float64,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """The per-qubit confusion matrix ``C[true, read]`` = [[1 - e01, e01], [e10, 1 - e10]] (``[2, 2]``).

    Rows are the true bit, columns the read bit, ``(e01, e10) = noise.readout_error`` = (P(read 1 | 0),
    P(read 0 | 1)), as in Qiskit Aer's ``ReadoutError`` (module docstring). Every row sums to one.
    """
    e01, e10 = noise.readout_error
    return torch.tensor([[1.0 - e01, e01], [e10, 1.0 - e10]], dtype=dtype, device=device)


def _exact_arithmetic(device: torch.device):
    """Autocast off: distributions and states stay in the working precision inside an autocast region."""
    return torch.autocast(device.type, enabled=False)


def _per_qubit_map(probabilities: torch.Tensor, num_qubits: int, matrix: torch.Tensor) -> torch.Tensor:
    """p'[.., r, ..] = sum_t p[.., t, ..] matrix[t, r] along every qubit's axis of ``[..., 2^n]``."""
    n = num_qubits
    if probabilities.shape[-1] != 1 << n:
        raise ValueError(f"probabilities must have 2^{n} = {1 << n} entries in the last axis, "
                         f"got shape {tuple(probabilities.shape)}")
    if not probabilities.is_floating_point():
        raise TypeError(f"probabilities must be a real floating tensor, got {probabilities.dtype}")
    lead = probabilities.shape[:-1]
    out = probabilities.reshape(-1, 1 << n)
    rows = out.shape[0]
    matrix = matrix.to(dtype=probabilities.dtype, device=probabilities.device)
    for q in range(n):
        # Qubit q is bit n-1-q of the index: 2^q indices above it, 2^(n-1-q) below it.
        view = out.reshape(rows, 1 << q, 2, 1 << (n - 1 - q))
        out = torch.einsum("xatb,tr->xarb", view, matrix)
    return out.reshape(*lead, 1 << n)


def apply_readout_error(probabilities: torch.Tensor, num_qubits: int, noise: NoiseModel) -> torch.Tensor:
    """The distribution of the *read* bits given the exact distribution of the true ones (``[B, 2^n]``).

    Every qubit's bit is misread independently with the confusion matrix C of :func:`readout_confusion` (rows the
    true bit, columns the read bit; module docstring): p'(read) = sum_true p(true) prod_q C[true_q, read_q],
    applied one qubit axis at a time. Basis index convention of the package (qubit 0 the most significant bit).
    Differentiable; any leading shape, dtype and device. Returns ``probabilities`` itself when the model has no
    readout error.
    """
    if not noise.has_readout_error:
        return probabilities
    with _exact_arithmetic(probabilities.device):
        return _per_qubit_map(probabilities, num_qubits, readout_confusion(noise, probabilities.dtype,
                                                                           probabilities.device))


def mitigate_readout_error(probabilities: torch.Tensor, num_qubits: int, noise: NoiseModel) -> torch.Tensor:
    """Readout mitigation: the inverse of :func:`apply_readout_error`, C^-1 applied along every qubit's axis.

    C^-1 = [[1 - e10, -e01], [-e10, 1 - e01]] / (1 - e01 - e10) (module docstring; C is invertible since both
    error rates are below 1/2). Applied to an exact readout-error distribution it returns the true one; applied to
    a finite-shot estimate (counts / N) it is an unbiased estimate of the true distribution that can have small
    negative entries from shot noise: they are *not* clipped (clipping would bias it). Entries still sum to one.
    Differentiable. Returns ``probabilities`` itself when the model has no readout error.
    """
    if not noise.has_readout_error:
        return probabilities
    e01, e10 = noise.readout_error
    det = 1.0 - e01 - e10
    inverse = torch.tensor([[1.0 - e10, -e01], [-e10, 1.0 - e01]], dtype=probabilities.dtype,
                           device=probabilities.device) / det
    with _exact_arithmetic(probabilities.device):
        return _per_qubit_map(probabilities, num_qubits, inverse)


def _check_theta(theta: torch.Tensor) -> torch.Tensor:
    if theta.dim() != 4 or theta.shape[2] != 2:
        raise ValueError(f"theta must have shape [num_vqcs, blocks, 2, num_qubits], got {tuple(theta.shape)}")
    if not theta.is_floating_point():
        raise TypeError(f"theta must be a real floating tensor, got {theta.dtype}")
    if theta.dtype in (torch.float16, torch.bfloat16):
        theta = theta.float()
    return theta


def _ry(angle: torch.Tensor, cdtype: torch.dtype) -> torch.Tensor:
    """RY(a) = [[cos a/2, -sin a/2], [sin a/2, cos a/2]]: ``[...] -> [..., 2, 2]`` complex."""
    c, s = torch.cos(angle / 2), torch.sin(angle / 2)
    return torch.stack([c, -s, s, c], dim=-1).unflatten(-1, (2, 2)).to(cdtype)


def _rx(angle: torch.Tensor, cdtype: torch.dtype) -> torch.Tensor:
    """RX(a) = [[cos a/2, -i sin a/2], [-i sin a/2, cos a/2]]: ``[...] -> [..., 2, 2]`` complex."""
    c, s = torch.cos(angle / 2), torch.sin(angle / 2)
    zero = torch.zeros_like(c)
    return torch.complex(torch.stack([c, zero, zero, c], -1), torch.stack([zero, -s, -s, zero], -1)).unflatten(
        -1, (2, 2))


def _qubit_states(theta: torch.Tensor) -> torch.Tensor:
    """Without the ring every qubit stays in its own state: [V, n, 2] = (prod_k RX_k RY_k) H |0>."""
    cdtype = complex_dtype_for(theta.dtype)
    plus = torch.full((2,), 1.0 / math.sqrt(2.0), dtype=cdtype, device=theta.device)
    state = plus.expand(theta.shape[0], theta.shape[3], 2)
    gates = rotation_matrices(theta[:, :, 0], theta[:, :, 1]).to(cdtype)  # [V, K, n, 2, 2] = RX @ RY
    for k in range(theta.shape[1]):
        state = (gates[:, k] @ state.unsqueeze(-1)).squeeze(-1)
    return state


def pure_amplitudes(theta: torch.Tensor, entangle: bool = True) -> torch.Tensor:
    """Noiseless final states ``[V, 2^n]`` of Eq. 1 (SPEC section 1) for angles ``theta [V, K, 2, n]``.

    ``entangle=False`` leaves the CNOT ring out (the ablation): the state is then the product
    (x)_q (prod_k RX(theta[k,1,q]) RY(theta[k,0,q])) H|0>, qubit 0 the most significant bit of the index.
    complex64 for float32 angles, complex128 for float64; differentiable. ``entangle=True`` is
    :func:`~nnunet_qpg.simulator.statevector.simulate_vqcs`.
    """
    theta = _check_theta(theta)
    if entangle:
        return simulate_vqcs(theta, None, "amplitudes")
    with _exact_arithmetic(theta.device):
        return kron_vectors(_qubit_states(theta))


def pure_probabilities(theta: torch.Tensor, entangle: bool = True) -> torch.Tensor:
    """Noiseless measurement distribution p_i = |psi_i|^2, ``[V, 2^n]`` in the angles' real dtype.

    ``entangle=False`` (no CNOT ring): the product of the qubits' own distributions. Differentiable.
    """
    theta = _check_theta(theta)
    if entangle:
        return simulate_vqcs(theta, None, "probabilities")
    with _exact_arithmetic(theta.device):
        states = torch.view_as_real(_qubit_states(theta)).square().sum(-1)  # [V, n, 2]
        return kron_vectors(states)


# ---- exact: density matrices ------------------------------------------------------------------------------------


def _depolarizing_superop(p: float, cdtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One-qubit E(rho) = (1 - p) rho + p Tr(rho) I/2 as a 4x4 matrix on vec(rho) (index 2 i + j of rho[i, j])."""
    identity = torch.eye(4, dtype=torch.float64)
    vec_i = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    return ((1 - p) * identity + (p / 2) * torch.outer(vec_i, vec_i)).to(device=device, dtype=cdtype)


def _unitary_superop(u: torch.Tensor) -> torch.Tensor:
    """rho -> U rho U^dagger as ``[..., 4, 4]`` on vec(rho): S[(i'j'), (ij)] = U[i', i] conj(U[j', j])."""
    return (u[..., :, None, :, None] * u.conj()[..., None, :, None, :]).flatten(-4, -3).flatten(-2, -1)


def _block_superops(theta: torch.Tensor, p1: float) -> torch.Tensor:
    """Every block's rotation layer as per-qubit channels ``[V, K, n, 4, 4]``: D RX D RY (block 0: D RX D RY D H).

    D is the one-qubit depolarizing channel (identity when p1 = 0); gates on different qubits commute, so each
    qubit's gates of a block (and the Hadamards before block 0) compose into one channel.
    """
    cdtype = complex_dtype_for(theta.dtype)
    if p1 == 0:
        gates = rotation_matrices(theta[:, :, 0], theta[:, :, 1]).to(cdtype)  # [V, K, n, 2, 2]
        hadamard = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=cdtype, device=theta.device) / math.sqrt(2.0)
        first = gates[:, :1] @ hadamard
        return _unitary_superop(torch.cat([first, gates[:, 1:]], dim=1))
    depolarize = _depolarizing_superop(p1, cdtype, theta.device)
    ry = _unitary_superop(_ry(theta[:, :, 0], cdtype))
    rx = _unitary_superop(_rx(theta[:, :, 1], cdtype))
    channels = depolarize @ rx @ depolarize @ ry
    hadamard = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=cdtype, device=theta.device) / math.sqrt(2.0)
    h_channel = depolarize @ _unitary_superop(hadamard)
    return torch.cat([channels[:, :1] @ h_channel, channels[:, 1:]], dim=1)


def _cnot_superop(p2: float, cdtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """CNOT (control first) followed by the two-qubit depolarizing channel, as a ``[2] * 8`` tensor
    S[r_c', r_t', c_c', c_t', r_c, r_t, c_c, c_t] (rows r, columns c of rho, control c and target t)."""
    cnot = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.float64)
    gate = torch.kron(cnot, cnot)  # on vec(rho) with index (row pair, column pair), real gate: conj = itself
    vec_i = torch.eye(4, dtype=torch.float64).flatten()
    depolarize = (1 - p2) * torch.eye(16, dtype=torch.float64) + (p2 / 4) * torch.outer(vec_i, vec_i)
    # vec(rho) of the pair has index 8 r_c + 4 r_t + 2 c_c + c_t: the [2] * 8 view's axis order above.
    return (depolarize @ gate).to(device=device, dtype=cdtype).view([2] * 8)


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _apply_superop(rho: torch.Tensor, superop: torch.Tensor, qubits: tuple[int, ...], n: int,
                   batched: bool) -> torch.Tensor:
    """Apply a channel on ``qubits`` to density matrices ``[V, 2^n, 2^n]`` with one einsum.

    ``superop`` is ``[(V,) 2]*4k`` ordered (output rows, output columns, input rows, input columns) of the qubits.
    """
    batch = rho.shape[0]
    rows, cols = list(_LETTERS[1:1 + n]), list(_LETTERS[1 + n:1 + 2 * n])
    fresh = iter(_LETTERS[1 + 2 * n:])
    out_rows, out_cols = list(rows), list(cols)
    for q in qubits:
        out_rows[q], out_cols[q] = next(fresh), next(fresh)
    op = [out_rows[q] for q in qubits] + [out_cols[q] for q in qubits] + [rows[q] for q in qubits] + \
        [cols[q] for q in qubits]
    op_spec = ("a" if batched else "") + "".join(op)
    spec = f"{op_spec},a{''.join(rows + cols)}->a{''.join(out_rows + out_cols)}"
    out = torch.einsum(spec, superop, rho.view([batch] + [2] * (2 * n)))
    return out.reshape(batch, 1 << n, 1 << n)


def _product_density(channels: torch.Tensor) -> torch.Tensor:
    """(x)_q rho_q with rho_q = channel_q(|0><0|): ``[V, n, 4, 4] -> [V, 2^n, 2^n]``, qubit 0 most significant."""
    singles = channels[..., 0].unflatten(-1, (2, 2))  # column (0, 0) of the superoperator: channel(|0><0|)
    rho = singles[:, 0]
    for q in range(1, singles.shape[1]):
        r = rho.shape[-1]
        rho = (rho[:, :, None, :, None] * singles[:, q, None, :, None, :]).reshape(-1, 2 * r, 2 * r)
    return rho


def _density_chunk(theta: torch.Tensor, p1: float, p2: float) -> torch.Tensor:
    """Exact noisy distribution of a chunk of entangled VQCs (n >= 2) by density matrices."""
    blocks, n = theta.shape[1], theta.shape[3]
    dim = 1 << n
    channels = _block_superops(theta, p1)  # [V, K, n, 4, 4]
    cnot = _cnot_superop(p2, channels.dtype, theta.device) if p2 > 0 else None
    if cnot is None:
        perm = RingTables.get(n, theta.device)[0]
        ring_index = (perm[:, None] * dim + perm[None, :]).flatten()
    rho = _product_density(channels[:, 0])  # H and block 0's rotations act on the product state |0...0>
    for k in range(blocks):
        if k > 0:
            for q in range(n):
                rho = _apply_superop(rho, channels[:, k, q].reshape(-1, 2, 2, 2, 2), (q,), n, batched=True)
        if cnot is None:  # the whole noiseless ring: rho'[i, j] = rho[perm[i], perm[j]]
            rho = rho.flatten(1).index_select(1, ring_index).view(-1, dim, dim)
        else:
            for q in range(n):
                rho = _apply_superop(rho, cnot, (q, (q + 1) % n), n, batched=False)
    # A copy, so the result does not keep the density matrices' storage alive.
    return torch.view_as_real(torch.diagonal(rho, dim1=-2, dim2=-1))[..., 0].contiguous()


def _product_noisy_probabilities(theta: torch.Tensor, p1: float) -> torch.Tensor:
    """Without the ring (or n = 1) the qubits never interact: the product of their noisy one-qubit distributions."""
    channels = _block_superops(theta, p1)  # [V, K, n, 4, 4]
    state = channels[:, 0, :, :, 0]  # vec(rho_q) after H and block 0
    for k in range(1, theta.shape[1]):
        state = (channels[:, k] @ state.unsqueeze(-1)).squeeze(-1)
    diagonal = torch.view_as_real(state[..., 0::3])[..., 0]  # rho_q[0, 0], rho_q[1, 1]: [V, n, 2]
    return kron_vectors(diagonal)


# ---- sampled: Pauli trajectories ----------------------------------------------------------------------------------


def _pauli_table(cdtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[4, 2, 2]: I, X, Y, Z (codes 0..3)."""
    return torch.tensor([[[1, 0], [0, 1]], [[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]],
                        dtype=cdtype, device=device)


def _draw_codes(shape: tuple[int, ...], p: float, count: int, device: torch.device) -> torch.Tensor:
    """Codes 1..count each with probability p / (count + 1), 0 (identity) otherwise, from torch's global generator
    of ``device`` (the depolarizing channel with parameter p as a Pauli channel: count = 3 or 15)."""
    if p <= 0:
        return torch.zeros(shape, dtype=torch.long, device=device)
    u = torch.rand(shape, dtype=torch.float64, device=device)
    # Slot j < count has probability p / (count + 1); u >= p (and any overflow) lands at count or beyond.
    slot = ((u / p).clamp_(max=1.0) * (count + 1)).long()
    return torch.where(slot < count, slot + 1, torch.zeros_like(slot))


def _push_through_cnot(x: torch.Tensor, z: torch.Tensor, control: int, target: int) -> None:
    """In place: the Pauli X^x Z^z (bool ``[R, n]``) before CNOT(control, target) as the Pauli after it, up to a
    phase: CNOT P = P' CNOT, with X_c -> X_c X_t and Z_t -> Z_c Z_t (X_t and Z_c unchanged)."""
    x[:, target] ^= x[:, control]
    z[:, control] ^= z[:, target]


def _multiply_two_qubit_pauli(x: torch.Tensor, z: torch.Tensor, code: torch.Tensor, first: int, second: int) -> None:
    """In place: multiply in the two-qubit Pauli ``code`` = 4 a + b (a on ``first``, b on ``second``; 0..3 = I, X,
    Y, Z; Y carries both an X and a Z part), up to a phase."""
    for qubit, single in ((first, code // 4), (second, code % 4)):
        x[:, qubit] ^= (single == 1) | (single == 2)
        z[:, qubit] ^= (single == 2) | (single == 3)


def _trajectory_chunk(theta: torch.Tensor, p1: float, p2: float, trajectories: int) -> torch.Tensor:
    """Average of |psi|^2 over Pauli trajectories of a chunk of entangled VQCs (n >= 2).

    One-qubit depolarizing = X, Y or Z each with probability p1/4; the drawn Paulis of one qubit in one block are
    multiplied into that qubit's gates (one per-row 2x2 matrix per qubit and block). The two-qubit Paulis after
    the CNOTs (each of the 15 non-identity ones with probability p2/16) are pushed through the rest of the ring
    symbolically (a CNOT maps Paulis to Paulis, :func:`_push_through_cnot`), so the ring stays one permutation of
    the state; the accumulated Pauli (up to a global phase, which |psi|^2 does not see) joins the next block's
    first gate on each qubit, or, after the last block, permutes the read index by its X part (its Z part does not
    change probabilities).
    """
    v, blocks, _, n = theta.shape
    t = trajectories
    rows = v * t
    dim = 1 << n
    device = theta.device
    cdtype = complex_dtype_for(theta.dtype)
    paulis = _pauli_table(cdtype, device)
    hadamard = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=cdtype, device=device) / math.sqrt(2.0)
    ry = _ry(theta[:, :, 0], cdtype).repeat_interleave(t, dim=0)  # [V T, K, n, 2, 2], row = vqc * T + trajectory
    rx = _rx(theta[:, :, 1], cdtype).repeat_interleave(t, dim=0)
    # One-qubit Paulis: after H (block 0 only), after RY and after RX of every block.
    one = _draw_codes((rows, blocks, 3, n), p1, 3, device)
    two = _draw_codes((rows, blocks, n), p2, 15, device) if p2 > 0 else None
    perm = RingTables.get(n, device)[0]
    x_err = torch.zeros(rows, n, dtype=torch.bool, device=device)  # pending Pauli X^x Z^z after the last ring
    z_err = torch.zeros_like(x_err)
    # X^x Z^z by (x, z) as index x + 2 z: I, X, Z, XZ (= -iY, the phase is global).
    xz_table = torch.stack([paulis[0], paulis[1], paulis[3], paulis[1] @ paulis[3]])
    state = None
    for k in range(blocks):
        gates = paulis[one[:, k, 2]] @ rx[:, k] @ paulis[one[:, k, 1]] @ ry[:, k]  # [VT, n, 2, 2]
        if k == 0:
            vectors = (gates @ (paulis[one[:, 0, 0]] @ hadamard))[..., 0]  # on |0>
            state = kron_vectors(vectors)
        else:
            gates = gates @ xz_table[x_err.long() + 2 * z_err.long()]
            for q in range(n):
                view = state.view(rows, 1 << q, 2, 1 << (n - 1 - q))
                state = torch.einsum("rij,rajb->raib", gates[:, q], view).reshape(rows, dim)
        state = state.index_select(1, perm)
        x_err = torch.zeros_like(x_err)
        z_err = torch.zeros_like(z_err)
        if two is not None:
            for q in range(n):
                # Push the pending Pauli through CNOT(q, q+1), then add the one drawn after it.
                _push_through_cnot(x_err, z_err, q, (q + 1) % n)
                _multiply_two_qubit_pauli(x_err, z_err, two[:, k, q], q, (q + 1) % n)
    probabilities = torch.view_as_real(state).square().sum(-1)  # [VT, 2^n]
    if two is not None:  # a final X part flips read bits: p[i] = |psi[i ^ mask]|^2
        weights = 1 << torch.arange(n - 1, -1, -1, device=device)
        mask = (x_err.long() * weights).sum(-1, keepdim=True)
        probabilities = torch.gather(probabilities, 1, torch.arange(dim, device=device) ^ mask)
    return probabilities.view(v, t, dim).mean(1)


def noisy_probabilities(theta: torch.Tensor, noise: NoiseModel, entangle: bool = True) -> torch.Tensor:
    """Measurement distribution ``[V, 2^n]`` of the circuits of Eq. 1 with the model's depolarizing gate noise.

    Conventions (module docstring, Qiskit Aer's): after every H, RY and RX the one-qubit channel
    E(rho) = (1 - p1) rho + p1 Tr_q(rho) (x) I/2 on its qubit, after every CNOT of the ring the two-qubit
    E(rho) = (1 - p2) rho + p2 Tr_ab(rho) (x) I/4 on its two qubits. Readout error is *not* included: the caller
    applies :func:`apply_readout_error` to the result. ``entangle=False`` leaves the ring out (the ablation).
    Basis index as everywhere: qubit 0 the most significant bit.

    * n <= ``noise.exact_max_qubits``: exact, by density matrices rho ``[V, 2^n, 2^n]`` (each qubit's gates and
      channels of a block composed into one channel, one einsum each; each CNOT with its channel one einsum),
      chunked over V.
    * n > ``noise.exact_max_qubits``: an unbiased Monte Carlo estimate from ``noise.trajectories`` = T Pauli
      trajectories per circuit (the one-qubit channel applies X, Y or Z each with probability p1/4, the two-qubit
      one each of the 15 non-identity two-qubit Paulis with probability p2/16; pure states [V T, 2^n], |psi|^2
      averaged over T). Its standard error falls as 1/sqrt(T) (at most sqrt(p_i (1 - p_i) / T) per entry). The
      Paulis are drawn with torch's global generator of theta's device: reproducible under ``torch.manual_seed``.
    * Without the ring (``entangle=False``, or n = 1) the qubits never interact, so the result is the product of
      exact one-qubit density matrices for any n (no trajectories needed).
    * Without gate noise: the pure distribution (:func:`pure_probabilities`).

    Differentiable with respect to ``theta`` by autograd; float32 angles run in complex64, float64 in complex128,
    and the result has the angles' real dtype (float16/bfloat16 are promoted to float32). Any device.
    """
    theta = _check_theta(theta)
    n = theta.shape[3]
    if not noise.has_gate_noise:
        return pure_probabilities(theta, entangle=entangle)
    p1, p2 = noise.one_qubit_depolarizing, noise.two_qubit_depolarizing
    with _exact_arithmetic(theta.device):
        if not entangle or n == 1:
            return _product_noisy_probabilities(theta, p1)
        if theta.shape[0] == 0:
            return theta.new_zeros((0, 1 << n)) + 0 * theta.sum()
        if n <= noise.exact_max_qubits:
            chunk = max(1, _CHUNK_ELEMENTS >> (2 * n))
            parts = [_density_chunk(theta[s:s + chunk], p1, p2) for s in range(0, theta.shape[0], chunk)]
        else:
            trajectories = noise.trajectories
            chunk = max(1, _CHUNK_ELEMENTS // (trajectories << n))
            parts = [_trajectory_chunk(theta[s:s + chunk], p1, p2, trajectories)
                     for s in range(0, theta.shape[0], chunk)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)
