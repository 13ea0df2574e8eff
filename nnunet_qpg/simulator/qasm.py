"""QPG's circuits as OpenQASM 2, and measured counts back to our basis order (SPEC section 7, Eq. 1).

The circuit of one VQC (Eq. 1, SPEC section 1) with n qubits and K blocks, written exactly as SPEC section 7
fixes it::

    OPENQASM 2.0;
    include "qelib1.inc";
    qreg q[n];
    creg c[n];
    h q[0]; ... h q[n-1];
    # for each block k:
    ry(theta[k, 0, 0]) q[0]; ... ry(theta[k, 0, n-1]) q[n-1];
    rx(theta[k, 1, 0]) q[0]; ... rx(theta[k, 1, n-1]) q[n-1];
    cx q[0],q[1]; cx q[1],q[2]; ... cx q[n-1],q[0];      # the CNOT ring; none for n = 1 or without entanglement
    measure q[0] -> c[0]; ... measure q[n-1] -> c[n-1];

Our qubit q is ``q[q]`` and is measured into ``c[q]``. Angles are printed with ``repr`` of the Python float,
which round-trips float64 exactly, so the exported circuit is the simulated one to the last bit.

Bit order (SPEC section 7). Our basis index is i = sum_q b_q 2^(n-1-q): qubit 0 is the *most* significant bit.
Qiskit is little-endian: classical bit 0 is the *least* significant bit of its integer outcome and the rightmost
character of its counts' bitstrings. The Qiskit bitstring of our index i is therefore i's n-bit binary string
reversed (:func:`qiskit_bitstring`; n = 3: our i = 1, ``001``, is Qiskit's ``100``), and Qiskit's integer outcome
is our index with its n bits reversed. :func:`probabilities_from_counts` undoes this for measured counts.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

import torch

__all__ = ["circuit_resources", "probabilities_from_counts", "qiskit_bitstring", "vqc_qasm", "vqcs_qasm"]

_HEADER = 'OPENQASM 2.0;\ninclude "qelib1.inc";'


def _angle(value: float) -> str:
    text = repr(float(value))
    if text in ("nan", "inf", "-inf"):
        raise ValueError(f"angle {text} cannot be written to OpenQASM; the layer's theta holds a non-finite value")
    return text


def vqc_qasm(angles: torch.Tensor, entangle: bool = True) -> str:
    """OpenQASM 2 of one VQC (Eq. 1) with measurements, exactly as SPEC section 7 writes it.

    Args:
        angles: ``[K, 2, n]``: ``angles[k, 0, q]`` the RY angle and ``angles[k, 1, q]`` the RX angle of qubit q in
            block k (one row ``theta[v]`` of a layer's ``theta``).
        entangle: False leaves the CNOT ring out of every block (a layer built without entanglement).

    Returns:
        The program text, ending in a newline.
    """
    if not isinstance(angles, torch.Tensor):
        angles = torch.as_tensor(angles)
    if angles.dim() != 3 or angles.shape[1] != 2 or angles.shape[2] < 1:
        raise ValueError(f"angles must be [K, 2, n] (K blocks; RY and RX; n qubits), got shape {tuple(angles.shape)}")
    values = angles.detach().to("cpu", torch.float64).tolist()
    blocks, n = angles.shape[0], angles.shape[2]
    lines = [_HEADER, f"qreg q[{n}];", f"creg c[{n}];"]
    lines += [f"h q[{j}];" for j in range(n)]
    ring = entangle and n > 1
    for k in range(blocks):
        lines += [f"ry({_angle(values[k][0][j])}) q[{j}];" for j in range(n)]
        lines += [f"rx({_angle(values[k][1][j])}) q[{j}];" for j in range(n)]
        if ring:
            lines += [f"cx q[{j}],q[{(j + 1) % n}];" for j in range(n)]
    lines += [f"measure q[{j}] -> c[{j}];" for j in range(n)]
    return "\n".join(lines) + "\n"


def vqcs_qasm(theta: torch.Tensor, entangle: bool = True) -> list[str]:
    """OpenQASM 2 of every VQC of a layer, in VQC order (SPEC section 7).

    Args:
        theta: ``[V, K, 2, n]``, a QPG layer's angles; VQC v is (target channel, kernel position) in row-major
            order (:class:`~nnunet_qpg.simulator.generation.KernelLayout`).
        entangle: False leaves the CNOT ring out.
    """
    if not isinstance(theta, torch.Tensor):
        theta = torch.as_tensor(theta)
    if theta.dim() != 4:
        raise ValueError(f"theta must be [num_vqcs, K, 2, n], got shape {tuple(theta.shape)}")
    theta = theta.detach().to("cpu", torch.float64)
    return [vqc_qasm(theta[v], entangle) for v in range(theta.shape[0])]


def qiskit_bitstring(index: int, num_qubits: int) -> str:
    """Qiskit's counts key of our basis index ``index`` (SPEC section 7): its n-bit binary string reversed.

    Our qubit 0 is the most significant bit of ``index``; Qiskit prints classical bit 0 (our qubit 0's
    measurement) rightmost. n = 3, index 1 (``001``) -> ``'100'``.
    """
    if num_qubits < 1 or not 0 <= index < 1 << num_qubits:
        raise ValueError(f"index {index} is not a basis index of {num_qubits} qubit(s) (0 .. {(1 << num_qubits) - 1})")
    return format(index, f"0{num_qubits}b")[::-1]


def _reverse_bits(value: int, num_qubits: int) -> int:
    return int(format(value, f"0{num_qubits}b")[::-1], 2)


def _our_index(key: Any, num_qubits: int, vqc: int) -> int:
    """Our basis index of one counts key: a Qiskit bitstring (spaces ignored), a hex string ``'0x..'`` or an int
    (Qiskit's integer outcome, classical bit 0 least significant)."""
    size = 1 << num_qubits
    if isinstance(key, bool):
        raise ValueError(f"VQC {vqc}: counts key {key!r} is not an outcome (bitstring, '0x..' or integer)")
    if isinstance(key, numbers.Integral):
        outcome = int(key)
        what = f"integer outcome {key}"
    elif isinstance(key, str):
        text = key.replace(" ", "")
        if text.lower().startswith("0x"):
            try:
                outcome = int(text, 16)
            except ValueError:
                raise ValueError(f"VQC {vqc}: counts key {key!r} is not a hexadecimal outcome") from None
            what = f"hexadecimal outcome {key!r}"
        else:
            if not text or set(text) - {"0", "1"}:
                raise ValueError(f"VQC {vqc}: counts key {key!r} is not a bitstring of 0s and 1s (nor '0x..')")
            if len(text) != num_qubits:
                raise ValueError(f"VQC {vqc}: bitstring {key!r} has {len(text)} bits, but the circuit measures "
                                 f"{num_qubits} qubit(s); give the counts of this layer's circuits")
            return int(text[::-1], 2)  # rightmost character is classical bit 0 = our qubit 0 = our top bit
    else:
        raise ValueError(f"VQC {vqc}: counts key {key!r} ({type(key).__name__}) is not an outcome (bitstring, "
                         f"'0x..' or integer)")
    if not 0 <= outcome < size:
        raise ValueError(f"VQC {vqc}: {what} does not fit {num_qubits} qubit(s) (0 .. {size - 1}); give the counts "
                         f"of this layer's circuits")
    return _reverse_bits(outcome, num_qubits)


def probabilities_from_counts(counts: Sequence[Mapping[Any, int]], num_qubits: int,
                              expected: int | None = None) -> torch.Tensor:
    """Probability vectors in our basis order from Qiskit-style counts (SPEC section 7: p_i = counts_i / N).

    Args:
        counts: one mapping per VQC, in VQC order: outcome -> count. Outcomes are Qiskit bitstrings (classical
            bit 0 rightmost; spaces, as between registers, are ignored), Qiskit's hexadecimal keys ``'0x..'``, or
            ints (Qiskit's integer outcome: classical bit 0 least significant). Outcomes never seen may be left out.
        num_qubits: n, the qubits (= classical bits) of every circuit.
        expected: the number of VQCs the counts must cover (e.g. the layer's ``num_vqcs``), or None.

    Returns:
        ``[V, 2^n]`` float64: entry ``[v, i]`` the frequency of our basis index i in VQC v's counts (the counts
        divided by their total, which is the number of shots).

    Raises:
        ValueError naming the VQC and the problem: a different number of entries than ``expected``, a key that is
        not an outcome of n bits, a negative or non-integer count, or no counts at all.
    """
    if isinstance(num_qubits, bool) or not isinstance(num_qubits, int) or num_qubits < 1:
        raise ValueError(f"num_qubits must be an integer >= 1, got {num_qubits!r}")
    if isinstance(counts, Mapping):
        raise ValueError("counts must be a sequence of mappings, one per VQC (e.g. [result.get_counts(i) for i in "
                         "range(V)]), not a single mapping")
    counts = list(counts)
    if expected is not None and len(counts) != expected:
        raise ValueError(f"{len(counts)} count dictionaries for {expected} VQCs; give one per VQC, in the order of "
                         f"the exported circuits (vqc_00000.qasm first)")
    size = 1 << num_qubits
    out = torch.zeros(len(counts), size, dtype=torch.float64)
    for vqc, entry in enumerate(counts):
        if not isinstance(entry, Mapping):
            raise ValueError(f"VQC {vqc}: counts must be a mapping outcome -> count, got {type(entry).__name__}")
        row = [0] * size
        for key, value in entry.items():
            index = _our_index(key, num_qubits, vqc)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value):
                raise ValueError(f"VQC {vqc}: count {value!r} of outcome {key!r} is not a whole number")
            if value < 0:
                raise ValueError(f"VQC {vqc}: count {value!r} of outcome {key!r} is negative")
            row[index] += int(value)
        total = sum(row)
        if total == 0:
            raise ValueError(f"VQC {vqc}: the counts hold no shots (total 0); every circuit must be measured at "
                             f"least once")
        out[vqc] = torch.tensor(row, dtype=torch.float64) / total
    return out


def circuit_resources(num_qubits: int, blocks: int, entangle: bool = True) -> dict[str, int]:
    """Logical size of one VQC (Eq. 1) before any routing, measurements not counted.

    Returns ``{"qubits", "blocks", "depth", "one_qubit_gates", "cnots"}``:

    * depth = 1 (the H layer) + K * (1 (RY) + 1 (RX) + the ring's depth). The ring's n CNOTs run in sequence, each
      sharing a qubit with the one before, and the next block's RY on qubit 0 waits for the last one
      (``cx q[n-1],q[0]``), so the ring adds n layers for n >= 3, 2 for n = 2 (CNOT(0,1) then CNOT(1,0)), 0 for
      n = 1 or without entanglement. This equals Qiskit's ``QuantumCircuit.depth()``.
    * one-qubit gates: n (H) + 2 n K (RY and RX); CNOTs: n K (n >= 2 with the ring), else 0.
    """
    for name, value in (("num_qubits", num_qubits), ("blocks", blocks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    ring = entangle and num_qubits > 1
    ring_depth = num_qubits if ring else 0
    return {
        "qubits": num_qubits,
        "blocks": blocks,
        "depth": 1 + blocks * (2 + ring_depth),
        "one_qubit_gates": num_qubits * (1 + 2 * blocks),
        "cnots": num_qubits * blocks if ring else 0,
    }
