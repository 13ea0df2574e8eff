"""QPGConv, QPGAConv and ConvLoRA: the paper's counts, conv behaviour, gradients, caching, baking, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from nnunet_qpg.layers import ConvLoRA, QPGAConv, QPGConv
from nnunet_qpg.postprocessing import LinearProbabilityProjection, make_post_processing
from nnunet_qpg.simulator import simulate_vqcs


@pytest.mark.parametrize(
    "c_in,c_out,kernel,targets,vqcs,qubits,qpg_params,classic",
    [
        (64, 1, 3, "output", 9, 6, 108, 576),  # UNetPP final layer (Table 3)
        (64, 64, 3, "input", 576, 6, 6912, 36864),  # PEFT layer (Table 3)
        (512, 32, 2, "output", 128, 9, 2304, 65536),  # Scenario 1
        (64, 256, 3, "input", 576, 8, 9216, 147456),  # Scenario 2
    ],
)
def test_paper_parameter_counts(c_in, c_out, kernel, targets, vqcs, qubits, qpg_params, classic) -> None:
    conv = nn.Conv2d(c_in, c_out, kernel, bias=False)
    layer = QPGConv.from_conv(conv, post="rce", blocks=1)
    assert layer.num_vqcs == vqcs
    assert layer.num_qubits == qubits
    assert layer.qpg_parameter_count == layer.theta.numel() == qpg_params
    assert layer.classic_parameter_count == classic
    assert layer.target_axis == (1 if targets == "input" else 0)
    assert tuple(layer.theta.shape) == (vqcs, 1, 2, qubits)
    assert layer.generate_weight().shape == conv.weight.shape
    # Blocks multiply the angle count.
    assert QPGConv.from_conv(conv, blocks=3).qpg_parameter_count == 3 * qpg_params


@pytest.mark.parametrize("rank,expected", [(8, 9216), (16, 18432)])
def test_conv_lora_parameter_counts(rank: int, expected: int) -> None:
    layer = ConvLoRA.from_conv(nn.Conv2d(64, 64, 3), r=rank)
    assert layer.lora_A.numel() + layer.lora_B.numel() == expected
    assert tuple(layer.lora_A.shape) == (rank * 3, 64 * 3)
    assert tuple(layer.lora_B.shape) == (64 * 3, rank * 3)


def test_lpp_adds_n_plus_two_parameters() -> None:
    layer = QPGConv.from_conv(nn.Conv2d(64, 1, 3), post="lpp")
    assert sum(p.numel() for p in layer.post.parameters()) == layer.num_qubits + 2 == 8
    assert QPGConv.from_conv(nn.Conv2d(64, 1, 3), post="sst").post.__class__.__name__ == "ShiftScaleTransformation"


def test_generated_kernel_follows_eq8_indexing() -> None:
    """W[c_out, c_in, kh, kw] = VQC_{c_in, kh, kw}[c_out] when C_in <= C_out (row-major VQC order)."""
    conv = nn.Conv2d(3, 5, (2, 3), bias=False)
    layer = QPGConv.from_conv(conv, post="rce")
    weight = layer.generate_weight()
    states = simulate_vqcs(layer.theta.detach(), num_outputs=5).real  # [3*2*3, 5]
    for c_in in range(3):
        for kh in range(2):
            for kw in range(3):
                row = (c_in * 2 + kh) * 3 + kw
                torch.testing.assert_close(weight[:, c_in, kh, kw], states[row])
    # C_in > C_out: targets are the output channels, VQC_{c_out, k}[c_in].
    layer = QPGConv.from_conv(nn.Conv1d(6, 2, 3, bias=False), post="rce")
    weight = layer.generate_weight()
    states = simulate_vqcs(layer.theta.detach(), num_outputs=6).real
    torch.testing.assert_close(weight[1, :, 2], states[1 * 3 + 2])


def test_post_processing_formulas() -> None:
    amplitudes = simulate_vqcs(torch.rand(4, 1, 2, 3))
    p = amplitudes.abs().square()
    rce, sst = make_post_processing("rce", 3, 8), make_post_processing("SST", 3, 8)
    assert (rce.readout, sst.readout) == ("real", "probabilities")
    torch.testing.assert_close(rce(amplitudes.real), amplitudes.real)
    torch.testing.assert_close(sst(p), (math.pi / 2) * (p - 0.5))
    lpp = LinearProbabilityProjection(3, 8)
    assert lpp.readout == "probabilities"
    w, b = lpp.projection.weight[0].detach(), lpp.projection.bias[0].detach()
    expected = torch.empty(4, 8)
    for i in range(8):
        bits = torch.tensor([(i >> k) & 1 for k in range(3)], dtype=torch.float32)  # d_0 least significant
        expected[:, i] = w[0] * p[:, i] + (w[1:] * bits).sum() + b
    torch.testing.assert_close(lpp(p).detach(), expected)


@pytest.mark.parametrize("num_qubits", [1, 2, 5])
@pytest.mark.parametrize("blocks", [1, 2])
def test_readouts_equal_the_amplitudes_functions(num_qubits: int, blocks: int) -> None:
    theta = torch.rand(6, blocks, 2, num_qubits, dtype=torch.float64, requires_grad=True)
    m = max(1, 2**num_qubits - 1)
    amplitudes = simulate_vqcs(theta, m)
    real, probabilities = simulate_vqcs(theta, m, "real"), simulate_vqcs(theta, m, "probabilities")
    torch.testing.assert_close(real, amplitudes.real)
    torch.testing.assert_close(probabilities, amplitudes.abs().square())
    # The real-arithmetic one-block paths have the same gradients as the complex path.
    weights = torch.randn(2, 6, m, dtype=torch.float64)
    grads = torch.autograd.grad((weights[0] * real).sum() + (weights[1] * probabilities).sum(), theta)[0]
    reference = torch.autograd.grad(
        (weights[0] * amplitudes.real).sum() + (weights[1] * amplitudes.abs().square()).sum(), theta)[0]
    torch.testing.assert_close(grads, reference)


CONVS = [
    lambda: nn.Conv1d(4, 6, 3, groups=2, padding=1),
    lambda: nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1),
    lambda: nn.Conv2d(8, 3, 3, padding=2, dilation=2, bias=False),
    lambda: nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"),
    lambda: nn.Conv3d(4, 4, (1, 3, 3), padding=(0, 1, 1), groups=4),
    lambda: nn.ConvTranspose1d(5, 3, 4, stride=2),
    lambda: nn.ConvTranspose2d(16, 8, 2, stride=2),
    lambda: nn.ConvTranspose3d(6, 9, 3, groups=3, padding=1, output_padding=1, stride=2),
]


@pytest.mark.parametrize("make_conv", CONVS)
@pytest.mark.parametrize("mode", ["replace", "adapter", "lora"])
def test_layer_behaves_as_the_convolution_with_the_generated_kernel(make_conv, mode) -> None:
    torch.manual_seed(0)
    conv = make_conv()
    layer = {"replace": QPGConv.from_conv, "adapter": QPGAConv.from_conv, "lora": ConvLoRA.from_conv}[mode](conv)
    x = torch.randn(2, conv.in_channels, *([7] * (conv.weight.dim() - 2)))
    weight = layer.generate_weight()
    assert weight.shape == conv.weight.shape
    reference = copy.deepcopy(conv)
    reference.weight.data = weight.detach()
    torch.testing.assert_close(layer(x), reference(x))
    baked = layer.to_conv()
    assert type(baked) is type(conv)
    assert (baked(x) - layer(x)).abs().max().item() <= 1e-5
    if mode != "replace":
        assert not layer.weight.requires_grad
        torch.testing.assert_close(layer.weight, conv.weight)


def test_adapter_start_at_base_reproduces_the_base_convolution() -> None:
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 9, 9)
    plain = QPGAConv.from_conv(conv)
    assert (plain(x) - conv(x)).abs().max() > 1e-3  # the paper's adapter does not start at the base
    layer = QPGAConv.from_conv(conv, start_at_base=True)
    assert "initial_increment" in layer.state_dict()
    torch.testing.assert_close(layer(x), conv(x))
    loss = layer(x).square().mean()
    loss.backward()
    assert layer.theta.grad is not None and layer.theta.grad.abs().sum() > 0
    assert layer.weight.grad is None and layer.bias.grad is None


@pytest.mark.parametrize("post", ["rce", "lpp", "sst"])
def test_gradcheck_every_post_processing(post: str) -> None:
    layer = QPGConv.from_conv(nn.Conv2d(3, 5, 2).double(), post=post, blocks=2)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    names = [name for name, _ in layer.named_parameters()]
    assert "theta" in names and ("post.projection.weight" in names) == (post == "lpp")

    def output(*tensors: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, dict(zip(names, tensors)), (x,))

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters())
    assert torch.autograd.gradcheck(output, inputs)


def test_eval_cache_is_reused_and_recomputed_after_an_optimizer_step() -> None:
    layer = QPGConv.from_conv(nn.Conv2d(4, 4, 3, padding=1))
    x = torch.randn(1, 4, 6, 6)
    layer.eval()
    with torch.no_grad():
        first = layer(x)
        kernel = layer.kernel()
        assert layer.kernel() is kernel  # cached: no new simulation
    # Training changes theta in place; eval must see the new kernel.
    layer.train()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    layer(x).square().mean().backward()
    optimizer.step()
    layer.eval()
    with torch.no_grad():
        second = layer(x)
        assert layer.kernel() is not kernel
        torch.testing.assert_close(layer.kernel(), layer.generate_weight())
    assert (first - second).abs().max() > 1e-4
    # An in-place edit in eval mode (no train() call in between) also invalidates the cache.
    with torch.no_grad():
        layer.theta.add_(0.5)
        torch.testing.assert_close(layer.kernel(), layer.generate_weight())
    # With grad enabled the kernel is regenerated with autograd, never taken from the cache.
    assert layer.kernel().requires_grad


@pytest.mark.parametrize("make", [lambda c: QPGConv.from_conv(c), lambda c: QPGAConv.from_conv(c),
                                  lambda c: ConvLoRA.from_conv(c, r=2)], ids=["qpg", "qpga", "lora"])
def test_eval_cache_survives_reloading_the_same_state_dict(make) -> None:
    # nnU-Net's predictor calls load_state_dict before every image: same values, new tensor versions.
    layer = make(nn.Conv2d(4, 4, 3, padding=1)).eval()
    weights = copy.deepcopy(layer.state_dict())
    with torch.no_grad():
        kernel = layer.kernel()
        layer.load_state_dict(weights)
        layer.eval()  # the predictor also calls .eval() before every image
        assert layer.kernel() is kernel
        # Different values do invalidate it.
        changed = {k: v + 0.25 if k in ("theta", "lora_B") else v for k, v in weights.items()}
        layer.load_state_dict(changed)
        assert layer.kernel() is not kernel
        torch.testing.assert_close(layer.kernel(), layer.generate_weight())


def test_bad_arguments_say_what_is_accepted() -> None:
    conv = nn.Conv2d(4, 4, 3)
    with pytest.raises(ValueError, match=r"unknown post-processing 'softmax'; accepted: 'rce'.*'lpp'.*'sst'"):
        QPGConv.from_conv(conv, post="softmax")
    with pytest.raises(ValueError, match="blocks must be an integer >= 1"):
        QPGConv.from_conv(conv, blocks=0)
    with pytest.raises(TypeError, match="Linear is not a convolution; accepted: Conv1d"):
        QPGConv.from_conv(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="rank r must be an integer >= 1"):
        ConvLoRA.from_conv(conv, r=0)
    # Anisotropic kernels are accepted: folded on their largest side (tests/test_convlora_kernels.py).
    lora = ConvLoRA.from_conv(nn.Conv2d(4, 4, (1, 3)), r=2)
    assert lora.factorisation == "largest side (k=3 of 1x3)"
    assert tuple(lora.lora_A.shape) == (2 * 3, 4 * 3) and tuple(lora.lora_B.shape) == (4, 2 * 3)


def _reference_kernel(layer) -> torch.Tensor:
    """The layer's kernel from the complex amplitudes (dense simulation), post-processing and Eq. 6-9 indexing."""
    amplitudes = simulate_vqcs(layer.theta, layer.other_channels, "amplitudes")
    pairs = torch.view_as_real(amplitudes)
    readout = pairs[..., 0] if layer.post.readout == "real" else pairs.square().sum(-1)
    values = layer.post(readout).reshape(layer.target_channels, *layer.kernel_size, layer.other_channels)
    spatial = list(range(1, 1 + layer.num_spatial_dims))
    last = 1 + layer.num_spatial_dims
    order = [0, last, *spatial] if layer.target_axis == 0 else [last, 0, *spatial]
    kernel = values.permute(order)
    if isinstance(layer, QPGAConv):
        kernel = layer.weight + kernel - (layer.initial_increment if layer.start_at_base else 0)
    return kernel


FUSED_CONVS = [
    lambda: nn.Conv2d(8, 16, 3),  # target input channels, C_other = 2^n
    lambda: nn.Conv2d(16, 8, 3),  # target output channels
    lambda: nn.Conv2d(6, 12, 3),  # C_other = 12 < 2^4
    lambda: nn.Conv2d(12, 5, 2),  # target output channels, C_other = 12 < 16
    lambda: nn.ConvTranspose2d(12, 6, 2, 2),
    lambda: nn.ConvTranspose2d(5, 12, 2, 2),
    lambda: nn.Conv2d(8, 12, 3, groups=4),
    lambda: nn.Conv3d(4, 3, 2),
]


@pytest.mark.parametrize("make_conv", FUSED_CONVS)
@pytest.mark.parametrize("post", ["lpp", "sst", "rce"])
@pytest.mark.parametrize("cls", [QPGConv, QPGAConv])
def test_fused_one_block_kernel_equals_the_dense_reference(make_conv, post, cls) -> None:
    torch.manual_seed(0)
    conv = make_conv().double()
    kwargs = {"start_at_base": True} if cls is QPGAConv and post == "sst" else {}
    layer = cls.from_conv(conv, post=post, **kwargs)
    if post == "lpp":
        with torch.no_grad():
            layer.post.projection.weight.normal_()
            layer.post.projection.bias.normal_()
    assert layer.fused_one_block()
    weight = layer.generate_weight()
    reference = _reference_kernel(layer)
    assert weight.shape == layer.weight_shape and weight.is_contiguous()
    assert torch.allclose(weight, reference, atol=1e-6, rtol=0)
    probe = torch.randn_like(weight)
    trained = [p for name, p in layer.named_parameters() if p.requires_grad and name != "bias"]
    grads = torch.autograd.grad((weight * probe).sum(), trained)
    reference_grads = torch.autograd.grad((reference * probe).sum(), trained)
    for grad, expected in zip(grads, reference_grads):
        assert torch.allclose(grad, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("make_conv", [FUSED_CONVS[2], FUSED_CONVS[3], FUSED_CONVS[4]])
@pytest.mark.parametrize("post", ["lpp", "sst", "rce"])
@pytest.mark.parametrize("cls", [QPGConv, QPGAConv])
def test_fused_one_block_kernel_gradcheck(make_conv, post, cls) -> None:
    """float64 gradcheck of generate_weight() through the fused autograd Function, angles and LPP's Linear."""
    from torch.func import functional_call

    torch.manual_seed(1)
    layer = cls.from_conv(make_conv().double(), post=post)
    assert layer.fused_one_block()
    names = ["theta"] + (["post.projection.weight", "post.projection.bias"] if post == "lpp" else [])
    params = dict(layer.named_parameters())
    inputs = tuple(params[name].detach().clone().requires_grad_(True) for name in names)

    class Generate(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self):
            return self.inner.generate_weight()

    generate = Generate(layer)
    assert torch.autograd.gradcheck(
        lambda *values: functional_call(generate, {f"inner.{n}": v for n, v in zip(names, values)}, ()), inputs)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("num_outputs", [16, 11])
def test_ring_outer_product_gradcheck(rank, num_outputs) -> None:
    from nnunet_qpg.simulator import ring_outer_product, to_ring_source_order

    torch.manual_seed(3)
    x = torch.randn(rank, 4, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randn(rank, 4, 7, dtype=torch.float64, requires_grad=True)
    offset = torch.randn(num_outputs, dtype=torch.float64, requires_grad=True)
    base = to_ring_source_order(torch.randn(num_outputs, 7, dtype=torch.float64), 4)
    assert torch.autograd.gradcheck(lambda a, b, c: ring_outer_product(a, b, num_outputs, c, base), (x, y, offset))
    assert torch.autograd.gradcheck(lambda a, b: ring_outer_product(a, b, num_outputs), (x, y))


def test_fused_base_copy_follows_the_weight_and_keeps_the_state_dict_plain() -> None:
    torch.manual_seed(2)
    layer = QPGAConv.from_conv(nn.Conv2d(6, 12, 3))
    layer.generate_weight()
    assert set(layer.state_dict()) == {"weight", "bias", "theta", "post.projection.weight", "post.projection.bias"}
    layer.load_state_dict({**layer.state_dict(), "weight": torch.randn_like(layer.weight)})
    assert torch.allclose(layer.generate_weight(), _reference_kernel(layer), atol=1e-6)
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert torch.allclose(layer.generate_weight(), _reference_kernel(layer), atol=1e-6)
