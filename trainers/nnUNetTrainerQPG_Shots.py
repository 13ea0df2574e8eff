"""QPG on the segmentation heads as a quantum device would train it (SPEC section 7): finite shots, parameter-shift
gradients, device noise, and the no-entanglement control.

Only training forward passes measure; validation, prediction and ``nnunet-qpg export`` read the exact
distribution of the same circuits (the expectation of what training sampled), so predicting needs no device.
These trainers simulate every shot and shifted circuit on the CPU or GPU: they are for studying whether QPG still
trains under hardware conditions, and they are slower than exact training (``nnunet-qpg hardware-cost`` says what
a real device would have to run).
"""

from nnunet_qpg.config import QPGConfig
from nnunet_qpg.nnunet_trainer import PaperProtocol
from nnunet_qpg.simulator.noise import NoiseModel
from nnunet_qpg.trainers.nnUNetTrainerQPG import nnUNetTrainerQPG

# The noise figures of nnUNetTrainerQPG_Noisy: a good superconducting device of today, roughly.
DEVICE_NOISE = NoiseModel(readout_error=0.02, one_qubit_depolarizing=0.001, two_qubit_depolarizing=0.01)


class nnUNetTrainerQPG_Shots(nnUNetTrainerQPG):
    """QPGConv on every head, LPP (Eq. 4), one block; 1,000 shots per circuit per training step and the two-term
    parameter-shift rule for the angles' gradients (every shifted circuit sampled with 1,000 shots too)."""

    qpg_config: QPGConfig = nnUNetTrainerQPG.qpg_config.replace(post="lpp", shots=1000, gradient="parameter-shift")


class nnUNetTrainerQPG_Noisy(nnUNetTrainerQPG_Shots):
    """nnUNetTrainerQPG_Shots on a noisy device: readout error 2% per qubit (both directions), depolarizing
    noise 0.1% after every one-qubit gate (H, RY, RX) and 1% after every CNOT (Qiskit Aer's conventions, see
    ``nnunet_qpg.simulator.noise``). Circuits of up to 8 qubits are simulated exactly as density matrices; wider
    ones average 256 Pauli trajectories. No readout mitigation."""

    qpg_config: QPGConfig = nnUNetTrainerQPG_Shots.qpg_config.replace(noise=DEVICE_NOISE)


class nnUNetTrainerQPG_NoEntanglement(nnUNetTrainerQPG):
    """nnUNetTrainerQPG without the CNOT ring (``entangle=False``): the same angles and parameter count on
    product states, the control that tells what the entanglement contributes."""

    qpg_config: QPGConfig = nnUNetTrainerQPG.qpg_config.replace(entangle=False)


class nnUNetTrainerQPG_Shots_Paper(PaperProtocol, nnUNetTrainerQPG_Shots):
    """nnUNetTrainerQPG_Shots with the paper's protocol (Adam lr 1e-3, weight decay 5e-4, constant LR, 20 epochs)."""
