"""Circuits in the data path at the bottleneck (SPEC section 8): the seeds' hybrid layers beside QPG.

Each trainer appends a :class:`~nnunet_qpg.quantum_bottleneck.QuantumBottleneck` to the last encoder stage: per
voxel of the bottleneck feature map, the channels are projected onto the circuits' inputs, run through a
:class:`~nnunet_qpg.quantum_layer.QuantumLayer`, mapped back to the channels (starting at zero) and added to the
features. The whole network trains, as in the seeds. Unlike QPG, the circuits run on every voxel of every image
at inference too: ``nnunet-qpg export`` refuses these models, and ``nnunet-qpg info`` and the training log give
the circuit executions per predicted image.
"""

from nnunet_qpg.nnunet_trainer import PaperProtocol, nnUNetTrainerQPGBase
from nnunet_qpg.quantum_bottleneck import QuantumBlockConfig


class nnUNetTrainerQLayer(nnUNetTrainerQPGBase):
    """HQCM-EBTC's quantum layer at the bottleneck: 5 circuits x 5 qubits, amplitude embedding (32 inputs per
    circuit), 2 layers of RZ, RY and the CNOT ring, <Y_q> on every qubit (25 outputs)."""

    quantum_block = QuantumBlockConfig(qubits=5, circuits=5, depth=2, embedding="amplitude", readout="Y",
                                       entangler="ring")


class nnUNetTrainerQLayerAngle(nnUNetTrainerQPGBase):
    """HQCNN's quantum layer at the bottleneck: 1 circuit x 4 qubits, angle embedding (H, then RY(x_q)), 2 layers
    of RZ, RY and the CNOT ring, <Z_q> on every qubit (4 outputs)."""

    quantum_block = QuantumBlockConfig(qubits=4, circuits=1, depth=2, embedding="angle", readout="Z",
                                       entangler="ring")


class nnUNetTrainerQLayer_Paper(PaperProtocol, nnUNetTrainerQLayer):
    """nnUNetTrainerQLayer with the paper's protocol (Adam lr 1e-3, weight decay 5e-4, constant LR, 20 epochs)."""


class nnUNetTrainerQLayerAngle_Paper(PaperProtocol, nnUNetTrainerQLayerAngle):
    """nnUNetTrainerQLayerAngle with the paper's protocol."""
