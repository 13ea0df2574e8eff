"""apply_qpg / bake on nnU-Net's own 2D PlainConvUNet, built the way nnU-Net builds it from a plan."""

from __future__ import annotations

import json

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_qpg.layers import ConvLoRA, GeneratedKernelConv, QPGAConv, QPGConv
from nnunet_qpg.surgery import apply_qpg, bake, find_layers, mark_only_adapters_trainable


def plain_conv_unet(deep_supervision: bool = True, num_classes: int = 3) -> nn.Module:
    """The architecture nnU-Net plans for a small 2D dataset (4 stages, 32..256 features)."""
    torch.manual_seed(0)
    arch_kwargs = {
        "n_stages": 4,
        "features_per_stage": [32, 64, 128, 256],
        "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * 4,
        "strides": [[1, 1], [2, 2], [2, 2], [2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    return get_network_from_plans(
        "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        arch_kwargs,
        ["conv_op", "norm_op", "dropout_op", "nonlin"],
        input_channels=1,
        output_channels=num_classes,
        allow_init=True,
        deep_supervision=deep_supervision,
    )


def _train_step(model: nn.Module) -> None:
    model.zero_grad(set_to_none=True)
    outputs = model(torch.randn(2, 1, 32, 32))
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    sum(o.square().mean() for o in outputs).backward()


def _params_with_grad(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_final_segmentation_layer_replaced_only_its_angles_train_in_its_place() -> None:
    model = plain_conv_unet()
    head_weights = {n for n, _ in model.named_parameters() if n.startswith("decoder.seg_layers.2.")}
    report = apply_qpg(model, targets=["decoder.seg_layers.2"], mode="replace", post="lpp", blocks=1)
    assert report.names == ["decoder.seg_layers.2"]
    assert isinstance(model.decoder.seg_layers[2], QPGConv)
    _train_step(model)
    grads = _params_with_grad(model)
    head = {n for n in grads if n.startswith("decoder.seg_layers.2.")}
    assert head == {"decoder.seg_layers.2.theta", "decoder.seg_layers.2.bias",
                    "decoder.seg_layers.2.post.projection.weight", "decoder.seg_layers.2.post.projection.bias"}
    assert "decoder.seg_layers.2.weight" in head_weights and "decoder.seg_layers.2.weight" not in grads
    # Everything else is still trained classically.
    assert "encoder.stages.0.0.convs.0.conv.weight" in grads
    assert report.trainable_after == report.trainable_before - 32 * 3 + report.layers[0].added_parameters


def test_all_decoder_convolutions_swapped_with_every_reference() -> None:
    model = plain_conv_unet()
    convs_before = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
    report = apply_qpg(model, targets=["decoder.*"], mode="replace", post="sst")
    decoder_convs = {n for n in convs_before if n.startswith("decoder.")}
    assert set(report.names) == decoder_convs and len(decoder_convs) == 3 * 2 + 3 + 3
    for stage in model.decoder.stages:
        for block in stage.convs:
            # nnU-Net runs block.all_modules, and keeps block.conv for reference: both must be the new layer.
            assert isinstance(block.conv, QPGConv) and block.all_modules[0] is block.conv
    for block in model.encoder.stages[0][0].convs:
        assert type(block.conv) is nn.Conv2d  # decoder.encoder aliases did not pull the encoder in
    _train_step(model)
    grads = _params_with_grad(model)
    assert not any(n.startswith("decoder.") and n.endswith(".weight") and ".norm" not in n
                   and "all_modules.1" not in n for n in grads)
    assert all(f"{name}.theta" in grads for name in report.names)
    assert "encoder.stages.3.0.convs.1.conv.weight" in grads
    table = report.table()
    assert "decoder.transpconvs.0" in table and "trainable parameters" in table
    json.dumps(report.to_dict())


def test_adapter_fine_tuning_trains_only_adapters_and_heads() -> None:
    model = plain_conv_unet()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "seg_layers" not in n]
    report = apply_qpg(model, targets=["encoder.*", "decoder.stages.*", "decoder.transpconvs.*"], mode="adapter")
    assert len(report) == len(convs) + 3
    trainable = mark_only_adapters_trainable(model, also_train=["decoder.seg_layers"])
    _train_step(model)
    grads = _params_with_grad(model)
    for name in grads:
        assert name.endswith(".theta") or ".post." in name or name.startswith("decoder.seg_layers."), name
    for module in model.modules():
        if isinstance(module, QPGAConv):
            assert not module.weight.requires_grad and module.weight.grad is None
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < report.trainable_before / 5


def test_lora_mode_and_baking_give_the_same_outputs() -> None:
    for mode, kwargs in [("replace", {"post": "rce", "blocks": 2}), ("adapter", {"post": "lpp"}), ("lora", {"r": 4})]:
        model = plain_conv_unet(deep_supervision=False)
        apply_qpg(model, targets=["decoder.*", "encoder.stages.1.*"], mode=mode, **kwargs)
        if mode == "lora":
            with torch.no_grad():  # B starts at zero: move it so the increment is not trivially zero
                for m in model.modules():
                    if isinstance(m, ConvLoRA):
                        m.lora_B.normal_(std=0.05)
        model.eval()
        x = torch.randn(2, 1, 32, 32)
        with torch.no_grad():
            expected = model(x)
        baked = bake(model)
        assert baked and not any(isinstance(m, GeneratedKernelConv) for m in model.modules())
        for stage in model.decoder.stages:
            for block in stage.convs:
                assert type(block.conv) is nn.Conv2d and block.all_modules[0] is block.conv
        with torch.no_grad():
            assert (model(x) - expected).abs().max().item() <= 1e-5, mode
        # The baked model has exactly the plain network's state-dict keys (stock nnU-Net can load it).
        assert set(model.state_dict()) == set(plain_conv_unet(deep_supervision=False).state_dict())


def test_surgery_errors_name_the_pattern_and_the_choices() -> None:
    model = plain_conv_unet()
    with pytest.raises(ValueError, match=r"(?s)'decoder\.seg_layer\.\*' matches no module.*decoder\.seg_layers\.0"):
        apply_qpg(model, targets=["decoder.seg_layer.*"])
    with pytest.raises(ValueError, match=r"not convolutions: decoder.stages.0 \(StackedConvBlocks\)"):
        apply_qpg(model, targets=["decoder.stages.0"])
    with pytest.raises(ValueError, match=r"(?s)not convolutions.*InstanceNorm2d"):
        apply_qpg(model, targets=["*.norm"])
    with pytest.raises(ValueError, match="unknown mode 'quantum'; accepted: 'replace'"):
        apply_qpg(model, targets=["decoder.*"], mode="quantum")
    with pytest.raises(ValueError, match="unknown post-processing 'max'"):
        apply_qpg(model, targets=["decoder.*"], post="max")
    with pytest.raises(ValueError, match="targets is empty"):
        find_layers(model, [])
    apply_qpg(model, targets=["decoder.seg_layers.*"])
    with pytest.raises(ValueError, match=r"already swapped.*bake\(model\)"):
        apply_qpg(model, targets=["decoder.seg_layers.1"])
