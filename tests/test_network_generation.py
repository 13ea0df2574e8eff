"""The whole network's QPG kernels generated together (nnunet_qpg.simulator.network, nnunet_qpg.generation_hooks).

The batched generator must give every layer exactly what the layer gives itself (``generate_weight()``, the
per-layer path the simulator tests check against the gate-by-gate reference), with the same gradients, whatever
the mix of layers: qubit counts 1..7, channel counts that are not powers of two, transposed convolutions, 1x1
heads, both the grouped (outer product per (n, C_other)) and the flat (per-weight gather) one-block paths,
simulated groups (K >= 2, RCE) and non-native backends. The hook that feeds the layers must be invisible: same
outputs and gradients as layers generating one by one, nothing left behind after a forward pass (even a failed
one), and nothing in the state dict.
"""

from __future__ import annotations

import copy
import io
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import nnunet_qpg.simulator.network as network_module  # noqa: E402
from nnunet_qpg.generation_hooks import attach_network_generation, detach_network_generation  # noqa: E402
from nnunet_qpg.layers import GeneratedKernelConv, QPGAConv, QuantumKernelConv  # noqa: E402
from nnunet_qpg.postprocessing import LinearProbabilityProjection, make_post_processing  # noqa: E402
from nnunet_qpg.simulator import KernelLayout  # noqa: E402
from nnunet_qpg.simulator.network import KernelRequest, NetworkGenerator  # noqa: E402
from nnunet_qpg.surgery import apply_qpg, bake  # noqa: E402

from common import load_stored_plan, shrink_for_quick  # noqa: E402  (benchmarks/common.py)

ATTRIBUTE = "_qpg_network_generation"
HUGE = 1 << 60
# Stage widths chosen for the qubit counts they give: C_other 2 (n=1), 3 and 4 (n=2), 5 (n=3), 10 (n=4),
# 20 (n=5), 40 (n=6), 100 (n=7); 100 x 100 x 3 x 3 = 90,000 weights is above the default FLAT_LAYER_LIMIT.
FEATURES_2D = (2, 5, 20, 100)
ALL_CONVS = ("encoder.*", "decoder.*")


# -- networks ----------------------------------------------------------------------------------------------------

def _conv_kwargs(dim: int) -> dict:
    return dict(
        conv_op=f"torch.nn.modules.conv.Conv{dim}d",
        conv_bias=True,
        norm_op=f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        norm_op_kwargs={"eps": 1e-05, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin="torch.nn.LeakyReLU",
        nonlin_kwargs={"inplace": True},
    )


def plain_unet_2d(features=FEATURES_2D, input_channels: int = 1, classes: int = 3) -> torch.nn.Module:
    """nnU-Net's 2D PlainConvUNet built as nnU-Net builds it (get_network_from_plans), small."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    stages = len(features)
    arch_kwargs = dict(n_stages=stages, features_per_stage=list(features), kernel_sizes=[[3, 3]] * stages,
                       strides=[[1, 1]] + [[2, 2]] * (stages - 1), n_conv_per_stage=[2] * stages,
                       n_conv_per_stage_decoder=[2] * (stages - 1), **_conv_kwargs(2))
    return get_network_from_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet", arch_kwargs,
                                  ["conv_op", "norm_op", "dropout_op", "nonlin"], input_channels, classes,
                                  deep_supervision=True)


def resenc_unet_3d(input_channels: int = 1, classes: int = 2) -> torch.nn.Module:
    """A tiny 3D ResidualEncoderUNet with anisotropic kernels (1x3x3) and 1x2x2 transposed convolutions."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch_kwargs = dict(n_stages=3, features_per_stage=[3, 6, 12], kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                       strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]], n_blocks_per_stage=[1, 1, 1],
                       n_conv_per_stage_decoder=[1, 1], **_conv_kwargs(3))
    return get_network_from_plans("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                                  arch_kwargs, ["conv_op", "norm_op", "dropout_op", "nonlin"], input_channels,
                                  classes, deep_supervision=True)


def qpg_layers(model: torch.nn.Module) -> list[QuantumKernelConv]:
    return [m for m in model.modules() if isinstance(m, QuantumKernelConv)]


def randomise_projections(model: torch.nn.Module, seed: int = 1) -> None:
    """LPP projections at random values (their default init hides errors in the bit terms)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LinearProbabilityProjection):
                for parameter in module.projection.parameters():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def generated_parameters(layer: QuantumKernelConv) -> list[torch.Tensor]:
    """What generation differentiates: theta and the post-processing's parameters (LPP projection)."""
    return [layer.theta, *layer.post.parameters()]


def hook_kernels(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every QPG layer's final kernel as the network hook makes it (one batched generation)."""
    generation = model.__dict__[ATTRIBUTE]
    generation.generate()
    kernels = [layer._pending_kernel for layer in generation.layers]
    generation.clear()
    assert all(k is not None for k in kernels)
    return kernels


def plan_of(model: torch.nn.Module):
    plans = list(model.__dict__[ATTRIBUTE].generator._plans.values())
    assert len(plans) == 1, len(plans)
    return plans[0]


def assert_batched_equals_per_layer(model: torch.nn.Module, kernel_tol: float, grad_tol: float,
                                    grad_rtol: float = 0.0) -> None:
    """Hook kernels == each layer's generate_weight(); same gradients of a fixed random linear functional."""
    layers = model.__dict__[ATTRIBUTE].layers
    assert layers == qpg_layers(model)
    batched = hook_kernels(model)
    single = [layer.generate_weight() for layer in layers]
    generator = torch.Generator().manual_seed(7)
    weights = [torch.randn(k.shape, generator=generator, dtype=torch.float64).to(k.dtype) for k in single]
    parameters = [p for layer in layers for p in generated_parameters(layer)]
    for layer, a, b in zip(layers, batched, single):
        assert a.shape == b.shape == layer.weight_shape
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=kernel_tol, rtol=0, msg=lambda m: f"{layer!r}: {m}")
    grads = []
    for kernels in (batched, single):
        functional = sum((w * k).sum() for w, k in zip(weights, kernels))
        grads.append(torch.autograd.grad(functional, parameters))
    for parameter, a, b in zip(parameters, *grads):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, atol=grad_tol, rtol=grad_rtol,
                                   msg=lambda m: f"gradient of {tuple(parameter.shape)}: {m}")


# -- 1. batched == per layer ---------------------------------------------------------------------------------------

MODES = {
    "replace": dict(mode="replace"),
    "adapter": dict(mode="adapter"),
    "adapter_start_at_base": dict(mode="adapter", start_at_base=True),
}
# The one-block route (K = 1, LPP / SST) runs under three FLAT_LAYER_LIMITs: every layer grouped, a mix (layers of at
# most 100 weights flat), every layer flat. Other routes (K >= 2, RCE) do not look at the limit.
def every_conv_swapped(build, post: str, blocks: int, mode: str):
    """A float64 network (seed 0) with every convolution swapped and random LPP projections; (model, layers)."""
    torch.manual_seed(0)
    model = build().double()
    apply_qpg(model, targets=list(ALL_CONVS), post=post, blocks=blocks, **MODES[mode])
    randomise_projections(model)
    return model, qpg_layers(model)


FLAT_LIMITS = {"grouped": 0, "mixed": 100, "flat": HUGE}
CASES = [(post, blocks, mode, limit)
         for post in ("rce", "lpp", "sst") for blocks in (1, 2, 3) for mode in MODES
         for limit in (FLAT_LIMITS if blocks == 1 and post != "rce" else (None,))]


@pytest.mark.parametrize("post, blocks, mode, limit", CASES,
                         ids=[f"{p}-K{k}-{m}-{lim or 'default'}" for p, k, m, lim in CASES])
def test_batched_kernels_and_gradients_equal_per_layer(monkeypatch, post, blocks, mode, limit):
    if limit is not None:
        monkeypatch.setattr(network_module, "FLAT_LAYER_LIMIT", FLAT_LIMITS[limit])
    model, layers = every_conv_swapped(plain_unet_2d, post, blocks, mode)
    assert len(layers) == 20
    assert {layer.num_qubits for layer in layers} == set(range(1, 8))
    assert {3, 5, 20, 100} <= {layer.other_channels for layer in layers}
    assert any(layer.transposed for layer in layers) and any(layer.kernel_size == (1, 1) for layer in layers)
    assert_batched_equals_per_layer(model, kernel_tol=1e-12, grad_tol=1e-10)
    plan = plan_of(model)
    if limit is None:
        assert not plan.one_block
        assert sum(len(group.members) for group in plan.simulated) == 20
    else:
        assert len(plan.one_block) == 20
        grouped = sum(len(group.members) for group in plan.groups)
        flat = sum(math.prod(layer.weight_shape) <= FLAT_LIMITS[limit] for layer in layers)
        assert (grouped, len(plan.flat_members)) == (20 - flat, flat)
        assert {"grouped": flat == 0, "mixed": 0 < flat < 20, "flat": flat == 20}[limit]
        if limit == "grouped":  # 7 qubits and C_other 100: a group whose ring source list is not a permutation
            assert any(group.inverse is None for group in plan.groups)
            assert any(group.inverse is not None for group in plan.groups)  # C_other = 2^n (2 of 1 qubit)


@pytest.mark.parametrize("limit", ["grouped", "flat"])
@pytest.mark.parametrize("post, blocks, mode", [("lpp", 1, "replace"), ("sst", 1, "adapter"), ("rce", 2, "replace"),
                                                ("lpp", 2, "adapter_start_at_base")])
def test_batched_equals_per_layer_3d(monkeypatch, limit, post, blocks, mode):
    monkeypatch.setattr(network_module, "FLAT_LAYER_LIMIT", FLAT_LIMITS[limit])
    model, layers = every_conv_swapped(resenc_unet_3d, post, blocks, mode)
    assert any(layer.kernel_size == (1, 3, 3) for layer in layers)
    assert any(layer.transposed and layer.kernel_size == (1, 2, 2) for layer in layers)
    assert any(layer.kernel_size == (1, 1, 1) for layer in layers)  # residual skip projections and heads
    assert_batched_equals_per_layer(model, kernel_tol=1e-12, grad_tol=1e-10)


def mixed_model(dtype: torch.dtype) -> torch.nn.Module:
    """Four placements with different settings on disjoint targets of one network, one layer on another backend."""
    torch.manual_seed(0)
    model = plain_unet_2d().to(dtype)
    apply_qpg(model, targets=["encoder.stages.0.*", "encoder.stages.1.*"], mode="adapter", post="lpp")
    apply_qpg(model, targets=["encoder.stages.2.*", "encoder.stages.3.*"], mode="replace", post="sst")
    apply_qpg(model, targets=["decoder.stages.*"], mode="adapter", post="rce", start_at_base=True)
    apply_qpg(model, targets=["decoder.transpconvs.*"], mode="replace", post="lpp", blocks=2)
    apply_qpg(model, targets=["decoder.seg_layers.0", "decoder.seg_layers.1"], mode="replace", post="sst", blocks=3)
    apply_qpg(model, targets=["decoder.seg_layers.2"], mode="replace", post="lpp")
    model.decoder.seg_layers[2].set_backend("reference")  # a non-native backend: generated on its own
    randomise_projections(model)
    return model


def test_mixed_post_processings_in_one_network_float64():
    model = mixed_model(torch.float64)
    layers = model.__dict__[ATTRIBUTE].layers
    assert len(layers) == 20 == len(qpg_layers(model))  # the second apply_qpg refreshed the layer list
    assert {layer.post_name for layer in layers} == {"lpp", "sst", "rce"}
    assert {layer.blocks for layer in layers} == {1, 2, 3}
    assert_batched_equals_per_layer(model, kernel_tol=1e-12, grad_tol=1e-10)
    plan = plan_of(model)
    assert plan.groups and plan.flat_members and plan.simulated and plan.single  # default limit: every route


def test_mixed_post_processings_in_one_network_float32():
    model = mixed_model(torch.float32)
    assert all(layer.theta.dtype == torch.float32 for layer in qpg_layers(model))
    assert_batched_equals_per_layer(model, kernel_tol=1e-5, grad_tol=1e-4, grad_rtol=1e-4)


# -- 2. gradcheck through NetworkGenerator.generate -----------------------------------------------------------------

# (weight shape, transposed, post, blocks): n = 1, 2, 3, 5; a transposed layer; a group of two layers with the
# same (n, C_other); a layer whose C_other is 2^n (the grouped path's inverse-permutation branch); simulated
# LPP (K = 2, the coefficient table outside the one-block path) and RCE.
GRADCHECK_LAYERS = [
    ((2, 1, 1, 1), False, "lpp", 1),   # n=1, 2 weights: flat
    ((3, 2, 1, 1), False, "lpp", 1),   # n=2, C_other 3, 6 weights: flat
    ((5, 4, 2, 2), False, "lpp", 1),   # n=3, C_other 5: grouped
    ((5, 3, 1, 1), False, "sst", 1),   # n=3, C_other 5: grouped with the previous layer
    ((6, 2, 2, 2), True, "lpp", 1),    # transposed, targets its output channels: n=3, C_other 6, grouped
    ((8, 8, 1, 1), False, "lpp", 1),   # C_other 8 = 2^3: grouped, inverse permutation
    ((17, 2, 1, 1), False, "lpp", 1),  # n=5: grouped
    ((3, 2, 1, 1), False, "lpp", 2),   # simulated, affine
    ((4, 3, 1, 1), False, "rce", 1),   # simulated, RCE
    ((1, 1, 3, 3), False, "lpp", 1),   # C_other 1 (n=1, one output): flat
]


def _use_as_projection(post: LinearProbabilityProjection, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Make the projection read ``weight`` and ``bias`` (gradcheck's inputs) instead of its own parameters."""
    projection = post.projection
    for name, value in (("weight", weight), ("bias", bias)):
        projection._parameters.pop(name, None)
        setattr(projection, name, value)


def test_gradcheck_through_network_generator(monkeypatch):
    monkeypatch.setattr(network_module, "FLAT_LAYER_LIMIT", 10)
    generator_ = torch.Generator().manual_seed(3)
    layouts, posts, inputs = [], [], []
    for shape, transposed, post_name, blocks in GRADCHECK_LAYERS:
        layout = KernelLayout(shape, transposed)
        post = make_post_processing(post_name, layout.num_qubits, layout.other_channels).double()
        layouts.append(layout)
        posts.append(post)
        theta = torch.rand(layout.num_vqcs, blocks, 2, layout.num_qubits, generator=generator_, dtype=torch.float64)
        inputs.append((theta + 0.1).requires_grad_())
        if post_name == "lpp":
            inputs.append(torch.randn(1, layout.num_qubits + 1, generator=generator_, dtype=torch.float64)
                          .requires_grad_())
            inputs.append(torch.randn(1, generator=generator_, dtype=torch.float64).requires_grad_())
    weights = [torch.randn(layout.weight_shape, generator=generator_, dtype=torch.float64) for layout in layouts]
    network_generator = NetworkGenerator()

    def functional(*tensors):
        requests, position = [], 0
        for layout, post in zip(layouts, posts):
            theta = tensors[position]
            position += 1
            if isinstance(post, LinearProbabilityProjection):
                _use_as_projection(post, tensors[position], tensors[position + 1])
                position += 2
            requests.append(KernelRequest(theta, layout, post))
        kernels = network_generator.generate(requests)
        return sum((w * k).sum() for w, k in zip(weights, kernels))

    assert torch.autograd.gradcheck(functional, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5)
    plan = next(iter(network_generator._plans.values()))
    assert len(network_generator._plans) == 1  # one structure, one plan, every gradcheck call reused it
    assert len(plan.groups) == 4 and plan.flat_members == [0, 1, 9]
    assert sum(len(g.members) for g in plan.simulated) == 2
    assert any(g.inverse is not None for g in plan.groups) and any(g.inverse is None for g in plan.groups)


# -- 3. the hook ----------------------------------------------------------------------------------------------------

def hooked_model(seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """Every kind of placement in one network (adapter LPP, SST, RCE K=2, LPP heads), in float64 by default.

    With QPG on every convolution this network amplifies float32 rounding: the hook's and the layers' own
    float32 kernels differ by an ulp or so and the outputs then by ~1e-4, as far as either lies from the float64
    result. Exact comparisons run in float64; :func:`heads_model` is the float32 case.
    """
    torch.manual_seed(seed)
    model = plain_unet_2d().to(dtype)
    apply_qpg(model, targets=["encoder.*"], mode="adapter", post="lpp")
    apply_qpg(model, targets=["decoder.stages.*"], mode="replace", post="sst")
    apply_qpg(model, targets=["decoder.transpconvs.*"], mode="replace", post="rce", blocks=2)
    apply_qpg(model, targets=["decoder.seg_layers.*"], mode="replace", post="lpp")
    randomise_projections(model)
    model.train()
    return model


def heads_model(config=None) -> torch.nn.Module:
    """float32 network with a shipped placement (nnUNetTrainerQPG's: QPGConv LPP on the heads by default)."""
    from trainers.nnUNetTrainerQPG import nnUNetTrainerQPG

    torch.manual_seed(0)
    model = plain_unet_2d(features=(8, 16, 32, 64))
    apply_qpg(model, config or nnUNetTrainerQPG.resolved_qpg_config())
    randomise_projections(model)
    model.train()
    return model


def inputs(channels: int = 1, seed: int = 5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(2, channels, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def outputs_close(a, b, atol: float = 1e-10, rtol: float = 1e-9) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def loss_of(outputs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    return sum((o * torch.randn(o.shape, generator=generator, dtype=o.dtype)).sum() for o in outputs)


def pending(model: torch.nn.Module) -> list:
    return [layer._pending_kernel for layer in qpg_layers(model) if layer._pending_kernel is not None]


@pytest.fixture
def count_generations(monkeypatch):
    """Counts NetworkGenerator.generate calls (every instance)."""
    calls = []
    original = NetworkGenerator.generate

    def counted(self, requests):
        calls.append(len(requests))
        return original(self, requests)

    monkeypatch.setattr(NetworkGenerator, "generate", counted)
    return calls


def assert_hook_invisible(model, x, outputs_tol: dict, grads_tol: dict, calls: list) -> None:
    """The model's forward (hook) and backward equal those of a copy whose layers generate one by one."""
    twin = copy.deepcopy(model)
    detach_network_generation(twin)
    assert ATTRIBUTE not in twin.__dict__ and ATTRIBUTE in model.__dict__
    layers = qpg_layers(model)
    out = model(x)
    assert calls == [len(layers)]
    assert pending(model) == []
    out_twin = twin(x)
    assert calls == [len(layers)]  # the detached twin's layers generate one by one
    outputs_close(out, out_twin, **outputs_tol)
    loss_of(out).backward()
    loss_of(out_twin).backward()
    for a, b in zip(layers, qpg_layers(twin)):
        for p, q in zip(generated_parameters(a), generated_parameters(b)):
            assert p.grad is not None
            torch.testing.assert_close(p.grad, q.grad, **grads_tol)


def test_hook_output_and_gradients_equal_layer_by_layer_float64(count_generations):
    assert_hook_invisible(hooked_model(), inputs(), dict(atol=1e-10, rtol=1e-9), dict(atol=1e-9, rtol=1e-9),
                          count_generations)


def test_hook_output_and_gradients_equal_layer_by_layer_float32(count_generations):
    model = heads_model()
    assert len(qpg_layers(model)) == 3
    assert_hook_invisible(model, inputs(dtype=torch.float32), dict(atol=1e-6, rtol=1e-5),
                          dict(atol=1e-5, rtol=1e-5), count_generations)


def test_exception_in_forward_leaves_no_pending_kernel():
    model = hooked_model()
    x = inputs()
    with torch.no_grad():
        expected = model(x)
    with pytest.raises(RuntimeError):
        model(inputs(channels=2))  # the first convolution refuses 2 input channels
    assert pending(model) == []
    out = model(x)
    outputs_close(out, expected)
    loss_of(out).backward()
    assert all(layer.theta.grad is not None for layer in qpg_layers(model))


def test_layer_called_alone_between_forwards_uses_its_current_theta():
    model = hooked_model()
    model(inputs())
    layer = model.decoder.stages[0].convs[0].conv  # QPGConv SST, 40 -> 20
    head = model.decoder.seg_layers[0]
    with torch.no_grad():
        layer.theta.add_(0.25)
        head.theta.mul_(0.5)
    for module, channels in ((layer, 40), (head, 20)):
        x = torch.randn(2, channels, 8, 8, dtype=torch.float64)
        y = module(x)
        expected = F.conv2d(x, module.generate_weight(), module.bias, module.stride, module.padding)
        torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)
        y.sum().backward()
        assert module.theta.grad is not None
    # The next forward pass of the model generates from the new values too.
    generated = []

    def record(module, args):  # returns None: the layer's input stays as it is
        generated.append(module._pending_kernel)

    handle = layer.register_forward_pre_hook(record)
    model(inputs())
    handle.remove()
    torch.testing.assert_close(generated[0], layer.generate_weight(), atol=1e-12, rtol=0)


def test_eval_without_grad_uses_layer_caches(count_generations):
    model = hooked_model()
    x = inputs()
    with torch.no_grad():
        training_out = model(x)  # training mode: generated by the hook
    assert count_generations == [20]
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
        again = model(x)
    assert count_generations == [20]  # eval + no grad: the hook does not generate
    assert all(layer._cached_kernel is not None for layer in qpg_layers(model))
    outputs_close(eval_out, training_out)
    outputs_close(again, eval_out, atol=0)
    with torch.inference_mode():
        outputs_close(model(x), eval_out, atol=0)
    assert count_generations == [20]
    model.eval()
    out = model(x)  # eval with grad enabled: generated by the hook, with autograd
    assert count_generations == [20, 20]
    loss_of(out).backward()
    assert all(layer.theta.grad is not None for layer in qpg_layers(model))


def test_deepcopy_after_forward_trains_independently(count_generations):
    model = hooked_model()
    x = inputs()
    before = model(x)
    clone = copy.deepcopy(model)
    generation = clone.__dict__[ATTRIBUTE]
    assert generation is not model.__dict__[ATTRIBUTE]
    assert generation.generator is not model.__dict__[ATTRIBUTE].generator
    assert [id(m) for m in generation.layers] == [id(m) for m in qpg_layers(clone)]
    with torch.no_grad():
        for layer in qpg_layers(clone):
            layer.theta.add_(0.3)
    reference = copy.deepcopy(clone)
    detach_network_generation(reference)
    out = clone(x)
    outputs_close(out, reference(x))  # the copy's forward used the copy's (changed) theta
    assert not torch.allclose(out[0], before[0].detach())
    loss_of(out).backward()
    assert all(layer.theta.grad is not None for layer in qpg_layers(clone))
    assert all(layer.theta.grad is None for layer in qpg_layers(model))
    # Detaching the copies did not touch the original's hooks; it still generates for itself.
    calls = len(count_generations)
    outputs_close(model(x), before)
    assert len(count_generations) == calls + 1


def test_torch_save_and_load_round_trip():
    model = hooked_model()
    x = inputs()
    expected = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    generation = loaded.__dict__[ATTRIBUTE]
    assert [id(m) for m in generation.layers] == [id(m) for m in qpg_layers(loaded)]
    out = loaded(x)
    assert pending(loaded) == []
    outputs_close(out, expected)
    loss_of(out).backward()
    assert all(layer.theta.grad is not None for layer in qpg_layers(loaded))
    assert all(layer.theta.grad is None for layer in qpg_layers(model))


def test_bake_removes_hook_and_keeps_output():
    model = hooked_model()
    x = inputs()
    with torch.no_grad():
        expected = model(x)
    baked = bake(model)
    assert len(baked) == 20
    assert ATTRIBUTE not in model.__dict__ and ATTRIBUTE + "_handles" not in model.__dict__
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert not any(isinstance(m, GeneratedKernelConv) for m in model.modules())
    with torch.no_grad():
        outputs_close(model(x), expected)


def test_state_dict_keys_unchanged_by_the_hook():
    model = hooked_model()
    attached = list(model.state_dict())
    detach_network_generation(model)
    assert ATTRIBUTE not in model.__dict__
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert list(model.state_dict()) == attached
    assert attach_network_generation(model) is model.__dict__[ATTRIBUTE]
    assert attach_network_generation(model) is model.__dict__[ATTRIBUTE]  # idempotent: one pair of hooks
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_hooks) == 1
    assert list(model.state_dict()) == attached
    assert not any("network_generation" in key for key in attached)
    # A model whose layers generate one by one loads the hooked model's state dict and vice versa.
    other = hooked_model(seed=1)
    detach_network_generation(other)
    other.load_state_dict(model.state_dict())
    model.load_state_dict(hooked_model(seed=2).state_dict())


def test_autocast_generates_kernels_in_float32():
    model = hooked_model(dtype=torch.float32)
    seen = []
    for layer in qpg_layers(model):
        layer.register_forward_pre_hook(lambda m, args: seen.append(m._pending_kernel.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(inputs(dtype=torch.float32))
    assert len(seen) == 20 and set(seen) == {torch.float32}
    assert out[0].dtype == torch.bfloat16
    loss_of([o.float() for o in out]).backward()
    assert all(torch.isfinite(layer.theta.grad).all() for layer in qpg_layers(model))


def test_inference_mode_in_training_mode_does_not_poison_training():
    model = hooked_model()
    x = inputs()
    with torch.inference_mode():
        first = model(x)  # training mode, no grad: the hook generates and builds its index tables here
    generator = model.__dict__[ATTRIBUTE].generator
    assert len(generator._plans) == 1
    assert pending(model) == []
    out = model(x)
    assert len(generator._plans) == 1  # the tables built under inference mode are reused
    outputs_close(out, first)
    loss_of(out).backward()
    assert all(torch.isfinite(layer.theta.grad).all() for layer in qpg_layers(model))
    # The same for a layer generating on its own (adapter: its base kernel in ring order is cached).
    layer = model.encoder.stages[1][0].convs[0].conv
    assert isinstance(layer, QPGAConv)
    layer.theta.grad = None
    features = torch.randn(2, 2, 16, 16, dtype=torch.float64)
    with torch.inference_mode():
        layer(features)
    layer(features).sum().backward()
    assert layer.theta.grad is not None


# -- 4. nnU-Net's own construction path -----------------------------------------------------------------------------

def small_plans() -> tuple[dict, dict]:
    """The stored nnU-Net 2D plan, cut to 3 stages and a 32x32 patch (the benchmarks' --quick plan)."""
    plans, dataset_json = load_stored_plan()
    return shrink_for_quick(plans), dataset_json


@pytest.mark.parametrize("trainer", ["nnUNetTrainerQPG.nnUNetTrainerQPG", "nnUNetTrainerQPG.nnUNetTrainerQPG_SST",
                                     "nnUNetTrainerQPGDecoder.nnUNetTrainerQPGDecoder",
                                     "nnUNetTrainerQPGA.nnUNetTrainerQPGA",
                                     "nnUNetTrainerConvLoRA.nnUNetTrainerConvLoRA"])
def test_build_network_architecture_attaches_the_hook(trainer, count_generations):
    import importlib

    import numpy as np
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    module_name, class_name = trainer.split(".")
    cls = getattr(importlib.import_module(f"trainers.{module_name}"), class_name)
    plans, dataset_json = small_plans()
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration("2d")
    heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    torch.manual_seed(0)
    # The predictor builds without deep supervision (nnUNetPredictor.initialize_from_trained_model_folder).
    network = cls.build_network_architecture(plans_manager, configuration_manager, 1, heads, False)
    layers = qpg_layers(network)
    if cls.resolved_qpg_config().mode == "lora":
        assert not layers and ATTRIBUTE not in network.__dict__  # ConvLoRA generates inside the graph
    else:
        assert layers and network.__dict__[ATTRIBUTE].layers == layers
        network.train()
        network(torch.randn(2, 1, 32, 32))
        assert count_generations == [len(layers)] and pending(network) == []
    # nnU-Net's predictor: eval + inference mode, kernels from the layers' caches (no batched generation).
    calls = len(count_generations)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager, [network.state_dict()],
                                    dataset_json, cls.__name__, None)
    image = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 40, 36)).astype(np.float32))
    logits = predictor.predict_sliding_window_return_logits(image)
    assert logits.shape == (heads, 1, 40, 36) and torch.isfinite(torch.as_tensor(logits)).all()
    assert len(count_generations) == calls
    assert pending(network) == []
