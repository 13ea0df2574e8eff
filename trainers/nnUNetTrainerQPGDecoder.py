"""QPGConv on every decoder convolution: stage convs, transposed convs and segmentation heads (the paper's
scalability experiment). ``decoder.*`` does not reach the encoder: nnU-Net's decoders (PlainConvUNet's and
ResidualEncoderUNet's) also hold the encoder as ``decoder.encoder``, but targets match canonical names only."""

from nnunet_qpg.nnunet_trainer import PaperProtocol, QPGConfig, nnUNetTrainerQPGBase


class nnUNetTrainerQPGDecoder(nnUNetTrainerQPGBase):
    """QPGConv (Eqs. 6, 8) on every decoder convolution, LPP, one block."""

    qpg_config = QPGConfig(targets=("decoder.*",), mode="replace", post="lpp", blocks=1)


class nnUNetTrainerQPGDecoder_Paper(PaperProtocol, nnUNetTrainerQPGDecoder):
    """nnUNetTrainerQPGDecoder with the paper's protocol: Adam lr 1e-3, weight decay 5e-4, constant LR, 20 epochs."""
