"""ConvLoRA on every kernel shape nnU-Net plans: loralib's shapes for square / cubic kernels, the largest-side fold for
anisotropic ones (1x3x3, 3x3x1, transposed 1x2x2); counts, B=0 start, exact baking, gradients, nnU-Net's 3D
ResidualEncoderUNet."""

from __future__ import annotations

import json
import math

import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from nnunet_qpg.layers import ConvLoRA, GeneratedKernelConv
from nnunet_qpg.surgery import apply_qpg, bake, mark_only_adapters_trainable

# (id, convolution, spatial input size, factorisation)
KERNELS = [
    ("conv2d_3x3", lambda: nn.Conv2d(6, 10, 3, padding=1), (7, 7), "loralib (k=3)"),
    ("conv2d_3x3_groups", lambda: nn.Conv2d(8, 12, 3, padding=1, groups=4), (7, 7), "loralib (k=3)"),
    ("conv2d_1x1", lambda: nn.Conv2d(6, 5, 1), (5, 5), "loralib (k=1)"),
    ("conv3d_1x1x1", lambda: nn.Conv3d(6, 3, 1), (3, 4, 4), "loralib (k=1)"),
    ("conv3d_3x3x3", lambda: nn.Conv3d(4, 6, 3, padding=1), (4, 5, 5), "loralib (k=3)"),
    ("conv3d_3x3x3_groups", lambda: nn.Conv3d(4, 6, 3, padding=1, groups=2), (4, 5, 5), "loralib (k=3)"),
    ("convtranspose3d_2x2x2", lambda: nn.ConvTranspose3d(8, 4, 2, stride=2), (2, 3, 3), "loralib (k=2)"),
    ("conv3d_1x3x3", lambda: nn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1)), (3, 5, 5),
     "largest side (k=3 of 1x3x3)"),
    ("conv3d_1x3x3_groups", lambda: nn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1), groups=2), (3, 5, 5),
     "largest side (k=3 of 1x3x3)"),
    ("conv3d_1x3x3_stride", lambda: nn.Conv3d(4, 6, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (3, 6, 6),
     "largest side (k=3 of 1x3x3)"),
    ("conv3d_3x3x1", lambda: nn.Conv3d(4, 6, (3, 3, 1), padding=(1, 1, 0)), (5, 5, 3),
     "largest side (k=3 of 3x3x1)"),
    ("convtranspose3d_1x2x2", lambda: nn.ConvTranspose3d(8, 4, (1, 2, 2), stride=(1, 2, 2)), (2, 3, 3),
     "largest side (k=2 of 1x2x2)"),
    ("convtranspose3d_1x2x2_groups", lambda: nn.ConvTranspose3d(8, 4, (1, 2, 2), stride=(1, 2, 2), groups=2),
     (2, 3, 3), "largest side (k=2 of 1x2x2)"),
]
IDS = [k[0] for k in KERNELS]


def _expected_shapes(conv: nn.Module, r: int) -> tuple[tuple[int, int], tuple[int, int], int]:
    """The documented rule: k = max(kernel), A [r*k, C_in*k], B [C_out/groups * prod(kernel)/k, r*k]."""
    kernel = tuple(conv.kernel_size)
    k = max(kernel)
    rows = conv.out_channels // conv.groups * math.prod(kernel) // k
    count = r * (conv.in_channels * k * k + conv.out_channels // conv.groups * math.prod(kernel))
    return (r * k, conv.in_channels * k), (rows, r * k), count


def _randomise(layer: ConvLoRA, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=generator, dtype=layer.lora_A.dtype))
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator, dtype=layer.lora_B.dtype))


@pytest.mark.parametrize("r", [1, 4, 8])
@pytest.mark.parametrize("name,make_conv,size,factorisation", KERNELS, ids=IDS)
def test_shapes_counts_and_factorisation(name, make_conv, size, factorisation, r) -> None:
    conv = make_conv()
    layer = ConvLoRA.from_conv(conv, r=r)
    a_shape, b_shape, count = _expected_shapes(conv, r)
    assert tuple(layer.lora_A.shape) == a_shape
    assert tuple(layer.lora_B.shape) == b_shape
    assert layer.lora_B.shape[0] * layer.lora_A.shape[1] == conv.weight.numel()
    assert layer.lora_A.numel() + layer.lora_B.numel() == layer.added_parameter_count == count
    assert layer.factorisation == factorisation and layer.lora_side == max(conv.kernel_size)
    assert layer.generate_weight().shape == conv.weight.shape
    assert factorisation in repr(layer)
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}


@pytest.mark.parametrize("rank,expected", [(8, 9216), (16, 18432)])
def test_spec_counts_and_loralib_shapes_for_square_kernels(rank, expected) -> None:
    layer = ConvLoRA.from_conv(nn.Conv2d(64, 64, 3), r=rank)
    assert layer.lora_A.numel() + layer.lora_B.numel() == expected == rank * 3 * 3 * (64 + 64)
    assert tuple(layer.lora_A.shape) == (rank * 3, 64 * 3)
    assert tuple(layer.lora_B.shape) == (64 * 3, rank * 3)
    # loralib with groups: B is [C_out/groups*k, r*k], A keeps the full C_in.
    grouped = ConvLoRA.from_conv(nn.Conv2d(8, 12, 3, groups=4), r=rank)
    assert tuple(grouped.lora_A.shape) == (rank * 3, 8 * 3)
    assert tuple(grouped.lora_B.shape) == (12 // 4 * 3, rank * 3)
    # 1x1: plain LoRA, A [r, C_in], B [C_out, r].
    pointwise = ConvLoRA.from_conv(nn.Conv3d(32, 3, 1), r=rank)
    assert tuple(pointwise.lora_A.shape) == (rank, 32) and tuple(pointwise.lora_B.shape) == (3, rank)


@pytest.mark.parametrize("anisotropic,planar", [
    (lambda: nn.Conv3d(32, 64, (1, 3, 3)), lambda: nn.Conv2d(32, 64, 3)),
    (lambda: nn.Conv3d(32, 64, (3, 3, 1)), lambda: nn.Conv2d(32, 64, 3)),
    (lambda: nn.ConvTranspose3d(64, 32, (1, 2, 2), stride=(1, 2, 2)), lambda: nn.ConvTranspose2d(64, 32, 2, stride=2)),
], ids=["1x3x3", "3x3x1", "transposed_1x2x2"])
def test_a_size_one_axis_gives_the_shapes_of_the_matching_2d_layer(anisotropic, planar) -> None:
    for r in (8, 16):
        layer, reference = ConvLoRA.from_conv(anisotropic(), r=r), ConvLoRA.from_conv(planar(), r=r)
        assert layer.lora_A.shape == reference.lora_A.shape and layer.lora_B.shape == reference.lora_B.shape
        assert layer.added_parameter_count == reference.added_parameter_count
    # 64 -> 32 at 1x3x3, r=8: 8*9*(32+64) = 6,912 (the 2D 3x3 count), not a degenerate or inflated one.
    assert ConvLoRA.from_conv(nn.Conv3d(32, 64, (1, 3, 3)), r=8).added_parameter_count == 6912


@pytest.mark.parametrize("name,make_conv,size,factorisation", KERNELS, ids=IDS)
def test_b_zero_start_equals_the_base_convolution(name, make_conv, size, factorisation) -> None:
    torch.manual_seed(0)
    conv = make_conv().double()
    layer = ConvLoRA.from_conv(conv, r=4)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    x = torch.randn(2, conv.in_channels, *size, dtype=torch.float64)
    torch.testing.assert_close(layer.generate_weight(), conv.weight, rtol=0, atol=0)
    torch.testing.assert_close(layer(x), conv(x), rtol=0, atol=0)


@pytest.mark.parametrize("name,make_conv,size,factorisation", KERNELS, ids=IDS)
def test_baking_is_exact_after_training_a_and_b(name, make_conv, size, factorisation) -> None:
    torch.manual_seed(0)
    conv = make_conv().double()
    layer = ConvLoRA.from_conv(conv, r=3, alpha=6.0)
    _randomise(layer)
    # delta W = (B @ A).view(W.shape) * alpha / r, computed independently of generate_weight.
    expected = conv.weight + (layer.lora_B @ layer.lora_A).reshape(conv.weight.shape) * (6.0 / 3)
    torch.testing.assert_close(layer.generate_weight(), expected, rtol=0, atol=1e-12)
    x = torch.randn(2, conv.in_channels, *size, dtype=torch.float64)
    with torch.no_grad():
        output = layer(x)
        assert (output - conv(x)).abs().max() > 1e-3  # the increment does something
        baked = layer.to_conv()
        assert type(baked) is type(conv) and baked.kernel_size == conv.kernel_size
        assert (baked(x) - output).abs().max().item() <= 1e-6
        model = nn.Sequential(layer)
        assert bake(model) == ["0"]
        assert type(model[0]) is type(conv)
        assert (model(x) - output).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name,make_conv,size,factorisation", KERNELS, ids=IDS)
def test_gradients_reach_lora_a_and_b_only(name, make_conv, size, factorisation) -> None:
    torch.manual_seed(0)
    conv = make_conv()
    layer = ConvLoRA.from_conv(conv, r=2)
    x = torch.randn(2, conv.in_channels, *size)
    layer(x).square().mean().backward()
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
    assert layer.lora_A.grad is not None  # zero while B is zero, as in loralib
    assert layer.weight.grad is None and layer.bias.grad is None
    _randomise(layer)
    layer.zero_grad()
    layer(x).square().mean().backward()
    assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0
    assert layer.weight.grad is None and layer.bias.grad is None
    assert ConvLoRA.from_conv(make_conv(), train_bias=True).bias.requires_grad


def resenc_unet_3d() -> nn.Module:
    """A small 3d_fullres ResidualEncoderUNet as nnU-Net plans it for anisotropic CT (first stage 1x3x3)."""
    torch.manual_seed(0)
    return ResidualEncoderUNet(
        input_channels=1, n_stages=4, features_per_stage=[8, 16, 32, 32], conv_op=nn.Conv3d,
        kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], n_blocks_per_stage=[1, 1, 1, 1], num_classes=3,
        n_conv_per_stage_decoder=[1, 1, 1], conv_bias=True, norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    )


def test_lora_on_every_convolution_of_a_3d_residual_encoder_unet() -> None:
    model = resenc_unet_3d().double()
    convs = {n: m for n, m in model.named_modules()
             if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and not n.startswith("decoder.seg_layers.")}
    kernels = {tuple(m.kernel_size) for m in convs.values()}
    assert {(1, 3, 3), (3, 3, 3), (1, 1, 1), (1, 2, 2), (2, 2, 2)} <= kernels
    x = torch.randn(2, 1, 4, 16, 16, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        before = model(x)

    report = apply_qpg(model, targets=["encoder.*", "decoder.stages.*", "decoder.transpconvs.*"], mode="lora", r=4)
    assert sorted(report.names) == sorted(convs)
    by_name = {layer.name: layer for layer in report}
    assert by_name["encoder.stem.convs.0.conv"].lora_factorisation == "largest side (k=3 of 1x3x3)"
    assert by_name["decoder.transpconvs.2"].lora_factorisation == "largest side (k=2 of 1x2x2)"
    assert by_name["decoder.transpconvs.0"].lora_factorisation == "loralib (k=2)"
    assert by_name["encoder.stages.1.blocks.0.skip.1.conv"].lora_factorisation == "loralib (k=1)"
    for name, conv in convs.items():
        a_shape, b_shape, count = _expected_shapes(conv, 4)
        assert by_name[name].lora_parameters == count and by_name[name].lora_rank == 4
    table = report.table()
    assert "LoRA factorisation" in table and "r=4, largest side (k=3 of 1x3x3)" in table
    assert "r=4, loralib (k=3)" in table
    layers = json.loads(json.dumps(report.to_dict()))["layers"]
    assert all({"lora_parameters", "lora_factorisation", "lora_rank", "added_parameters"} <= set(d) for d in layers)

    with torch.no_grad():
        after = model(x)  # B = 0: exactly the base network
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    model.train()
    trainable = mark_only_adapters_trainable(model, also_train=["decoder.seg_layers"])
    outputs = model(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 4, 16, 16), (2, 3, 4, 8, 8), (2, 3, 2, 4, 4)]
    sum(o.square().mean() for o in outputs).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    for name in grads:
        assert name.endswith((".lora_A", ".lora_B")) or name.startswith("decoder.seg_layers."), name
    assert all(f"{name}.lora_B" in grads for name in convs)

    # Train the increments a little, then bake: the plain network computes what the LoRA network computes.
    for module in model.modules():
        if isinstance(module, ConvLoRA):
            _randomise(module, seed=len(module.lora_A))
            with torch.no_grad():
                module.lora_B.mul_(0.01)
    model.eval()
    with torch.no_grad():
        lora_outputs = model(x)
        assert (lora_outputs[0] - before[0]).abs().max() > 1e-4
        assert sorted(bake(model)) == sorted(convs)
        assert not any(isinstance(m, GeneratedKernelConv) for m in model.modules())
        for baked, lora in zip(model(x), lora_outputs):
            assert (baked - lora).abs().max().item() <= 1e-6
