"""QPGAConv adapters for small-data fine-tuning: use with ``nnUNetv2_train ... -pretrained_weights CHECKPOINT``.

Every encoder and decoder convolution except the segmentation heads becomes W' = W + VQC increment (Eqs. 7, 9)
over its frozen pretrained kernel W; only the VQC angles, the LPP post-processing and the heads train (the heads
classically: nnU-Net does not transfer ``seg_layers`` from pretrained weights, so they start fresh).
"""

from nnunet_qpg.nnunet_trainer import PaperProtocol, nnUNetTrainerQPGBase


class nnUNetTrainerQPGA(nnUNetTrainerQPGBase):
    """QPGAConv on all encoder / decoder convs but the heads; base kernels frozen, heads trained classically."""

    qpg_targets = ("encoder.*", "decoder.stages.*", "decoder.transpconvs.*")
    qpg_mode = "adapter"
    qpg_post = "lpp"
    qpg_blocks = 1
    qpg_train_only = ("decoder.seg_layers.*",)


class nnUNetTrainerQPGA_Paper(PaperProtocol, nnUNetTrainerQPGA):
    """nnUNetTrainerQPGA with the paper's protocol: Adam lr 1e-3, weight decay 5e-4, constant LR, 20 epochs."""
