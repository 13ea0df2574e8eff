"""QPGConv on the segmentation heads: the paper's "final layer" experiment (Table 3, full-parameter training).

"Final layer" means every ``decoder.seg_layers.*`` conv: with deep supervision each head is the final layer of one
output, and the last head is the final layer used at inference. Training only the last head with QPG while the
deep-supervision heads stay classical would give the inference path a different head type than the training
losses it shares; swapping all heads keeps them alike and costs a few hundred angles.
"""

from nnunet_qpg.nnunet_trainer import PaperProtocol, QPGConfig, nnUNetTrainerQPGBase


class nnUNetTrainerQPG(nnUNetTrainerQPGBase):
    """QPGConv (Eqs. 6, 8) on every segmentation head, LPP post-processing (Eq. 4), one block: the paper's setting."""

    qpg_config = QPGConfig(targets=("decoder.seg_layers.*",), mode="replace", post="lpp", blocks=1)


class nnUNetTrainerQPG_RCE(nnUNetTrainerQPG):
    """Real-part (complex) extraction of the amplitudes (Eq. 3)."""

    qpg_config = nnUNetTrainerQPG.qpg_config.replace(post="rce")


class nnUNetTrainerQPG_LPP(nnUNetTrainerQPG):
    """Linear projection of the probabilities by a small MLP (Eq. 4); same as nnUNetTrainerQPG, named for tables."""

    qpg_config = nnUNetTrainerQPG.qpg_config.replace(post="lpp")


class nnUNetTrainerQPG_SST(nnUNetTrainerQPG):
    """Shift and scale of the probabilities into [-pi/4, pi/4] (Eq. 5), no extra parameters."""

    qpg_config = nnUNetTrainerQPG.qpg_config.replace(post="sst")


class nnUNetTrainerQPG_FrozenEncoder(nnUNetTrainerQPG):
    """The paper's second scenario: backbone (encoder) frozen, decoder trained, heads by QPG."""

    qpg_config = nnUNetTrainerQPG.qpg_config.replace(train_only=("decoder.*",))


class nnUNetTrainerQPG_Paper(PaperProtocol, nnUNetTrainerQPG):
    """nnUNetTrainerQPG with the paper's protocol: Adam lr 1e-3, weight decay 5e-4, constant LR, 20 epochs."""


class nnUNetTrainerQPG_SST_Paper(PaperProtocol, nnUNetTrainerQPG_SST):
    """nnUNetTrainerQPG_SST with the paper's protocol."""
