"""Circuits in the data path (SPEC section 8, ``docs/method.md`` section 8): the hybrid layers QPG is compared with.

Unlike QPG's circuits (Eq. 1, no input: they generate a kernel once per step), these circuits take every sample's
features as input, so they run for every input at inference. Such a circuit has ``n`` qubits and ``d`` layers:

1. state preparation (the embedding) -- ``amplitude``: |psi> = sum_i x_i |i> / ||x|| over 2^n values;
   ``angle``: H on every qubit, then RY(x_q) on qubit q;
2. d layers -- RZ(w[l, 0, q]) on every qubit, then RY(w[l, 1, q]), then the entangler: ``ring`` (CNOT(q, q+1 mod
   n) for q = 0..n-1, Eq. 1's ring) or ``chain`` (CNOT(q, q+1) for q = 0..n-2);
3. measurement -- <Y_q> or <Z_q> on every qubit q.

How it is simulated. The weights are shared by every input of a circuit, so each circuit's whole unitary U
(``2^n x 2^n``, readout basis change included) is formed once per call and applied to all inputs by one batched
matmul: cheap for the few qubits these layers use (a 5-qubit U has 1,024 entries), and a handful of tensor ops
whatever the batch. Both embeddings give real states, so psi = U x is two real matmuls (Re U, Im U): everything is
real arithmetic, which ``torch.compile`` and autocast handle without complex-number support. <Y_q> is read as
<Z_q> after H S^dagger on every qubit (S^dagger then H takes Y's eigenstates to Z's), folded into U, so both
readouts are the Z-signs of one probability vector: what a device measures, which is also what shots sample.

Basis index i = sum_q b_q 2^(n-1-q) (qubit 0 the most significant bit), as everywhere in the package. The gate-by-gate
dense twin is ``tests/dense_circuit.py``'s ``dense_data_path_expectations``.

Shots and parameter shift (SPEC section 7, "where they apply"): with ``shots`` the probabilities of the measured
basis are sampled (straight-through with ``gradient="backprop"``); ``gradient="parameter-shift"`` differentiates
every RZ / RY weight, and for angle embedding every input angle, by the two-term rule (their generators are
sigma / 2). Amplitude embedding has no shift rule for its input (the inputs are amplitudes, not gate angles), so
parameter shift is refused for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from nnunet_qpg.simulator.measurement import GRADIENTS, sample_probabilities
from nnunet_qpg.simulator.ring import cnot_ring_permutation
from nnunet_qpg.simulator.statevector import kron_vectors

__all__ = [
    "EMBEDDINGS",
    "ENTANGLERS",
    "READOUT_PAULIS",
    "amplitude_states",
    "angle_states",
    "CircuitTables",
    "check_data_path_settings",
    "circuit_tables",
    "circuit_unitaries",
    "embedded_states",
    "embedding_size",
    "entangler_sources",
    "expectations_from_probabilities",
    "measurement_probabilities",
    "run_data_path_circuits",
]

EMBEDDINGS: dict[str, str] = {
    "amplitude": "the 2^n inputs as the state's amplitudes, normalised (HQCM-EBTC)",
    "angle": "H on every qubit, then RY(x_q) on qubit q: n inputs (HQCNN)",
}
ENTANGLERS: dict[str, str] = {
    "ring": "CNOT(q, q+1 mod n) for q = 0..n-1 (Eq. 1's ring)",
    "chain": "CNOT(q, q+1) for q = 0..n-2 (the only one circuit cutting covers)",
}
READOUT_PAULIS: dict[str, str] = {"Y": "<Y_q> on every qubit (HQCM-EBTC)", "Z": "<Z_q> on every qubit"}

# Elements of the largest intermediate of one parameter-shift chunk (~128 MiB in float64).
_CHUNK_ELEMENTS = 1 << 24


def _choice(name: str, value, accepted: dict[str, str]) -> None:
    if value not in accepted:
        listed = "; ".join(f"'{key}' ({text})" for key, text in accepted.items())
        raise ValueError(f"unknown {name} {value!r}; accepted: {listed}")


def check_data_path_settings(qubits: int, depth: int, embedding: str, readout: str, entangler: str,
                             shots: int | None = None, gradient: str = "backprop") -> None:
    """``ValueError`` naming the setting and what is accepted, for anything this simulator does not run."""
    for name, value, low in (("qubits", qubits, 1), ("depth", depth, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if qubits > 12:
        raise ValueError(f"qubits={qubits}: a data-path circuit is simulated as a 2^n x 2^n unitary per circuit; "
                         f"more than 12 qubits would take {2 ** (2 * qubits) * 16 / 2**30:.0f} GiB per circuit")
    _choice("embedding", embedding, EMBEDDINGS)
    _choice("readout", readout, READOUT_PAULIS)
    _choice("entangler", entangler, ENTANGLERS)
    _choice("gradient", gradient, GRADIENTS)
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise ValueError(f"shots must be None (exact expectations) or an integer >= 1, got {shots!r}")
    if gradient == "parameter-shift" and embedding == "amplitude":
        raise ValueError("gradient='parameter-shift' cannot differentiate amplitude embedding: its inputs are the "
                         "state's amplitudes, not gate angles, so no shift rule gives their gradient (and the "
                         "projection before the circuit needs it). Use embedding='angle' (its RY angles shift) or "
                         "gradient='backprop'.")


def embedding_size(embedding: str, qubits: int) -> int:
    """Inputs one circuit takes: 2^n amplitudes (``amplitude``) or n angles (``angle``)."""
    _choice("embedding", embedding, EMBEDDINGS)
    return 1 << qubits if embedding == "amplitude" else qubits


# -- 1. state preparation ----------------------------------------------------------------------------------------


def amplitude_states(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| over the last axis (2^n values); an all-zero input has no state and is refused.

    The check reads the norms back to the host, so it is skipped inside ``torch.compile`` graphs (it would break the
    graph on every step); there an all-zero input gives NaN, which nnU-Net's loss reports.
    """
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if not torch.compiler.is_compiling() and bool((norms == 0).any()):
        raise ValueError("amplitude embedding of an all-zero input: a state needs a non-zero vector of amplitudes")
    return x / norms


def angle_states(x: torch.Tensor) -> torch.Tensor:
    """[..., n] angles -> the real product state [..., 2^n] of RY(x_q) H|0> on every qubit (qubit 0 first).

    RY(a) (|0> + |1>) / sqrt(2) = ((cos a/2 - sin a/2) |0> + (sin a/2 + cos a/2) |1>) / sqrt(2).
    """
    c, s = torch.cos(x / 2), torch.sin(x / 2)
    return kron_vectors(torch.stack([c - s, s + c], dim=-1) * (1 / math.sqrt(2.0)))


def embedded_states(x: torch.Tensor, embedding: str) -> torch.Tensor:
    """The embedded real state vectors [..., 2^n] of inputs x ([..., 2^n] amplitudes or [..., n] angles)."""
    return amplitude_states(x) if embedding == "amplitude" else angle_states(x)


# -- 2. the layers as one unitary per circuit (real and imaginary parts) ---------------------------------------


@lru_cache(maxsize=None)
def _entangler_source_tuple(num_qubits: int, entangler: str) -> tuple[int, ...]:
    if entangler == "ring":
        return tuple(cnot_ring_permutation(num_qubits).tolist())
    index = torch.arange(1 << num_qubits)
    # (C psi)[i] = psi[c(i)] for each CNOT c; the chain C_{n-2} ... C_0 reads psi[c_0(c_1(...(i)))].
    for q in reversed(range(num_qubits - 1)):
        control, target = 1 << (num_qubits - 1 - q), 1 << (num_qubits - 2 - q)
        index = torch.where((index & control) != 0, index ^ target, index)
    return tuple(index.tolist())


def entangler_sources(num_qubits: int, entangler: str, device: torch.device | str | None = None) -> torch.Tensor:
    """Source indices of the entangler's basis permutation: ``after[i] = before[sources[i]]``."""
    _choice("entangler", entangler, ENTANGLERS)
    return torch.tensor(_entangler_source_tuple(num_qubits, entangler), dtype=torch.long, device=device)


def _complex_kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A (x) B for complex matrices held as real pairs ``[..., 2, r, r]`` (index 0 real, 1 imaginary)."""
    real = _kron(a[..., 0, :, :], b[..., 0, :, :]) - _kron(a[..., 1, :, :], b[..., 1, :, :])
    imag = _kron(a[..., 0, :, :], b[..., 1, :, :]) + _kron(a[..., 1, :, :], b[..., 0, :, :])
    return torch.stack([real, imag], dim=-3)


def _kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    rows, cols = a.shape[-2] * b.shape[-2], a.shape[-1] * b.shape[-1]
    return (a[..., :, None, :, None] * b[..., None, :, None, :]).reshape(*a.shape[:-2], rows, cols)


def _complex_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A B for real-pair complex matrices ``[..., 2, r, r]``."""
    real = a[..., 0, :, :] @ b[..., 0, :, :] - a[..., 1, :, :] @ b[..., 1, :, :]
    imag = a[..., 0, :, :] @ b[..., 1, :, :] + a[..., 1, :, :] @ b[..., 0, :, :]
    return torch.stack([real, imag], dim=-3)


def _rotation_layer(rz: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
    """(x)_q RY(ry_q) RZ(rz_q) as a real pair ``[C, 2, 2^n, 2^n]`` from angles ``[C, n]``.

    RY(b) RZ(a) = [[c e^{-ia/2}, -s e^{ia/2}], [s e^{-ia/2}, c e^{ia/2}]] with c, s = cos b/2, sin b/2.
    """
    ca, sa = torch.cos(rz / 2), torch.sin(rz / 2)
    c, s = torch.cos(ry / 2), torch.sin(ry / 2)
    real = torch.stack([c * ca, -s * ca, s * ca, c * ca], dim=-1)
    imag = torch.stack([-c * sa, -s * sa, -s * sa, c * sa], dim=-1)
    gates = torch.stack([real, imag], dim=-2).unflatten(-1, (2, 2))  # [C, n, 2, 2, 2]
    layer = gates[:, 0]
    for q in range(1, rz.shape[-1]):
        layer = _complex_kron(layer, gates[:, q])
    return layer


@dataclass(frozen=True)
class CircuitTables:
    """The constant tables of one circuit shape: the entangler's basis permutation (``sources``, long ``[2^n]``),
    the Z signs 1 - 2 b_q(i) (``signs``, ``[n, 2^n]``) and, for <Y> readout, (x)_q H S^dagger as a real pair
    (``basis_change``, ``[2, 2^n, 2^n]``; None for <Z>). :class:`~nnunet_qpg.quantum_layer.QuantumLayer` keeps them
    as buffers, so a compiled network reads them as constants instead of building them inside its graph."""

    sources: torch.Tensor
    signs: torch.Tensor
    basis_change: torch.Tensor | None


def circuit_tables(num_qubits: int, entangler: str, readout: str, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float64) -> CircuitTables:
    """Fresh :class:`CircuitTables` for ``num_qubits`` qubits, the entangler and the readout."""
    _choice("readout", readout, READOUT_PAULIS)
    # Built outside inference mode: a table made under nnU-Net's predictor must still serve later training steps.
    with torch.inference_mode(False):
        index = torch.arange(1 << num_qubits, device=device)
        bits = torch.stack([(index >> (num_qubits - 1 - q)) & 1 for q in range(num_qubits)])
        basis_change = None
        if readout == "Y":
            # H S^dagger = [[1, -i], [1, i]] / sqrt(2): S^dagger then H take Y's eigenstates to Z's, qubit by qubit.
            one = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, -1.0], [0.0, 1.0]]], dtype=dtype, device=device)
            basis_change = one / math.sqrt(2.0)
            for _ in range(1, num_qubits):
                basis_change = _complex_kron(basis_change, one / math.sqrt(2.0))
        return CircuitTables(entangler_sources(num_qubits, entangler, device), (1 - 2 * bits).to(dtype),
                             basis_change)


def circuit_unitaries(weights: torch.Tensor, tables: CircuitTables) -> torch.Tensor:
    """Each circuit's layers and readout basis change as one unitary, a real pair ``[C, 2, 2^n, 2^n]``.

    ``weights [C, d, 2, n]``: ``weights[:, l, 0]`` layer l's RZ angles, ``weights[:, l, 1]`` its RY angles.
    """
    n = weights.shape[-1]
    unitary = None
    for layer in range(weights.shape[1]):
        rotation = _rotation_layer(weights[:, layer, 0], weights[:, layer, 1])
        step = rotation if unitary is None else _complex_matmul(rotation, unitary)
        unitary = step.index_select(-2, tables.sources) if n > 1 else step  # the entangler permutes rows
    if tables.basis_change is not None:
        unitary = _complex_matmul(tables.basis_change.to(weights.dtype), unitary)
    return unitary


# -- 3. measurement ----------------------------------------------------------------------------------------------


def measurement_probabilities(states: torch.Tensor, unitaries: torch.Tensor) -> torch.Tensor:
    """|U x|^2 in the measured basis: real states ``[N, C, 2^n]``, unitaries ``[C, 2, 2^n, 2^n]`` -> ``[N, C, 2^n]``."""
    amplitudes = torch.einsum("cpij,ncj->ncpi", unitaries, states)
    return amplitudes.square().sum(dim=-2)


def expectations_from_probabilities(probabilities: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """<Z_q> = sum_i p_i (1 - 2 b_q(i)) for every qubit q: ``[..., 2^n] -> [..., n]`` (``signs``: the tables')."""
    return probabilities @ signs.to(probabilities.dtype).T


# -- shots and parameter shift ------------------------------------------------------------------------------------


def _measured(states: torch.Tensor, unitaries: torch.Tensor, shots: int | None, signs: torch.Tensor) -> torch.Tensor:
    """Expectations as a device estimates them: exact, or from ``shots`` samples of each input's distribution
    (straight-through when differentiated: sampled forward, exact backward)."""
    probabilities = measurement_probabilities(states, unitaries)
    if shots is not None:
        flat = probabilities.reshape(-1, probabilities.shape[-1])
        sampled = sample_probabilities(flat, shots).view_as(probabilities)
        probabilities = (probabilities + (sampled - probabilities).detach() if probabilities.requires_grad
                         else sampled)
    return expectations_from_probabilities(probabilities, signs)


class _ParameterShift(torch.autograd.Function):
    """Measured expectations forward; the two-term shift rule backward, for the weights and the angle inputs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weights: torch.Tensor, embedding: str, shots: int | None,
                tables: CircuitTables) -> torch.Tensor:
        ctx.save_for_backward(x, weights)
        ctx.settings = (embedding, shots, tables)
        with torch.no_grad():
            return _measured(embedded_states(x, embedding), circuit_unitaries(weights, tables), shots, tables.signs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weights = ctx.saved_tensors
        embedding, shots, tables = ctx.settings
        with torch.no_grad():
            grad_x = _input_shift_gradient(x, weights, grad, shots, tables) if ctx.needs_input_grad[0] else None
            grad_w = _weight_shift_gradient(x, weights, grad, embedding, shots, tables) \
                if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None, None


def _chunks(count: int, per_item: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, per_item))
    return ((start, min(count, start + step)) for start in range(0, count, step))


def _weight_shift_gradient(x, weights, grad, embedding, shots, tables) -> torch.Tensor:
    """dL/dw by shifting each of the 2 d n angles of every circuit by +-pi/2 alone: 4 d n circuits per circuit."""
    circuits, depth, _, n = weights.shape
    angles = depth * 2 * n
    shift = torch.eye(angles, dtype=weights.dtype, device=weights.device).mul_(math.pi / 2).view(angles, depth, 2, n)
    shifted = torch.cat([weights.unsqueeze(1) + shift, weights.unsqueeze(1) - shift], dim=1)  # [C, 2A, d, 2, n]
    unitaries = circuit_unitaries(shifted.reshape(-1, depth, 2, n), tables)
    unitaries = unitaries.view(circuits, 2 * angles, *unitaries.shape[1:])
    states = embedded_states(x, embedding)  # [N, C, D]
    total = torch.zeros(circuits, angles, dtype=weights.dtype, device=weights.device)
    for start, stop in _chunks(x.shape[0], circuits * 2 * angles * states.shape[-1] * 2):
        part = states[start:stop]
        probabilities = torch.einsum("cspij,ncj->ncspi", unitaries, part).square().sum(-2)  # [n, C, 2A, D]
        if shots is not None:
            probabilities = sample_probabilities(probabilities.reshape(-1, probabilities.shape[-1]),
                                                 shots).view_as(probabilities)
        measured = expectations_from_probabilities(probabilities, tables.signs)  # [n, C, 2A, n]
        derivative = (measured[:, :, :angles] - measured[:, :, angles:]) * 0.5
        total += torch.einsum("ncaq,ncq->ca", derivative, grad[start:stop].to(weights.dtype))
    return total.view(circuits, depth, 2, n)


def _input_shift_gradient(x, weights, grad, shots, tables) -> torch.Tensor:
    """dL/dx for angle embedding: each input angle shifted by +-pi/2 alone (2 n circuits per input and circuit)."""
    n = weights.shape[-1]
    unitaries = circuit_unitaries(weights, tables)
    shift = torch.eye(n, dtype=x.dtype, device=x.device).mul_(math.pi / 2)
    out = torch.empty_like(x)
    for start, stop in _chunks(x.shape[0], x.shape[1] * 2 * n * (2 << n)):
        part = x[start:stop].unsqueeze(2)  # [b, C, 1, n]
        states = angle_states(torch.cat([part + shift, part - shift], dim=2))  # [b, C, 2n, D]
        probabilities = torch.einsum("cpij,nckj->nckpi", unitaries, states).square().sum(-2)
        if shots is not None:
            probabilities = sample_probabilities(probabilities.reshape(-1, probabilities.shape[-1]),
                                                 shots).view_as(probabilities)
        measured = expectations_from_probabilities(probabilities, tables.signs)  # [b, C, 2n, n]
        derivative = (measured[:, :, :n] - measured[:, :, n:]) * 0.5  # [b, C, shifted input, qubit]
        out[start:stop] = torch.einsum("ncsq,ncq->ncs", derivative, grad[start:stop].to(x.dtype))
    return out


def run_data_path_circuits(x: torch.Tensor, weights: torch.Tensor, embedding: str = "amplitude",
                           readout: str = "Y", entangler: str = "ring", shots: int | None = None,
                           gradient: str = "backprop", tables: CircuitTables | None = None) -> torch.Tensor:
    """<P_q> of every input and circuit, exact or as a device measures them (module docstring).

    Args:
        x: ``[N, C, 2^n]`` amplitudes (normalised here) or ``[N, C, n]`` angles, real.
        weights: ``[C, d, 2, n]``; ``weights[:, l, 0]`` RZ and ``weights[:, l, 1]`` RY angles of layer l.
        shots: None (exact expectations) or samples per input and circuit.
        gradient: ``"backprop"`` (with shots: straight-through) or ``"parameter-shift"`` (angle embedding only).
        tables: :func:`circuit_tables` of this shape, entangler and readout (built here when None).

    Returns:
        ``[N, C, n]`` in float32, or float64 if x or the weights are float64; differentiable.
    """
    if weights.dim() != 4 or weights.shape[2] != 2:
        raise ValueError(f"weights must have shape [circuits, depth, 2, qubits], got {tuple(weights.shape)}")
    circuits, depth, _, n = weights.shape
    check_data_path_settings(n, depth, embedding, readout, entangler, shots, gradient)
    expected = embedding_size(embedding, n)
    if x.dim() != 3 or x.shape[1] != circuits or x.shape[2] != expected:
        raise ValueError(f"x must have shape [N, {circuits}, {expected}] for {circuits} circuit(s) of {n} qubits "
                         f"with {embedding} embedding, got {tuple(x.shape)}")
    dtype = torch.float64 if torch.float64 in (x.dtype, weights.dtype) else torch.float32
    x, weights = x.to(dtype), weights.to(dtype)
    if tables is None:
        tables = circuit_tables(n, entangler, readout, x.device, dtype)
    # Exact expectations: never in reduced precision, even inside an autocast region.
    with torch.autocast(x.device.type, enabled=False):
        if gradient == "parameter-shift" and torch.is_grad_enabled() and (x.requires_grad or weights.requires_grad):
            return _ParameterShift.apply(x, weights, embedding, shots, tables)
        return _measured(embedded_states(x, embedding), circuit_unitaries(weights, tables), shots, tables.signs)
