"""The same circuit (Eq. 1) built gate by gate with ``torchquantum.functional``, as the paper's authors ran it.

A leaf of the backend registry (:mod:`nnunet_qpg.simulator.backends`, name ``"torchquantum"``): it only builds
the circuit and returns the final states. Needs TorchQuantum 0.1.8 (see the README's install line).
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["INSTALL_HINT", "torchquantum_available", "torchquantum_states"]

INSTALL_HINT = (
    "TorchQuantum is not installed. Install the working set with\n"
    '  pip install -e ".[torchquantum]" && pip install --no-deps torchquantum==0.1.8'
)


def _import_torchquantum():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # qiskit-ibm-runtime warns about pkg_resources on import
            import torchquantum as tq
            import torchquantum.functional as tqf
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT}\n(import failed: {error})") from error
    return tq, tqf


def torchquantum_available() -> bool:
    """True when ``import torchquantum`` works in this environment."""
    try:
        _import_torchquantum()
    except ImportError:
        return False
    return True


def torchquantum_states(theta: torch.Tensor, num_outputs: int | None = None) -> torch.Tensor:
    """Final states for ``theta`` ``[num_vqcs, K, 2, n]``, built with TorchQuantum gates (batch = VQCs)."""
    tq, tqf = _import_torchquantum()
    num_vqcs, num_blocks, _, n = theta.shape
    # TorchQuantum's gate matrices are complex64, so this backend runs in single precision.
    theta = theta.float()
    qdev = tq.QuantumDevice(n_wires=n, bsz=num_vqcs, device=theta.device)
    for q in range(n):
        tqf.hadamard(qdev, wires=q)
    for k in range(num_blocks):
        for q in range(n):
            tqf.ry(qdev, wires=q, params=theta[:, k, 0, q].unsqueeze(-1))
        for q in range(n):
            tqf.rx(qdev, wires=q, params=theta[:, k, 1, q].unsqueeze(-1))
        if n > 1:
            for q in range(n):
                tqf.cnot(qdev, wires=[q, (q + 1) % n])
    states = qdev.get_states_1d()
    return states if num_outputs is None else states[:, :num_outputs]
