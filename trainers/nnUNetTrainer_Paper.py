"""The classical baseline under the paper's protocol (Adam lr 1e-3, weight decay 5e-4, constant LR, 20 epochs):
nothing is swapped, the checkpoint is a stock nnU-Net state dict."""

from nnunet_qpg.nnunet_trainer import PaperProtocol, nnUNetTrainerQPGBase


class nnUNetTrainer_Paper(PaperProtocol, nnUNetTrainerQPGBase):
    """Classical training (no QPG) with the paper's protocol; compare with nnUNetTrainerQPG_Paper."""

    qpg_targets = ()
