"""One generation per forward pass for the whole network: the hooks that feed QPG layers their kernels.

``apply_qpg`` attaches a :class:`NetworkGeneration` to the model it swaps layers in. Before every forward pass of
that model (a pre-forward hook, so nnU-Net's trainer, its predictor, DDP, ``torch.compile`` and a bare
``apply_qpg`` network all trigger it), every QPG layer that will generate in this pass gets its kernel from one
batched call of :class:`~nnunet_qpg.simulator.network.NetworkGenerator`; each layer reads its kernel once. The hook
runs outside torch.compile graphs, so the compiled network reads the kernels as inputs and no layer breaks the
graph. In eval mode without grad the hook does nothing and layers use their cached kernels. A layer called on its
own (outside the model's forward) generates its kernel itself, with the same numbers. Layers with shots, parameter
shift, noise or no ring generate their kernels one by one, in this hook too, so they never break a compiled graph.
"""

from __future__ import annotations

import torch
from torch import nn

from nnunet_qpg.layers import QuantumKernelConv
from nnunet_qpg.simulator.network import KernelRequest, NetworkGenerator

__all__ = ["NetworkGeneration", "attach_network_generation", "detach_network_generation"]

_ATTRIBUTE = "_qpg_network_generation"


class NetworkGeneration:
    """The QPG layers of one model and the generator that makes their kernels together."""

    def __init__(self, model: nn.Module) -> None:
        self.generator = NetworkGenerator()
        self.layers: list[QuantumKernelConv] = []
        self.refresh(model)

    def refresh(self, model: nn.Module) -> None:
        """Find the model's QPG layers again (after a swap or a bake)."""
        self.layers = [m for m in model.modules() if isinstance(m, QuantumKernelConv)]

    def generate(self) -> None:
        """Give every layer that generates in this pass (training, or grad enabled) its kernel."""
        grad = torch.is_grad_enabled()
        active = [layer for layer in self.layers if layer.training or grad]
        if not active:
            return
        device_type = active[0].theta.device.type
        # Autocast would run the simulation in half precision; the kernels are small, keep them exact.
        # Layers that measure as hardware would (shots, parameter shift, noise, no ring) run their own circuits;
        # the batched generator is for exact simulation.
        exact = [layer for layer in active if layer.execution.is_exact]
        with torch.autocast(device_type=device_type, enabled=False):
            kernels = self.generator.generate([
                KernelRequest(layer.theta, layer.layout, layer.post, layer.backend) for layer in exact])
            for layer, kernel in zip(exact, kernels):
                layer._pending_kernel = layer.weight_from_generated(kernel)
            for layer in active:
                if not layer.execution.is_exact:
                    layer._pending_kernel = layer.generate_weight()

    def clear(self) -> None:
        """Drop kernels no layer read (a layer the forward pass skipped, or an exception on the way)."""
        for layer in self.layers:
            layer._pending_kernel = None


@torch.compiler.disable
def _generate_before_forward(model: nn.Module, args) -> None:
    generation = model.__dict__.get(_ATTRIBUTE)
    if generation is not None:
        generation.clear()
        generation.generate()


@torch.compiler.disable
def _clear_after_forward(model: nn.Module, args, output) -> None:
    generation = model.__dict__.get(_ATTRIBUTE)
    if generation is not None:
        generation.clear()


def attach_network_generation(model: nn.Module) -> NetworkGeneration | None:
    """Make ``model``'s forward pass generate all its QPG kernels in one batched call (idempotent).

    Returns the attached :class:`NetworkGeneration`, or None (and detaches) when the model has no QPG layer.
    """
    generation = model.__dict__.get(_ATTRIBUTE)
    if generation is not None:
        generation.refresh(model)
        if not generation.layers:
            detach_network_generation(model)
            return None
        return generation
    generation = NetworkGeneration(model)
    if not generation.layers:
        return None
    # Plain attribute (not a submodule): the state dict stays as it was.
    model.__dict__[_ATTRIBUTE] = generation
    model.__dict__[_ATTRIBUTE + "_handles"] = (
        model.register_forward_pre_hook(_generate_before_forward),
        model.register_forward_hook(_clear_after_forward, always_call=True),
    )
    return generation


def detach_network_generation(model: nn.Module) -> None:
    """Remove what :func:`attach_network_generation` added (layers then generate one by one again)."""
    generation = model.__dict__.pop(_ATTRIBUTE, None)
    if generation is not None:
        generation.clear()
    for handle in model.__dict__.pop(_ATTRIBUTE + "_handles", ()):
        handle.remove()
