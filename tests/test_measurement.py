"""QPG's circuits measured as a device would (SPEC section 7): shots, parameter shift, noise, no ring, refusals.

Statistical checks draw many independent estimates in one batched call (rows repeated) and compare means and
variances with their standard errors; seeds are fixed so a run is reproducible, and the bounds (5 standard
errors, or a relative band several times the estimator's own spread) fail for a wrong estimator.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnunet_qpg import QPGConfig, apply_qpg, bake
from nnunet_qpg.config import QPGConfigError
from nnunet_qpg.layers import QPGAConv, QPGConv
from nnunet_qpg.simulator.measurement import (Execution, measured_readout, parameter_shift_gradient,
                                              sample_probabilities)
from nnunet_qpg.simulator.noise import NoiseModel
from nnunet_qpg.simulator.reference import reference_states

PROBABILITY_STRATEGIES = ("lpp", "sst")


def _layer(cls=QPGConv, in_channels=6, out_channels=3, kernel=3, **settings) -> QPGConv:
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, out_channels, kernel, dtype=torch.float64)
    return cls.from_conv(conv, **settings)


def _twin(layer: QPGConv, cls=QPGConv, **settings) -> QPGConv:
    """The same layer (same angles and post-processing) with other circuit settings."""
    twin = _layer(cls, **{"post": layer.post_name, "blocks": layer.blocks, **settings})
    twin.load_state_dict(layer.state_dict())
    return twin


# -- sampling -------------------------------------------------------------------------------------------------


def test_sampled_probabilities_are_unbiased_with_binomial_variance():
    torch.manual_seed(1)
    exact = torch.softmax(torch.randn(3, 8, dtype=torch.float64), dim=-1)
    repeats, shots = 20_000, 64
    estimates = sample_probabilities(exact.repeat(repeats, 1), shots).view(repeats, 3, 8)
    assert torch.allclose(estimates.sum(-1), torch.ones(repeats, 3, dtype=torch.float64))
    assert torch.all(estimates * shots == torch.round(estimates * shots))  # counts / N
    variance = exact * (1 - exact) / shots
    standard_error = (variance / repeats).sqrt()
    assert torch.all((estimates.mean(0) - exact).abs() < 5 * standard_error)
    # The sample variance of R draws has relative spread sqrt(2 / R) ~ 1%: 6% catches a wrong N or a p^2/N.
    assert torch.allclose(estimates.var(0), variance, rtol=0.06)


def test_sampling_is_reproducible_under_manual_seed_and_fresh_per_call():
    exact = torch.full((4, 16), 1 / 16, dtype=torch.float64)
    torch.manual_seed(5)
    first, second = sample_probabilities(exact, 100), sample_probabilities(exact, 100)
    torch.manual_seed(5)
    assert torch.equal(sample_probabilities(exact, 100), first)
    assert not torch.equal(first, second)


# -- parameter shift --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("post", PROBABILITY_STRATEGIES)
@pytest.mark.parametrize("cls", [QPGConv, QPGAConv])
def test_exact_parameter_shift_equals_autograd(cls, post, blocks):
    autograd = _layer(cls, post=post, blocks=blocks)
    shifted = _twin(autograd, cls, gradient="parameter-shift")
    upstream = torch.randn(autograd.weight_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    kernels = []
    for layer in (autograd, shifted):
        kernel = layer.generate_weight()
        (kernel * upstream).sum().backward()
        kernels.append(kernel.detach())
    assert torch.allclose(kernels[0], kernels[1], atol=1e-12)
    assert torch.allclose(shifted.theta.grad, autograd.theta.grad, atol=1e-6, rtol=0)
    assert autograd.theta.grad.abs().max() > 1e-3  # a gradient that is there to compare
    for (name, a), (_, b) in zip(autograd.post.named_parameters(), shifted.post.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-10), name


def test_parameter_shift_with_noise_equals_autograd_through_the_noisy_circuit():
    noise = NoiseModel(readout_error=(0.03, 0.05), one_qubit_depolarizing=0.02, two_qubit_depolarizing=0.05)
    autograd = _layer(post="lpp", blocks=2, noise=noise)
    shifted = _twin(autograd, gradient="parameter-shift", noise=noise)
    upstream = torch.randn(autograd.weight_shape, dtype=torch.float64)
    for layer in (autograd, shifted):
        (layer.generate_weight() * upstream).sum().backward()
    assert torch.allclose(shifted.theta.grad, autograd.theta.grad, atol=1e-8)


def test_shot_based_parameter_shift_gradient_is_unbiased():
    torch.manual_seed(3)
    theta = torch.rand(2, 1, 2, 3, dtype=torch.float64)
    upstream = torch.randn(2, 8, dtype=torch.float64)
    exact = parameter_shift_gradient(theta, upstream, Execution(gradient="parameter-shift"))
    repeats = 3000
    sampled = parameter_shift_gradient(theta.repeat(repeats, 1, 1, 1), upstream.repeat(repeats, 1),
                                       Execution(shots=50, gradient="parameter-shift")).view(repeats, *theta.shape)
    standard_error = sampled.std(0) / math.sqrt(repeats)
    assert torch.all((sampled.mean(0) - exact).abs() < 5 * standard_error + 1e-12)
    assert sampled.std(0).min() > 0  # shots make each estimate noisy


def test_shots_with_backprop_are_straight_through():
    exact = _layer(post="lpp")
    sampled = _twin(exact, shots=200)
    upstream = torch.randn(exact.weight_shape, dtype=torch.float64)
    exact_kernel, sampled_kernel = exact.generate_weight(), sampled.generate_weight()
    assert not torch.allclose(exact_kernel, sampled_kernel)  # the forward value is the sampled estimate
    for layer, kernel in ((exact, exact_kernel), (sampled, sampled_kernel)):
        (kernel * upstream).sum().backward()
    assert torch.allclose(sampled.theta.grad, exact.theta.grad, atol=1e-12)  # the backward the exact one's


# -- eval, baking, refusals ---------------------------------------------------------------------------------------


def test_eval_and_bake_use_the_exact_distribution_unless_asked():
    exact = _layer(post="sst")
    sampled = _twin(exact, shots=100, gradient="parameter-shift")
    sampled.eval()
    with torch.no_grad():
        assert torch.allclose(sampled.kernel(), exact.generate_weight(), atol=1e-12)
    assert torch.allclose(sampled.to_conv().weight, exact.to_conv().weight, atol=1e-12)
    sampled.sample_in_eval = True
    sampled._cached_kernel = None
    with torch.no_grad():
        assert not torch.allclose(sampled.kernel(), exact.generate_weight())


@pytest.mark.parametrize("settings", [dict(shots=100), dict(gradient="parameter-shift"),
                                      dict(noise=NoiseModel(readout_error=0.01))])
def test_rce_with_measurement_is_refused_with_the_reason(settings):
    with pytest.raises(ValueError, match="amplitudes.*post='lpp' or post='sst'"):
        _layer(post="rce", **settings)
    with pytest.raises(QPGConfigError, match="amplitudes"):
        QPGConfig(targets=("conv",), post="rce", **settings)
    with pytest.raises(ValueError, match="amplitudes"):
        measured_readout(torch.rand(2, 1, 2, 2), 4, "real", Execution(**settings))


def test_bad_settings_name_what_is_accepted():
    with pytest.raises(QPGConfigError, match="shots must be None"):
        QPGConfig(targets=("conv",), shots=0)
    with pytest.raises(QPGConfigError, match="parameter-shift"):
        QPGConfig(targets=("conv",), gradient="finite-difference")
    with pytest.raises(QPGConfigError, match="ConvLoRA has no circuits"):
        QPGConfig(targets=("conv",), mode="lora", shots=100)


def test_config_round_trip_keeps_the_circuit_settings():
    noise = NoiseModel(readout_error=(0.02, 0.03), two_qubit_depolarizing=0.01, mitigate_readout=True)
    config = QPGConfig(targets=("conv",), shots=1000, gradient="parameter-shift", noise=noise, entangle=False)
    import json

    again = QPGConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.noise == noise
    assert "1,000 shots" in config.describe() and "no CNOT ring" in config.describe()


# -- no entanglement ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("post", ["rce", "lpp", "sst"])
def test_no_entanglement_is_the_circuit_without_the_ring(post):
    entangled = _layer(post=post, blocks=2)
    product = _twin(entangled, entangle=False)
    assert product.qpg_parameter_count == entangled.qpg_parameter_count
    states = reference_states(product.theta.detach(), entangle=False)
    readout = states.real if post == "rce" else states.abs() ** 2
    expected = product.layout.from_vqc_rows(product.post(readout[:, :product.other_channels]))
    with torch.no_grad():
        assert torch.allclose(product.generate_weight(), expected, atol=1e-12)
        assert not torch.allclose(entangled.generate_weight(), expected, atol=1e-6)
    assert not torch.allclose(reference_states(product.theta.detach()), states)


# -- in a network ---------------------------------------------------------------------------------------------


def test_measuring_layers_train_inside_a_hooked_network_and_exact_ones_keep_the_fast_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    apply_qpg(model, QPGConfig(targets=("2",), shots=500, gradient="parameter-shift"))
    layer = model[2]
    assert layer.shots == 500 and layer.gradient == "parameter-shift" and not layer.fused_one_block()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = layer.theta.detach().clone()
    model(torch.randn(2, 2, 8, 8)).square().mean().backward()
    assert layer.theta.grad is not None and layer.theta.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(layer.theta, before)
    model.eval()
    with torch.no_grad():
        first, second = model(torch.ones(1, 2, 8, 8)), model(torch.ones(1, 2, 8, 8))
    assert torch.equal(first, second)  # eval: the exact distribution, cached
    exact = _layer(post="lpp")
    assert exact.fused_one_block()  # the default never leaves the exact fast path
    bake(model)
    assert isinstance(model[2], nn.Conv2d)
