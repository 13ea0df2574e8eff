"""Post-processing: VQC outputs to classical weights (paper Eqs. 3-5, SPEC section 2).

Each strategy is a small module that names what it reads of the final states (``readout``: ``"real"`` for
Re(psi_i), ``"probabilities"`` for p_i = |psi_i|^2, of the first M basis states of every VQC) and maps that
``[num_vqcs, M]`` tensor to real weights of the same shape. The simulator computes only that readout.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "POST_PROCESSING",
    "PostProcessing",
    "RealComponentExtraction",
    "LinearProbabilityProjection",
    "ShiftScaleTransformation",
    "make_post_processing",
]


class PostProcessing(nn.Module):
    """Base class. ``name`` is the short name used in configs, ``readout`` what it reads of the final state."""

    name: str = ""
    readout: str = ""

    def forward(self, values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def affine(self, dtype: torch.dtype) -> tuple[torch.Tensor | float, torch.Tensor | None] | None:
        """``(scale, offset)`` with ``forward(v) == scale * v + offset`` (offset ``[M]`` or None), or None.

        Lets the one-block kernel path fold the strategy into its fused pass (see ``ring_outer_product``).
        """
        return None

    def coefficient_count(self) -> int | None:
        """Length of :meth:`coefficients` (n + 2), or None when the strategy has none."""
        return None

    def coefficients(self, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor] | None:
        """Tensors whose concatenation is ``[w_p, w_0, ..., w_{n-1}, b]`` with ``forward(p)_i = w_p p_i +
        sum_k w_k d_k(i) + b`` (Eq. 4's form), or None when the strategy is not of that form (RCE).

        The network generator (:mod:`nnunet_qpg.simulator.network`) concatenates every layer's coefficients into
        one tensor per step, so a strategy hands over its parameters themselves (autograd reaches them).
        """
        return None


class RealComponentExtraction(PostProcessing):
    """RCE, Eq. 3: y_i = Re(psi_i). No trainable parameters."""

    name = "rce"
    readout = "real"

    def forward(self, real_parts: torch.Tensor) -> torch.Tensor:
        return real_parts


class ShiftScaleTransformation(PostProcessing):
    """SST, Eq. 5: y_i = (pi/2)(p_i - 0.5), values in [-pi/4, pi/4]. No trainable parameters."""

    name = "sst"
    readout = "probabilities"

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        return (math.pi / 2) * (probabilities - 0.5)

    def __init__(self, num_outputs: int | None = None) -> None:
        super().__init__()
        self.num_outputs = num_outputs
        self._coefficient_rows: dict[tuple, torch.Tensor] = {}

    def affine(self, dtype: torch.dtype) -> tuple[float, torch.Tensor | None] | None:
        if self.num_outputs is None:
            return None
        return math.pi / 2, torch.full((self.num_outputs,), -math.pi / 4, dtype=dtype)

    def coefficient_count(self) -> int | None:
        return None if self.num_outputs is None else max(1, (self.num_outputs - 1).bit_length()) + 2

    def coefficients(self, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor] | None:
        count = self.coefficient_count()
        if count is None:
            return None
        key = (dtype, str(device))
        if key not in self._coefficient_rows:  # a constant: built once per dtype and device, never per step
            with torch.inference_mode(False):
                values = [math.pi / 2] + [0.0] * (count - 2) + [-math.pi / 4]
                self._coefficient_rows[key] = torch.tensor(values, dtype=dtype, device=device)
        return [self._coefficient_rows[key]]


class LinearProbabilityProjection(PostProcessing):
    """LPP, Eq. 4: y_i = w . [p_i, d_0, ..., d_{n-1}] + b, with d_k the k-th bit of i (d_0 least significant).

    One ``Linear(n + 1 -> 1)`` per layer, shared by all its VQCs: n + 2 trainable parameters.
    """

    name = "lpp"
    readout = "probabilities"

    def __init__(self, num_qubits: int, num_outputs: int) -> None:
        super().__init__()
        if num_outputs > 1 << num_qubits:
            raise ValueError(f"{num_outputs} outputs do not fit in the 2^{num_qubits} amplitudes of {num_qubits} qubits")
        self.num_qubits = num_qubits
        self.projection = nn.Linear(num_qubits + 1, 1)
        index = torch.arange(num_outputs)
        bits = torch.stack([(index >> k) & 1 for k in range(num_qubits)], dim=-1)
        # Not persistent: it is a function of the shape, so checkpoints stay free of it.
        self.register_buffer("bits", bits.to(torch.get_default_dtype()), persistent=False)

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        p = probabilities
        weight = self.projection.weight[0].to(p.dtype)
        bias = self.projection.bias[0].to(p.dtype)
        # The bit term is the same for every VQC: [M] broadcast over [num_vqcs, M]. One fused pass over the
        # [num_vqcs, M] values (addcmul) instead of three: this runs on every kernel of the layer each step.
        offset = self.bits.to(p.dtype) @ weight[1:] + bias
        return torch.addcmul(offset, p, weight[0])

    def coefficient_count(self) -> int:
        return self.num_qubits + 2

    def coefficients(self, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        return [self.projection.weight.view(-1), self.projection.bias]

    def affine(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4 as scale * p_i + offset_i: scale = w_0, offset_i = w_1.. . bits(i) + b (differentiable)."""
        weight = self.projection.weight[0].to(dtype)
        return weight[0], self.bits.to(dtype) @ weight[1:] + self.projection.bias[0].to(dtype)


POST_PROCESSING: dict[str, str] = {
    "rce": "Real Component Extraction, Eq. 3: Re(psi_i); no extra parameters",
    "lpp": "Linear Probability Projection, Eq. 4: Linear([p_i, bits of i]); n+2 extra parameters per layer",
    "sst": "Shift and Scale Transformation, Eq. 5: (pi/2)(p_i - 0.5); no extra parameters",
}


def make_post_processing(name: str, num_qubits: int, num_outputs: int) -> PostProcessing:
    """Build the strategy called ``name`` ('rce', 'lpp' or 'sst') for one layer."""
    key = str(name).lower()
    if key == "rce":
        return RealComponentExtraction()
    if key == "sst":
        return ShiftScaleTransformation(num_outputs)
    if key == "lpp":
        return LinearProbabilityProjection(num_qubits, num_outputs)
    accepted = ", ".join(f"'{k}' ({v})" for k, v in POST_PROCESSING.items())
    raise ValueError(f"unknown post-processing {name!r}; accepted: {accepted}")
