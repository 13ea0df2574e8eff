"""torch.compile on networks with every shipped QPG placement (the trainers in trainers/), in training mode.

The network hook (nnunet_qpg.generation_hooks) generates every QPG kernel before the compiled graph runs, so
the graph reads the kernels as inputs: no graph break, the compiled model computes what the eager one computes
(outputs and gradients), and training steps that change theta reuse the graph (no recompilation). ConvLoRA's
kernel (plain tensor algebra) is traced into the graph instead.

The numbers use the ``aot_eager`` backend (dynamo + AOTAutograd, as inductor sees the graph, without inductor's
minutes of C++ compilation on a CPU); one inductor case is marked slow.
"""

from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from nnunet_qpg.layers import ConvLoRA, GeneratedKernelConv, QuantumKernelConv  # noqa: E402
from nnunet_qpg.postprocessing import LinearProbabilityProjection  # noqa: E402
from nnunet_qpg.surgery import apply_qpg  # noqa: E402

PLACEMENTS = {
    "QPG-lpp": "nnUNetTrainerQPG.nnUNetTrainerQPG",
    "QPG-rce": "nnUNetTrainerQPG.nnUNetTrainerQPG_RCE",
    "QPG-sst": "nnUNetTrainerQPG.nnUNetTrainerQPG_SST",
    "QPGDecoder": "nnUNetTrainerQPGDecoder.nnUNetTrainerQPGDecoder",
    "QPGA": "nnUNetTrainerQPGA.nnUNetTrainerQPGA",
    "ConvLoRA": "nnUNetTrainerConvLoRA.nnUNetTrainerConvLoRA",
}


def shipped_config(placement: str):
    module_name, class_name = PLACEMENTS[placement].split(".")
    return getattr(importlib.import_module(f"trainers.{module_name}"), class_name).resolved_qpg_config()


def _conv_kwargs(dim: int) -> dict:
    return dict(conv_op=f"torch.nn.modules.conv.Conv{dim}d", conv_bias=True,
                norm_op=f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                norm_op_kwargs={"eps": 1e-05, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
                nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True})


def small_network(dim: int = 2) -> torch.nn.Module:
    """A small nnU-Net PlainConvUNet (2D, 3 stages) or ResidualEncoderUNet (3D, 3 stages, 1x3x3 stem)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    if dim == 2:
        name = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
        kwargs = dict(n_stages=3, features_per_stage=[4, 8, 16], kernel_sizes=[[3, 3]] * 3,
                      strides=[[1, 1], [2, 2], [2, 2]], n_conv_per_stage=[2, 2, 2], n_conv_per_stage_decoder=[2, 2])
    else:
        name = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        kwargs = dict(n_stages=3, features_per_stage=[3, 6, 12], kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                      strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]], n_blocks_per_stage=[1, 1, 1],
                      n_conv_per_stage_decoder=[1, 1])
    return get_network_from_plans(name, dict(kwargs, **_conv_kwargs(dim)),
                                  ["conv_op", "norm_op", "dropout_op", "nonlin"], 1, 3, deep_supervision=True)


def placed_network(placement: str, dim: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    model = small_network(dim)
    apply_qpg(model, shipped_config(placement))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LinearProbabilityProjection):
                module.projection.weight.normal_()
                module.projection.bias.normal_()
            if isinstance(module, ConvLoRA):  # B starts at zero: make the increment (and A's gradient) non-zero
                module.lora_B.normal_(std=0.1)
            if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm):
                # ResidualEncoderUNet zeroes each block's last norm (the block starts as its skip), which
                # zeroes the gradients of the block's convolutions; give every norm a scale.
                module.weight.uniform_(0.5, 1.5)
    model.train()
    return model


def example_input(dim: int = 2) -> torch.Tensor:
    shape = (2, 1, 16, 16) if dim == 2 else (1, 1, 4, 12, 12)
    return torch.randn(shape, generator=torch.Generator().manual_seed(3))


def generator_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters generation trains (theta, LPP projections, LoRA A and B), by name."""
    swapped = {id(p) for m in model.modules() if isinstance(m, GeneratedKernelConv) for n, p in m.named_parameters()
               if n != "bias" and p.requires_grad}
    named = [(name, p) for name, p in model.named_parameters() if id(p) in swapped]
    assert named
    return named


def loss_of(outputs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    return sum((o * torch.randn(o.shape, generator=generator)).sum() for o in outputs)


def forward_backward(call, model, x) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs of ``call(x)`` (the model or its compiled wrapper) and the gradients of ``model``'s generator
    parameters."""
    for p in model.parameters():
        p.grad = None
    outputs = call(x)
    loss_of(outputs).backward()
    grads = {name: p.grad.clone() for name, p in generator_parameters(model)}
    return [o.detach() for o in outputs], grads


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def check_compiled_training(model: torch.nn.Module, x: torch.Tensor, backend: str, atol: float = 1e-5) -> None:
    layers = [m for m in model.modules() if isinstance(m, GeneratedKernelConv)]
    assert layers
    if any(isinstance(m, QuantumKernelConv) for m in layers):
        assert "_qpg_network_generation" in model.__dict__

    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count <= 1, explanation.break_reasons
    assert explanation.graph_break_count == 0, explanation.break_reasons  # today: none
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()

    compiled = torch.compile(model, backend=backend)
    out, grads = forward_backward(compiled, model, x)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs == 1, dict(torch._dynamo.utils.counters["stats"])
    eager_out, eager_grads = forward_backward(model, model, x)
    assert len(out) == len(eager_out)
    for a, b in zip(out, eager_out):
        torch.testing.assert_close(a, b, atol=atol, rtol=atol)
    assert grads.keys() == eager_grads.keys()
    for name in grads:
        assert grads[name].abs().sum() > 0, name
        torch.testing.assert_close(grads[name], eager_grads[name], atol=atol, rtol=atol, msg=lambda m: f"{name}: {m}")

    # Three training steps: each changes the generator parameters; the graph is reused, never recompiled.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            before = {name: p.detach().clone() for name, p in generator_parameters(model)}
            optimizer.zero_grad()
            loss_of(compiled(x)).backward()
            optimizer.step()
            changed = [not torch.equal(before[name], p) for name, p in generator_parameters(model)]
            assert any(changed)
        stepped = compiled(x)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert not torch._dynamo.utils.counters["recompiles"]
    # The graph read the new kernels (not ones frozen in at compile time). The steps grew the outputs (a
    # random linear loss): relative tolerance.
    with torch.no_grad():
        for a, b in zip(stepped, model(x)):
            torch.testing.assert_close(a.detach(), b, atol=atol, rtol=1e-4)
    assert all(getattr(m, "_pending_kernel", None) is None for m in layers)


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_compiled_training_matches_eager_2d(placement):
    check_compiled_training(placed_network(placement), example_input(), backend="aot_eager")


@pytest.mark.parametrize("placement", ["QPGA"])
def test_compiled_training_matches_eager_3d(placement):
    model = placed_network(placement, dim=3)
    assert any(m.kernel_size == (1, 3, 3) for m in model.modules() if isinstance(m, QuantumKernelConv))
    check_compiled_training(model, example_input(dim=3), backend="aot_eager")


@pytest.mark.slow
def test_compiled_training_matches_eager_inductor():
    """The default backend (inductor; about a minute of C++ compilation on 2 CPU cores)."""
    check_compiled_training(placed_network("QPG-lpp"), example_input(), backend="inductor")


def test_copy_of_compiled_network_compiles_on_its_own():
    """A deep copy (e.g. nnU-Net's EMA / a checkpoint twin) keeps its own hook under torch.compile."""
    model = placed_network("QPGDecoder")
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for layer in clone.modules():
            if isinstance(layer, QuantumKernelConv):
                layer.theta.add_(0.5)
    x = example_input()
    compiled_model, compiled_clone = torch.compile(model, backend="aot_eager"), torch.compile(clone,
                                                                                            backend="aot_eager")
    for compiled, eager in ((compiled_model, model), (compiled_clone, clone)):
        out = compiled(x)
        with torch.no_grad():
            for a, b in zip(out, eager(x)):
                torch.testing.assert_close(a.detach(), b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(compiled_model(x)[0], compiled_clone(x)[0])
