"""The K >= 2 simulation path of :mod:`nnunet_qpg.simulator.statevector` (custom autograd function).

Against the gate-by-gate reference (``reference_states``, complex128): states and every readout in float64 to
1e-10 and float32 to ~1e-5, for n = 1..10 and K = 2, 3, 4, with and without a ``num_outputs`` cut; gradients by
``gradcheck`` and against autograd through the reference; the number of kernel-launching ops of one call,
forward + backward (the issue's counting rule, ``benchmarks/bench_launches.py``); inference mode, no_grad,
autocast, several pending graphs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from nnunet_qpg.simulator.reference import reference_states
from nnunet_qpg.simulator.statevector import READOUTS, _group_qubits, simulate_vqcs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_launches  # noqa: E402

QUBITS = range(1, 11)


def _readout(states: torch.Tensor, readout: str) -> torch.Tensor:
    return {"amplitudes": states, "real": states.real, "probabilities": states.abs().square()}[readout]


def _theta(batch: int, blocks: int, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, blocks, 2, n, generator=generator, dtype=torch.float64) * 6.3).to(dtype)


@pytest.mark.parametrize("blocks", [2, 3, 4])
def test_every_readout_matches_the_reference_in_float64(blocks: int) -> None:
    for n in QUBITS:
        theta = _theta(3, blocks, n, seed=10 * n + blocks)
        expected = reference_states(theta)
        for cut in sorted({None, max(1, (1 << n) - 3), 1}, key=lambda c: -1 if c is None else c):
            reference = expected if cut is None else expected[:, :cut]
            for readout in READOUTS:
                got = simulate_vqcs(theta, cut, readout)
                want = _readout(reference, readout)
                assert got.shape == want.shape and got.dtype == want.dtype, (n, blocks, cut, readout)
                assert (got - want).abs().max().item() < 1e-10, (n, blocks, cut, readout)


def test_float32_gives_complex64_to_about_1e_5() -> None:
    for n in QUBITS:
        for blocks in (2, 3):
            theta = _theta(4, blocks, n, seed=n)
            expected = reference_states(theta)
            states = simulate_vqcs(theta.float())
            assert states.dtype == torch.complex64
            assert (states.to(torch.complex128) - expected).abs().max().item() < 2e-5, (n, blocks)
            probabilities = simulate_vqcs(theta.float(), None, "probabilities")
            assert probabilities.dtype == torch.float32
            assert (probabilities.double() - expected.abs().square()).abs().max().item() < 2e-5


def test_gradients_equal_autograd_through_the_reference() -> None:
    for n in QUBITS:
        for blocks in (2, 3):
            theta = _theta(3, blocks, n, seed=100 + n).requires_grad_()
            states = reference_states(theta)
            for cut in (None, max(1, (1 << n) // 2 + 1)):
                m = (1 << n) if cut is None else cut
                for readout in READOUTS:
                    generator = torch.Generator().manual_seed(n * 7 + blocks)
                    weights = torch.randn(3, m, 2, generator=generator, dtype=torch.float64)
                    weights = torch.view_as_complex(weights) if readout == "amplitudes" else weights[..., 0]
                    functional = (lambda out: (out * weights.conj()).real.sum() if out.is_complex()
                                  else (out * weights).sum())
                    got, = torch.autograd.grad(functional(simulate_vqcs(theta, cut, readout)), theta)
                    want, = torch.autograd.grad(functional(_readout(states[:, :m], readout)), theta,
                                                retain_graph=True)
                    assert (got - want).abs().max().item() < 1e-8, (n, blocks, cut, readout)


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("blocks", [2, 3])
def test_gradcheck(readout: str, blocks: int) -> None:
    # One register per group count: n = 3 (one group), 5 (two), 7 (three).
    for n, cut in ((3, None), (5, 19), (7, 40)):
        theta = _theta(2, blocks, n, seed=n + blocks).requires_grad_()

        def call(t: torch.Tensor, n=n, cut=cut) -> torch.Tensor:
            out = simulate_vqcs(t, cut, readout)
            return torch.view_as_real(out) if out.is_complex() else out

        assert torch.autograd.gradcheck(call, (theta,), eps=1e-6, atol=1e-7), (n, readout, blocks)


def _leaf_ops(n: int, blocks: int, readout: str, cut: int | None, batch: int = 5) -> int:
    theta = torch.rand(batch, blocks, 2, n, requires_grad=True)
    m = (1 << n) if cut is None else cut
    grad = torch.ones(batch, m, dtype=torch.complex64 if readout == "amplitudes" else torch.float32)

    def step() -> None:
        theta.grad = None
        simulate_vqcs(theta, cut, readout).backward(grad)

    step()  # tables and plans are built once; count a steady-state call
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return sum(bench_launches.leaf_op_counts(prof.events()).values())


# Forward + backward of one K = 3 call. 44 for the "real" and "amplitudes" readouts (n >= 7, three groups);
# "probabilities" adds three: |psi|^2 = re^2 + im^2 forward (two elementwise ops) and the multiply by conj(psi)
# that starts the backward.
K3_BUDGET = {"real": 45, "amplitudes": 45, "probabilities": 47}
PER_BLOCK_BUDGET = 15


@pytest.mark.parametrize("readout", READOUTS)
def test_kernel_launch_budget(readout: str) -> None:
    for n in (3, 6, 10):  # one, two and three qubit groups
        cut = (1 << n) - 5
        k3 = _leaf_ops(n, 3, readout, cut)
        assert k3 <= K3_BUDGET[readout], (n, readout, k3)
        assert _leaf_ops(n, 3, readout, cut) == k3  # deterministic
        k4 = _leaf_ops(n, 4, readout, cut)
        assert k4 - k3 <= PER_BLOCK_BUDGET, (n, readout, k3, k4)
    # The count does not depend on the batch or on the cut.
    assert _leaf_ops(10, 3, readout, None, batch=2) <= K3_BUDGET[readout]


def test_groups_satisfy_the_ring_split() -> None:
    """W = {1..j} is untouched by R2 = CNOT(q, q+1) for q > j; Z lies in {j+2, ..., n-1}, untouched by R1; the
    groups cover every qubit once, and W is the largest (block 0's first-axis contraction needs no padding)."""
    for n in range(1, 13):
        j, groups = _group_qubits(n)
        flat = sorted(sum(groups, []))
        assert flat == list(range(n))
        assert len(groups[0]) == max(len(g) for g in groups)
        if len(groups) >= 2:
            assert set(groups[0]) <= set(range(1, j + 1))
            assert {0, j + 1} <= set(groups[1])
        if len(groups) == 3:
            assert set(groups[2]) <= set(range(j + 2, n))


def test_inference_mode_no_grad_and_autocast() -> None:
    theta = _theta(4, 3, 7, seed=3)
    expected = reference_states(theta).abs().square()
    with torch.inference_mode():
        out = simulate_vqcs(theta, 100, "probabilities")
    assert (out - expected[:, :100]).abs().max().item() < 1e-10
    # Tables and workspace buffers made under inference mode must not poison a later training call.
    trainable = theta.clone().requires_grad_()
    simulate_vqcs(trainable, 100, "real").sum().backward()
    assert trainable.grad is not None and torch.isfinite(trainable.grad).all()
    with torch.no_grad():
        out = simulate_vqcs(trainable, None, "amplitudes")
    assert not out.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = simulate_vqcs(theta.float(), None, "probabilities")
    assert out.dtype == torch.float32
    assert (out.double() - expected).abs().max().item() < 2e-5
    half = theta.half().requires_grad_()
    out = simulate_vqcs(half, None, "probabilities")
    assert out.dtype == torch.float32
    out.sum().backward()
    assert half.grad.dtype == torch.float16


def test_several_pending_graphs_and_retain_graph() -> None:
    theta = _theta(6, 3, 9, seed=5).requires_grad_()
    first = simulate_vqcs(theta, None, "probabilities")
    second = simulate_vqcs(theta * 1.5, None, "probabilities")
    both, = torch.autograd.grad(first.sum() + second.sum(), theta)
    one, = torch.autograd.grad(simulate_vqcs(theta, None, "probabilities").sum(), theta)
    two, = torch.autograd.grad(simulate_vqcs(theta * 1.5, None, "probabilities").sum(), theta)
    assert (both - one - two).abs().max().item() < 1e-10
    out = simulate_vqcs(theta, 77, "real")
    g1, = torch.autograd.grad(out.sum(), theta, retain_graph=True)
    g2, = torch.autograd.grad(out.sum(), theta)
    assert torch.equal(g1, g2)


def test_strided_and_empty_batches() -> None:
    base = _theta(8, 2, 6, seed=9).requires_grad_()
    out = simulate_vqcs(base[::2], None, "probabilities")
    assert (out - reference_states(base[::2].detach()).abs().square()).abs().max().item() < 1e-10
    out.sum().backward()
    assert base.grad[1::2].abs().sum() == 0 and base.grad[::2].abs().sum() > 0
    empty = torch.zeros(0, 3, 2, 5, requires_grad=True)
    out = simulate_vqcs(empty, 7, "probabilities")
    assert out.shape == (0, 7)
    out.sum().backward()
    assert empty.grad.shape == empty.shape
