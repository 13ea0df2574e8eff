"""What training a QPG network on a quantum computer would cost: circuits, shots, jobs and time (SPEC section 7).

:func:`hardware_cost` walks a network's QPG layers (:class:`~nnunet_qpg.layers.QuantumKernelConv`) and counts, per
training step, what a device would have to run:

* **forward**: one circuit per VQC (Eq. 1), each measured ``shots`` times; the kernel is post-processed from the
  estimated probabilities (LPP, SST: Eqs. 4-5);
* **parameter-shift gradient** (``gradient="parameter-shift"``, the default of the command: hardware has no
  autograd): every RY and RX angle shifted by +pi/2 and by -pi/2 alone, i.e. 2 * (2 n K) circuits per VQC, each
  measured ``shots`` times. With ``gradient="backprop"`` only the forward circuits run on the device and the
  gradients come from a simulator (this package's straight-through estimator), so there are none;
* **jobs**: one job for all forward circuits of the network plus one job for all its shifted circuits, per step
  (a device that limits circuits per job needs more; the count is a lower bound);
* **time** per epoch (only when a rate is given): circuits / R + jobs * S, with R circuits per second (each with
  its shots) and S the latency of one job (queueing, compilation, loading) in seconds.

The logical circuit (depth, one-qubit gates, CNOTs) is :func:`~nnunet_qpg.simulator.qasm.circuit_resources`.
With a coupling map one representative circuit per distinct (qubits, blocks, ring) is routed with
``qiskit.transpile(optimization_level=1, seed_transpiler=0, basis_gates=[cx, rz, sx, x, h, ry, rx])`` and its
two-qubit gates after routing are reported (SWAPs become three CNOTs): ``line`` and ``ring`` are n-qubit maps,
``heavy-hex`` the smallest IBM heavy-hex lattice (odd distance d) with at least n qubits, ``all`` all-to-all.

Assumptions: only training runs circuits. Validation and inference use the exact simulation or the baked
kernels (``nnunet-qpg export``), so they cost no circuits. RCE layers (Eq. 3) read the real parts of amplitudes,
which no measurement gives: they are listed as 'n/a (RCE needs amplitudes)' and left out of the totals. ConvLoRA
layers are classical and not listed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a network is counted, so `--help` answers at once
    from torch import nn

__all__ = ["COUPLING_MAPS", "DEFAULT_SHOTS", "GRADIENT_CHOICES", "NNUNET_ITERATIONS_PER_EPOCH", "RCE_NOT_MEASURABLE",
           "HardwareCost", "LayerCost", "hardware_cost", "routed_two_qubit_gates"]

DEFAULT_SHOTS = 1000
NNUNET_ITERATIONS_PER_EPOCH = 250  # nnUNetTrainer.num_iterations_per_epoch
RCE_NOT_MEASURABLE = "n/a (RCE needs amplitudes)"
BASIS_GATES = ["cx", "rz", "sx", "x", "h", "ry", "rx"]
COUPLING_MAPS: dict[str, str] = {
    "none": "no routing: logical CNOTs only",
    "line": "n qubits in a line (CouplingMap.from_line(n))",
    "ring": "n qubits in a ring (CouplingMap.from_ring(n)): the CNOT ring needs no SWAP",
    "heavy-hex": "the smallest IBM heavy-hex lattice with >= n qubits (CouplingMap.from_heavy_hex(d), d odd)",
    "all": "all-to-all connectivity (CouplingMap.from_full(n))",
}
GRADIENT_CHOICES: dict[str, str] = {
    "parameter-shift": "every RY/RX angle shifted by +-pi/2 alone: 2 * (2 n K) circuits per VQC per step",
    "backprop": "only the forward circuits on the device; gradients from a simulator (no shifted circuits)",
}


@dataclass
class LayerCost:
    """One QPG layer's circuits per training step. Counts are None for a layer that cannot run (RCE)."""

    name: str
    layer_class: str
    post: str
    vqcs: int
    qubits: int
    blocks: int
    entangle: bool
    depth: int
    one_qubit_gates: int
    cnots: int
    runnable: bool
    note: str = ""
    shots: int | None = None  # per circuit
    forward_circuits: int | None = None
    shift_circuits: int | None = None
    routed_two_qubit_gates: int | None = None
    routed_depth: int | None = None

    @property
    def circuits(self) -> int | None:
        return None if not self.runnable else self.forward_circuits + self.shift_circuits

    @property
    def shots_per_step(self) -> int | None:
        return None if not self.runnable else self.circuits * self.shots

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["circuits"] = self.circuits
        data["shots_per_step"] = self.shots_per_step
        return data


@dataclass
class HardwareCost:
    """Per-layer costs and network totals (module docstring). ``table()`` for people, ``to_dict()`` for JSON."""

    layers: list[LayerCost]
    gradient: str
    iterations: int
    coupling_map: str = "none"
    circuits_per_second: float | None = None
    job_latency: float | None = None
    assumptions: list[str] = field(default_factory=list)

    @property
    def runnable_layers(self) -> list[LayerCost]:
        return [layer for layer in self.layers if layer.runnable]

    @property
    def forward_circuits_per_step(self) -> int:
        return sum(layer.forward_circuits for layer in self.runnable_layers)

    @property
    def shift_circuits_per_step(self) -> int:
        return sum(layer.shift_circuits for layer in self.runnable_layers)

    @property
    def circuits_per_step(self) -> int:
        return self.forward_circuits_per_step + self.shift_circuits_per_step

    @property
    def shots_per_step(self) -> int:
        return sum(layer.shots_per_step for layer in self.runnable_layers)

    @property
    def jobs_per_step(self) -> int:
        """One job for the network's forward circuits, one for its shifted circuits (if any)."""
        return int(self.forward_circuits_per_step > 0) + int(self.shift_circuits_per_step > 0)

    @property
    def circuits_per_epoch(self) -> int:
        return self.circuits_per_step * self.iterations

    @property
    def shots_per_epoch(self) -> int:
        return self.shots_per_step * self.iterations

    @property
    def jobs_per_epoch(self) -> int:
        return self.jobs_per_step * self.iterations

    @property
    def epoch_seconds(self) -> float | None:
        """circuits / R + jobs * S per epoch, or None without a rate R."""
        if self.circuits_per_second is None:
            return None
        return self.circuits_per_epoch / self.circuits_per_second + self.jobs_per_epoch * (self.job_latency or 0.0)

    def totals(self) -> dict[str, Any]:
        return {
            "layers": len(self.runnable_layers),
            "layers_not_runnable": [layer.name for layer in self.layers if not layer.runnable],
            "vqcs": sum(layer.vqcs for layer in self.runnable_layers),
            "per_step": {"forward_circuits": self.forward_circuits_per_step,
                         "parameter_shift_circuits": self.shift_circuits_per_step,
                         "circuits": self.circuits_per_step, "shots": self.shots_per_step,
                         "jobs": self.jobs_per_step},
            "per_epoch": {"iterations": self.iterations, "circuits": self.circuits_per_epoch,
                          "shots": self.shots_per_epoch, "jobs": self.jobs_per_epoch,
                          "seconds": self.epoch_seconds},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "gradient": self.gradient,
            "iterations_per_epoch": self.iterations,
            "coupling_map": self.coupling_map,
            "circuits_per_second": self.circuits_per_second,
            "job_latency_seconds": self.job_latency,
            "layers": [layer.to_dict() for layer in self.layers],
            "totals": self.totals(),
            "assumptions": list(self.assumptions),
        }

    def table(self) -> str:
        """The per-layer table and the totals, as the command prints them."""
        routed = self.coupling_map != "none"
        header = ["layer", "class", "post", "VQCs", "qubits", "K", "depth", "CNOTs"]
        if routed:
            header.append(f"2q routed ({self.coupling_map})")
        header += ["shots", "fwd circuits/step", "shift circuits/step", "shots/step"]
        rows = []
        for layer in self.layers:
            row = [layer.name, layer.layer_class, layer.post.upper(), f"{layer.vqcs:,}", str(layer.qubits),
                   str(layer.blocks), str(layer.depth), str(layer.cnots)]
            if routed:
                row.append("-" if layer.routed_two_qubit_gates is None else str(layer.routed_two_qubit_gates))
            if layer.runnable:
                row += [f"{layer.shots:,}", f"{layer.forward_circuits:,}", f"{layer.shift_circuits:,}",
                        f"{layer.shots_per_step:,}"]
            else:
                row += [layer.note, "", "", ""]
            rows.append(row)
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths)).rstrip(),
                 "  ".join("-" * width for width in widths)]
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        lines.append("")
        if not self.runnable_layers:
            lines.append("no QPG layer can run on hardware (RCE needs amplitudes): use --post lpp or --post sst")
        else:
            lines.append(f"per training step: {self.circuits_per_step:,} circuits ({self.forward_circuits_per_step:,} "
                         f"forward + {self.shift_circuits_per_step:,} parameter-shift, gradient={self.gradient}), "
                         f"{self.shots_per_step:,} shots, {self.jobs_per_step} job(s)")
            epoch = (f"per epoch ({self.iterations:,} iterations): {self.circuits_per_epoch:,} circuits, "
                     f"{self.shots_per_epoch:,} shots, {self.jobs_per_epoch:,} jobs")
            seconds = self.epoch_seconds
            if seconds is not None:
                epoch += (f"; time {_duration(seconds)} = {self.circuits_per_epoch:,} / {self.circuits_per_second:g} "
                          f"circuits/s + {self.jobs_per_epoch:,} x {self.job_latency or 0:g} s per job")
            else:
                epoch += "; give --circuits-per-second (and --job-latency) for the time"
            lines.append(epoch)
        lines += [f"note: {text}" for text in self.assumptions]
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.3g} min ({seconds:,.0f} s)"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.3g} h ({seconds:,.0f} s)"
    return f"{seconds / 86400:.3g} days ({seconds:,.0f} s)"


def _coupling_map(name: str, num_qubits: int):
    from qiskit.transpiler import CouplingMap

    if name == "line":
        return CouplingMap.from_line(num_qubits)
    if name == "ring":
        return CouplingMap.from_ring(num_qubits)
    if name == "all":
        return CouplingMap.from_full(num_qubits)
    if name == "heavy-hex":
        distance = 3
        while (5 * distance * distance - 2 * distance - 1) // 2 < num_qubits:
            distance += 2
        return CouplingMap.from_heavy_hex(distance)
    raise ValueError(f"unknown coupling map {name!r}; accepted: {', '.join(COUPLING_MAPS)}")


def routed_two_qubit_gates(num_qubits: int, blocks: int, coupling_map: str, entangle: bool = True) -> tuple[int, int]:
    """(two-qubit gates, depth) of one VQC (measurements removed) after routing onto ``coupling_map`` with
    ``qiskit.transpile(optimization_level=1, seed_transpiler=0, basis_gates=BASIS_GATES)``.

    The angles are fixed representative values (routing does not depend on them; none is 0, so no gate drops out).
    """
    if coupling_map not in COUPLING_MAPS or coupling_map == "none":
        raise ValueError(f"coupling map {coupling_map!r} does not route; accepted: "
                         f"{', '.join(name for name in COUPLING_MAPS if name != 'none')}")
    if num_qubits == 1 or not entangle:
        from nnunet_qpg.simulator.qasm import circuit_resources

        return 0, circuit_resources(num_qubits, blocks, entangle)["depth"]
    try:
        from qiskit import QuantumCircuit, transpile
    except ImportError as error:
        raise ImportError(f"routing onto a coupling map needs Qiskit ({error}); install it with "
                          f'pip install "nnunet-qpg[torchquantum]", or use --coupling-map none') from None
    import torch

    from nnunet_qpg.simulator.qasm import vqc_qasm

    angles = 0.3 + 0.1 * torch.arange(blocks * 2 * num_qubits, dtype=torch.float64).reshape(blocks, 2, num_qubits)
    circuit = QuantumCircuit.from_qasm_str(vqc_qasm(angles, entangle))
    circuit.remove_final_measurements()
    routed = transpile(circuit, coupling_map=_coupling_map(coupling_map, num_qubits), basis_gates=BASIS_GATES,
                       optimization_level=1, seed_transpiler=0)
    two_qubit = sum(1 for instruction in routed.data if len(instruction.qubits) == 2)
    return two_qubit, routed.depth()


def hardware_cost(model: nn.Module, shots: int | None = None, gradient: str = "parameter-shift",
                  iterations: int = NNUNET_ITERATIONS_PER_EPOCH, coupling_map: str | None = None,
                  circuits_per_second: float | None = None, job_latency: float | None = None) -> HardwareCost:
    """Circuits, shots and jobs per training step and per epoch of every QPG layer of ``model`` on a device.

    Args:
        model: any module; its :class:`~nnunet_qpg.layers.QuantumKernelConv` layers are counted (ConvLoRA and
            plain layers are classical and skipped).
        shots: measurements per circuit; None: each layer's own ``shots`` setting, else ``DEFAULT_SHOTS`` (1000).
        gradient: ``"parameter-shift"`` (2 * 2nK shifted circuits per VQC per step) or ``"backprop"`` (none).
        iterations: training steps per epoch (nnU-Net: 250).
        coupling_map: None / ``"none"`` (no routing), ``"line"``, ``"ring"``, ``"heavy-hex"`` or ``"all"``.
        circuits_per_second: R, circuits (each with its shots) a device runs per second; gives the epoch time.
        job_latency: S, seconds each job waits besides running its circuits (default 0 with R).
    """
    from nnunet_qpg.layers import QuantumKernelConv
    from nnunet_qpg.simulator.qasm import circuit_resources

    if gradient not in GRADIENT_CHOICES:
        raise ValueError(f"unknown gradient {gradient!r}; accepted: "
                         + "; ".join(f"'{k}' ({v})" for k, v in GRADIENT_CHOICES.items()))
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise ValueError(f"shots must be an integer >= 1 or None, got {shots!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1 (training steps per epoch), got {iterations!r}")
    coupling_map = "none" if coupling_map is None else str(coupling_map).lower()
    if coupling_map not in COUPLING_MAPS:
        raise ValueError(f"unknown coupling map {coupling_map!r}; accepted: {', '.join(COUPLING_MAPS)}")
    for name, value in (("circuits_per_second", circuits_per_second), ("job_latency", job_latency)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0 or (name == "circuits_per_second"
                                                                               and value == 0)):
            raise ValueError(f"{name} must be a {'positive' if name == 'circuits_per_second' else 'non-negative'} "
                             f"number, got {value!r}")

    routes: dict[tuple[int, int, bool], tuple[int, int]] = {}
    layers: list[LayerCost] = []
    for name, module in model.named_modules():
        if not isinstance(module, QuantumKernelConv):
            continue
        n, blocks, entangle = module.num_qubits, module.blocks, bool(getattr(module, "entangle", True))
        logical = circuit_resources(n, blocks, entangle)
        runnable = module.post.readout == "probabilities"
        cost = LayerCost(name=name, layer_class=type(module).__name__, post=module.post_name, vqcs=module.num_vqcs,
                         qubits=n, blocks=blocks, entangle=entangle, depth=logical["depth"],
                         one_qubit_gates=logical["one_qubit_gates"], cnots=logical["cnots"], runnable=runnable)
        if coupling_map != "none":
            key = (n, blocks, entangle)
            if key not in routes:
                routes[key] = routed_two_qubit_gates(n, blocks, coupling_map, entangle)
            cost.routed_two_qubit_gates, cost.routed_depth = routes[key]
        if runnable:
            layer_shots = shots if shots is not None else getattr(module, "shots", None) or DEFAULT_SHOTS
            cost.shots = layer_shots
            cost.forward_circuits = module.num_vqcs
            cost.shift_circuits = module.num_vqcs * 2 * (2 * n * blocks) if gradient == "parameter-shift" else 0
        else:
            cost.note = RCE_NOT_MEASURABLE
        layers.append(cost)

    assumptions = [
        "only training steps run circuits; validation and inference use the exact simulation or the baked kernels "
        "(nnunet-qpg export): no circuits",
        "jobs: one for the network's forward circuits and one for its parameter-shift circuits per step (a device "
        "limit on circuits per job adds more)",
    ]
    if gradient == "backprop":
        assumptions.append("gradient=backprop: only forward circuits run on the device; gradients come from a "
                           "simulator (hardware itself has no backprop)")
    if any(not layer.runnable for layer in layers):
        assumptions.append(f"RCE layers: {RCE_NOT_MEASURABLE}; no measurement gives amplitudes, so they are left "
                           f"out of the totals (use LPP or SST on hardware)")
    return HardwareCost(layers, gradient, iterations, coupling_map, circuits_per_second, job_latency, assumptions)
