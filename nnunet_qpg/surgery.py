"""Model surgery in the style of PEFT: swap chosen convolutions for QPG / adapter / LoRA layers, bake them back.

``apply_qpg(model, QPGConfig(targets=("decoder.seg_layers.*",)))``, or the keyword form
``apply_qpg(model, targets=["decoder.seg_layers.*"], mode="replace")``, replaces, in place, every convolution
whose qualified name matches one of the glob patterns, and every reference to it: nnU-Net's
``ConvDropoutNormReLU`` holds its convolution twice (``.conv`` and ``.all_modules.0``), and both must point at the
new layer or the forward pass would still run the old one. ``bake(model)`` turns the layers back into plain
convolutions carrying the generated kernels.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from typing import Any, Iterable, Sequence

from torch import nn

from nnunet_qpg.accounting import QPGReport, count_trainable, describe_layer
from nnunet_qpg.config import MODES, QPGConfig
from nnunet_qpg.generation_hooks import attach_network_generation
from nnunet_qpg.layers import CONV_TYPES, ConvLoRA, GeneratedKernelConv, QPGAConv, QPGConv, is_convolution

__all__ = [
    "MODES",
    "apply_qpg",
    "bake",
    "conv_listing",
    "find_layers",
    "find_modules",
    "mark_only_adapters_trainable",
    "matches",
    "module_names",
]

_GLOB_CHARACTERS = set("*?[")


def module_names(model: nn.Module) -> dict[int, list[str]]:
    """id(module) -> all qualified names under which ``model`` reaches it, the canonical (first) name first."""
    names: dict[int, list[str]] = defaultdict(list)
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            names[id(module)].append(name)
    return names


def matches(name: str, pattern: str) -> bool:
    """Whether the qualified module name ``name`` matches the glob ``pattern``."""
    # A bare name also matches as a suffix, as PEFT's target_modules do ("seg_layers.4" finds
    # "decoder.seg_layers.4").
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def conv_listing(model: nn.Module, limit: int = 60) -> str:
    """The model's convolutions by canonical name, for error messages and ``nnunet-qpg info --list``."""
    convs = [names[0] for names in _unique_modules(model, lambda m: is_convolution(m)).values()]
    shown = "\n  ".join(convs[:limit])
    more = f"\n  ... and {len(convs) - limit} more" if len(convs) > limit else ""
    return f"convolutions in this model ({len(convs)}):\n  {shown}{more}" if convs else "this model has no convolutions"


def _unique_modules(model: nn.Module, keep) -> dict[int, list[str]]:
    modules = {id(m): m for _, m in model.named_modules(remove_duplicate=False)}
    return {key: names for key, names in module_names(model).items() if keep(modules[key])}


def find_layers(model: nn.Module, targets: Sequence[str] | str) -> dict[str, nn.Module]:
    """The convolutions whose qualified names (any alias) match ``targets``, by first name.

    Raises ``ValueError`` when a pattern matches nothing, names a non-convolution module exactly, matches only
    non-convolution modules, or matches a layer that is already swapped.
    """
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise ValueError("targets is empty: give at least one glob pattern, e.g. 'decoder.seg_layers.*'")
    by_id = {id(m): m for _, m in model.named_modules(remove_duplicate=False)}
    all_names = module_names(model)
    selected: dict[str, nn.Module] = {}
    for pattern in targets:
        # Only the first (canonical) name counts: PlainConvUNet's decoder also reaches the encoder as
        # decoder.encoder, and "decoder.*" must not select encoder convolutions through that alias.
        hits = {key: names for key, names in all_names.items() if matches(names[0], pattern)}
        if not hits:
            raise ValueError(f"target pattern {pattern!r} matches no module. {conv_listing(model)}")
        swapped = [names[0] for key, names in hits.items() if isinstance(by_id[key], GeneratedKernelConv)]
        if swapped:
            raise ValueError(f"target pattern {pattern!r} matches layers that are already swapped: "
                             f"{', '.join(swapped[:5])}. Call bake(model) first to turn them back into convolutions.")
        convs = {key: names for key, names in hits.items() if is_convolution(by_id[key])}
        non_convs = [f"{names[0]} ({type(by_id[key]).__name__})" for key, names in hits.items() if key not in convs]
        explicit = not (_GLOB_CHARACTERS & set(pattern))
        if not convs or (explicit and non_convs):
            accepted = ", ".join(t.__name__ for t in CONV_TYPES)
            raise ValueError(f"target pattern {pattern!r} matches modules that are not convolutions: "
                             f"{', '.join(non_convs[:5])}. QPG swaps only {accepted}. {conv_listing(model)}")
        for key, names in convs.items():
            selected.setdefault(names[0], by_id[key])
    return selected


def find_modules(model: nn.Module, patterns: Iterable[str]) -> None:
    """Raise ``ValueError`` if one of ``patterns`` (e.g. ``train_only``) names no module at all."""
    names = [name for name, _ in model.named_modules()]
    for pattern in patterns:
        if not any(matches(name, pattern) for name in names):
            raise ValueError(f"pattern {pattern!r} matches no module. {conv_listing(model)}")


def _replace_references(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in list(model.modules()):
        for child_name, child in parent._modules.items():
            if child is old:
                parent._modules[child_name] = new


def _build(config: QPGConfig, conv: nn.Module) -> GeneratedKernelConv:
    circuits = dict(shots=config.shots, gradient=config.gradient, noise=config.noise, entangle=config.entangle)
    if config.mode == "replace":
        return QPGConv.from_conv(conv, post=config.post, blocks=config.blocks, **circuits)
    if config.mode == "adapter":
        return QPGAConv.from_conv(conv, post=config.post, blocks=config.blocks, start_at_base=config.start_at_base,
                                  train_bias=config.train_bias, **circuits)
    return ConvLoRA.from_conv(conv, r=config.rank, alpha=config.alpha, train_bias=config.train_bias)


def apply_qpg(model: nn.Module, config: QPGConfig | Sequence[str] | str | None = None, /,
              **settings: Any) -> QPGReport:
    """Swap, in place, the convolutions of ``model`` that ``config`` names, and freeze as it says.

    Two forms (PEFT's ``get_peft_model(model, LoraConfig(...))`` and the keyword form)::

        apply_qpg(model, QPGConfig(targets=("decoder.seg_layers.*",), mode="replace", post="lpp"))
        apply_qpg(model, targets=["decoder.seg_layers.*"], mode="replace", post="lpp", blocks=1)

    Keywords (see :class:`~nnunet_qpg.config.QPGConfig`): ``targets`` (glob patterns over qualified module names;
    may also be given positionally), ``mode`` ('replace' QPGConv, 'adapter' QPGAConv, 'lora' ConvLoRA), ``post``
    ('rce', 'lpp', 'sst'), ``blocks`` (K), ``r`` and ``alpha`` (LoRA), ``start_at_base``, ``train_bias``,
    ``train_only`` (freeze all but the adapters and these modules), ``shots``, ``gradient`` ('backprop',
    'parameter-shift'), ``noise`` (a NoiseModel) and ``entangle`` (SPEC section 7, QPG modes only).

    Returns a :class:`QPGReport` listing the swapped layers with the parameter accounting; ``report.settings``
    is the config as a dict.
    """
    if isinstance(config, QPGConfig):
        if settings:
            raise TypeError(f"give either a QPGConfig or keyword settings, not both (got {', '.join(settings)})")
    else:
        if config is not None:
            if "targets" in settings:
                raise TypeError("targets given twice (positionally and as a keyword)")
            settings["targets"] = config
        if "targets" not in settings:
            raise TypeError("apply_qpg needs a QPGConfig or targets=[glob patterns]")
        config = QPGConfig.from_keywords(**settings)
    trainable_before = count_trainable(model)
    chosen = find_layers(model, config.targets)
    if config.train_only is not None:
        find_modules(model, config.train_only)
    aliases = module_names(model)
    records = []
    for name, conv in chosen.items():
        layer = _build(config, conv)
        layer.train(conv.training)
        names = aliases[id(conv)]
        _replace_references(model, conv, layer)
        records.append(describe_layer(name, layer, names[1:]))
    if config.train_only is not None:
        mark_only_adapters_trainable(model, also_train=config.train_only)
    attach_network_generation(model)
    return QPGReport(mode=config.mode, layers=records, trainable_before=trainable_before,
                     trainable_after=count_trainable(model), settings=config.to_dict())


def bake(model: nn.Module) -> list[str]:
    """Turn every QPG / adapter / LoRA layer of ``model`` back into a plain convolution, in place.

    Each new convolution carries the generated kernel (``generate_weight()``) and the layer's bias, so the
    baked model computes what the QPG model computes. Returns the qualified names of the baked layers.
    """
    baked = []
    for name, layer in list(model.named_modules()):
        if isinstance(layer, GeneratedKernelConv):
            _replace_references(model, layer, layer.to_conv())
            baked.append(name)
    attach_network_generation(model)  # refreshes the layer list; detaches when no QPG layer is left
    return baked


def mark_only_adapters_trainable(model: nn.Module, also_train: Iterable[str] = ()) -> int:
    """Freeze everything but the QPG / LoRA parameters and the modules matching ``also_train`` (glob patterns).

    The loralib / PEFT convention for fine-tuning. Returns the number of trainable parameters left.
    """
    patterns = list(also_train)
    # Adapter layers already froze their base kernel (and bias, unless train_bias) when they were built.
    adapter_params = {id(p) for m in model.modules() if isinstance(m, GeneratedKernelConv) for p in m.parameters()}
    for param in model.parameters():
        if id(param) not in adapter_params:
            param.requires_grad_(False)
    for name, module in model.named_modules():
        if patterns and any(matches(name, p) for p in patterns):
            for param in module.parameters():
                param.requires_grad_(True)
    return count_trainable(model)
