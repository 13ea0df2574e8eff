"""Parameter accounting: classic vs QPG parameters per swapped layer and trainable totals (paper Table 3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator

from torch import nn

from nnunet_qpg.layers import ConvLoRA, GeneratedKernelConv, QuantumKernelConv

__all__ = ["LayerRecord", "QPGReport", "count_trainable", "describe_layer"]


def count_trainable(model: nn.Module) -> int:
    """Trainable parameters of ``model``, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class LayerRecord:
    """One swapped convolution. ``aliases`` are its other qualified names (nnU-Net holds convs twice)."""

    name: str
    layer_type: str
    conv_type: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    classic_parameters: int
    qpg_parameters: int = 0
    post_processing_parameters: int = 0
    lora_parameters: int = 0
    lora_rank: int = 0
    lora_factorisation: str = ""  # ConvLoRA's fold: "loralib (k=3)", "largest side (k=3 of 1x3x3)"
    qubits: int = 0
    vqcs: int = 0
    blocks: int = 0
    post: str = ""
    aliases: list[str] = field(default_factory=list)

    @property
    def added_parameters(self) -> int:
        return self.qpg_parameters + self.post_processing_parameters + self.lora_parameters


def describe_layer(name: str, layer: GeneratedKernelConv, aliases: list[str] | None = None) -> LayerRecord:
    record = LayerRecord(
        name=name,
        layer_type=type(layer).__name__,
        conv_type=layer.conv_class.__name__,
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        kernel_size=tuple(layer.kernel_size),
        classic_parameters=layer.classic_parameter_count,
        aliases=list(aliases or []),
    )
    if isinstance(layer, QuantumKernelConv):
        record.qpg_parameters = layer.qpg_parameter_count
        record.post_processing_parameters = sum(p.numel() for p in layer.post.parameters())
        record.qubits = layer.num_qubits
        record.vqcs = layer.num_vqcs
        record.blocks = layer.blocks
        record.post = layer.post_name
    elif isinstance(layer, ConvLoRA):
        record.lora_parameters = layer.lora_A.numel() + layer.lora_B.numel()
        record.lora_rank = layer.r
        record.lora_factorisation = layer.factorisation
    return record


@dataclass
class QPGReport:
    """What ``apply_qpg`` swapped, with the model's trainable totals before and after."""

    mode: str
    layers: list[LayerRecord]
    trainable_before: int
    trainable_after: int
    settings: dict = field(default_factory=dict)

    def __iter__(self) -> Iterator[LayerRecord]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "settings": self.settings,
            "trainable_before": self.trainable_before,
            "trainable_after": self.trainable_after,
            "layers": [dict(asdict(layer), added_parameters=layer.added_parameters) for layer in self.layers],
        }

    def table(self) -> str:
        """A plain-text table: one row per swapped layer, then the totals.

        ConvLoRA layers add a column with the rank and the factorisation (which kernel side A and B fold on).
        """
        lora = any(layer.lora_factorisation for layer in self.layers)
        header = ["layer", "type", "C_in->C_out", "kernel", "classic", "added", "qubits", "VQCs"]
        if lora:
            header.append("LoRA factorisation")
        rows = []
        for layer in self.layers:
            row = [
                layer.name,
                layer.layer_type,
                f"{layer.in_channels}->{layer.out_channels}",
                "x".join(map(str, layer.kernel_size)),
                f"{layer.classic_parameters:,}",
                f"{layer.added_parameters:,}",
                str(layer.qubits) if layer.qubits else "-",
                f"{layer.vqcs:,}" if layer.vqcs else "-",
            ]
            if lora:
                row.append(f"r={layer.lora_rank}, {layer.lora_factorisation}" if layer.lora_factorisation else "-")
            rows.append(row)
        widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
                  for i in range(len(header))]
        numeric = {2, 3, 4, 5, 6, 7}

        def fmt(cells: list[str]) -> str:
            line = "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths)))
            return line.rstrip()

        classic = sum(layer.classic_parameters for layer in self.layers)
        added = sum(layer.added_parameters for layer in self.layers)
        totals = [f"{len(self.layers)} layers ({self.mode})", "", "", "", f"{classic:,}", f"{added:,}", "", ""]
        lines = [fmt(header), fmt(["-" * w for w in widths])]
        lines += [fmt(r) for r in rows]
        lines.append(fmt(["-" * w for w in widths]))
        lines.append(fmt(totals + [""] * (len(header) - len(totals))))
        ratio = self.trainable_after / self.trainable_before if self.trainable_before else float("nan")
        lines.append(f"trainable parameters: {self.trainable_before:,} before -> {self.trainable_after:,} after "
                     f"({ratio:.2%})")
        if lora:
            lines.append("LoRA: A [r*k, C_in*k], B [numel(W)/(C_in*k), r*k], k = the kernel side (loralib) or "
                         "the largest side of an anisotropic kernel")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
