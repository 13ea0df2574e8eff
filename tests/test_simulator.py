"""The batched simulator against an independent dense-matrix simulation of Eq. 1, and against TorchQuantum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_qpg.simulator import cnot_ring_permutation, num_qubits_for, simulate_vqcs
from nnunet_qpg.simulator import simulate, torchquantum_available

from dense_circuit import dense_cnot, dense_final_state


@pytest.mark.parametrize("num_qubits", [1, 2, 3, 6])
@pytest.mark.parametrize("blocks", [1, 3])
def test_states_match_dense_simulation(num_qubits: int, blocks: int) -> None:
    generator = torch.Generator().manual_seed(num_qubits * 10 + blocks)
    theta = torch.rand(7, blocks, 2, num_qubits, generator=generator, dtype=torch.float64) * 2 * np.pi
    expected = np.stack([dense_final_state(t.numpy()) for t in theta])
    for dtype in (torch.float64, torch.float32):
        states = simulate_vqcs(theta.to(dtype))
        assert states.dtype == (torch.complex128 if dtype == torch.float64 else torch.complex64)
        np.testing.assert_allclose(states.numpy(), expected, atol=1e-5, rtol=0)
    # The state is normalised and a prefix request returns exactly the prefix.
    states = simulate_vqcs(theta)
    np.testing.assert_allclose(states.abs().square().sum(-1).numpy(), 1.0, atol=1e-12)
    cut = max(1, 2**num_qubits - 1)
    np.testing.assert_allclose(simulate_vqcs(theta, num_outputs=cut).numpy(), expected[:, :cut], atol=1e-12)


def test_cnot_ring_is_the_product_of_cnot_matrices() -> None:
    n = 4
    ring = np.eye(2**n)
    for q in range(n):
        ring = dense_cnot(n, q, (q + 1) % n) @ ring
    perm = cnot_ring_permutation(n).numpy()
    state = np.random.default_rng(0).normal(size=2**n)
    np.testing.assert_array_equal(ring @ state, state[perm])


def test_two_qubit_ring_is_cnot01_then_cnot10() -> None:
    # SPEC: n = 2 applies CNOT(0,1) then CNOT(1,0): |10> -> |11> -> |01>.
    perm = cnot_ring_permutation(2)
    state = torch.zeros(4)
    state[0b10] = 1.0
    assert state[perm].argmax().item() == 0b01


def test_gradients_flow_through_every_angle() -> None:
    theta = torch.rand(3, 2, 2, 4, dtype=torch.float64, requires_grad=True)
    states = simulate_vqcs(theta, num_outputs=11)
    states.real.sum().backward()
    assert theta.grad is not None and torch.all(theta.grad.abs().sum(dim=0) > 0)


@pytest.mark.parametrize("blocks", [1, 2])
def test_gradcheck_of_the_simulator(blocks: int) -> None:
    theta = torch.rand(2, blocks, 2, 3, dtype=torch.float64, requires_grad=True)

    def real_view(t: torch.Tensor) -> torch.Tensor:
        return torch.view_as_real(simulate_vqcs(t, num_outputs=6))

    assert torch.autograd.gradcheck(real_view, (theta,))


@pytest.mark.parametrize(
    "channels,qubits", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (64, 6), (65, 7), (256, 8), (512, 9)]
)
def test_qubit_count(channels: int, qubits: int) -> None:
    assert num_qubits_for(channels) == qubits


def test_bad_theta_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[num_vqcs, blocks, 2, num_qubits\]"):
        simulate_vqcs(torch.rand(3, 2, 4))
    with pytest.raises(ValueError, match="num_outputs"):
        simulate_vqcs(torch.rand(3, 1, 2, 2), num_outputs=5)
    with pytest.raises(ValueError, match="unknown simulation backend 'qiskit'"):
        simulate(torch.rand(3, 1, 2, 2), backend="qiskit")


@pytest.mark.skipif(not torchquantum_available(),
                    reason="TorchQuantum is not installed (pip install --no-deps torchquantum==0.1.8, see README)")
@pytest.mark.parametrize("num_qubits", [1, 2, 3, 6, 9])
@pytest.mark.parametrize("blocks", [1, 3])
def test_torchquantum_backend_agrees(num_qubits: int, blocks: int) -> None:
    theta = torch.rand(5, blocks, 2, num_qubits, generator=torch.Generator().manual_seed(blocks))
    ours = simulate(theta, backend="native")
    theirs = simulate(theta, backend="torchquantum")
    assert theirs.shape == ours.shape == (5, 2**num_qubits)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_tables_first_built_under_inference_mode_still_serve_training():
    """nnU-Net's predictor runs under torch.inference_mode: the simulator's cached index tables must not become
    inference tensors there, or a later training step in the same process (a notebook: predict, then fine-tune)
    fails with 'Inference tensors cannot be saved for backward'. A fresh process, so the caches start empty."""
    import subprocess
    import sys

    script = """
import torch
from nnunet_qpg.layers import QPGConv, QPGAConv
for make in (QPGConv.from_conv, QPGAConv.from_conv):
    for c_out in (5, 40, 300):
        layer = make(torch.nn.Conv2d(3, c_out, 3), post="lpp", blocks=1)
        layer.eval()
        with torch.inference_mode():
            layer(torch.randn(1, 3, 8, 8))
        layer.train()
        layer(torch.randn(1, 3, 8, 8)).sum().backward()
        assert layer.theta.grad is not None and torch.isfinite(layer.theta.grad).all()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
