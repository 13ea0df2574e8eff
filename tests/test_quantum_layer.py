"""QuantumLayer and the data-path circuits (SPEC section 8) against the dense gate-by-gate yardstick, autograd,
parameter shift, shots, cutting through the layer, and the bottleneck block on real nnU-Net networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dense_circuit import dense_data_path_expectations
from nnunet_qpg import QuantumBlockConfig, QuantumLayer
from nnunet_qpg.quantum_bottleneck import (QuantumBottleneck, data_path_cost, find_quantum_layers,
                                           place_quantum_bottleneck)
from nnunet_qpg.simulator.data_path import run_data_path_circuits


def _inputs(generator, batch, circuits, qubits, embedding, dtype=torch.float64):
    size = 2**qubits if embedding == "amplitude" else qubits
    return torch.randn(batch, circuits, size, dtype=dtype, generator=generator)


def _dense(x: torch.Tensor, weights: torch.Tensor, embedding: str, entangler: str, readout: str) -> np.ndarray:
    return np.array([[dense_data_path_expectations(x[i, c].numpy(), weights[c].detach().numpy(), embedding,
                                                   entangler, readout) for c in range(x.shape[1])]
                     for i in range(x.shape[0])])


@pytest.mark.parametrize("embedding", ["amplitude", "angle"])
@pytest.mark.parametrize("entangler", ["ring", "chain"])
@pytest.mark.parametrize("readout", ["Y", "Z"])
def test_run_circuits_equals_the_dense_reference(embedding: str, entangler: str, readout: str) -> None:
    generator = torch.Generator().manual_seed(7)
    for qubits in range(1, 6):
        for depth in (1, 2, 3):
            layer = QuantumLayer(4, qubits=qubits, circuits=2, depth=depth, embedding=embedding, readout=readout,
                                 entangler=entangler).double()
            x = _inputs(generator, 3, 2, qubits, embedding)
            got = layer.run_circuits(x)
            assert got.shape == (3, 2, qubits) and got.dtype == torch.float64
            np.testing.assert_allclose(got.detach().numpy(), _dense(x, layer.weights, embedding, entangler, readout),
                                       atol=1e-6, err_msg=f"{qubits} qubits, depth {depth}")


def test_weights_layout_index_0_is_rz_and_1_is_ry() -> None:
    # <Z> of one qubit after H: RZ alone leaves it 0, RY(b) alone gives -sin(b) (RY(b)|+> tilts towards |0> or |1>)
    layer = QuantumLayer(1, qubits=1, circuits=1, depth=1, embedding="angle", readout="Z").double()
    zero = torch.zeros(1, 1, 1, dtype=torch.float64)
    with torch.no_grad():
        layer.weights.zero_()
        layer.weights[0, 0, 0, 0] = 0.7  # RZ
        assert layer.run_circuits(zero).item() == pytest.approx(0.0, abs=1e-12)
        layer.weights.zero_()
        layer.weights[0, 0, 1, 0] = 0.7  # RY
        assert layer.run_circuits(zero).item() == pytest.approx(-math.sin(0.7), abs=1e-12)
    assert layer.weights.shape == (1, 1, 2, 1) and isinstance(layer.weights, nn.Parameter)


def test_forward_is_the_projection_then_the_circuits_flattened() -> None:
    torch.manual_seed(0)
    layer = QuantumLayer(6, qubits=3, circuits=2, depth=2, embedding="amplitude").double()
    features = torch.randn(5, 6, dtype=torch.float64)
    out = layer(features)
    assert out.shape == (5, 6) and layer.out_features == 6
    expected = layer.run_circuits(layer.projection(features).view(5, 2, 8)).reshape(5, 6)
    torch.testing.assert_close(out, expected)
    assert layer(features.view(5, 1, 6)).shape == (5, 1, 6)  # leading axes are kept


@pytest.mark.parametrize("embedding", ["amplitude", "angle"])
def test_gradcheck_through_the_layer(embedding: str) -> None:
    torch.manual_seed(1)
    layer = QuantumLayer(3, qubits=3, circuits=2, depth=2, embedding=embedding, readout="Y").double()
    features = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    weights = layer.weights.detach().clone().requires_grad_(True)

    def function(f, w):
        inputs = layer.projection(f).view(2, 2, -1)
        return run_data_path_circuits(inputs, w, embedding, "Y", "ring")

    assert torch.autograd.gradcheck(function, (features, weights))


@pytest.mark.parametrize("readout", ["Y", "Z"])
def test_parameter_shift_equals_autograd(readout: str) -> None:
    generator = torch.Generator().manual_seed(3)
    x = _inputs(generator, 4, 2, 3, "angle").requires_grad_(True)
    weights = torch.randn(2, 2, 2, 3, dtype=torch.float64, generator=generator).requires_grad_(True)
    upstream = torch.randn(4, 2, 3, dtype=torch.float64, generator=generator)
    exact = torch.autograd.grad((run_data_path_circuits(x, weights, "angle", readout, "chain") * upstream).sum(),
                                (x, weights))
    shifted = torch.autograd.grad((run_data_path_circuits(x, weights, "angle", readout, "chain",
                                                          gradient="parameter-shift") * upstream).sum(), (x, weights))
    for a, b in zip(exact, shifted):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_shots_are_unbiased_and_eval_mode_reads_exact_expectations() -> None:
    torch.manual_seed(4)
    layer = QuantumLayer(4, qubits=3, circuits=1, depth=1, embedding="angle", readout="Y", shots=200).double()
    features = torch.randn(1, 4, dtype=torch.float64).expand(4000, 4)
    exact = layer.eval()(features[:1])
    sampled = layer.train()(features)
    assert not torch.allclose(sampled[0], sampled[1])  # every input is sampled afresh
    # mean of 4000 estimates of 200 shots each: standard error <= 1 / sqrt(800000) ~ 0.0011
    torch.testing.assert_close(sampled.mean(0, keepdim=True), exact, atol=0.006, rtol=0)
    assert torch.allclose(layer.eval()(features[:2]), exact.expand(2, -1))
    layer.sample_in_eval = True
    assert not torch.allclose(layer(features[:2])[0], exact[0])


def test_shot_estimates_with_parameter_shift_give_unbiased_gradients() -> None:
    generator = torch.Generator().manual_seed(5)
    x = _inputs(generator, 1, 1, 2, "angle")
    weights = torch.randn(1, 1, 2, 2, dtype=torch.float64, generator=generator).requires_grad_(True)
    exact = torch.autograd.grad(run_data_path_circuits(x, weights, "angle", "Z", "ring").sum(), weights)[0]
    many = x.expand(3000, 1, 2)
    estimate = torch.autograd.grad(run_data_path_circuits(many, weights, "angle", "Z", "ring", shots=100,
                                                          gradient="parameter-shift").sum(), weights)[0] / 3000
    torch.testing.assert_close(estimate, exact, atol=0.02, rtol=0)


def test_refused_settings_say_why() -> None:
    with pytest.raises(ValueError, match="amplitude embedding.*no shift rule"):
        QuantumLayer(4, embedding="amplitude", gradient="parameter-shift")
    with pytest.raises(ValueError, match="unknown readout 'X'"):
        QuantumLayer(4, readout="X")
    with pytest.raises(ValueError, match="unknown entangler"):
        QuantumBlockConfig(entangler="all-to-all")
    layer = QuantumLayer(4, qubits=2, circuits=1)
    with pytest.raises(ValueError, match="all-zero input"):
        layer.run_circuits(torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match=r"shape \[N, 1, 4\]"):
        layer.run_circuits(torch.ones(1, 1, 2))


def test_cutting_through_the_layer_equals_the_whole_circuit_and_counts_fragment_executions() -> None:
    torch.manual_seed(6)
    cut = QuantumLayer(5, qubits=8, circuits=2, depth=1, embedding="angle", readout="Y", entangler="chain",
                       max_fragment_qubits=5).double()
    whole = QuantumLayer(5, qubits=8, circuits=2, depth=1, embedding="angle", readout="Y", entangler="chain").double()
    whole.load_state_dict(cut.state_dict())
    features = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(cut(features), whole(features), atol=1e-10, rtol=0)
    assert cut.fragment_plan.sizes == (5, 4)
    assert (cut.executions_per_input, whole.executions_per_input) == (2 * 9, 2)
    assert "5 + 4" in cut.describe()
    for settings, reason in ((dict(embedding="amplitude", entangler="chain", depth=1), "product state"),
                             (dict(embedding="angle", entangler="ring", depth=1), "ring"),
                             (dict(embedding="angle", entangler="chain", depth=2), "depth")):
        with pytest.raises(ValueError, match=reason):
            QuantumLayer(5, qubits=6, max_fragment_qubits=4, **settings)
    with pytest.raises(ValueError, match="exact fragment expectations"):
        QuantumLayer(5, qubits=6, depth=1, embedding="angle", entangler="chain", max_fragment_qubits=4, shots=100)
    # fits in one fragment: nothing to cut, so any circuit runs whole
    assert QuantumLayer(5, qubits=4, max_fragment_qubits=4).fragment_plan is None


def test_autocast_keeps_the_circuits_in_float32() -> None:
    layer = QuantumLayer(8, qubits=3, circuits=2)
    features = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(features)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, layer.run_circuits(layer.projection(features).view(4, 2, 8)).view(4, 6),
                               atol=2e-2, rtol=0)


def _plain_unet() -> nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(1, 4, (8, 16, 32, 32), nn.Conv2d, 3, (1, 2, 2, 2), 1, 2, 1, True, nn.InstanceNorm2d,
                         {"affine": True}, None, None, nn.LeakyReLU, {"inplace": True}, deep_supervision=False)


def _residual_unet() -> nn.Module:
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    return ResidualEncoderUNet(1, 4, (8, 16, 32, 32), nn.Conv2d, 3, (1, 2, 2, 2), 1, 2, 1, True, nn.InstanceNorm2d,
                               {"affine": True}, None, None, nn.LeakyReLU, {"inplace": True}, deep_supervision=False)


@pytest.mark.parametrize("build", [_plain_unet, _residual_unet])
def test_bottleneck_block_starts_as_identity_and_trains(build) -> None:
    torch.manual_seed(8)
    network = build()
    x = torch.randn(2, 1, 32, 32)
    before = network(x).detach()
    plain_keys = set(network.state_dict())
    name, block = place_quantum_bottleneck(network, QuantumBlockConfig(qubits=3, circuits=2, depth=1))
    assert isinstance(block, QuantumBottleneck) and name.startswith("encoder.stages.3.")
    assert [n for n, _ in find_quantum_layers(network)][0] == f"{name}.quantum"
    torch.testing.assert_close(network(x), before)  # the map back starts at zero
    if build is _plain_unet:  # an nn.Sequential stage: the block is appended, every old weight keeps its name
        assert plain_keys <= set(network.state_dict())
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        network(x).square().mean().backward()
        optimizer.step()
    assert block.back.weight.abs().sum() > 0 and block.quantum.weights.grad.abs().sum() > 0
    assert block.parameter_counts == {"projection": 32 * 16 + 16, "circuit_weights": 2 * 1 * 2 * 3,
                                      "back": 6 * 32 + 32}


def test_executions_per_predicted_image_follow_nnunet_sliding_window() -> None:
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    layer = QuantumLayer(32, qubits=5, circuits=5)
    strides = [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]
    cost = data_path_cost(layer, [64, 64], strides, [256, 256])
    steps = compute_steps_for_sliding_window([256, 256], [64, 64], 0.5)
    assert cost.bottleneck_shape == (4, 4)
    assert cost.tiles == len(steps[0]) * len(steps[1]) == 49
    assert cost.executions_per_forward == 16 * 5
    assert cost.executions_per_image == 16 * 5 * 49 * 4  # 4 mirrorings in 2D
    assert data_path_cost(layer, [64, 64], strides, [40, 40], mirroring=False).executions_per_image == 80
    volume = data_path_cost(layer, [32, 64, 64], [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [32, 64, 64])
    assert volume.bottleneck_shape == (8, 16, 16) and volume.mirrorings == 8


@pytest.mark.parametrize("embedding", ["amplitude", "angle"])
def test_the_block_compiles_into_one_graph_with_eager_numbers(embedding: str) -> None:
    """nnU-Net compiles the network on CUDA by default: the block must not break the graph (aot_eager: dynamo and
    AOTAutograd as inductor sees them, without minutes of C++ compilation)."""
    torch.manual_seed(9)
    network = _plain_unet()
    _, block = place_quantum_bottleneck(network, QuantumBlockConfig(qubits=3, circuits=2, embedding=embedding))
    nn.init.normal_(block.back.weight, std=0.1)
    x = torch.randn(2, 1, 32, 32)
    torch._dynamo.reset()
    try:
        explanation = torch._dynamo.explain(network)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(network, backend="aot_eager")
        grads = []
        for call in (compiled, network):
            network.zero_grad()
            out = call(x)
            out.square().mean().backward()
            grads.append((out.detach(), block.quantum.weights.grad.clone(), block.quantum.projection.weight.grad.clone()))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    finally:
        torch._dynamo.reset()


def test_a_network_without_encoder_stages_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="Sequential has no encoder.stages.*PlainConvUNet or ResidualEncoderUNet"):
        place_quantum_bottleneck(nn.Sequential(nn.Conv2d(1, 4, 3)), QuantumBlockConfig())
