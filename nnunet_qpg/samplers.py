"""The device seam: QPG's circuits out to a sampler (a simulator or a quantum computer), counts back in.

Named apart from the simulation backends (:mod:`nnunet_qpg.simulator.backends`, exact state vectors inside
training): a :class:`Sampler` is anything that runs OpenQASM 2 programs and returns measured counts, so a layer's
kernel can be rebuilt from a real device's measurements (SPEC section 7)::

    from nnunet_qpg.samplers import QiskitSampler, measure_kernel

    kernel = measure_kernel(layer, QiskitSampler(seed=0), shots=4000)      # Qiskit Aer, seeded
    kernel = measure_kernel(layer, QiskitSampler(SamplerV2(mode=backend), pass_manager=pm), shots=4000)

The protocol is one method: ``run(circuits, shots) -> counts``: OpenQASM 2 strings in (as
:func:`nnunet_qpg.simulator.qasm.vqc_qasm` writes them), Qiskit-style counts out (bitstring -> count, classical bit
0 rightmost), one dict per circuit, in order. :func:`nnunet_qpg.simulator.qasm.probabilities_from_counts` turns
them into our basis order.

Supported Qiskit versions (:class:`QiskitSampler`):

* Qiskit 0.46 (what ``pip install "nnunet-qpg[torchquantum]"`` installs: Qiskit < 1.0, Aer < 0.14) and Qiskit
  1.x: the V1 ``Sampler`` primitives (``qiskit.primitives.Sampler``, ``qiskit_aer.primitives.Sampler``,
  qiskit-ibm-runtime's V1 ``Sampler``): ``sampler.run(circuits, shots=N).result().quasi_dists``, turned into
  counts as round(quasi * N).
* Qiskit >= 1.0: V2 samplers (``qiskit.primitives.BaseSamplerV2``: ``StatevectorSampler``, Aer's
  ``SamplerV2``, qiskit-ibm-runtime's ``SamplerV2``): ``sampler.run([(circuit,)], shots=N).result()[i]
  .data.c.get_counts()`` (``c`` is the exported circuits' classical register).

Hardware samplers want circuits in the device's instruction set: pass ``pass_manager`` (anything with
``.run(circuits)``, e.g. ``generate_preset_pass_manager(optimization_level=1, backend=backend)``). Measurements
keep their classical bits through transpilation, so the counts stay in the exported bit order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["QiskitSampler", "Sampler", "measure_kernel"]

_INSTALL_HINT = ('pip install "nnunet-qpg[torchquantum]" (it installs Qiskit < 1.0 and Qiskit Aer < 0.14), or '
                 'pip install qiskit qiskit-aer')


@runtime_checkable
class Sampler(Protocol):
    """Runs OpenQASM 2 circuits and returns their counts (Qiskit-style: bitstring -> count, one dict per circuit,
    in the circuits' order)."""

    def run(self, circuits: Sequence[str], shots: int) -> list[dict[str, int]]: ...


def _require_qiskit():
    try:
        import qiskit
    except ImportError as error:
        raise ImportError(f"QiskitSampler needs Qiskit, which is not installed ({error}); install it with "
                          f"{_INSTALL_HINT}") from None
    return qiskit


def _is_v2(sampler: Any) -> bool:
    """Whether ``sampler`` is a V2 sampler primitive (Qiskit >= 1.0): by type where Qiskit defines the base class,
    else by its version attribute."""
    try:
        from qiskit.primitives import BaseSamplerV2
    except ImportError:
        BaseSamplerV2 = None
    if BaseSamplerV2 is not None and isinstance(sampler, BaseSamplerV2):
        return True
    try:
        from qiskit.primitives import BaseSamplerV1
    except ImportError:
        try:
            from qiskit.primitives import BaseSampler as BaseSamplerV1
        except ImportError:
            BaseSamplerV1 = None
    if BaseSamplerV1 is not None and isinstance(sampler, BaseSamplerV1):
        return False
    return getattr(sampler, "version", 1) == 2


def _default_sampler(seed: int | None):
    """Qiskit Aer's V1 Sampler when installed (fast, seeded with ``seed``), else Qiskit's reference Sampler."""
    options = {} if seed is None else {"seed": seed}
    try:
        from qiskit_aer.primitives import Sampler as AerSampler
    except ImportError:
        AerSampler = None
    if AerSampler is not None:
        # QPG's programs hold only H, RY, RX, CX and measurements, which Aer runs as they are; transpiling (Aer's
        # default) costs far more than simulating them (~0.1 s per circuit)
        return AerSampler(run_options=options, skip_transpilation=True)
    try:
        from qiskit.primitives import Sampler as ReferenceSampler  # V1, deprecated in Qiskit 1.x
    except ImportError:
        ReferenceSampler = None
    if ReferenceSampler is not None:
        return ReferenceSampler(options=options)
    try:  # Qiskit 2.x: only V2 samplers remain
        from qiskit_aer.primitives import SamplerV2 as AerSamplerV2
    except ImportError:
        from qiskit.primitives import StatevectorSampler

        return StatevectorSampler(seed=seed)
    return AerSamplerV2(seed=seed)


class QiskitSampler:
    """A :class:`Sampler` over a Qiskit Sampler primitive (V1 or V2, see the module docstring).

    Args:
        sampler: the primitive; default Qiskit Aer's ``Sampler(run_options={"seed": seed},
            skip_transpilation=True)`` when Aer is installed (the programs use only gates Aer runs natively), else
            Qiskit's reference ``Sampler``.
        batch_size: circuits per job (primitive call); a layer's circuits are sent in jobs of at most this many.
        seed: seed of the default sampler (ignored when ``sampler`` is given). Each job is seeded with ``seed``
            plus the number of circuits run before it, so no two jobs share a seed; the same seed, ``batch_size``
            and sequence of calls reproduce the counts.
        pass_manager: optional, applied to the circuits before they are sent (``pass_manager.run(circuits)``),
            e.g. a preset pass manager for a hardware backend's instruction set.

    Raises:
        ImportError naming the extra to install when Qiskit is missing.
    """

    def __init__(self, sampler: Any = None, batch_size: int = 1000, seed: int | None = None,
                 pass_manager: Any = None) -> None:
        _require_qiskit()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1 (circuits per job), got {batch_size!r}")
        self.sampler = _default_sampler(seed) if sampler is None else sampler
        self.batch_size = batch_size
        # The default V1 samplers take a seed per job: seed + circuits run so far, so jobs never repeat a stream
        # (one fixed seed would give the first circuit of every batch the same samples).
        self._seed = seed if sampler is None else None
        self._circuits_run = 0
        self.pass_manager = pass_manager
        self.v2 = _is_v2(self.sampler)

    def __repr__(self) -> str:
        return (f"QiskitSampler({type(self.sampler).__name__}, {'V2' if self.v2 else 'V1'}, "
                f"batch_size={self.batch_size})")

    def run(self, circuits: Sequence[str], shots: int) -> list[dict[str, int]]:
        """Counts of every OpenQASM 2 circuit, in order (bitstring keys, classical bit 0 rightmost)."""
        from qiskit import QuantumCircuit

        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
            raise ValueError(f"shots must be an integer >= 1, got {shots!r}")
        if isinstance(circuits, str):
            raise ValueError("circuits must be a sequence of OpenQASM 2 programs, not one string")
        counts: list[dict[str, int]] = []
        circuits = list(circuits)
        for start in range(0, len(circuits), self.batch_size):
            batch = [QuantumCircuit.from_qasm_str(text) for text in circuits[start:start + self.batch_size]]
            widths = [circuit.num_clbits for circuit in batch]
            if self.pass_manager is not None:
                batch = self.pass_manager.run(batch)
                batch = batch if isinstance(batch, list) else [batch]
            counts += self._run_v2(batch, shots) if self.v2 else self._run_v1(batch, widths, shots)
            self._circuits_run += len(batch)
        return counts

    def _run_v1(self, batch: list, widths: list[int], shots: int) -> list[dict[str, int]]:
        options = {} if self._seed is None else {"seed": self._seed + self._circuits_run}
        result = self.sampler.run(batch, shots=shots, **options).result()
        counts = []
        for quasi, width in zip(result.quasi_dists, widths):
            # Qiskit's integer outcomes (classical bit 0 least significant) as its own bitstrings; negative
            # quasi-probabilities (a runtime's error mitigation) count as never seen
            entry = {format(int(key), f"0{width}b"): int(round(value * shots)) for key, value in quasi.items()}
            counts.append({key: value for key, value in entry.items() if value > 0})
        return counts

    def _run_v2(self, batch: list, shots: int) -> list[dict[str, int]]:
        if self._seed is not None:  # the default V2 samplers take their seed when made: one per job, as for V1
            self.sampler = _default_sampler(self._seed + self._circuits_run)
        result = self.sampler.run([(circuit,) for circuit in batch], shots=shots).result()
        counts = []
        for index in range(len(batch)):
            data = result[index].data
            register = getattr(data, "c", None)
            if register is None:  # a pass manager or a sampler that renamed the register
                raise ValueError(f"the sampler's result {index} has no classical register 'c' (it has "
                                 f"{', '.join(vars(data)) if hasattr(data, '__dict__') else data}); the exported "
                                 f"circuits measure into creg c")
            counts.append({key.replace(" ", ""): int(value) for key, value in register.get_counts().items()})
        return counts


def measure_kernel(layer: nn.Module, sampler: Sampler, shots: int) -> torch.Tensor:
    """A QPG layer's kernel rebuilt from measurements: ``layer.circuits_qasm()`` -> ``sampler.run(circuits,
    shots)`` -> ``layer.kernel_from_counts(counts)`` (weight-shaped; for QPGAConv the base kernel plus the
    measured increment). Only probability post-processing (LPP, SST) can be measured (SPEC section 7)."""
    if layer.post.readout != "probabilities":  # before any circuit runs: device time is not free
        raise ValueError(f"{type(layer).__name__} uses {layer.post_name.upper()}, which reads the real parts of "
                         f"amplitudes; no measurement gives them, so its kernel cannot be measured. Use post='lpp' "
                         f"or post='sst' (Eqs. 4-5 read only probabilities).")
    circuits = layer.circuits_qasm()
    counts = sampler.run(circuits, shots)
    if len(counts) != len(circuits):
        raise ValueError(f"the sampler returned {len(counts)} count dictionaries for {len(circuits)} circuits")
    return layer.kernel_from_counts(counts)
