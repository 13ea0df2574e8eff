"""Wire cutting of the data-path circuits (SPEC section 8) against the dense uncut circuit: values, plans, refusals
and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_qpg.simulator.wire_cutting import FragmentPlan, check_cuttable, cut_expectations, plan_fragments

from dense_circuit import PAULI, dense_cnot, dense_data_path_expectations


def random_circuits(n: int, num_inputs: int, num_circuits: int, seed: int,
                    dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    angles = (torch.rand(num_inputs, num_circuits, n, generator=generator, dtype=torch.float64) * 2 - 1) * np.pi
    weights = (torch.rand(num_circuits, 1, 2, n, generator=generator, dtype=torch.float64) * 2 - 1) * np.pi
    return angles.to(dtype), weights.to(dtype)


def dense_expectations(angles: torch.Tensor, weights: torch.Tensor, readout: str) -> np.ndarray:
    return np.stack([np.stack([dense_data_path_expectations(angles[i, c].numpy(), weights[c].numpy(), "angle",
                                                            "chain", readout)
                               for c in range(angles.shape[1])]) for i in range(angles.shape[0])])


@pytest.mark.parametrize("n", [5, 6, 7, 8])
@pytest.mark.parametrize("readout", ["Y", "Z"])
def test_cut_equals_the_dense_uncut_circuit(n: int, readout: str) -> None:
    angles, weights = random_circuits(n, 3, 2, seed=n)
    expected = dense_expectations(angles, weights, readout)
    for m in range(n - 3, n):
        result = cut_expectations(angles, weights, readout, m)
        assert result.shape == (3, 2, n) and result.dtype == torch.float64
        np.testing.assert_allclose(result.numpy(), expected, atol=1e-10, rtol=0, err_msg=f"m={m}")


@pytest.mark.parametrize("m", [2, 3])
def test_many_small_fragments_equal_the_dense_circuit(m: int) -> None:
    # Several middle fragments: the c vector of each cut wire propagates through the chain of fragments.
    angles, weights = random_circuits(6, 2, 2, seed=10 + m)
    for readout in ("Y", "Z"):
        np.testing.assert_allclose(cut_expectations(angles, weights, readout, m).numpy(),
                                   dense_expectations(angles, weights, readout), atol=1e-10, rtol=0)


def test_no_cut_when_the_fragment_holds_every_qubit() -> None:
    angles, weights = random_circuits(5, 3, 2, seed=1)
    expected = dense_expectations(angles, weights, "Y")
    for m in (5, 9):
        plan = plan_fragments(5, m)
        assert plan.fragments == ((0, 1, 2, 3, 4),) and plan.cuts == 0 and plan.executions_per_circuit == 1
        assert "no cut" in plan.describe()
        np.testing.assert_allclose(cut_expectations(angles, weights, "Y", m).numpy(), expected, atol=1e-10, rtol=0)


def test_fragment_plans() -> None:
    plan = plan_fragments(8, 5)
    assert plan == FragmentPlan(8, 5, ((0, 1, 2, 3, 4), (4, 5, 6, 7)))
    assert plan.sizes == (5, 4) and plan.cuts == 1 and plan.executions_per_circuit == 9
    assert plan.describe() == "8 qubits as fragments of 5 + 4 qubits (1 cut wire), 9 fragment executions per input"
    plan = plan_fragments(5, 2)
    assert plan.fragments == ((0, 1), (1, 2), (2, 3), (3, 4))
    assert plan.sizes == (2, 2, 2, 2) and plan.cuts == 3 and plan.executions_per_circuit == 3 + 18 + 18 + 6
    assert plan_fragments(7, 3).fragments == ((0, 1, 2), (2, 3, 4), (4, 5, 6))
    with pytest.raises(ValueError, match="cut wire and at least one new qubit"):
        plan_fragments(5, 1)


def test_uncovered_circuits_are_refused_with_the_reason() -> None:
    check_cuttable("angle", "chain", 1)
    with pytest.raises(ValueError, match="entangled.*product state"):
        check_cuttable("amplitude", "chain", 1)
    with pytest.raises(ValueError, match="ring.*closes the loop"):
        check_cuttable("angle", "ring", 1)
    with pytest.raises(ValueError, match="depth 2.*across the cut"):
        check_cuttable("angle", "chain", 2)
    with pytest.raises(ValueError, match="max_fragment_qubits=None"):
        check_cuttable("angle", "ring", 1)
    angles, _ = random_circuits(4, 1, 1, seed=2)
    with pytest.raises(ValueError, match="depth 2"):
        cut_expectations(angles, torch.zeros(1, 2, 2, 4, dtype=torch.float64), "Z", 2)
    with pytest.raises(ValueError, match="do not match"):
        cut_expectations(angles, torch.zeros(1, 1, 2, 3, dtype=torch.float64), "Z", 2)
    with pytest.raises(ValueError, match="readout"):
        cut_expectations(angles, torch.zeros(1, 1, 2, 4, dtype=torch.float64), "X", 2)


def test_gradcheck() -> None:
    angles, weights = random_circuits(4, 2, 1, seed=3)
    angles.requires_grad_(True)
    weights.requires_grad_(True)
    for readout in ("Y", "Z"):
        assert torch.autograd.gradcheck(lambda a, w: cut_expectations(a, w, readout, 2), (angles, weights))


def _torch_matrix_ry(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle / 2), torch.sin(angle / 2)
    return torch.stack((torch.stack((c, -s)), torch.stack((s, c)))).to(torch.complex128)


def _torch_matrix_rz(angle: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(angle)
    phase = torch.polar(torch.ones_like(angle), angle / 2)
    return torch.stack((torch.stack((phase.conj(), zero.to(phase.dtype))),
                        torch.stack((zero.to(phase.dtype), phase))))


def _torch_kron_all(matrices: list[torch.Tensor]) -> torch.Tensor:
    out = torch.ones(1, 1, dtype=torch.complex128)
    for matrix in matrices:
        out = torch.kron(out, matrix)
    return out


def dense_torch_expectations(angles: torch.Tensor, weights: torch.Tensor, readout: str) -> torch.Tensor:
    """The uncut circuit with dense 2^n x 2^n torch gates (differentiable), for one input of one circuit."""
    n = angles.shape[0]
    hadamard = torch.tensor([[1, 1], [1, -1]], dtype=torch.complex128) / np.sqrt(2)
    state = torch.zeros(2**n, dtype=torch.complex128)
    state[0] = 1
    state = _torch_kron_all([hadamard] * n) @ state
    state = _torch_kron_all([_torch_matrix_ry(a) for a in angles]) @ state
    state = _torch_kron_all([_torch_matrix_rz(a) for a in weights[0, 0]]) @ state
    state = _torch_kron_all([_torch_matrix_ry(a) for a in weights[0, 1]]) @ state
    for q in range(n - 1):
        state = torch.from_numpy(dense_cnot(n, q, q + 1)) @ state
    eye, pauli = torch.eye(2, dtype=torch.complex128), torch.from_numpy(PAULI[readout])
    return torch.stack([(state.conj() @ _torch_kron_all([pauli if p == q else eye for p in range(n)]) @ state).real
                        for q in range(n)])


def test_gradient_equals_the_uncut_gradient() -> None:
    n = 4
    angles, weights = random_circuits(n, 2, 1, seed=4)
    probe = torch.randn(2, 1, n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for readout, m in (("Y", 2), ("Z", 3)):
        a_cut, w_cut = angles.clone().requires_grad_(True), weights.clone().requires_grad_(True)
        (cut_expectations(a_cut, w_cut, readout, m) * probe).sum().backward()
        a_ref, w_ref = angles.clone().requires_grad_(True), weights.clone().requires_grad_(True)
        uncut = torch.stack([dense_torch_expectations(a_ref[i, 0], w_ref[0], readout) for i in range(2)])
        np.testing.assert_allclose(uncut.detach().numpy(), dense_expectations(angles, weights, readout)[:, 0],
                                   atol=1e-12)
        (uncut.unsqueeze(1) * probe).sum().backward()
        np.testing.assert_allclose(a_cut.grad.numpy(), a_ref.grad.numpy(), atol=1e-10, rtol=0)
        np.testing.assert_allclose(w_cut.grad.numpy(), w_ref.grad.numpy(), atol=1e-10, rtol=0)


def test_float32_gives_float32_close_to_float64() -> None:
    angles, weights = random_circuits(6, 3, 2, seed=6)
    for readout in ("Y", "Z"):
        result32 = cut_expectations(angles.float(), weights.float(), readout, 4)
        assert result32.dtype == torch.float32
        np.testing.assert_allclose(result32.double().numpy(),
                                   cut_expectations(angles, weights, readout, 4).numpy(), atol=1e-5, rtol=0)
