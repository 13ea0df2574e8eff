"""QPG's circuits measured as a quantum device measures them: finite shots, parameter-shift gradients and noise
(SPEC section 7; the paper's argument that LPP and SST suit hardware because they read only probabilities).

:class:`Execution` says how a layer's circuits run. The default (``Execution()``: exact state vectors,
autograd, the CNOT ring) never comes here: generation takes the exact fast paths of this package unchanged.
Otherwise :func:`measured_readout` gives each VQC's readout:

1. the exact distribution of the circuit: pure (:func:`~nnunet_qpg.simulator.noise.pure_probabilities`) or, with
   gate noise, of the noisy circuit (:func:`~nnunet_qpg.simulator.noise.noisy_probabilities`), then readout error;
2. with ``shots=N``, its estimate counts / N from N samples (:func:`sample_probabilities`; unbiased, variance
   p_i (1 - p_i) / N);
3. readout-error mitigation if the noise model asks for it (the inverse confusion, a linear map).

Gradients with respect to the angles:

* ``"backprop"`` (default): autograd through the exact distribution. With shots this is a straight-through
  estimator: the forward value is the sampled estimate, the backward the exact distribution's derivative;
* ``"parameter-shift"``: as hardware gets them, dp/dtheta = [p(theta + pi/2) - p(theta - pi/2)] / 2 for every RY
  and RX angle alone (their generators are sigma/2), all shifted circuits of all VQCs in one batch, each run
  through steps 1-3 above (so with shots, every shifted circuit is sampled with the same N shots). The rule is
  exact for noisy circuits too: the noise channels do not depend on the angles.

RCE reads the real parts of amplitudes, which no measurement gives: shots, parameter shift and noise are refused
for it (:func:`check_measurable`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from nnunet_qpg.simulator.backends import simulate
from nnunet_qpg.simulator.noise import (NoiseModel, apply_readout_error, mitigate_readout_error,
                                        noisy_probabilities, pure_amplitudes, pure_probabilities)

__all__ = ["GRADIENTS", "Execution", "check_measurable", "measured_readout", "parameter_shift_gradient",
           "sample_probabilities"]

GRADIENTS: dict[str, str] = {
    "backprop": "autograd through the simulated distribution (with shots: straight-through, sampled forward and "
                "exact backward)",
    "parameter-shift": "two-term parameter-shift rule, [p(theta + pi/2) - p(theta - pi/2)] / 2 per angle, as "
                       "hardware computes it (with shots: every shifted circuit sampled)",
}

# Rows of [rows, outcomes] (or samples) handled at once, so shots and shifted circuits stay within ~128 MiB.
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Execution:
    """How a QPG layer's circuits run.

    Attributes:
        shots: None (exact probabilities) or N >= 1 samples per circuit and per forward pass.
        gradient: ``"backprop"`` or ``"parameter-shift"`` (:data:`GRADIENTS`).
        noise: a :class:`~nnunet_qpg.simulator.noise.NoiseModel`, or None for an ideal device.
        entangle: False leaves the CNOT ring out of Eq. 1 (an ablation: same angles, product states).
    """

    shots: int | None = None
    gradient: str = "backprop"
    noise: NoiseModel | None = None
    entangle: bool = True

    def __post_init__(self) -> None:
        if self.shots is not None and (isinstance(self.shots, bool) or not isinstance(self.shots, int)
                                       or self.shots < 1):
            raise ValueError(f"shots must be None (exact probabilities) or an integer >= 1, got {self.shots!r}")
        if self.gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {self.gradient!r}; accepted: "
                             + "; ".join(f"'{k}' ({v})" for k, v in GRADIENTS.items()))
        if self.noise is not None and not isinstance(self.noise, NoiseModel):
            raise ValueError(f"noise must be a NoiseModel or None, got {type(self.noise).__name__}")
        if not isinstance(self.entangle, bool):
            raise ValueError(f"entangle must be True or False, got {self.entangle!r}")

    @property
    def is_exact(self) -> bool:
        """The paper's setting: exact state vectors, autograd, the CNOT ring (the fast paths apply)."""
        return self.shots is None and self.gradient == "backprop" and self.noise is None and self.entangle

    @property
    def measures(self) -> bool:
        """Whether the circuits are read as a device reads them (shots, parameter shift or noise)."""
        return self.shots is not None or self.gradient == "parameter-shift" or self.noise is not None

    def exact_distribution(self) -> "Execution":
        """The same circuits (noise and ring kept) read from their exact distribution with autograd: what eval
        mode and baking use, the expectation of what training sampled."""
        return dataclasses.replace(self, shots=None, gradient="backprop")

    def describe(self) -> str:
        parts = []
        if self.shots is not None:
            parts.append(f"{self.shots:,} shots")
        if self.gradient != "backprop":
            parts.append(self.gradient)
        if self.noise is not None:
            parts.append(f"noise ({self.noise.describe()})")
        if not self.entangle:
            parts.append("no CNOT ring")
        return ", ".join(parts) if parts else "exact"


def check_measurable(readout: str, execution: Execution, what: str = "this layer") -> None:
    """Refuse RCE (``readout == "real"``) with shots, parameter shift or noise, saying why and what to use."""
    if readout == "real" and execution.measures:
        asked = execution.describe()
        raise ValueError(
            f"{what} uses RCE (Eq. 3), which reads the real parts of the amplitudes; no measurement gives "
            f"amplitudes, so RCE cannot run with {asked}. Use post='lpp' or post='sst' (Eqs. 4-5 read only "
            f"measured probabilities), or drop shots/gradient/noise for exact simulation.")


def sample_probabilities(probabilities: torch.Tensor, shots: int) -> torch.Tensor:
    """counts / N from ``shots`` = N samples of each row's distribution ``[B, D] -> [B, D]`` (same dtype).

    Batched multinomial sampling with torch's generator of the tensor's device: reproducible under
    ``torch.manual_seed``, fresh on every call. Unbiased, with variance p_i (1 - p_i) / N per entry.
    """
    if probabilities.dim() != 2:
        raise ValueError(f"probabilities must be [rows, outcomes], got shape {tuple(probabilities.shape)}")
    rows, outcomes = probabilities.shape
    weights = probabilities.detach().clamp_min(0)  # rounding can leave -1e-17 where p = 0
    counts = torch.zeros(rows, outcomes, dtype=probabilities.dtype, device=probabilities.device)
    chunk = max(1, _CHUNK_ELEMENTS // shots)
    for start in range(0, rows, chunk):
        part = weights[start:start + chunk]
        draws = torch.multinomial(part, shots, replacement=True)  # [rows, shots] outcome indices
        counts[start:start + chunk].scatter_add_(1, draws, torch.ones_like(draws, dtype=counts.dtype))
    return counts / shots


def _distribution(theta: torch.Tensor, execution: Execution, backend: str) -> torch.Tensor:
    """Step 1: the exact measured distribution ``[V, 2^n]`` (readout error included), differentiable."""
    noise = execution.noise
    if noise is not None and noise.has_gate_noise:
        probabilities = noisy_probabilities(theta, noise, entangle=execution.entangle)
    elif execution.entangle:
        probabilities = simulate(theta, None, backend=backend, readout="probabilities")
    else:
        probabilities = pure_probabilities(theta, entangle=False)
    if noise is not None and noise.has_readout_error:
        probabilities = apply_readout_error(probabilities, theta.shape[-1], noise)
    return probabilities


def _estimate(distribution: torch.Tensor, execution: Execution, num_qubits: int) -> torch.Tensor:
    """Steps 2-3: sampled (with shots), then mitigated (if asked); linear in the distribution otherwise."""
    estimate = distribution
    if execution.shots is not None:
        sampled = sample_probabilities(distribution, execution.shots)
        # Straight-through: the sampled value forward, the exact distribution's gradient backward.
        estimate = distribution + (sampled - distribution).detach() if distribution.requires_grad else sampled
    noise = execution.noise
    if noise is not None and noise.mitigate_readout and noise.has_readout_error:
        estimate = mitigate_readout_error(estimate, num_qubits, noise)
    return estimate


def _measure(theta: torch.Tensor, execution: Execution, backend: str, num_outputs: int) -> torch.Tensor:
    return _estimate(_distribution(theta, execution, backend), execution, theta.shape[-1])[:, :num_outputs]


class _ParameterShift(torch.autograd.Function):
    """Measured probabilities forward; the two-term shift rule backward (SPEC section 7)."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, execution: Execution, backend: str, num_outputs: int) -> torch.Tensor:
        ctx.save_for_backward(theta)
        ctx.settings = (execution, backend, num_outputs)
        with torch.no_grad():
            return _measure(theta, execution, backend, num_outputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (theta,) = ctx.saved_tensors
        execution, backend, num_outputs = ctx.settings
        return parameter_shift_gradient(theta.detach(), grad, execution, backend, num_outputs), None, None, None


def parameter_shift_gradient(theta: torch.Tensor, grad_output: torch.Tensor, execution: Execution,
                             backend: str = "native", num_outputs: int | None = None) -> torch.Tensor:
    """sum_i grad_output[v, i] dp_i/dtheta[v, ...] by the two-term shift rule, ``[V, K, 2, n]``.

    Every angle of every VQC is shifted by +pi/2 and -pi/2 alone: 2 * (2 n K) circuits per VQC, measured in one
    batch (chunked) as the forward pass measures (shots, noise, mitigation).
    """
    count, blocks, _, n = theta.shape
    angles = blocks * 2 * n
    m = grad_output.shape[-1] if num_outputs is None else num_outputs
    shift = torch.eye(angles, dtype=theta.dtype, device=theta.device).mul_(math.pi / 2).view(1, angles, blocks, 2, n)
    per_vqc = 2 * angles << n
    chunk = max(1, _CHUNK_ELEMENTS // per_vqc)
    grads = []
    with torch.no_grad():
        for start in range(0, count, chunk):
            part = theta[start:start + chunk].unsqueeze(1)  # [c, 1, K, 2, n]
            shifted = torch.stack([part + shift, part - shift], dim=1)  # [c, 2, angles, K, 2, n]
            measured = _measure(shifted.reshape(-1, blocks, 2, n), execution, backend, m)
            measured = measured.view(-1, 2, angles, m)
            derivative = (measured[:, 0] - measured[:, 1]) * 0.5  # [c, angles, m]
            grads.append(torch.einsum("cam,cm->ca", derivative, grad_output[start:start + chunk].to(theta.dtype)))
    return torch.cat(grads).view(count, blocks, 2, n)


def measured_readout(theta: torch.Tensor, num_outputs: int, readout: str, execution: Execution,
                     backend: str = "native") -> torch.Tensor:
    """The first ``num_outputs`` entries of every VQC's readout ``[V, num_outputs]`` as ``execution`` measures
    them (module docstring). ``readout`` is ``"probabilities"``, or ``"real"`` / ``"amplitudes"`` for an exact
    execution without the ring (the ablation; refused with shots, parameter shift or noise)."""
    check_measurable(readout, execution)
    if readout != "probabilities":
        if execution.entangle:
            return simulate(theta, num_outputs, backend=backend, readout=readout)
        amplitudes = pure_amplitudes(theta, entangle=False)[:, :num_outputs]
        return torch.view_as_real(amplitudes)[..., 0] if readout == "real" else amplitudes
    if execution.gradient == "parameter-shift" and torch.is_grad_enabled() and theta.requires_grad:
        return _ParameterShift.apply(theta, execution, backend, num_outputs)
    return _measure(theta, execution, backend, num_outputs)
