"""Noise on QPG's circuits (nnunet_qpg/simulator/noise.py, SPEC section 7): readout error and its mitigation,
the exact density-matrix simulation of depolarizing gate noise (checked against Qiskit Aer), Pauli trajectories
(checked against the exact result), the no-ring ablation, dtypes and gradients.

Conventions (docs/method.md section 1): basis index i = sum_q b_q 2^(n-1-q), qubit 0 the most significant bit;
Qiskit's qubit q is our qubit q, and Qiskit's index of our i is i's n-bit string reversed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from nnunet_qpg.simulator import noise as noise_module
from nnunet_qpg.simulator.noise import (NoiseModel, apply_readout_error, mitigate_readout_error,
                                        noisy_probabilities, pure_amplitudes, pure_probabilities,
                                        readout_confusion)
from nnunet_qpg.simulator.reference import reference_states

HADAMARD = torch.tensor([[1, 1], [1, -1]], dtype=torch.complex128) / math.sqrt(2)


def random_theta(vqcs: int, blocks: int, qubits: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Angles over the whole circle, so no gate is close to the identity.
    return (torch.rand(vqcs, blocks, 2, qubits, generator=generator, dtype=torch.float64) * 2 * math.pi).to(dtype)


def reference_amplitudes(theta: torch.Tensor, entangle: bool) -> torch.Tensor:
    """Gate by gate with the reference's matrices; ``entangle=False`` leaves the CNOT ring out."""
    return reference_states(theta, entangle=entangle)


def reverse_bits(n: int) -> list[int]:
    """Qiskit's index of each of our indices (our i = Qiskit's reverse_bits(n)[i])."""
    return [int(format(i, f"0{n}b")[::-1], 2) for i in range(1 << n)]


def qiskit_circuit(theta_one: np.ndarray, entangle: bool = True, measure: bool = False):
    from qiskit import QuantumCircuit

    blocks, _, n = theta_one.shape
    circuit = QuantumCircuit(n, n) if measure else QuantumCircuit(n)
    for q in range(n):
        circuit.h(q)
    for k in range(blocks):
        for q in range(n):
            circuit.ry(float(theta_one[k, 0, q]), q)
        for q in range(n):
            circuit.rx(float(theta_one[k, 1, q]), q)
        if entangle and n > 1:
            for q in range(n):
                circuit.cx(q, (q + 1) % n)
    return circuit


def aer_noise_model(p1: float, p2: float, readout: tuple[float, float] | None = None):
    from qiskit_aer.noise import NoiseModel as AerNoiseModel
    from qiskit_aer.noise import ReadoutError, depolarizing_error

    model = AerNoiseModel()
    if p1 > 0:
        model.add_all_qubit_quantum_error(depolarizing_error(p1, 1), ["h", "ry", "rx"])
    if p2 > 0:
        model.add_all_qubit_quantum_error(depolarizing_error(p2, 2), ["cx"])
    if readout is not None:
        e01, e10 = readout
        model.add_all_qubit_readout_error(ReadoutError([[1 - e01, e01], [e10, 1 - e10]]))
    return model


def aer_probabilities(theta: torch.Tensor, p1: float, p2: float, entangle: bool) -> np.ndarray:
    """Aer's exact density-matrix probabilities, re-indexed to our convention: ``[V, 2^n]``.

    The diagonal of ``save_density_matrix``: Aer 0.13's ``save_probabilities`` array comes back garbled under
    NumPy 2 (every entry equal to the first), its density matrix does not.
    """
    from qiskit_aer import AerSimulator

    n = theta.shape[-1]
    circuits = []
    for one in theta.numpy():
        circuit = qiskit_circuit(one, entangle)
        circuit.save_density_matrix()
        circuits.append(circuit)
    simulator = AerSimulator(method="density_matrix", noise_model=aer_noise_model(p1, p2))
    result = simulator.run(circuits).result()
    probabilities = np.stack([np.real(np.diag(np.asarray(result.data(i)["density_matrix"])))
                              for i in range(len(circuits))])
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-12)
    return probabilities[:, reverse_bits(n)]


# -- readout error ---------------------------------------------------------------------------------------------

def test_readout_confusion_rows() -> None:
    noise = NoiseModel(readout_error=(0.02, 0.07))
    confusion = readout_confusion(noise)
    assert confusion.dtype == torch.float64 and confusion.shape == (2, 2)
    # Row = true bit, column = read bit: P(read 1 | 0) = e01, P(read 0 | 1) = e10.
    torch.testing.assert_close(confusion, torch.tensor([[0.98, 0.02], [0.07, 0.93]], dtype=torch.float64))
    torch.testing.assert_close(confusion.sum(1), torch.ones(2, dtype=torch.float64))
    assert readout_confusion(noise, torch.float32).dtype == torch.float32
    symmetric = readout_confusion(NoiseModel(readout_error=0.1))
    assert symmetric[0, 1] == symmetric[1, 0] == pytest.approx(0.1)


@pytest.mark.parametrize("num_qubits", [1, 2, 3])
def test_readout_error_on_basis_states_is_a_product_of_confusion_rows(num_qubits: int) -> None:
    n = num_qubits
    noise = NoiseModel(readout_error=(0.03, 0.11))
    confusion = readout_confusion(noise)
    basis = torch.eye(1 << n, dtype=torch.float64)  # row i: the basis state |i>
    measured = apply_readout_error(basis, n, noise)
    if n == 1:
        torch.testing.assert_close(measured, confusion, rtol=0, atol=1e-15)
    for i in range(1 << n):
        true_bits = [(i >> (n - 1 - q)) & 1 for q in range(n)]
        for r in range(1 << n):
            read_bits = [(r >> (n - 1 - q)) & 1 for q in range(n)]
            expected = math.prod(float(confusion[t, b]) for t, b in zip(true_bits, read_bits))
            assert measured[i, r].item() == pytest.approx(expected, abs=1e-15)
    # An explicit Kronecker product of confusion matrices, qubit 0 the left (most significant) factor.
    kron = np.ones((1, 1))
    for _ in range(n):
        kron = np.kron(kron, confusion.numpy())
    probabilities = torch.softmax(torch.randn(4, 1 << n, dtype=torch.float64), -1)
    np.testing.assert_allclose(apply_readout_error(probabilities, n, noise).numpy(), probabilities.numpy() @ kron,
                               rtol=0, atol=1e-15)


def test_readout_error_identity_and_round_trip() -> None:
    probabilities = pure_probabilities(random_theta(5, 2, 4, seed=1))
    no_readout = NoiseModel(one_qubit_depolarizing=0.01)
    assert apply_readout_error(probabilities, 4, no_readout) is probabilities
    assert mitigate_readout_error(probabilities, 4, no_readout) is probabilities
    noise = NoiseModel(readout_error=(0.04, 0.09))
    measured = apply_readout_error(probabilities, 4, noise)
    assert (measured - probabilities).abs().max() > 1e-3  # it does something
    torch.testing.assert_close(measured.sum(-1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(mitigate_readout_error(measured, 4, noise), probabilities, rtol=0, atol=1e-12)
    torch.testing.assert_close(apply_readout_error(mitigate_readout_error(probabilities, 4, noise), 4, noise),
                               probabilities, rtol=0, atol=1e-12)
    # Mitigating a noisy estimate may leave negative entries: they are not clipped.
    mitigated = mitigate_readout_error(torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64), 2, noise)
    assert mitigated.min() < 0
    torch.testing.assert_close(mitigated.sum(-1), torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError):
        apply_readout_error(probabilities, 3, noise)


def test_readout_error_matches_aer_counts() -> None:
    """Aer's ReadoutError on measured counts (asymmetric e01 != e10, so a swapped convention fails)."""
    pytest.importorskip("qiskit_aer")
    from qiskit_aer import AerSimulator

    n, shots = 3, 40000
    e01, e10 = 0.05, 0.2
    theta = random_theta(1, 1, n, seed=7)
    circuit = qiskit_circuit(theta[0].numpy(), measure=True)
    circuit.measure(list(range(n)), list(range(n)))
    simulator = AerSimulator(method="density_matrix", noise_model=aer_noise_model(0.0, 0.0, (e01, e10)))
    counts = simulator.run(circuit, shots=shots, seed_simulator=11).result().get_counts()
    observed = np.zeros(1 << n)
    for bits, count in counts.items():  # classical bit 0 is the rightmost character
        observed[int(bits[::-1], 2)] = count / shots
    expected = apply_readout_error(pure_probabilities(theta), n, NoiseModel(readout_error=(e01, e10)))[0].numpy()
    swapped = apply_readout_error(pure_probabilities(theta), n, NoiseModel(readout_error=(e10, e01)))[0].numpy()
    standard_error = np.sqrt(expected * (1 - expected) / shots)
    assert np.all(np.abs(observed - expected) < 5 * standard_error + 1e-9)
    assert np.any(np.abs(observed - swapped) > 5 * standard_error)


def test_readout_functions_are_differentiable() -> None:
    noise = NoiseModel(readout_error=(0.06, 0.13))
    probabilities = torch.softmax(torch.randn(3, 8, dtype=torch.float64), -1).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: apply_readout_error(p, 3, noise), (probabilities,))
    assert torch.autograd.gradcheck(lambda p: mitigate_readout_error(p, 3, noise), (probabilities,))
    theta = random_theta(2, 1, 2, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: mitigate_readout_error(apply_readout_error(pure_probabilities(t), 2, noise) ** 2, 2, noise),
        (theta,))


# -- pure and noiseless ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("entangle", [True, False])
@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("num_qubits", [1, 2, 3, 4, 5])
def test_zero_noise_equals_pure(num_qubits: int, blocks: int, entangle: bool) -> None:
    theta = random_theta(3, blocks, num_qubits, seed=10 * num_qubits + blocks)
    amplitudes = reference_amplitudes(theta, entangle)
    expected = amplitudes.abs() ** 2
    torch.testing.assert_close(pure_amplitudes(theta, entangle), amplitudes, rtol=0, atol=1e-12)
    torch.testing.assert_close(pure_probabilities(theta, entangle), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(noisy_probabilities(theta, NoiseModel(), entangle), expected, rtol=0, atol=1e-12)
    # The exact density-matrix machinery itself at zero noise (the public function short-cuts to the pure state).
    if entangle and num_qubits > 1:
        density = noise_module._density_chunk(theta, 0.0, 0.0)
    else:
        density = noise_module._product_noisy_probabilities(theta, 0.0)
    torch.testing.assert_close(density, expected, rtol=0, atol=1e-12)


def test_ring_changes_the_distribution() -> None:
    """The ablation is a different circuit (so the entangle flag is not ignored anywhere)."""
    theta = random_theta(2, 2, 3, seed=3)
    noise = NoiseModel(one_qubit_depolarizing=0.01, two_qubit_depolarizing=0.05)
    assert (pure_probabilities(theta, True) - pure_probabilities(theta, False)).abs().max() > 1e-2
    assert (noisy_probabilities(theta, noise, True) - noisy_probabilities(theta, noise, False)).abs().max() > 1e-2


# -- exact noisy simulation against Qiskit Aer -------------------------------------------------------------------

@pytest.mark.parametrize("p1, p2", [(0.01, 0.05), (0.01, 0.0), (0.0, 0.05)])
@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("num_qubits", [1, 2, 3, 5])
def test_density_matrix_matches_aer(num_qubits: int, blocks: int, p1: float, p2: float) -> None:
    pytest.importorskip("qiskit_aer")
    theta = random_theta(2, blocks, num_qubits, seed=1000 + 10 * num_qubits + blocks)
    noise = NoiseModel(one_qubit_depolarizing=p1, two_qubit_depolarizing=p2)
    ours = noisy_probabilities(theta, noise)
    assert ours.dtype == torch.float64 and ours.shape == (2, 1 << num_qubits)
    np.testing.assert_allclose(ours.numpy(), aer_probabilities(theta, p1, p2, entangle=True), rtol=0, atol=1e-10)
    if num_qubits > 1 and p2 > 0:  # the noise is large enough that the comparison can tell
        assert (ours - pure_probabilities(theta)).abs().max() > 1e-3


@pytest.mark.parametrize("num_qubits", [1, 3])
def test_no_ring_matches_aer(num_qubits: int) -> None:
    pytest.importorskip("qiskit_aer")
    theta = random_theta(2, 2, num_qubits, seed=77 + num_qubits)
    noise = NoiseModel(one_qubit_depolarizing=0.03, two_qubit_depolarizing=0.05)
    np.testing.assert_allclose(noisy_probabilities(theta, noise, entangle=False).numpy(),
                               aer_probabilities(theta, 0.03, 0.05, entangle=False), rtol=0, atol=1e-10)


def test_chunking_and_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    theta = random_theta(5, 2, 3, seed=5)
    noise = NoiseModel(one_qubit_depolarizing=0.02, two_qubit_depolarizing=0.06)
    whole = noisy_probabilities(theta, noise)
    monkeypatch.setattr(noise_module, "_CHUNK_ELEMENTS", 2 * 64)  # two VQCs (2 x 8 x 8) per chunk
    torch.testing.assert_close(noisy_probabilities(theta, noise), whole, rtol=0, atol=1e-14)
    monkeypatch.undo()
    single = noisy_probabilities(theta.float(), noise)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), whole, rtol=0, atol=2e-6)
    empty = noisy_probabilities(theta[:0], noise)
    assert empty.shape == (0, 8)
    assert noisy_probabilities(theta.half(), noise).dtype == torch.float32  # half angles promoted
    # Inside an autocast region everything stays in the working precision.
    readout = NoiseModel(readout_error=(0.02, 0.05))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = apply_readout_error(noisy_probabilities(theta.float(), noise), 3, readout)
        ablation = pure_probabilities(theta.float(), entangle=False)
    assert inside.dtype == torch.float32 and ablation.dtype == torch.float32
    torch.testing.assert_close(inside, apply_readout_error(single, 3, readout), rtol=0, atol=1e-6)


# -- Pauli trajectories ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("p1, p2, num_qubits, blocks", [(0.1, 0.0, 3, 2), (0.0, 0.3, 3, 2), (0.05, 0.2, 4, 3)])
def test_trajectories_agree_with_density_matrix(p1: float, p2: float, num_qubits: int, blocks: int) -> None:
    vqcs, repeats, trajectories = 2, 32, 1000
    theta = random_theta(vqcs, blocks, num_qubits, seed=21)
    exact = noisy_probabilities(theta, NoiseModel(one_qubit_depolarizing=p1, two_qubit_depolarizing=p2))
    sampled_model = NoiseModel(one_qubit_depolarizing=p1, two_qubit_depolarizing=p2, exact_max_qubits=1,
                               trajectories=trajectories)
    # Every circuit repeated: 32 independent estimates of T trajectories each, whose spread gives the standard error.
    repeated = theta.repeat_interleave(repeats, dim=0)
    torch.manual_seed(0)
    sampled = noisy_probabilities(repeated, sampled_model)
    assert sampled.shape == (vqcs * repeats, 1 << num_qubits) and sampled.dtype == torch.float64
    torch.testing.assert_close(sampled.sum(-1), torch.ones(vqcs * repeats, dtype=torch.float64))
    estimates = sampled.view(vqcs, repeats, -1)
    mean = estimates.mean(1)
    standard_error = estimates.std(1) / math.sqrt(repeats)
    # Each trajectory's |psi_i|^2 lies in [0, 1] with mean p_i: its variance is at most p_i (1 - p_i).
    assert torch.all(standard_error <= torch.sqrt(exact * (1 - exact) / trajectories) / math.sqrt(repeats) * 1.5)
    assert torch.all((mean - exact).abs() < 5 * standard_error + 1e-12)
    # Fewer trajectories: an unbiased estimate whose spread grows as 1/sqrt(T).
    torch.manual_seed(1)
    few = noisy_probabilities(repeated, dataclasses.replace(sampled_model, trajectories=trajectories // 16))
    spread_ratio = few.view(vqcs, repeats, -1).std(1).mean() / estimates.std(1).mean()
    assert 2.5 < spread_ratio < 6.0  # sqrt(16) = 4
    # The noise is large enough that the noiseless distribution would fail the same check.
    assert torch.any((pure_probabilities(theta) - exact).abs() > 5 * standard_error)
    # Reproducible under torch.manual_seed, different under another seed.
    torch.manual_seed(0)
    torch.testing.assert_close(noisy_probabilities(repeated, sampled_model), sampled, rtol=0, atol=0)
    torch.manual_seed(2)
    assert not torch.equal(noisy_probabilities(repeated, sampled_model), sampled)


def pauli_matrix(x_bits: list[bool], z_bits: list[bool]) -> np.ndarray:
    """X^x Z^z on every qubit, qubit 0 the left (most significant) Kronecker factor."""
    single = {(0, 0): np.eye(2), (1, 0): np.array([[0, 1], [1, 0]]), (0, 1): np.diag([1, -1]),
              (1, 1): np.array([[0, 1], [1, 0]]) @ np.diag([1, -1])}
    out = np.ones((1, 1))
    for x, z in zip(x_bits, z_bits):
        out = np.kron(out, single[int(x), int(z)])
    return out


def equal_up_to_phase(a: np.ndarray, b: np.ndarray) -> bool:
    overlap = np.vdot(a.flatten(), b.flatten())
    return bool(np.isclose(abs(overlap), np.vdot(a.flatten(), a.flatten()).real)
                and np.allclose(a * (overlap / abs(overlap)), b))


def test_pauli_bookkeeping_through_cnots() -> None:
    """The trajectory path's symbolic Paulis: CNOT P = P' CNOT, and the drawn two-qubit codes (a on the first
    qubit, b on the second; I, X, Y, Z) multiply in as those Paulis, for every Pauli on every qubit pair."""
    n = 3
    paulis = [np.eye(2), np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]]), np.diag([1, -1])]
    codes = torch.arange(16)
    for control, target in [(0, 1), (1, 2), (2, 0), (1, 0)]:
        cnot = np.zeros((1 << n, 1 << n))
        for i in range(1 << n):  # |i> -> |i with the target bit flipped if the control bit is 1>
            flip = (i >> (n - 1 - control)) & 1
            cnot[i ^ (flip << (n - 1 - target)), i] = 1
        pending = torch.rand(16, 2, n, generator=torch.Generator().manual_seed(control * 3 + target)) < 0.5
        x, z = pending[:, 0].clone(), pending[:, 1].clone()
        noise_module._push_through_cnot(x, z, control, target)
        noise_module._multiply_two_qubit_pauli(x, z, codes, control, target)
        for r in range(16):
            drawn = [np.eye(2)] * n
            drawn[control], drawn[target] = paulis[r // 4], paulis[r % 4]
            kron = np.ones((1, 1))
            for factor in drawn:
                kron = np.kron(kron, factor)
            before = pauli_matrix(pending[r, 0].tolist(), pending[r, 1].tolist())
            actual = kron @ cnot @ before  # pending Pauli, the CNOT, then the drawn Pauli
            assert equal_up_to_phase(pauli_matrix(x[r].tolist(), z[r].tolist()) @ cnot, actual), (control, target, r)


def test_trajectories_without_noise_events_are_pure() -> None:
    """With a noise so weak that no Pauli is drawn, a trajectory is the pure circuit (gates and ring right)."""
    theta = random_theta(2, 3, 4, seed=8)
    model = NoiseModel(one_qubit_depolarizing=1e-300, two_qubit_depolarizing=1e-300, exact_max_qubits=2,
                       trajectories=3)
    torch.manual_seed(0)
    torch.testing.assert_close(noisy_probabilities(theta, model), pure_probabilities(theta), rtol=0, atol=1e-12)


# -- gradients ---------------------------------------------------------------------------------------------------

def test_density_matrix_gradcheck() -> None:
    theta = random_theta(2, 2, 2, seed=31).requires_grad_()
    noise = NoiseModel(one_qubit_depolarizing=0.05, two_qubit_depolarizing=0.1)
    assert torch.autograd.gradcheck(lambda t: noisy_probabilities(t, noise), (theta,))
    no_ring = random_theta(2, 2, 3, seed=32).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: noisy_probabilities(t, noise, entangle=False), (no_ring,))
    assert torch.autograd.gradcheck(lambda t: torch.view_as_real(pure_amplitudes(t, entangle=False)), (no_ring,))


def test_trajectory_gradcheck() -> None:
    theta = random_theta(1, 2, 3, seed=33).requires_grad_()
    model = NoiseModel(one_qubit_depolarizing=0.1, two_qubit_depolarizing=0.2, exact_max_qubits=2, trajectories=16)

    def sampled(t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(3)  # the same trajectories at every evaluation
        return noisy_probabilities(t, model)

    assert torch.autograd.gradcheck(sampled, (theta,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    theta = random_theta(4, 2, 4, seed=41)
    noise = NoiseModel(one_qubit_depolarizing=0.02, two_qubit_depolarizing=0.05, readout_error=(0.03, 0.05))
    cpu = apply_readout_error(noisy_probabilities(theta, noise), 4, noise)
    gpu = apply_readout_error(noisy_probabilities(theta.cuda(), noise), 4, noise)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-12)
    sampled = NoiseModel(one_qubit_depolarizing=0.02, two_qubit_depolarizing=0.05, exact_max_qubits=2,
                         trajectories=64)
    assert noisy_probabilities(theta.cuda().float(), sampled).device.type == "cuda"
    torch.testing.assert_close(pure_probabilities(theta.cuda(), False).cpu(), pure_probabilities(theta, False))
