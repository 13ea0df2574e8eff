"""QPGConfig: one settings object, validated once, serialised as is, taken by apply_qpg in both forms."""

from __future__ import annotations

import json

import pytest
import torch
from test_surgery import plain_conv_unet

from nnunet_qpg.config import QPGConfig, QPGConfigError
from nnunet_qpg.surgery import apply_qpg


@pytest.mark.parametrize("settings, message", [
    ({"targets": "decoder.*"}, "targets must be a sequence of glob patterns"),
    ({"targets": ("decoder.*", "")}, "every pattern must be a non-empty string"),
    ({"targets": ("x",), "mode": "quantum"}, "unknown mode 'quantum'; accepted: 'replace'"),
    ({"targets": ("x",), "post": "max"}, "unknown post-processing 'max'"),
    ({"targets": ("x",), "blocks": 0}, "blocks must be an integer >= 1"),
    ({"targets": ("x",), "blocks": True}, "blocks must be an integer >= 1"),
    ({"targets": ("x",), "rank": 2.5}, "rank must be an integer >= 1"),
    ({"targets": ("x",), "alpha": -1}, "alpha must be a positive number"),
    ({"targets": ("x",), "train_bias": "yes"}, "train_bias must be True or False"),
    ({"targets": ("x",), "train_only": "decoder.*"}, "train_only must be a sequence"),
])
def test_every_setting_is_checked_once_with_a_message_naming_it(settings, message):
    with pytest.raises(QPGConfigError, match=message):
        QPGConfig(**settings)


def test_config_normalises_and_round_trips_through_json():
    config = QPGConfig(targets=["encoder.*"], mode="ADAPTER", post="SST", blocks=2, train_only=["decoder.seg_layers.*"])
    assert config.targets == ("encoder.*",) and config.mode == "adapter" and config.post == "sst"
    data = json.loads(json.dumps(config.to_dict()))
    assert QPGConfig.from_dict(data) == config
    with pytest.raises(QPGConfigError, match="unknown QPG setting.s. qubits"):
        QPGConfig.from_dict({**data, "qubits": 3})
    assert QPGConfig().is_classical and not config.is_classical
    assert config.replace(blocks=3).blocks == 3
    with pytest.raises(QPGConfigError):
        config.replace(blocks=0)


def test_config_form_and_keyword_form_build_the_same_network():
    torch.manual_seed(0)
    by_keywords = plain_conv_unet()
    keyword_report = apply_qpg(by_keywords, targets=["decoder.seg_layers.*"], mode="replace", post="sst", blocks=2)
    by_config = plain_conv_unet()
    config_report = apply_qpg(by_config, QPGConfig(targets=("decoder.seg_layers.*",), post="sst", blocks=2))
    assert by_keywords.state_dict().keys() == by_config.state_dict().keys()
    assert keyword_report.to_dict() == config_report.to_dict()
    assert config_report.settings == QPGConfig(targets=("decoder.seg_layers.*",), post="sst", blocks=2).to_dict()
    positional = plain_conv_unet()
    apply_qpg(positional, ["decoder.seg_layers.*"], mode="lora", r=4)  # targets positionally, LoRA rank as r
    assert any(name.endswith("lora_A") for name in positional.state_dict())
    with pytest.raises(TypeError, match="either a QPGConfig or keyword settings"):
        apply_qpg(plain_conv_unet(), QPGConfig(targets=("decoder.*",)), mode="adapter")


def test_train_only_in_the_config_freezes_all_but_the_adapters_and_the_named_modules():
    model = plain_conv_unet()
    report = apply_qpg(model, QPGConfig(targets=("encoder.stages.1.*",), mode="adapter",
                                        train_only=("decoder.seg_layers.*",)))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("theta" in n or ".post." in n or "seg_layers" in n for n in trainable)
    assert report.trainable_after == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="'nowhere.*' matches no module"):
        apply_qpg(plain_conv_unet(), QPGConfig(targets=("encoder.stages.1.*",), train_only=("nowhere.*",)))


def test_report_reads_settings_files_of_both_forms():
    from nnunet_qpg.model_report import strategy_of

    # qpg_settings.json "qpg" entries as the trainers wrote them before QPGConfig ("r") and now ("rank", all fields)
    before = {"qpg": {"mode": "lora", "layers": [{}] * 3,
                      "settings": {"targets": ["encoder.*"], "mode": "lora", "r": 16, "alpha": 16, "train_bias": False}}}
    now = {"qpg_config": QPGConfig(targets=("encoder.*",), mode="lora", rank=16).to_dict(),
           "qpg": {"mode": "lora", "layers": [{}] * 3,
                   "settings": QPGConfig(targets=("encoder.*",), mode="lora", rank=16).to_dict()}}
    assert strategy_of(before) == strategy_of(now) == "ConvLoRA r=16"
    qpg = {"qpg": {"mode": "replace", "layers": [{}] * 6, "settings": QPGConfig(targets=("x",), post="sst").to_dict()}}
    assert strategy_of(qpg) == "QPGConv SST, 6 layer(s)" and strategy_of({"qpg": None}) == "classical"
    # a data-path block (nnUNetTrainerQLayer) is not "classical", alone or beside QPG layers
    block = {"name": "encoder.stages.4.1", "settings": {"circuits": 5, "qubits": 5, "embedding": "amplitude"}}
    assert strategy_of({"qpg": None, "data_path": [block]}) == "data-path 5x5q amplitude"
    assert strategy_of({**qpg, "data_path": [block]}) == "QPGConv SST, 6 layer(s) + data-path 5x5q amplitude"
