"""The quantum core: the one place that knows the paper's circuit (Eq. 1) and how QPG reads it (Eqs. 3-9).

Start with :mod:`~nnunet_qpg.simulator.reference`: Eq. 1 gate by gate (H; per block RY, RX, the CNOT ring),
the float64 truth every fast path below is tested against.

* :mod:`~nnunet_qpg.simulator.ring` -- the CNOT ring as one permutation of basis indices;
* :mod:`~nnunet_qpg.simulator.statevector` -- batched exact simulation of any number of blocks;
* :mod:`~nnunet_qpg.simulator.one_block` -- one block (the paper's setting) as outer products of half-register
  vectors, fused with post-processing;
* :mod:`~nnunet_qpg.simulator.generation` -- one layer's generated tensor in its weight layout;
* :mod:`~nnunet_qpg.simulator.network` -- every QPG layer of a network generated together, once per forward;
* :mod:`~nnunet_qpg.simulator.backends` -- simulators by name (native, torchquantum, reference);
  :mod:`~nnunet_qpg.simulator.torchquantum_circuit` builds the circuit with TorchQuantum;
* towards hardware (SPEC section 7): :mod:`~nnunet_qpg.simulator.measurement` -- finite shots and parameter-shift
  gradients; :mod:`~nnunet_qpg.simulator.noise` -- depolarizing gates and readout error (density matrices, Pauli
  trajectories), the circuits without the ring; :mod:`~nnunet_qpg.simulator.qasm` -- OpenQASM 2 out, counts in;
* circuits in the data path (SPEC section 8, for comparison with QPG): :mod:`~nnunet_qpg.simulator.data_path` --
  amplitude / angle embedding, RZ / RY layers with a ring or chain of CNOTs, Pauli-Y / Z readout, batched as one
  unitary per circuit; :mod:`~nnunet_qpg.simulator.wire_cutting` -- the same circuits as fragments joined by cut
  wires (angle embedding, chain, depth 1).

Conventions (``docs/method.md``): basis index i = sum_q b_q 2^(n-1-q), qubit 0 the most significant bit;
angles ``theta[num_vqcs, K, 2, n]`` with ``theta[:, k, 0]`` the RY and ``theta[:, k, 1]`` the RX angles of block k.
"""

from nnunet_qpg.simulator.backends import backend_names, check_backend, register_backend, simulate
from nnunet_qpg.simulator.generation import (KernelLayout, SourceOrderBase, generate_kernel, num_qubits_for,
                                             one_block_fusable)
from nnunet_qpg.simulator.one_block import half_register_factors, ring_outer_product, to_ring_source_order
from nnunet_qpg.simulator.reference import reference_states
from nnunet_qpg.simulator.ring import cnot_ring_permutation
from nnunet_qpg.simulator.statevector import (READOUTS, complex_dtype_for, readout_from_amplitudes,
                                              rotation_matrices, simulate_vqcs)
from nnunet_qpg.simulator.torchquantum_circuit import torchquantum_available

__all__ = [
    "KernelLayout",
    "READOUTS",
    "SourceOrderBase",
    "backend_names",
    "check_backend",
    "cnot_ring_permutation",
    "complex_dtype_for",
    "generate_kernel",
    "half_register_factors",
    "num_qubits_for",
    "one_block_fusable",
    "readout_from_amplitudes",
    "reference_states",
    "register_backend",
    "ring_outer_product",
    "rotation_matrices",
    "simulate",
    "simulate_vqcs",
    "to_ring_source_order",
    "torchquantum_available",
]
