"""Wire cutting of the data-path circuits (SPEC section 8, ``docs/method.md`` section 8), as the distributed HQCNN
runs them: an n-qubit circuit evaluated as fragments of at most m qubits that share one cut wire each.

Why it works, for angle embedding, the ``chain`` entangler and depth 1 (the only case covered):

* **A product state before the chain.** H, RY(x_q), RZ and RY act on one qubit each, so up to the entangler the
  state is v_0 (x) v_1 (x) ... (x) v_{n-1}. A fragment's input is the kron of its own qubits' vectors: nothing
  outside the fragment is needed, except through the cut wire.
* **A sequential chain.** CNOT(q, q+1) for q = 0 .. n-2 in that order: once the gates of fragment 0 (qubits
  0..m-1) have run, no later gate touches qubits 0..m-2, and the later gates touch qubit m-1 and new qubits only.
  So the downstream part of the circuit sees fragment 0 only through the one-qubit reduced state rho of the cut
  qubit (its last qubit).
* **Single-qubit readouts.** <Y_q> or <Z_q> of a downstream qubit is the expectation of an observable on qubits
  the upstream gates never touch again, so it is a function of rho alone, and a *linear* one: the downstream
  circuit is a channel applied to rho (x) (fresh product states). Writing rho = sum_P Tr(P rho) P / 2 over
  P in {I, X, Y, Z} gives <O> = sum_P c_P f(P/2), c_P = Tr(P rho) (c_I = 1) measured upstream, f(P/2) evaluated
  downstream by linearity through the eigenstates of P: I/2 = (|0><0| + |1><1|)/2, P/2 = (|+p><+p| - |-p><-p|)/2.
* **Chains of cuts.** A middle fragment maps the c of its incoming cut wire linearly to the c of its outgoing one
  (measured in the X, Y and Z bases), so the c vectors propagate fragment by fragment.

A qubit's readout comes from the last fragment that contains it: the incoming cut qubit is read downstream, since
the downstream CNOT whose control it is changes its <Y> (not its <Z>). Executions here are exact expectation
values of state-vector simulations of each fragment, so the cut result equals the uncut circuit to float precision;
:attr:`FragmentPlan.executions_per_circuit` counts what a device would run per input and per circuit (3 for the
first fragment, one per cut basis; 6 x 3 for a middle one; 6 for the last; 1 without a cut).

Conventions (SPEC section 8): basis index i = sum_q b_q 2^(n-1-q), qubit 0 the most significant bit; RY(a) =
[[cos a/2, -sin a/2], [sin a/2, cos a/2]], RZ(a) = diag(exp(-i a/2), exp(i a/2)); weights ``[C, depth, 2, n]``
with ``[:, l, 0]`` the RZ and ``[:, l, 1]`` the RY angles of layer l.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch

from nnunet_qpg.simulator.data_path import READOUT_PAULIS, entangler_sources
from nnunet_qpg.simulator.statevector import kron_vectors

__all__ = ["FragmentPlan", "check_cuttable", "cut_expectations", "plan_fragments"]

_READOUTS = tuple(READOUT_PAULIS)  # the data-path circuits' readouts


@dataclass(frozen=True)
class FragmentPlan:
    """How an n-qubit data-path circuit is split (SPEC section 8): fragments of consecutive qubits, each after the
    first starting at the previous fragment's last qubit (the cut wire) and adding up to m - 1 new qubits."""

    num_qubits: int
    max_fragment_qubits: int
    fragments: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Qubits per fragment, the cut wire counted in both fragments that share it."""
        return tuple(len(fragment) for fragment in self.fragments)

    @property
    def cuts(self) -> int:
        """Number of cut wires: consecutive fragments share exactly one."""
        return len(self.fragments) - 1

    @property
    def executions_per_circuit(self) -> int:
        """Fragment executions a device runs per input and per circuit: the first fragment once per basis of its
        outgoing cut wire (X, Y, Z: 3), a middle one per eigenstate of its incoming wire and basis of its outgoing
        one (6 x 3 = 18), the last once per incoming eigenstate (6); 1 for the uncut circuit."""
        if self.cuts == 0:
            return 1
        return 3 + 18 * (len(self.fragments) - 2) + 6

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``8 qubits as fragments of 5 + 4 qubits (1 cut wire), 9 fragment
        executions per input``."""
        if self.cuts == 0:
            return f"{self.num_qubits} qubits as one fragment (no cut), 1 fragment execution per input"
        sizes = " + ".join(str(size) for size in self.sizes)
        wires = "cut wire" if self.cuts == 1 else "cut wires"
        return (f"{self.num_qubits} qubits as fragments of {sizes} qubits ({self.cuts} {wires}), "
                f"{self.executions_per_circuit} fragment executions per input")


def plan_fragments(num_qubits: int, max_fragment_qubits: int) -> FragmentPlan:
    """Split qubits 0..n-1 into fragments of at most ``max_fragment_qubits`` (m) qubits (SPEC section 8).

    Fragment 0 holds qubits 0..m-1; each next fragment starts at the previous one's last qubit (re-prepared
    downstream) and adds up to m - 1 new qubits: 8 qubits, m = 5 give (0..4), (4..7). With m >= n the circuit is
    one fragment and nothing is cut.
    """
    if num_qubits < 1:
        raise ValueError(f"num_qubits must be at least 1, got {num_qubits}")
    if max_fragment_qubits >= num_qubits:
        return FragmentPlan(num_qubits, max_fragment_qubits, (tuple(range(num_qubits)),))
    if max_fragment_qubits < 2:
        raise ValueError(f"max_fragment_qubits must be at least 2 to cut {num_qubits} qubits, got "
                         f"{max_fragment_qubits}: a fragment must hold the cut wire and at least one new qubit")
    fragments = [tuple(range(max_fragment_qubits))]
    while fragments[-1][-1] < num_qubits - 1:
        start = fragments[-1][-1]  # the cut wire: the previous fragment's last qubit
        fragments.append(tuple(range(start, min(start + max_fragment_qubits, num_qubits))))
    return FragmentPlan(num_qubits, max_fragment_qubits, tuple(fragments))


def check_cuttable(embedding: str, entangler: str, depth: int) -> None:
    """Raise ValueError, saying why and what to use instead, unless the circuit is one wire cutting covers: angle
    embedding, the ``chain`` entangler and depth 1 (SPEC section 8)."""
    instead = ("use angle embedding, entangler='chain' and depth=1, or max_fragment_qubits=None for the uncut "
               "simulation")
    if embedding != "angle":
        why = ("amplitude embedding prepares an arbitrary 2^n-amplitude state, entangled across the cut: there is "
               "no product state to split into fragments" if embedding == "amplitude"
               else f"unknown embedding {embedding!r}: only angle embedding gives a product state before the chain")
        raise ValueError(f"wire cutting does not cover this circuit: {why}; {instead}")
    if entangler != "chain":
        why = ("the ring's CNOT(n-1, 0) closes the loop, so the first fragment depends on the last and a chain of "
               "fragments cannot be evaluated in order" if entangler == "ring"
               else f"unknown entangler {entangler!r}: only the sequential chain CNOT(q, q+1) can be cut in order")
        raise ValueError(f"wire cutting does not cover this circuit: {why}; {instead}")
    if depth != 1:
        raise ValueError(f"wire cutting does not cover depth {depth}: only depth 1 is covered, since a second "
                         "layer's CNOTs act across the cut again after it (that would need a cut per layer and gate); "
                         f"{instead}")


# The 6 eigenstates that re-prepare a cut wire downstream, in the order |0>, |1>, |+>, |->, |+i>, |-i>, and the
# combinations that turn their 6 results into f(P/2) for P = I, X, Y, Z (rows).
_S = 1 / math.sqrt(2)
_EIGENSTATES = ((1, 0), (0, 1), (_S, _S), (_S, -_S), (_S, 1j * _S), (_S, -1j * _S))
_PAULI_FROM_EIGENSTATES = ((0.5, 0.5, 0, 0, 0, 0),     # I: (f(|0>) + f(|1>)) / 2
                           (0, 0, 0.5, -0.5, 0, 0),    # X: (f(|+>) - f(|->)) / 2
                           (0, 0, 0, 0, 0.5, -0.5),    # Y: (f(|+i>) - f(|-i>)) / 2
                           (0.5, -0.5, 0, 0, 0, 0))    # Z: (f(|0>) - f(|1>)) / 2


def _qubit_states(angles: torch.Tensor, rz: torch.Tensor, ry: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """v_q = RY(ry_q) RZ(rz_q) RY(x_q) H|0> for every qubit, complex ``[..., n, 2]``: the product state that the
    chain entangles (everything before the entangler acts on one qubit at a time)."""
    c, s = torch.cos(angles / 2), torch.sin(angles / 2)
    a0, a1 = (c - s) * _S, (s + c) * _S  # RY(x) H|0> = RY(x) (|0> + |1>) / sqrt(2), real
    phase = torch.polar(torch.ones_like(rz), rz / 2)  # RZ: |0> gets exp(-i rz/2), |1> exp(+i rz/2)
    b0, b1 = a0.to(dtype) * phase.conj(), a1.to(dtype) * phase
    c, s = torch.cos(ry / 2).to(dtype), torch.sin(ry / 2).to(dtype)
    return torch.stack((c * b0 - s * b1, s * b0 + c * b1), dim=-1)


def _pauli_expectations(state: torch.Tensor, qubit: int, num_qubits: int, paulis: str) -> torch.Tensor:
    """Exact <P_qubit> of normalised states ``[..., 2^k]`` for each P in ``paulis``, real ``[..., len(paulis)]``.

    With a0 / a1 the amplitudes whose bit for ``qubit`` is 0 / 1 (pairs i, i xor bit): <Z> = sum |a0|^2 - |a1|^2,
    and s = sum conj(a0) a1 gives <X> = 2 Re s, <Y> = 2 Im s.
    """
    split = state.unflatten(-1, (2**qubit, 2, 2 ** (num_qubits - 1 - qubit)))
    a0, a1 = split[..., 0, :], split[..., 1, :]
    overlap = (a0.conj() * a1).sum(dim=(-2, -1))
    values = {"X": lambda: 2 * overlap.real, "Y": lambda: 2 * overlap.imag,
              "Z": lambda: (a0.abs().square() - a1.abs().square()).sum(dim=(-2, -1))}
    return torch.stack([values[pauli]() for pauli in paulis], dim=-1)


def cut_expectations(angles: torch.Tensor, weights: torch.Tensor, readout: str,
                     max_fragment_qubits: int) -> torch.Tensor:
    """<P_q> (P = ``readout``, "Y" or "Z") of every qubit of the depth-1, chain, angle-embedded data-path circuits,
    evaluated by wire cutting into fragments of at most ``max_fragment_qubits`` qubits (SPEC section 8).

    ``angles`` ``[N, C, n]``: the RY embedding angles of N inputs for each of C circuits; ``weights``
    ``[C, 1, 2, n]`` (``[:, 0, 0]`` RZ, ``[:, 0, 1]`` RY). Returns real ``[N, C, n]`` in the dtype of ``angles``
    (simulated in complex128 for float64, complex64 otherwise), batched over N x C and differentiable by autograd.
    Equals the uncut circuit to float precision; see :func:`plan_fragments` for the fragments and their count of
    executions.
    """
    if readout not in _READOUTS:
        raise ValueError(f"readout must be one of {_READOUTS}, got {readout!r}")
    if angles.dim() != 3 or not angles.is_floating_point():
        raise ValueError(f"angles must be real [N, C, n], got {tuple(angles.shape)} {angles.dtype}")
    num_inputs, num_circuits, n = angles.shape
    if weights.dim() != 4 or weights.shape[2] != 2 or not weights.is_floating_point():
        raise ValueError(f"weights must be real [C, depth, 2, n], got {tuple(weights.shape)} {weights.dtype}")
    check_cuttable("angle", "chain", weights.shape[1])
    if weights.shape[0] != num_circuits or weights.shape[3] != n:
        raise ValueError(f"weights {tuple(weights.shape)} do not match angles {tuple(angles.shape)}: expected "
                         f"[{num_circuits}, 1, 2, {n}]")
    plan = plan_fragments(n, max_fragment_qubits)
    out_dtype = angles.dtype
    real = torch.float64 if out_dtype == torch.float64 else torch.float32
    dtype = torch.complex128 if real == torch.float64 else torch.complex64
    angles, weights = angles.to(real), weights.to(real)
    vectors = _qubit_states(angles, weights[:, 0, 0], weights[:, 0, 1], dtype)  # [N, C, n, 2]
    eigenstates = torch.tensor(_EIGENSTATES, dtype=dtype, device=angles.device)  # [6, 2]
    combine = torch.tensor(_PAULI_FROM_EIGENSTATES, dtype=real, device=angles.device)  # [4, 6]

    readouts: dict[int, torch.Tensor] = {}
    incoming = None  # c = (1, <X>, <Y>, <Z>) of the incoming cut wire, [N, C, 4]
    for index, fragment in enumerate(plan.fragments):
        k, last = len(fragment), index == len(plan.fragments) - 1
        # The fragment's input: its qubits' product state, with the incoming cut wire (if any) replaced by each of
        # the 6 eigenstates, [N, C, S, 2^k] with S = 6 (or S = 1 for the first fragment).
        factors = [vectors[:, :, q].unsqueeze(2) for q in fragment]
        if incoming is not None:
            factors[0] = eigenstates.expand(num_inputs, num_circuits, 6, 2)
        state = kron_vectors(torch.stack(torch.broadcast_tensors(*factors), dim=-2))
        state = state[..., entangler_sources(k, "chain", angles.device)]
        # Readouts of the qubits whose last fragment this is (the outgoing cut wire is read downstream), and the
        # outgoing wire in the X, Y, Z bases. Exact values: the cut basis does not change the other qubits' values.
        read = fragment if last else fragment[:-1]
        values = torch.cat([_pauli_expectations(state, fragment.index(q), k, readout) for q in read]
                           + ([] if last else [_pauli_expectations(state, k - 1, k, "XYZ")]), dim=-1)
        if incoming is not None:
            # f(P/2) from the eigenstate results, then linearity: sum_P c_P f(P/2).
            values = torch.einsum("ncp,ps,ncsr->ncr", incoming, combine, values)
        else:
            values = values.squeeze(2)
        for position, q in enumerate(read):
            readouts[q] = values[..., position]
        if not last:
            incoming = torch.cat((torch.ones_like(values[..., :1]), values[..., len(read):]), dim=-1)
    return torch.stack([readouts[q] for q in range(n)], dim=-1).to(out_dtype)
