"""Convolutions whose kernel is generated: QPGConv, QPGAConv (paper Eqs. 6-9) and ConvLoRA (the comparator).

Every layer is built from an existing ``nn.ConvNd`` / ``nn.ConvTransposeNd`` (``from_conv``), behaves as that
convolution (stride, padding, dilation, groups, bias, padding mode, output padding), exposes
``generate_weight()`` with exactly the wrapped weight's shape, and turns back into the plain convolution
with ``to_conv()`` ("baking").

In eval mode without grad the generated kernel is cached until any of the layer's tensors changes value (an
optimizer step, ``.to()``, ``load_state_dict`` of different weights) or the layer goes back to training, so
inference costs what the plain convolution costs. nnU-Net's predictor reloads the same state dict before every
image; that bumps the tensors' versions but not their values, and the cache survives it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_qpg.postprocessing import POST_PROCESSING, PostProcessing, make_post_processing
from nnunet_qpg.simulator import KernelLayout, SourceOrderBase, check_backend, generate_kernel, one_block_fusable
from nnunet_qpg.simulator.measurement import Execution, check_measurable
from nnunet_qpg.simulator.noise import NoiseModel

__all__ = ["CONV_TYPES", "ConvLoRA", "GeneratedKernelConv", "QPGAConv", "QPGConv", "QuantumKernelConv", "is_convolution"]

CONV_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE_FUNCTIONS = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def is_convolution(module: nn.Module) -> bool:
    """True for the plain torch convolutions QPG can wrap (Conv1d/2d/3d, ConvTranspose1d/2d/3d)."""
    return isinstance(module, CONV_TYPES)


class GeneratedKernelConv(nn.Module):
    """A convolution whose kernel comes from ``generate_weight()``; the bias stays an ordinary parameter."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        if not is_convolution(conv):
            accepted = ", ".join(t.__name__ for t in CONV_TYPES)
            raise TypeError(f"{type(conv).__name__} is not a convolution; accepted: {accepted}")
        self.conv_class: type[nn.Module] = type(conv)
        self.transposed: bool = bool(conv.transposed)
        self.num_spatial_dims: int = conv.weight.dim() - 2
        self.in_channels: int = conv.in_channels
        self.out_channels: int = conv.out_channels
        self.kernel_size: tuple[int, ...] = tuple(conv.kernel_size)
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.groups: int = conv.groups
        self.output_padding = conv.output_padding
        self.padding_mode: str = conv.padding_mode
        self._reversed_padding_repeated_twice = getattr(conv, "_reversed_padding_repeated_twice", None)
        self.weight_shape: torch.Size = conv.weight.shape
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        # (state key, kernel, snapshot of the tensors' values the kernel was generated from)
        self._cached_kernel: tuple[tuple, torch.Tensor, tuple[torch.Tensor, ...]] | None = None
        # Set by the network's pre-forward hook (nnunet_qpg.generation_hooks), read once by this forward pass.
        self._pending_kernel: torch.Tensor | None = None

    # Whether torch.compile may trace generate_weight() in training (plain tensor algebra, e.g. ConvLoRA).
    traceable_generation: bool = False

    # -- the kernel --------------------------------------------------------------------------------------------
    def generate_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def classic_parameter_count(self) -> int:
        """Number of kernel weights a classically trained layer would train (the paper's 'classic' count)."""
        return math.prod(self.weight_shape)

    @property
    def added_parameter_count(self) -> int:
        """Trainable parameters this layer adds in place of (or on top of) the kernel."""
        return sum(p.numel() for name, p in self.named_parameters() if name != "bias" and p.requires_grad)

    def _state_tensors(self) -> tuple[torch.Tensor, ...]:
        return (*self.parameters(), *self.buffers())

    def _state_key(self) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype) for t in self._state_tensors())

    def _values_unchanged(self, snapshot: tuple[torch.Tensor, ...]) -> bool:
        """True when every tensor still holds exactly the snapshot's values (same shape, dtype and device)."""
        current = self._state_tensors()
        return len(current) == len(snapshot) and all(
            t.shape == s.shape and t.dtype == s.dtype and t.device == s.device and torch.equal(t, s)
            for t, s in zip(current, snapshot))

    def kernel(self) -> torch.Tensor:
        """The kernel for this forward pass: generated with autograd, or cached in eval mode without grad.

        When the whole network generated its kernels before this pass (``nnunet_qpg.generation_hooks``, one
        batched call for every QPG layer), this layer takes its kernel from there; torch.compile reads it as a
        graph input, so no layer breaks the graph.
        """
        pending = self._pending_kernel
        if pending is not None:
            self._pending_kernel = None
            return pending
        if self.traceable_generation and (self.training or torch.is_grad_enabled()):
            return self._generate_in_full_precision()
        return self._kernel_outside_graph()

    @torch.compiler.disable
    def _kernel_outside_graph(self) -> torch.Tensor:
        # Kept out of torch.compile graphs: the cache check reads tensor versions, which graphs cannot guard on.
        if self.training or torch.is_grad_enabled():
            self._cached_kernel = None
            return self._generate_in_full_precision()
        key = self._state_key()
        cached = self._cached_kernel
        if cached is not None and cached[0] != key and self._values_unchanged(cached[2]):
            # Rewritten with the same values (nnU-Net's predictor loads the state dict before every image):
            # comparing costs one read of the layer's tensors, regenerating costs a simulation.
            cached = self._cached_kernel = (key, cached[1], cached[2])
        if cached is None or cached[0] != key:
            snapshot = tuple(t.detach().clone() for t in self._state_tensors())
            cached = self._cached_kernel = (key, self._generate_in_full_precision(), snapshot)
        return cached[1]

    def _generate_in_full_precision(self) -> torch.Tensor:
        # Autocast would run the state-vector matmuls in half precision; the kernel is tiny, keep it exact.
        device_type = self.theta_device().type
        with torch.autocast(device_type=device_type, enabled=False):
            return self.generate_weight()

    def theta_device(self) -> torch.device:
        return next(self.parameters()).device

    def train(self, mode: bool = True) -> "GeneratedKernelConv":
        # Only training drops the cache: nnU-Net's predictor calls .eval() before every image, and an eval
        # kernel stays valid while the tensors keep their values (which kernel() checks anyway).
        if mode:
            self._cached_kernel = None
        return super().train(mode)

    # -- behave as the wrapped convolution ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        weight = self.kernel()
        if weight.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            weight = weight.to(x.dtype)
        bias = self.bias
        if self.transposed:
            output_padding = nn.modules.conv._ConvTransposeNd._output_padding(
                self, x, output_size, self.stride, self.padding, self.kernel_size, self.num_spatial_dims,
                self.dilation,
            )
            conv_transpose = _CONV_TRANSPOSE_FUNCTIONS[self.num_spatial_dims]
            return conv_transpose(x, weight, bias, self.stride, self.padding, output_padding, self.groups,
                                  self.dilation)
        conv = _CONV_FUNCTIONS[self.num_spatial_dims]
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def to_conv(self) -> nn.Module:
        """Bake: the plain convolution this layer replaced, with the generated kernel as its weight."""
        kwargs: dict[str, Any] = dict(
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
            bias=self.bias is not None, padding_mode=self.padding_mode,
        )
        if self.transposed:
            kwargs["output_padding"] = self.output_padding
        reference = next(self.parameters())
        conv = self.conv_class(self.in_channels, self.out_channels, self.kernel_size, **kwargs,
                               device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.generate_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        conv.train(self.training)
        return conv

    def extra_repr(self) -> str:
        return (f"{self.conv_class.__name__}({self.in_channels}, {self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, groups={self.groups}, "
                f"bias={self.bias is not None})")


class QuantumKernelConv(GeneratedKernelConv):
    """Shared QPG machinery: one VQC per (target channel, kernel position), Eqs. 6-9 and SPEC section 3.

    The weight's input- and output-channel sizes C_in, C_out (for a convolution ``weight.shape[1]`` and
    ``[0]``, for a transposed convolution ``[0]`` and ``[1]``) decide the targets (Eq. 8): input channels when
    C_in <= C_out, else output channels. Each VQC has n = max(1, ceil(log2 C_other)) qubits and fills its target
    channel's weights at its kernel position along the other channel axis with its first C_other outputs.
    """

    def __init__(self, conv: nn.Module, post: str = "lpp", blocks: int = 1, shots: int | None = None,
                 gradient: str = "backprop", noise: NoiseModel | None = None, entangle: bool = True) -> None:
        super().__init__(conv)
        if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1:
            raise ValueError(f"blocks must be an integer >= 1 (the paper uses 1), got {blocks!r}")
        if str(post).lower() not in POST_PROCESSING:
            make_post_processing(post, 1, 1)  # raises the message that lists the accepted names
        self.execution = Execution(shots=shots, gradient=gradient, noise=noise, entangle=entangle)
        check_measurable("real" if str(post).lower() == "rce" else "probabilities", self.execution,
                         f"{type(self).__name__}")
        # Eval mode and baking read the exact distribution (the expectation of what training sampled) unless
        # this is set: then eval forward passes sample too.
        self.sample_in_eval: bool = False
        self.layout = KernelLayout(tuple(self.weight_shape), self.transposed)
        self.target_axis: int = self.layout.target_axis
        self.other_axis: int = 1 - self.target_axis
        self.target_channels: int = self.layout.target_channels
        self.other_channels: int = self.layout.other_channels
        self.num_qubits: int = self.layout.num_qubits
        self.num_vqcs: int = self.layout.num_vqcs
        self.blocks: int = blocks
        self.post_name: str = str(post).lower()
        reference = conv.weight
        # Uniform in [0, 1): the paper warns against angles at or near zero.
        self.theta = nn.Parameter(
            torch.rand(self.num_vqcs, blocks, 2, self.num_qubits, device=reference.device, dtype=reference.dtype)
        )
        self.post: PostProcessing = make_post_processing(self.post_name, self.num_qubits, self.other_channels)
        self.post.to(device=reference.device, dtype=reference.dtype)
        self.backend: str = "native"

    def set_backend(self, backend: str) -> None:
        """Simulate with ``"native"`` (default, batched), ``"torchquantum"`` (gate by gate, for comparison) or
        another registered backend (:func:`nnunet_qpg.simulator.backend_names`)."""
        check_backend(backend)
        self.backend = backend

    @property
    def qpg_parameter_count(self) -> int:
        """The paper's QPG parameter count: the number of VQC angles."""
        return self.theta.numel()

    @property
    def shots(self) -> int | None:
        """Samples per circuit per training forward pass; None: exact probabilities."""
        return self.execution.shots

    @property
    def gradient(self) -> str:
        """``"backprop"`` or ``"parameter-shift"`` (:data:`~nnunet_qpg.simulator.measurement.GRADIENTS`)."""
        return self.execution.gradient

    @property
    def noise(self) -> NoiseModel | None:
        return self.execution.noise

    @property
    def entangle(self) -> bool:
        """False: the CNOT ring is left out of Eq. 1 (the ablation that tells what entanglement contributes)."""
        return self.execution.entangle

    def execution_now(self) -> Execution:
        """How this pass runs the circuits: as configured while training with grad (or with ``sample_in_eval``);
        otherwise from the exact distribution of the same (noisy) circuits, which is what eval mode and baking
        use: the expectation of the sampled kernels training saw."""
        if self.sample_in_eval or (self.training and torch.is_grad_enabled()):
            return self.execution
        return self.execution.exact_distribution()

    def fused_one_block(self) -> bool:
        """Whether generation takes the fused one-block pass (the paper's K = 1 on the native backend)."""
        return self.execution.is_exact and one_block_fusable(self.blocks, self.num_qubits, self.post,
                                                             self.theta.dtype, self.backend)

    def quantum_kernel(self) -> torch.Tensor:
        """The generated tensor of Eq. 6 / Eq. 8, shaped like the wrapped convolution's weight."""
        return generate_kernel(self.theta, self.layout, self.post, backend=self.backend,
                               execution=self.execution_now())

    def circuits_qasm(self) -> list[str]:
        """One OpenQASM 2 program per VQC, in VQC order (``theta``'s first axis), as SPEC section 7 writes them."""
        from nnunet_qpg.simulator.qasm import vqcs_qasm

        return vqcs_qasm(self.theta.detach(), entangle=self.entangle)

    def kernel_from_counts(self, counts) -> torch.Tensor:
        """The weight rebuilt from measured counts, one dict per VQC in VQC order (Qiskit's ``get_counts()`` of
        :meth:`circuits_qasm`'s programs: classical bit 0 rightmost). Returns what :meth:`generate_weight`
        returns (for QPGAConv W plus the increment); the noise model's readout mitigation is applied if set."""
        from nnunet_qpg.simulator.noise import mitigate_readout_error
        from nnunet_qpg.simulator.qasm import probabilities_from_counts

        check_measurable(self.post.readout, Execution(shots=1), f"{type(self).__name__}.kernel_from_counts")
        probabilities = probabilities_from_counts(counts, self.num_qubits, expected=self.num_vqcs)
        probabilities = probabilities.to(device=self.theta.device, dtype=self.theta.dtype)
        noise = self.noise
        if noise is not None and noise.mitigate_readout and noise.has_readout_error:
            probabilities = mitigate_readout_error(probabilities, self.num_qubits, noise)
        with torch.no_grad():
            values = self.post(probabilities[:, :self.other_channels])
            return self.weight_from_generated(self.layout.from_vqc_rows(values))

    def extra_repr(self) -> str:
        execution = "" if self.execution.is_exact else f", execution={self.execution.describe()!r}"
        return (f"{super().extra_repr()}, post={self.post_name!r}, blocks={self.blocks}, "
                f"vqcs={self.num_vqcs}, qubits={self.num_qubits}{execution}")


class QPGConv(QuantumKernelConv):
    """QPGConv (Eqs. 6, 8): the kernel IS the VQC-generated tensor; the bias stays classical and trainable."""

    @classmethod
    def from_conv(cls, conv: nn.Module, post: str = "lpp", blocks: int = 1, shots: int | None = None,
                  gradient: str = "backprop", noise: NoiseModel | None = None, entangle: bool = True) -> "QPGConv":
        return cls(conv, post=post, blocks=blocks, shots=shots, gradient=gradient, noise=noise, entangle=entangle)

    def generate_weight(self) -> torch.Tensor:
        return self.quantum_kernel()

    def weight_from_generated(self, generated: torch.Tensor) -> torch.Tensor:
        """Eq. 6: the kernel is the generated tensor (made contiguous: it may come as a view in weight layout)."""
        return generated.contiguous()


class QPGAConv(QuantumKernelConv):
    """QPGAConv (Eqs. 7, 9): W' = W + generated tensor, with W the frozen base kernel (pretrained or initial).

    ``start_at_base=True`` subtracts the increment's value at initialisation (kept as the buffer
    ``initial_increment``), so the layer starts exactly at the base function. Off by default: the paper does
    not do it. The bias is frozen with the base kernel unless ``train_bias=True``.
    """

    def __init__(self, conv: nn.Module, post: str = "lpp", blocks: int = 1, start_at_base: bool = False,
                 train_bias: bool = False, shots: int | None = None, gradient: str = "backprop",
                 noise: NoiseModel | None = None, entangle: bool = True) -> None:
        super().__init__(conv, post=post, blocks=blocks, shots=shots, gradient=gradient, noise=noise,
                         entangle=entangle)
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        if self.bias is not None:
            self.bias.requires_grad_(train_bias)
        self.start_at_base = start_at_base
        self._base_source = SourceOrderBase()
        if start_at_base:
            with torch.no_grad():
                self.register_buffer("initial_increment", self.quantum_kernel().detach().clone())

    @classmethod
    def from_conv(cls, conv: nn.Module, post: str = "lpp", blocks: int = 1, start_at_base: bool = False,
                  train_bias: bool = False, shots: int | None = None, gradient: str = "backprop",
                  noise: NoiseModel | None = None, entangle: bool = True) -> "QPGAConv":
        return cls(conv, post=post, blocks=blocks, start_at_base=start_at_base, train_bias=train_bias, shots=shots,
                   gradient=gradient, noise=noise, entangle=entangle)

    def generate_weight(self) -> torch.Tensor:
        base = (self.weight, self.initial_increment) if self.start_at_base else (self.weight,)
        if self.fused_one_block() and not self.weight.requires_grad:
            # Eq. 7 in one fused pass: W + increment without forming the increment.
            base_source = self._base_source.get(self.layout, *base)
            return generate_kernel(self.theta, self.layout, self.post, backend=self.backend, base_source=base_source)
        return self.weight_from_generated(self.quantum_kernel())

    def weight_from_generated(self, generated: torch.Tensor) -> torch.Tensor:
        """Eq. 7: W' = W + generated tensor (minus its initial value with ``start_at_base``)."""
        if self.start_at_base:
            return self.weight + (generated - self.initial_increment)
        return self.weight + generated


class ConvLoRA(GeneratedKernelConv):
    """ConvLoRA as loralib defines it (SPEC section 4): W' = W + (B @ A).view(W.shape) * alpha / r.

    The kernel is folded on one kernel side k: the weight W (``[C_out, C_in/groups, *kernel]``, or
    ``[C_in, C_out/groups, *kernel]`` for a transposed convolution) is read, row-major, as a matrix
    ``[numel(W) / (C_in*k), C_in*k]`` and its increment factors as ``lora_B @ lora_A`` with

    * ``lora_A``: ``[r*k, C_in*k]`` (Kaiming-uniform),
    * ``lora_B``: ``[numel(W) / (C_in*k), r*k]`` = ``[C_out/groups * prod(kernel) / k, r*k]`` (zeros, so the
      layer starts exactly at the base convolution).

    Which side: **k = the largest kernel side**, ``max(kernel_size)``.

    * Square and cubic kernels (all sides k): loralib's shapes, ``factorisation == "loralib (k=K)"``. In 2D B is
      loralib's ``[C_out/groups*k, r*k]``; in 3D it holds ``C_out/groups*k*k`` rows (loralib's own 3D shapes do
      not fill the kernel; this is what 1x1x1 / 2x2x2 / 3x3x3 ConvLoRA always did here).
    * Anisotropic kernels (nnU-Net's 1x3x3 and 3x3x1 convolutions, its 1x2x2 transposed convolutions, ...):
      the same fold on the largest side, ``factorisation == "largest side (k=K of AxBxC)"``. A size-1 axis thus
      changes nothing: a 1x3x3 (or 3x3x1) Conv3d gets exactly the A and B of a 3x3 Conv2d with the same
      channels, a 1x2x2 ConvTranspose3d those of a 2x2 ConvTranspose2d: the inner dimension stays r*k (the
      increment's rank is at most r*k, as in loralib) and the count is the matching 2D layer's. Folding on a
      size-1 side instead (say the last side of 3x3x1) would give A ``[r, C_in]`` and B
      ``[C_out/groups*9, r]``: rank at most r, every kernel tap in B, and a different layer for 1x3x3 and 3x3x1.

    Trainable parameters (A and B):  ``r*k*(C_in*k + C_out/groups * prod(kernel)/k)``
    ``= r * (C_in*k^2 + C_out/groups * prod(kernel))``; for a k x k kernel ``r*k*k*(C_in + C_out/groups)``
    (64 -> 64, 3x3: 9,216 at r=8, 18,432 at r=16), for 1x3x3 and 3x3x1 ``9r*(C_in + C_out/groups)``, for
    1x2x2 ``4r*(C_in + C_out/groups)``. The base kernel is frozen; the bias too unless ``train_bias``.
    ``alpha`` defaults to r (scale 1).
    """

    def __init__(self, conv: nn.Module, r: int = 8, alpha: float | None = None, train_bias: bool = False) -> None:
        super().__init__(conv)
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"LoRA rank r must be an integer >= 1, got {r!r}")
        k = self.lora_side = max(self.kernel_size)
        shape = "x".join(map(str, self.kernel_size))
        self.factorisation: str = (f"loralib (k={k})" if len(set(self.kernel_size)) == 1
                                   else f"largest side (k={k} of {shape})")
        self.r = r
        self.alpha = float(r if alpha is None else alpha)
        self.scaling = self.alpha / r
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        if self.bias is not None:
            self.bias.requires_grad_(train_bias)
        columns = self.in_channels * k
        rows, remainder = divmod(self.weight.numel(), columns)
        assert remainder == 0, (self.weight.shape, columns)  # k divides prod(kernel), C_in/groups * groups = C_in
        self.lora_A = nn.Parameter(self.weight.new_zeros(r * k, columns))
        self.lora_B = nn.Parameter(self.weight.new_zeros(rows, r * k))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @classmethod
    def from_conv(cls, conv: nn.Module, r: int = 8, alpha: float | None = None,
                  train_bias: bool = False) -> "ConvLoRA":
        return cls(conv, r=r, alpha=alpha, train_bias=train_bias)

    traceable_generation = True

    def generate_weight(self) -> torch.Tensor:
        return self.weight + (self.lora_B @ self.lora_A).view(self.weight_shape) * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha}, factorisation={self.factorisation!r}"
