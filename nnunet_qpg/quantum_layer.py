"""QuantumLayer: variational circuits in the data path (SPEC section 8), the hybrid layers QPG is compared with.

HQCM-EBTC (5 parallel circuits of 5 qubits, amplitude embedding, 2 layers of RZ / RY and CNOTs, Pauli-Y
expectations), HQCNN (a 4-qubit circuit with angle embedding) and the distributed HQCNN (an 8-qubit circuit run as
5- and 4-qubit fragments) all put a circuit between two classical layers, so every input, at training and at
inference, is a set of circuit executions. QPG (Eq. 2) does not: its circuits have no input and generate a kernel,
which ``bake`` turns into a plain convolution. This layer lets both kinds be trained in one framework::

    layer = QuantumLayer(256, qubits=5, circuits=5, depth=2, embedding="amplitude", readout="Y")
    out = layer(features)          # [N, 256] -> [N, 25]: projection, embedding, circuits, <Y_q>

``forward`` = a linear projection onto the circuits' inputs (2^n amplitudes or n angles per circuit), then
:meth:`QuantumLayer.run_circuits`, flattened. The circuits are simulated exactly and batched over inputs x
circuits (:mod:`nnunet_qpg.simulator.data_path`); ``shots`` and ``gradient="parameter-shift"`` measure them as a
device would (SPEC section 7). ``max_fragment_qubits`` evaluates every circuit through wire cutting
(:mod:`nnunet_qpg.simulator.wire_cutting`), as the distributed HQCNN does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nnunet_qpg.simulator.data_path import (CircuitTables, check_data_path_settings, circuit_tables, embedding_size,
                                            run_data_path_circuits)
from nnunet_qpg.simulator.wire_cutting import FragmentPlan, check_cuttable, cut_expectations, plan_fragments

__all__ = ["QuantumLayer", "check_layer_settings"]


def check_layer_settings(qubits: int, circuits: int, depth: int, embedding: str, readout: str, entangler: str,
                         max_fragment_qubits: int | None = None, shots: int | None = None,
                         gradient: str = "backprop") -> FragmentPlan | None:
    """``ValueError`` (naming the setting and why) for settings a :class:`QuantumLayer` cannot run; otherwise the
    wire-cutting plan, or None when the circuits run whole (no ``max_fragment_qubits``, or it holds them)."""
    check_data_path_settings(qubits, depth, embedding, readout, entangler, shots, gradient)
    if isinstance(circuits, bool) or not isinstance(circuits, int) or circuits < 1:
        raise ValueError(f"circuits must be an integer >= 1, got {circuits!r}")
    if max_fragment_qubits is None:
        return None
    plan = plan_fragments(qubits, max_fragment_qubits)
    if not plan.cuts:
        return None
    check_cuttable(embedding, entangler, depth)
    if shots is not None or gradient != "backprop":
        raise ValueError("circuit cutting is simulated here with exact fragment expectations; it does not sample "
                         "shots nor run parameter shift. Drop shots/gradient, or max_fragment_qubits to run the "
                         "whole circuit.")
    return plan


class QuantumLayer(nn.Module):
    """Features ``[N, in_features]`` -> ``[N, circuits * qubits]`` expectations (SPEC section 8).

    Args:
        in_features: size of the classical features projected onto the circuits' inputs.
        qubits: n qubits per circuit.
        circuits: parallel circuits, each with its own weights and its own slice of the projection.
        depth: d layers of RZ, RY on every qubit and the entangler.
        embedding: ``"amplitude"`` (2^n inputs per circuit, normalised) or ``"angle"`` (n RY angles).
        readout: ``"Y"`` or ``"Z"``: <P_q> on every qubit.
        entangler: ``"ring"`` (CNOT(q, q+1 mod n)) or ``"chain"`` (CNOT(q, q+1), q < n-1).
        max_fragment_qubits: evaluate each circuit as fragments of at most this many qubits by wire cutting
            (angle embedding, chain, depth 1 only; exact). None, or a value >= qubits: the whole circuit at once.
        shots: None (exact expectations) or samples per input and circuit in training mode; eval mode reads the
            exact expectations of the same circuits unless ``layer.sample_in_eval`` is set (as QPG's layers do).
        gradient: ``"backprop"`` or ``"parameter-shift"`` (angle embedding only).

    ``weights``: ``nn.Parameter [circuits, depth, 2, qubits]``; ``weights[:, l, 0]`` are layer l's RZ angles,
    ``weights[:, l, 1]`` its RY angles, drawn uniformly in [-pi, pi).
    """

    def __init__(self, in_features: int, qubits: int = 5, circuits: int = 5, depth: int = 2,
                 embedding: str = "amplitude", readout: str = "Y", entangler: str = "ring",
                 max_fragment_qubits: int | None = None, shots: int | None = None,
                 gradient: str = "backprop") -> None:
        super().__init__()
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be an integer >= 1, got {in_features!r}")
        self.fragment_plan = check_layer_settings(qubits, circuits, depth, embedding, readout, entangler,
                                                  max_fragment_qubits, shots, gradient)
        self.in_features, self.qubits, self.circuits, self.depth = in_features, qubits, circuits, depth
        self.embedding, self.readout, self.entangler = embedding, readout, entangler
        self.max_fragment_qubits, self.shots, self.gradient = max_fragment_qubits, shots, gradient
        self.inputs_per_circuit = embedding_size(embedding, qubits)
        self.projection = nn.Linear(in_features, circuits * self.inputs_per_circuit)
        self.weights = nn.Parameter(torch.empty(circuits, depth, 2, qubits).uniform_(-math.pi, math.pi))
        self.sample_in_eval = False
        # Constant tables as non-persistent buffers: they follow .to(device / dtype), stay out of checkpoints, and a
        # compiled network reads them instead of building them inside its graph.
        tables = circuit_tables(qubits, entangler, readout)
        self.register_buffer("entangler_sources", tables.sources, persistent=False)
        # float64 (cast to the circuits' dtype when used), so that a float64 layer measures <Y> to float64 precision
        self.register_buffer("z_signs", tables.signs, persistent=False)
        self.register_buffer("basis_change", tables.basis_change, persistent=False)

    @property
    def out_features(self) -> int:
        return self.circuits * self.qubits

    @property
    def executions_per_input(self) -> int:
        """Circuit executions one input costs: ``circuits``, or their fragment executions when cut."""
        per_circuit = 1 if self.fragment_plan is None else self.fragment_plan.executions_per_circuit
        return self.circuits * per_circuit

    @property
    def circuit_parameters(self) -> int:
        return self.weights.numel()

    def run_circuits(self, x: torch.Tensor) -> torch.Tensor:
        """The quantum part alone: x ``[N, circuits, 2^qubits]`` (amplitude; normalised inside) or ``[N, circuits,
        qubits]`` (angle) -> ``[N, circuits, qubits]`` expectations, float32 (float64 if x is float64)."""
        if self.fragment_plan is not None:
            if x.dim() != 3 or tuple(x.shape[1:]) != (self.circuits, self.qubits):
                raise ValueError(f"x must have shape [N, {self.circuits}, {self.qubits}], got {tuple(x.shape)}")
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            with torch.autocast(x.device.type, enabled=False):
                return cut_expectations(x.to(dtype), self.weights.to(dtype), self.readout, self.max_fragment_qubits)
        measured = self.training or self.sample_in_eval
        tables = CircuitTables(self.entangler_sources, self.z_signs, self.basis_change)
        return run_data_path_circuits(x, self.weights, self.embedding, self.readout, self.entangler,
                                      self.shots if measured else None, self.gradient if measured else "backprop",
                                      tables)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.in_features:
            raise ValueError(f"QuantumLayer expects {self.in_features} features in the last axis, got "
                             f"{tuple(features.shape)}")
        leading = features.shape[:-1]
        inputs = self.projection(features).reshape(-1, self.circuits, self.inputs_per_circuit)
        return self.run_circuits(inputs).reshape(*leading, self.out_features)

    def describe(self) -> str:
        """One line: qubits, circuits, depth, embedding, entangler, readout, measurement and cutting."""
        text = (f"{self.circuits} circuit(s) x {self.qubits} qubits, depth {self.depth}, {self.embedding} embedding, "
                f"{self.entangler} entangler, <{self.readout}> readout")
        measured = ([f"{self.shots:,} shots"] if self.shots is not None else []) \
            + ([self.gradient] if self.gradient != "backprop" else [])
        if measured:
            text += ", " + ", ".join(measured)
        if self.fragment_plan is not None:
            text += f"; cut: {self.fragment_plan.describe()}"
        return text

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, {self.describe()}"
