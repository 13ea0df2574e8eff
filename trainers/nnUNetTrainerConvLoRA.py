"""ConvLoRA, the paper's PEFT comparator (Table 3), placed as nnUNetTrainerQPGA places its adapters: use with
``-pretrained_weights``. W' = W + (B @ A).view(W.shape) * alpha / r over the frozen pretrained kernel (SPEC 4)."""

from nnunet_qpg.nnunet_trainer import PaperProtocol, QPGConfig, nnUNetTrainerQPGBase


class nnUNetTrainerConvLoRA(nnUNetTrainerQPGBase):
    """ConvLoRA with rank 8 on all encoder / decoder convs but the heads; heads trained classically."""

    qpg_config = QPGConfig(targets=("encoder.*", "decoder.stages.*", "decoder.transpconvs.*"), mode="lora", rank=8,
                           train_only=("decoder.seg_layers.*",))


class nnUNetTrainerConvLoRA_r16(nnUNetTrainerConvLoRA):
    """Rank 16, the paper's larger ConvLoRA."""

    qpg_config = nnUNetTrainerConvLoRA.qpg_config.replace(rank=16)


class nnUNetTrainerConvLoRA_Paper(PaperProtocol, nnUNetTrainerConvLoRA):
    """nnUNetTrainerConvLoRA with the paper's protocol: Adam lr 1e-3, weight decay 5e-4, constant LR, 20 epochs."""
