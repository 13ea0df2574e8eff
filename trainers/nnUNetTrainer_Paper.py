"""The classical baseline under the paper's protocol (Adam lr 1e-3, weight decay 5e-4, constant LR, 20 epochs):
stock nnU-Net with the PaperProtocol optimizer hook, nothing swapped; the checkpoint is a stock nnU-Net state dict.
It writes qpg_settings.json too (no QPG, its trainable parameters), so `nnunet-qpg report` lists it."""

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_qpg.nnunet_trainer import PaperProtocol


class nnUNetTrainer_Paper(PaperProtocol, nnUNetTrainer):
    """Classical training (no QPG) with the paper's protocol; compare with nnUNetTrainerQPG_Paper."""
