"""The gate-by-gate reference circuit (``simulator.reference``) is the truth; everything fast must agree with it.

1. The reference itself against two independent constructions of Eq. 1: dense 2^n x 2^n matrices built with
   numpy, and Qiskit's ``Statevector`` of the same circuit (when Qiskit is installed).
2. Every fast simulation path (batched states, backends, the one-block outer products, ``generate_kernel`` in
   every weight layout and post-processing) against the reference, in float64.
3. QPGConv / QPGAConv: their generated weight and their forward against the reference kernel.
4. Gradients: gradcheck of ``generate_kernel``, and the layers' gradients against autograd through the reference.

The expected kernels here are built from the paper's equations with explicit loops (readout, Eqs. 3-5, then the
placement of Eq. 8 / SPEC section 3), never with the library's own layout helpers, so a shared mistake cannot
hide.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_qpg.layers import QPGAConv, QPGConv
from nnunet_qpg.postprocessing import make_post_processing
from nnunet_qpg.simulator import (KernelLayout, generate_kernel, half_register_factors, reference_states,
                                  ring_outer_product, simulate, simulate_vqcs, to_ring_source_order)

from dense_circuit import HADAMARD, dense_cnot, dense_final_state, dense_rx, dense_ry, kron_all

POSTS = ("rce", "lpp", "sst")
FAST_ATOL = 1e-6  # fast paths against the reference, float64
GRAD_ATOL = 1e-8  # gradients of the layers against autograd through the reference


def random_theta(num_vqcs: int, blocks: int, num_qubits: int, seed: int) -> torch.Tensor:
    """Angles spread over a full turn (not just [0, 1)), so every sign of every sine and cosine is exercised."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(num_vqcs, blocks, 2, num_qubits, generator=generator, dtype=torch.float64) - 0.5) * 4 * math.pi


# -- 1. an independent dense construction of Eq. 1 (tests/dense_circuit.py) ------------------------------


@pytest.mark.parametrize("num_qubits", [1, 2, 3, 5])
@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_reference_matches_dense_matrices(num_qubits: int, blocks: int) -> None:
    theta = random_theta(4, blocks, num_qubits, seed=10 * num_qubits + blocks)
    states = reference_states(theta)
    assert states.dtype == torch.complex128 and states.shape == (4, 2**num_qubits)
    expected = np.stack([dense_final_state(t) for t in theta.numpy()])
    np.testing.assert_allclose(states.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-12)


def test_two_qubit_ring_is_cnot01_then_cnot10() -> None:
    """SPEC section 1 spells n = 2 out: CNOT(0, 1) then CNOT(1, 0), not one CNOT and not the reverse order."""
    ring = dense_cnot(2, 1, 0) @ dense_cnot(2, 0, 1)
    # |10> -> CNOT(0,1) -> |11> -> CNOT(1,0) -> |01>: index 2 goes to index 1.
    assert ring[1, 2] == 1
    theta = random_theta(3, 1, 2, seed=3)
    before_ring = np.stack([kron_all([dense_rx(b) for b in t[0, 1]]) @ kron_all([dense_ry(a) for a in t[0, 0]])
                            @ kron_all([HADAMARD] * 2) @ np.eye(4)[:, 0] for t in theta.numpy()])
    np.testing.assert_allclose(reference_states(theta).numpy(), before_ring @ ring.T, atol=1e-12)


def qiskit_statevector_in_our_order(theta_one_vqc: np.ndarray) -> np.ndarray:
    """The same circuit built with Qiskit gates, its state vector re-indexed to our basis convention.

    Our qubit q is Qiskit's qubit q (``q[q]`` in the OpenQASM export, SPEC section 7). Qiskit is little-endian:
    its basis index j carries qubit q in bit q (qubit 0 least significant), while ours carries qubit q in bit
    n-1-q (qubit 0 most significant). So our index i is Qiskit's index with its n bits reversed:
    ``ours[i] = qiskit[reverse_bits(i)]`` (n = 3: our i = 1 = 0b001 is Qiskit's 0b100 = 4).
    """
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import Statevector

    blocks, _, n = theta_one_vqc.shape
    circuit = QuantumCircuit(n)
    for q in range(n):
        circuit.h(q)
    for k in range(blocks):
        for q in range(n):
            circuit.ry(float(theta_one_vqc[k, 0, q]), q)
        for q in range(n):
            circuit.rx(float(theta_one_vqc[k, 1, q]), q)
        if n > 1:
            for q in range(n):
                circuit.cx(q, (q + 1) % n)
    qiskit_state = np.asarray(Statevector(circuit).data)
    reverse_bits = [int(format(i, f"0{n}b")[::-1], 2) for i in range(2**n)]
    return qiskit_state[reverse_bits]


@pytest.mark.parametrize("num_qubits", [1, 2, 3, 5])
@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_reference_matches_qiskit(num_qubits: int, blocks: int) -> None:
    pytest.importorskip("qiskit")
    theta = random_theta(2, blocks, num_qubits, seed=100 + 10 * num_qubits + blocks)
    states = reference_states(theta).numpy()
    for b in range(theta.shape[0]):
        # H, RY, RX and CX carry no global phase in Qiskit either, so the states agree exactly, phase included.
        np.testing.assert_allclose(states[b], qiskit_statevector_in_our_order(theta[b].numpy()), atol=1e-12)


# -- readouts and post-processing written from Eqs. 3-5 ---------------------------------------------------------

def reference_readout(states: torch.Tensor, readout: str) -> torch.Tensor:
    if readout == "amplitudes":
        return states
    if readout == "real":
        return states.real
    if readout == "probabilities":
        return states.real**2 + states.imag**2  # |psi|^2 without abs(), whose gradient is undefined at 0
    raise AssertionError(readout)


def reference_post(name: str, post: nn.Module, states: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """Eqs. 3-5 on the first ``num_outputs`` basis states of every VQC: ``[num_vqcs, num_outputs]``.

    LPP's w and b are read from ``post`` (they are trainable), its bits are built here: d_k is bit k of the basis
    index i, d_0 the least significant (Eq. 4).
    """
    states = states[:, :num_outputs]
    if name == "rce":  # Eq. 3
        return reference_readout(states, "real")
    p = reference_readout(states, "probabilities")
    if name == "sst":  # Eq. 5
        return (math.pi / 2) * (p - 0.5)
    assert name == "lpp"  # Eq. 4
    n = post.num_qubits
    w = post.projection.weight[0]
    y = w[0] * p + post.projection.bias[0]
    for i in range(num_outputs):
        bits_term = sum(w[1 + k] * ((i >> k) & 1) for k in range(n))
        y[:, i] = y[:, i] + bits_term
    return y


def build_post(name: str, num_qubits: int, num_outputs: int, seed: int) -> nn.Module:
    """The library's strategy in float64; LPP's projection gets non-trivial random weights."""
    torch.manual_seed(seed)
    post = make_post_processing(name, num_qubits, num_outputs).to(torch.float64)
    if name == "lpp":
        with torch.no_grad():
            post.projection.weight.uniform_(-2, 2)
            post.projection.bias.uniform_(-1, 1)
    return post


# -- the placement of Eq. 8 (SPEC section 3), written out ----------------------------------------------------

def channel_sizes(weight_shape: tuple[int, ...], transposed: bool) -> tuple[int, int]:
    """(C_in, C_out) as the weight holds them: ``[C_out, C_in/g, *k]``, or ``[C_in, C_out/g, *k]`` transposed."""
    return (weight_shape[0], weight_shape[1]) if transposed else (weight_shape[1], weight_shape[0])


def placement(weight_shape: tuple[int, ...], transposed: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For every weight entry: which VQC row and which of its outputs fills it; and C_other.

    Targets (Eq. 8): the input channels if C_in <= C_out, else the output channels. The VQC of target channel t
    at kernel position (k_1, k_2, ...) is row ``row-major index of (t, k_1, k_2, ...)``, and its output c goes to
    the other channel c.
    """
    c_in, c_out = channel_sizes(weight_shape, transposed)
    targets_are_inputs = c_in <= c_out
    kernel = weight_shape[2:]
    c_other = c_out if targets_are_inputs else c_in
    row = np.zeros(weight_shape, dtype=np.int64)
    output = np.zeros(weight_shape, dtype=np.int64)
    for index in np.ndindex(*weight_shape):
        first, second, position = index[0], index[1], index[2:]
        in_channel, out_channel = (first, second) if transposed else (second, first)
        target, other = (in_channel, out_channel) if targets_are_inputs else (out_channel, in_channel)
        row[index] = row_major(target, position, kernel)
        output[index] = other
    return torch.from_numpy(row), torch.from_numpy(output), c_other


def row_major(target: int, position: tuple[int, ...], kernel: tuple[int, ...]) -> int:
    """The row of (target, k_1, k_2, ...) in row-major order over (target channel, kernel position)."""
    row = target
    for k, size in zip(position, kernel):
        row = row * size + k
    return row


def reference_kernel(theta: torch.Tensor, weight_shape: tuple[int, ...], transposed: bool, post_name: str,
                     post: nn.Module) -> torch.Tensor:
    """The generated tensor from the reference circuit, Eqs. 3-5 and the placement above."""
    row, output, c_other = placement(weight_shape, transposed)
    values = reference_post(post_name, post, reference_states(theta), c_other)  # [num_vqcs, C_other]
    return values[row, output]


def qubits_for(channels: int) -> int:
    """n = max(1, ceil(log2 C_other)), computed with floats on purpose (independent of the library's bit trick)."""
    return max(1, math.ceil(math.log2(channels))) if channels > 1 else 1


# -- 2. fast paths against the reference ----------------------------------------------------------------------

def output_cuts(num_qubits: int) -> list[int | None]:
    dim = 2**num_qubits
    return sorted({1, dim // 2 + 1, dim - 1, dim} - {0}) + [None]


@pytest.mark.parametrize("num_qubits", range(1, 11))
@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_simulate_vqcs_matches_reference(num_qubits: int, blocks: int) -> None:
    num_vqcs = 5 if num_qubits <= 6 else 2
    theta = random_theta(num_vqcs, blocks, num_qubits, seed=1000 + 10 * num_qubits + blocks)
    states = reference_states(theta)
    for readout in ("amplitudes", "real", "probabilities"):
        expected_all = reference_readout(states, readout)
        for cut in output_cuts(num_qubits):
            expected = expected_all if cut is None else expected_all[:, :cut]
            got = simulate_vqcs(theta, cut, readout)
            assert got.shape == expected.shape, (readout, cut)
            assert got.dtype == (torch.complex128 if readout == "amplitudes" else torch.float64)
            torch.testing.assert_close(got, expected, atol=FAST_ATOL, rtol=0, msg=f"{readout}, cut {cut}")
            torch.testing.assert_close(simulate(theta, cut, backend="native", readout=readout), expected,
                                       atol=FAST_ATOL, rtol=0, msg=f"native backend, {readout}, cut {cut}")
        # The reference backend is the reference itself, cut and read out: one check per readout is enough.
        cut = 2**num_qubits // 2 + 1
        torch.testing.assert_close(simulate(theta, cut, backend="reference", readout=readout),
                                   expected_all[:, :cut], atol=FAST_ATOL, rtol=0)


@pytest.mark.parametrize("num_qubits", range(2, 11))
def test_one_block_outer_products_rebuild_the_readout(num_qubits: int) -> None:
    """half_register_factors + ring_outer_product: ``[M, num_vqcs]``, the readout transposed, plus any offset
    and any base given in source order."""
    num_vqcs = 6 if num_qubits <= 6 else 3
    theta = random_theta(num_vqcs, 1, num_qubits, seed=2000 + num_qubits)
    states = reference_states(theta)
    generator = torch.Generator().manual_seed(num_qubits)
    for readout in ("real", "probabilities"):
        x, y = half_register_factors(theta, readout)
        expected_all = reference_readout(states, readout).T  # [2^n, num_vqcs]
        for cut in output_cuts(num_qubits):
            m = 2**num_qubits if cut is None else cut
            torch.testing.assert_close(ring_outer_product(x, y, m), expected_all[:m], atol=FAST_ATOL, rtol=0)
            offset = torch.randn(m, generator=generator, dtype=torch.float64)
            base = torch.randn(m, num_vqcs, generator=generator, dtype=torch.float64)
            got = ring_outer_product(x, y, m, offset, to_ring_source_order(base, num_qubits))
            torch.testing.assert_close(got, expected_all[:m] + offset[:, None] + base, atol=FAST_ATOL, rtol=0)


# (weight shape, transposed): every kind of layout, targets on either side, C_other not a power of two.
LAYOUTS = [
    pytest.param((8, 4, 3, 3), False, id="conv2d-targets-input"),
    pytest.param((3, 16, 3, 3), False, id="conv2d-targets-output"),
    pytest.param((4, 4, 3, 3), False, id="conv2d-equal-channels"),
    pytest.param((5, 3, 3, 3), False, id="conv2d-c_other-5"),
    pytest.param((2, 32, 1, 1), False, id="head-1x1"),
    pytest.param((1, 1, 3, 3), False, id="one-qubit"),
    pytest.param((16, 8, 2, 2), True, id="convtranspose2d-targets-output"),
    pytest.param((8, 16, 2, 2), True, id="convtranspose2d-targets-input"),
    pytest.param((6, 5, 1, 3, 3), False, id="conv3d-anisotropic"),
    pytest.param((3, 20, 3), False, id="conv1d-c_other-20"),
]


def test_placement_reads_the_papers_scenarios() -> None:
    """The placement helper itself, on the paper's two scenarios (0-based here, 1-based in the paper)."""
    # Scenario 1: C_in 512 > C_out 32: W[in 4, out 2, 1, 1] = VQC_{out 2, (1, 1)}[in 4].
    row, output, c_other = placement((32, 512, 2, 2), False)
    assert c_other == 512 and int(row[2, 4, 1, 1]) == 2 * 4 + 1 * 2 + 1 and int(output[2, 4, 1, 1]) == 4
    # Scenario 2: C_in 64 <= C_out 256: W[in 1, out 2, 1, 1] = VQC_{in 1, (1, 1)}[out 2].
    row, output, c_other = placement((256, 64, 3, 3), False)
    assert c_other == 256 and int(row[2, 1, 1, 1]) == 1 * 9 + 1 * 3 + 1 and int(output[2, 1, 1, 1]) == 2
    assert qubits_for(512) == 9 and qubits_for(256) == 8 and qubits_for(5) == 3 and qubits_for(1) == 1


@pytest.mark.parametrize("weight_shape,transposed", LAYOUTS)
@pytest.mark.parametrize("post_name", POSTS)
@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_generate_kernel_matches_reference(weight_shape, transposed, post_name: str, blocks: int) -> None:
    layout = KernelLayout(weight_shape, transposed)
    _, _, c_other = placement(weight_shape, transposed)
    n = qubits_for(c_other)
    assert (layout.other_channels, layout.num_qubits) == (c_other, n)
    num_vqcs = math.prod(weight_shape) // c_other
    theta = random_theta(num_vqcs, blocks, n, seed=hash((weight_shape, transposed, blocks)) % 10_000)
    post = build_post(post_name, n, c_other, seed=blocks)
    got = generate_kernel(theta, layout, post)
    assert got.shape == weight_shape and got.dtype == torch.float64
    expected = reference_kernel(theta, weight_shape, transposed, post_name, post)
    torch.testing.assert_close(got, expected, atol=FAST_ATOL, rtol=0)
    torch.testing.assert_close(generate_kernel(theta, layout, post, backend="reference"), expected,
                               atol=FAST_ATOL, rtol=0)


# -- 3. layers against the reference --------------------------------------------------------------------------

def conv2d() -> nn.Module:
    return nn.Conv2d(5, 12, 3, padding=1, bias=True)  # targets: the 5 inputs; C_other 12, 4 qubits


def conv_transpose3d() -> nn.Module:
    # weight [6, 3, 1, 2, 2]: C_in 6 > C_out 3, so the 3 outputs are targets; C_other 6, 3 qubits.
    return nn.ConvTranspose3d(6, 3, (1, 2, 2), stride=(1, 2, 2), bias=True)


CONVS = [pytest.param(conv2d, id="conv2d"), pytest.param(conv_transpose3d, id="convtranspose3d")]


def layer_reference_kernel(layer: nn.Module, theta: torch.Tensor | None = None) -> torch.Tensor:
    theta = layer.theta if theta is None else theta
    return reference_kernel(theta, tuple(layer.weight_shape), layer.transposed, layer.post_name, layer.post)


def plain_conv(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The wrapped convolution's own forward with ``weight`` in place of its kernel."""
    if isinstance(conv, nn.Conv2d):
        return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return F.conv_transpose3d(x, weight, conv.bias, conv.stride, conv.padding, conv.output_padding, conv.groups,
                              conv.dilation)


def layer_input(conv: nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    size = (2, conv.in_channels, 6, 6) if isinstance(conv, nn.Conv2d) else (2, conv.in_channels, 2, 3, 3)
    return torch.randn(size, generator=generator, dtype=torch.float64)


def perturb(layer: nn.Module, seed: int) -> None:
    """Move the trainable state away from its initial value (an optimizer step would)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.theta.add_(torch.randn(layer.theta.shape, generator=generator, dtype=torch.float64))
        if layer.post_name == "lpp":
            layer.post.projection.weight.add_(torch.randn(layer.post.projection.weight.shape, generator=generator,
                                                          dtype=torch.float64))


def check_layer(layer: nn.Module, conv: nn.Module, expected: torch.Tensor) -> None:
    assert layer.generate_weight().dtype == torch.float64
    torch.testing.assert_close(layer.generate_weight(), expected, atol=FAST_ATOL, rtol=0)
    x = layer_input(conv)
    torch.testing.assert_close(layer(x), plain_conv(conv, x, expected), atol=FAST_ATOL, rtol=0)
    layer.eval()
    with torch.no_grad():  # the eval-mode cache serves the same kernel
        torch.testing.assert_close(layer(x), plain_conv(conv, x, expected), atol=FAST_ATOL, rtol=0)
        torch.testing.assert_close(layer.to_conv()(x), plain_conv(conv, x, expected), atol=FAST_ATOL, rtol=0)
    layer.train()


@pytest.mark.parametrize("make_conv", CONVS)
@pytest.mark.parametrize("post_name", POSTS)
@pytest.mark.parametrize("blocks", [1, 3])
def test_qpgconv_matches_reference(make_conv, post_name: str, blocks: int) -> None:
    torch.manual_seed(blocks)
    conv = make_conv().double()
    layer = QPGConv.from_conv(conv, post=post_name, blocks=blocks)
    perturb(layer, seed=1)
    check_layer(layer, conv, layer_reference_kernel(layer))


@pytest.mark.parametrize("make_conv", CONVS)
@pytest.mark.parametrize("post_name", POSTS)
@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("start_at_base", [False, True])
def test_qpgaconv_matches_reference(make_conv, post_name: str, blocks: int, start_at_base: bool) -> None:
    torch.manual_seed(blocks)
    conv = make_conv().double()
    with torch.no_grad():
        conv.weight.normal_()  # a base kernel of the same scale as the increment, so both matter
    layer = QPGAConv.from_conv(conv, post=post_name, blocks=blocks, start_at_base=start_at_base)
    with torch.no_grad():
        initial_kernel = layer_reference_kernel(layer)
    if start_at_base:
        torch.testing.assert_close(layer.initial_increment, initial_kernel, atol=FAST_ATOL, rtol=0)
        torch.testing.assert_close(layer.generate_weight(), conv.weight, atol=FAST_ATOL, rtol=0)
    perturb(layer, seed=2)
    with torch.no_grad():
        expected = conv.weight + layer_reference_kernel(layer)
        if start_at_base:
            expected = expected - initial_kernel
    check_layer(layer, conv, expected)


# -- 4. gradients ---------------------------------------------------------------------------------------------

class KernelOf(nn.Module):
    """generate_kernel as a module, so functional_call can hand gradcheck LPP's projection as inputs."""

    def __init__(self, layout: KernelLayout, post: nn.Module) -> None:
        super().__init__()
        self.layout = layout
        self.post = post

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return generate_kernel(theta, self.layout, self.post)


# Small layouts: one-qubit, targets on either side, C_other not a power of two.
GRAD_LAYOUTS = [
    pytest.param((2, 5, 1), False, id="conv1d-c_other-5"),
    pytest.param((3, 2, 1, 2), False, id="conv2d-targets-input"),
    pytest.param((2, 4, 2, 1), True, id="convtranspose2d-targets-input"),
    pytest.param((2, 1, 2), False, id="one-qubit"),
]


@pytest.mark.parametrize("weight_shape,transposed", GRAD_LAYOUTS)
@pytest.mark.parametrize("post_name", POSTS)
@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_gradcheck_generate_kernel(weight_shape, transposed, post_name: str, blocks: int) -> None:
    layout = KernelLayout(weight_shape, transposed)
    theta = random_theta(layout.num_vqcs, blocks, layout.num_qubits, seed=3000 + blocks).requires_grad_()
    post = build_post(post_name, layout.num_qubits, layout.other_channels, seed=blocks)
    module = KernelOf(layout, post)
    if post_name != "lpp":
        assert torch.autograd.gradcheck(module, (theta,))
        return
    weight = post.projection.weight.detach().clone().requires_grad_()
    bias = post.projection.bias.detach().clone().requires_grad_()

    def kernel(theta, weight, bias):
        return torch.func.functional_call(module, {"post.projection.weight": weight, "post.projection.bias": bias},
                                          (theta,))

    assert torch.autograd.gradcheck(kernel, (theta, weight, bias))


@pytest.mark.parametrize("make_conv", CONVS)
@pytest.mark.parametrize("layer_class", [QPGConv, QPGAConv])
@pytest.mark.parametrize("post_name", POSTS)
@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_layer_gradients_match_reference(make_conv, layer_class, post_name: str, blocks: int) -> None:
    """d/dtheta of a fixed random linear functional of generate_weight(), against autograd on the reference."""
    torch.manual_seed(blocks)
    conv = make_conv().double()
    layer = layer_class.from_conv(conv, post=post_name, blocks=blocks)
    perturb(layer, seed=3)
    functional = torch.randn(layer.weight_shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    parameters = [layer.theta, *layer.post.parameters()]

    got = torch.autograd.grad((functional * layer.generate_weight()).sum(), parameters)
    expected = torch.autograd.grad((functional * layer_reference_kernel(layer)).sum(), parameters)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=GRAD_ATOL, rtol=0)
