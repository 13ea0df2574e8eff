"""A data-path circuit block at an nnU-Net network's bottleneck (SPEC section 8), and what it costs at inference.

:class:`QuantumBottleneck` runs per voxel of the bottleneck feature map: the voxel's C channels -> a
:class:`~nnunet_qpg.quantum_layer.QuantumLayer` (its projection onto the circuits' inputs, the circuits, the
expectations) -> a linear map back to C channels, added to the features (a residual). The map back starts at
zero, as LoRA's B does, so a freshly placed block leaves the network's output unchanged and training decides how
much the circuits contribute.

:func:`place_quantum_bottleneck` appends the block to the last encoder stage (the deepest features, before the
decoder reads them), which both ``PlainConvUNet`` and ``ResidualEncoderUNet`` keep in ``encoder.stages``.
:class:`QuantumBlockConfig` is the one settings object a trainer declares (``nnUNetTrainerQLayer``).

The point of the comparison with QPG: this block's circuits take every voxel's features as input, so every
predicted image costs circuit executions (:func:`data_path_cost`: bottleneck voxels x circuits x sliding-window
tiles x mirrorings), where a baked QPG network costs none.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from nnunet_qpg.quantum_layer import QuantumLayer, check_layer_settings

__all__ = ["DataPathCost", "QuantumBlockConfig", "QuantumBottleneck", "bottleneck_channels", "data_path_cost",
           "data_path_report", "data_path_summary", "find_quantum_layers", "place_quantum_bottleneck"]


@dataclass(frozen=True)
class QuantumBlockConfig:
    """The settings of a :class:`QuantumBottleneck` (those of its :class:`QuantumLayer`), validated on creation."""

    qubits: int = 5
    circuits: int = 5
    depth: int = 2
    embedding: str = "amplitude"
    readout: str = "Y"
    entangler: str = "ring"
    max_fragment_qubits: int | None = None
    shots: int | None = None
    gradient: str = "backprop"

    def __post_init__(self) -> None:
        check_layer_settings(**self.to_dict())

    def replace(self, **changes) -> "QuantumBlockConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def layer(self, in_features: int) -> QuantumLayer:
        return QuantumLayer(in_features, **self.to_dict())


class QuantumBottleneck(nn.Module):
    """x + back(QuantumLayer(x)) per voxel of a feature map ``[B, C, *spatial]`` (module docstring)."""

    def __init__(self, channels: int, config: QuantumBlockConfig) -> None:
        super().__init__()
        self.config = config
        self.quantum = config.layer(channels)
        self.back = nn.Linear(self.quantum.out_features, channels)
        nn.init.zeros_(self.back.weight)
        nn.init.zeros_(self.back.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x.movedim(1, -1)  # [B, *spatial, C]: one input per voxel
        out = self.back(self.quantum(features.reshape(-1, features.shape[-1])).to(features.dtype))
        return x + out.view(features.shape).movedim(-1, 1)

    @property
    def parameter_counts(self) -> dict[str, int]:
        """Trainable sizes: projection in, circuit weights, map back."""
        projection = self.quantum.projection
        return {"projection": projection.weight.numel() + projection.bias.numel(),
                "circuit_weights": self.quantum.circuit_parameters,
                "back": self.back.weight.numel() + self.back.bias.numel()}


def bottleneck_channels(network: nn.Module) -> int:
    """Channels of the last encoder stage of ``network``, where :func:`place_quantum_bottleneck` puts the block;
    ``ValueError`` naming the architecture if it has no ``encoder.stages``."""
    encoder = getattr(network, "encoder", None)
    stages = getattr(encoder, "stages", None)
    channels = getattr(encoder, "output_channels", None)
    if not isinstance(stages, nn.Sequential) or len(stages) == 0 or not channels:
        raise ValueError(f"{type(network).__name__} has no encoder.stages; a data-path block is placed after the "
                         f"last encoder stage of nnU-Net's PlainConvUNet or ResidualEncoderUNet")
    return int(channels[-1])


def place_quantum_bottleneck(network: nn.Module, config: QuantumBlockConfig) -> tuple[str, QuantumBottleneck]:
    """Append a :class:`QuantumBottleneck` to the last encoder stage of ``network`` (in place); returns its
    qualified name and the block. The stage's own weights keep their names when it is an ``nn.Sequential``."""
    block = QuantumBottleneck(bottleneck_channels(network), config)
    stages = network.encoder.stages
    last = len(stages) - 1
    stage = stages[last]
    if isinstance(stage, nn.Sequential):
        stage.append(block)
        name = f"encoder.stages.{last}.{len(stage) - 1}"
    else:
        stages[last] = nn.Sequential(stage, block)
        name = f"encoder.stages.{last}.1"
    return name, block


def find_quantum_layers(network: nn.Module) -> list[tuple[str, QuantumLayer]]:
    """Every :class:`QuantumLayer` of ``network`` (data-path circuits, which cannot be baked away)."""
    return [(name, module) for name, module in network.named_modules() if isinstance(module, QuantumLayer)]


@dataclass
class DataPathCost:
    """Circuit executions of one block at inference (SPEC section 8: what QPG avoids)."""

    bottleneck_shape: tuple[int, ...]  # voxels of the bottleneck map for one patch
    executions_per_input: int          # per voxel: circuits (x fragment executions when cut)
    image_size: tuple[int, ...]
    tiles: int                         # sliding-window patches per image (nnU-Net's step size 0.5)
    mirrorings: int                    # forward passes per patch with nnU-Net's default test-time mirroring
    shots: int | None

    @property
    def executions_per_forward(self) -> int:
        return math.prod(self.bottleneck_shape) * self.executions_per_input

    @property
    def executions_per_image(self) -> int:
        return self.executions_per_forward * self.tiles * self.mirrorings

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "executions_per_forward": self.executions_per_forward,
                "executions_per_image": self.executions_per_image}


def data_path_cost(layer: QuantumLayer, patch_size: Sequence[int], strides: Sequence[Sequence[int] | int],
                   image_size: Sequence[int], mirroring: bool = True, tile_step_size: float = 0.5) -> DataPathCost:
    """Executions of ``layer`` (at the bottleneck) per predicted image of ``image_size``, as ``nnUNetv2_predict``
    tiles it: ``patch_size`` patches with nnU-Net's sliding-window steps, each predicted 2^dims times with
    mirroring on (nnU-Net's default test-time augmentation), the bottleneck ``patch / prod(strides)`` voxels."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    dims = len(patch_size)
    downsampling = [1] * dims
    for stride in strides:
        per_axis = [stride] * dims if isinstance(stride, int) else list(stride)
        downsampling = [d * s for d, s in zip(downsampling, per_axis)]
    bottleneck = tuple(max(1, p // d) for p, d in zip(patch_size, downsampling))
    padded = [max(i, p) for i, p in zip(image_size, patch_size)]  # nnU-Net pads images smaller than a patch
    steps = compute_steps_for_sliding_window(padded, list(patch_size), tile_step_size)
    return DataPathCost(bottleneck, layer.executions_per_input, tuple(int(i) for i in image_size),
                        math.prod(len(s) for s in steps), 2 ** dims if mirroring else 1, layer.shots)


def data_path_summary(name: str, block: QuantumBottleneck, cost: DataPathCost) -> dict:
    """A block as ``qpg_settings.json`` and the commands' ``--json`` record it: name, settings, parameters, cost."""
    return {"name": name, "settings": block.config.to_dict(), "parameters": block.parameter_counts,
            "cost": cost.to_dict()}


def data_path_report(name: str, block: QuantumBottleneck, cost: DataPathCost | None = None) -> str:
    """The lines the training log and ``nnunet-qpg info`` print for a block: parameters and executions."""
    counts = block.parameter_counts
    lines = [f"data-path circuits at {name}: {block.quantum.describe()}",
             f"  trainable parameters: {sum(counts.values()):,} (projection {counts['projection']:,}, circuit "
             f"weights {counts['circuit_weights']:,}, map back {counts['back']:,})"]
    if cost is not None:
        size = "x".join(str(s) for s in cost.image_size)
        per_input = cost.executions_per_input
        lines += [f"  circuit executions per forward pass: {cost.executions_per_forward:,} "
                  f"({'x'.join(map(str, cost.bottleneck_shape))} bottleneck voxels x {per_input})",
                  f"  circuit executions per predicted {size} image: {cost.executions_per_image:,} "
                  f"({cost.tiles} patch(es) x {cost.mirrorings} mirrorings; a baked QPG network needs none)"]
        if cost.shots is not None:
            lines.append(f"  on a device at {cost.shots:,} shots each: {cost.executions_per_image * cost.shots:,} "
                         f"shots per image")
    return "\n".join(lines)
