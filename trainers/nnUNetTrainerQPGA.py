"""QPGAConv adapters for small-data fine-tuning: use with ``nnUNetv2_train ... -pretrained_weights CHECKPOINT``.

Every encoder and decoder convolution except the segmentation heads becomes W' = W + VQC increment (Eqs. 7, 9)
over its frozen pretrained kernel W (on a ResidualEncoderUNet: the stem, each residual block's ``conv1`` /
``conv2`` and 1x1 ``skip`` projection, the decoder stages and transposed convs); only the VQC angles, the LPP
post-processing and the heads train (the heads classically: nnU-Net does not transfer ``seg_layers`` from
pretrained weights, so they start fresh).
"""

from nnunet_qpg.nnunet_trainer import PaperProtocol, QPGConfig, nnUNetTrainerQPGBase


class nnUNetTrainerQPGA(nnUNetTrainerQPGBase):
    """QPGAConv on all encoder / decoder convs but the heads; base kernels frozen, heads trained classically."""

    qpg_config = QPGConfig(targets=("encoder.*", "decoder.stages.*", "decoder.transpconvs.*"), mode="adapter",
                           post="lpp", blocks=1, train_only=("decoder.seg_layers.*",))


class nnUNetTrainerQPGA_Paper(PaperProtocol, nnUNetTrainerQPGA):
    """nnUNetTrainerQPGA with the paper's protocol: Adam lr 1e-3, weight decay 5e-4, constant LR, 20 epochs."""
