"""Simulation backends by name: ``"native"`` (the batched simulator, default), ``"torchquantum"`` (gate by gate
with TorchQuantum, the paper authors' tool) and ``"reference"`` (:mod:`~nnunet_qpg.simulator.reference`).

A backend is a function ``(theta [num_vqcs, K, 2, n], num_outputs) -> states [num_vqcs, num_outputs]``;
:func:`simulate` applies the readout. ``register_backend`` adds one (e.g. another simulator to compare with).
"""

from __future__ import annotations

from typing import Callable

import torch

from nnunet_qpg.simulator.reference import reference_states
from nnunet_qpg.simulator.statevector import READOUTS, readout_from_amplitudes, simulate_vqcs

__all__ = ["backend_names", "check_backend", "register_backend", "simulate"]

StatesFunction = Callable[[torch.Tensor, "int | None"], torch.Tensor]


def _torchquantum(theta: torch.Tensor, num_outputs: int | None) -> torch.Tensor:
    from nnunet_qpg.simulator.torchquantum_circuit import torchquantum_states  # imports TorchQuantum lazily

    return torchquantum_states(theta, num_outputs)


def _reference(theta: torch.Tensor, num_outputs: int | None) -> torch.Tensor:
    states = reference_states(theta)
    return states if num_outputs is None else states[:, :num_outputs]


_BACKENDS: dict[str, StatesFunction | None] = {"native": None, "torchquantum": _torchquantum,
                                               "reference": _reference}


def register_backend(name: str, states: StatesFunction) -> None:
    """Make ``states(theta, num_outputs)`` available as ``backend=name`` (layers' ``set_backend(name)``)."""
    if name in _BACKENDS:
        raise ValueError(f"a simulation backend named {name!r} is already registered")
    _BACKENDS[name] = states


def backend_names() -> tuple[str, ...]:
    """The registered backend names, ``"native"`` first."""
    return tuple(_BACKENDS)


def check_backend(name: str) -> None:
    """Raise ``ValueError`` naming the accepted backends if ``name`` is not one."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown simulation backend {name!r}; accepted: {', '.join(_BACKENDS)}")


def simulate(theta: torch.Tensor, num_outputs: int | None = None, backend: str = "native",
             readout: str = "amplitudes") -> torch.Tensor:
    """Final VQC states of Eq. 1 (or their ``readout``: one of ``READOUTS``) with the chosen backend."""
    check_backend(backend)
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; accepted: {', '.join(READOUTS)}")
    states = _BACKENDS[backend]
    if states is None:
        return simulate_vqcs(theta, num_outputs, readout)
    return readout_from_amplitudes(states(theta, num_outputs), readout)
