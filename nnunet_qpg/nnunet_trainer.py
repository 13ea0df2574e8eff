"""nnU-Net v2 trainer machinery for QPG: the base class every trainer in ``trainers/`` configures.

A trainer is a subclass that sets class attributes only (PEFT / nnU-Net variant style)::

    class nnUNetTrainerQPG(nnUNetTrainerQPGBase):
        qpg_targets = ("decoder.seg_layers.*",)   # glob patterns over canonical module names
        qpg_mode = "replace"                      # QPGConv, Eqs. (6), (8)
        qpg_post = "lpp"                          # post-processing, Eqs. (3)-(5): rce | lpp | sst
        qpg_blocks = 1                            # K circuit blocks, Eq. (1)

The configuration lives in the class because ``nnUNetv2_predict`` rebuilds the network from the trainer name
stored in the checkpoint, calling ``build_network_architecture`` on the CLASS (SPEC section 5). That method is
therefore a ``classmethod`` that keeps nnU-Net's parameter names (``plans_manager`` ...) and returns the network
with QPG already placed, so the predictor's strict ``load_state_dict`` finds ``theta`` and ``post.*``.

When the swap happens during training (the design choice)
----------------------------------------------------------
nnU-Net's ``-pretrained_weights`` runs ``trainer.initialize()`` and then ``load_pretrained_weights(network)``,
which asserts that every key of the network's state dict (except ``.seg_layers.``) is in the pretrained file. A
network that already holds ``theta`` / ``lora_A`` keys fails that assertion. So the trainer defers the swap:

* ``initialize()`` builds the PLAIN nnU-Net network (nnU-Net then compiles it, builds the optimizer and wraps DDP
  as usual) and checks the QPG settings against it, so a wrong pattern or strategy stops here, before anything
  is trained, with a message naming the pattern and listing the layers;
* ``load_pretrained_weights`` then fills the plain network, exactly as for a stock trainer. ``initialize()``
  first checks the ``-pretrained_weights`` file (:func:`check_pretrained_weights`): read as data only, and every
  key and shape nnU-Net will assert present, so a mismatch names keys and shapes (nnU-Net's own assertion prints
  the network's whole tensor) and a checkpoint that needs pickled code never reaches nnU-Net's unpickling;
* the swap runs once, on the unwrapped module, at ``on_train_start()`` (fresh or pretrained training) or in
  ``load_checkpoint()`` before the state dict is loaded (``--c``, ``--val``, ``--val_best``). Adapter and LoRA
  layers copy the (pretrained) kernel as their frozen base ``W`` (Eqs. 7, 9);
* after the swap the network is re-compiled if nnU-Net compiles, the optimizer and LR scheduler are rebuilt over
  the new parameters, and DDP is re-wrapped (a DDP wrapper registers its parameters when it is built). The old
  wrappers are dropped; SyncBatchNorm conversion already happened inside the module and is kept.

QPG layers hold ordinary parameters and buffers only, so checkpoints, AMP (kernels are generated in float32),
``torch.compile`` (kernel generation is ``torch.compiler.disable``d) and DDP need nothing else.

Parameter table and settings file
---------------------------------
At the swap the log shows :meth:`QPGReport.table` (classic vs QPG parameters per layer, trainable totals before
and after), and rank 0 writes ``qpg_settings.json`` beside the checkpoints (the fold's output folder) with the
trainer name, the report (:meth:`QPGReport.to_dict`) and the training schedule.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterator

import torch
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_qpg.accounting import QPGReport, count_trainable
from nnunet_qpg.postprocessing import POST_PROCESSING
from nnunet_qpg.safe_io import write_json_atomically
from nnunet_qpg.surgery import MODES, apply_qpg, find_layers, mark_only_adapters_trainable

__all__ = [
    "SETTINGS_FILE",
    "ConstantLRScheduler",
    "PaperProtocol",
    "check_pretrained_weights",
    "nnUNetTrainerQPGBase",
    "pretrained_weights_argument",
    "qpg_settings_of",
    "swap_network",
    "unwrap_network",
]

SETTINGS_FILE = "qpg_settings.json"
SEG_HEADS = "decoder.seg_layers.*"


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module under nnU-Net's wrappers: DDP's ``.module``, then torch.compile's ``._orig_mod``."""
    if isinstance(network, DDP):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def swap_network(network: nn.Module, swap, compile_network: bool = False, ddp_device_ids: list[int] | None = None,
                 ddp: bool | None = None) -> tuple[nn.Module, Any]:
    """Run ``swap(module)`` on the module under the wrappers of ``network`` and wrap the result again.

    Returns ``(new_network, swap's result)``. torch.compile and DDP wrappers are rebuilt (``ddp`` defaults to
    whether ``network`` was wrapped in DDP): DDP registers its parameters when it is built, so a wrapper built
    before the swap would neither synchronise the new parameters nor know the old ones are gone.
    """
    if ddp is None:
        ddp = isinstance(network, DDP)
    module = unwrap_network(network)
    result = swap(module)
    wrapped: nn.Module = torch.compile(module) if compile_network else module
    if ddp:
        wrapped = DDP(wrapped, device_ids=ddp_device_ids)
    return wrapped, result


class ConstantLRScheduler(torch.optim.lr_scheduler._LRScheduler):
    """No schedule: the learning rate stays ``initial_lr`` (the paper uses none). Same ``step(epoch)`` API as
    nnU-Net's ``PolyLRScheduler``."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float) -> None:
        self.initial_lr = initial_lr
        super().__init__(optimizer)

    def step(self, current_step: int | None = None) -> None:  # noqa: D102 - nnU-Net calls step(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.initial_lr


class nnUNetTrainerQPGBase(nnUNetTrainer):
    """nnUNetTrainer that places QPG / adapter / LoRA layers on the convolutions named by ``qpg_targets``.

    Class attributes (the whole configuration; subclasses override them):

    * ``qpg_targets``: glob patterns over canonical module names; empty = classical training (nothing swapped).
      ``decoder.*`` selects decoder convolutions only (the decoder's ``encoder`` alias is not canonical).
    * ``qpg_mode``: ``"replace"`` (QPGConv, Eqs. 6/8), ``"adapter"`` (QPGAConv, Eqs. 7/9) or ``"lora"`` (ConvLoRA).
    * ``qpg_post`` (``rce``/``lpp``/``sst``, Eqs. 3-5), ``qpg_blocks`` (K), ``qpg_lora_rank``, ``qpg_lora_alpha``,
      ``qpg_start_at_base``, ``qpg_train_bias``: passed to :func:`nnunet_qpg.surgery.apply_qpg`.
    * ``qpg_train_only``: ``None`` keeps every other parameter trainable (the paper's full-parameter scenario);
      a tuple of patterns freezes everything except the QPG / LoRA parameters and the matched modules
      (:func:`mark_only_adapters_trainable`, the PEFT scenario; e.g. ``("decoder.seg_layers.*",)``).
    * Schedule (``None`` keeps nnU-Net's default): ``schedule_epochs``, ``schedule_iterations_per_epoch``,
      ``schedule_val_iterations_per_epoch``, ``schedule_initial_lr``, ``schedule_weight_decay`` and
      ``schedule_optimizer``: ``"sgd"`` (nnU-Net: SGD, Nesterov, poly LR) or ``"adam_constant"`` (the paper:
      Adam, no LR scheduler).
    """

    qpg_targets: tuple[str, ...] = ()
    qpg_mode: str = "replace"
    qpg_post: str = "lpp"
    qpg_blocks: int = 1
    qpg_lora_rank: int = 8
    qpg_lora_alpha: float | None = None
    qpg_start_at_base: bool = False
    qpg_train_bias: bool = False
    qpg_train_only: tuple[str, ...] | None = None

    schedule_epochs: int | None = None
    schedule_iterations_per_epoch: int | None = None
    schedule_val_iterations_per_epoch: int | None = None
    schedule_initial_lr: float | None = None
    schedule_weight_decay: float | None = None
    schedule_optimizer: str = "sgd"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        type(self).check_qpg_settings()
        for attribute, nnunet_name in (("schedule_epochs", "num_epochs"),
                                       ("schedule_iterations_per_epoch", "num_iterations_per_epoch"),
                                       ("schedule_val_iterations_per_epoch", "num_val_iterations_per_epoch"),
                                       ("schedule_initial_lr", "initial_lr"),
                                       ("schedule_weight_decay", "weight_decay")):
            value = getattr(self, attribute)
            if value is not None:
                setattr(self, nnunet_name, value)
        self.qpg_report: QPGReport | None = None
        self._qpg_swapped = False

    # -- configuration: classmethods, because the predictor only has the class ----------------------------------
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Remember the defining file now: nnU-Net drops nnUNet_extTrainer modules from sys.modules after its
        # search, and inspect.getfile needs them there; error messages name this file.
        module = sys.modules.get(cls.__module__)
        cls._defined_in = getattr(module, "__file__", None)

    @classmethod
    def _where(cls) -> str:
        defined_in = cls.__dict__.get("_defined_in")
        return f"{cls.__name__} ({defined_in})" if defined_in else cls.__name__

    @classmethod
    def check_qpg_settings(cls) -> None:
        """Raise ``ValueError`` naming the trainer and its file when a setting is not one the library knows."""
        if isinstance(cls.qpg_targets, str):
            raise ValueError(f"{cls._where()}: qpg_targets must be a tuple of patterns, e.g. "
                             f"({cls.qpg_targets!r},), not a string")
        if cls.qpg_mode not in MODES:
            raise ValueError(f"{cls._where()}: unknown qpg_mode {cls.qpg_mode!r}; set it to one of "
                             + ", ".join(repr(m) for m in MODES))
        if cls.qpg_mode != "lora" and str(cls.qpg_post).lower() not in POST_PROCESSING:
            raise ValueError(f"{cls._where()}: unknown post-processing strategy qpg_post={cls.qpg_post!r}; set it to "
                             f"one of {', '.join(repr(p) for p in POST_PROCESSING)} (paper Eqs. 3-5)")
        if not isinstance(cls.qpg_blocks, int) or cls.qpg_blocks < 1:
            raise ValueError(f"{cls._where()}: qpg_blocks must be an integer >= 1 (the paper uses 1), "
                             f"got {cls.qpg_blocks!r}")
        if cls.schedule_optimizer not in ("sgd", "adam_constant"):
            raise ValueError(f"{cls._where()}: unknown schedule_optimizer {cls.schedule_optimizer!r}; "
                             "use 'sgd' (nnU-Net's default) or 'adam_constant' (the paper's protocol)")

    @classmethod
    def build_plain_network(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                            num_input_channels: int, num_output_channels: int,
                            enable_deep_supervision: bool = True) -> nn.Module:
        """The network a stock nnUNetTrainer would build from these plans (nothing swapped)."""
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)

    @classmethod
    def apply_qpg_settings(cls, network: nn.Module) -> QPGReport | None:
        """Swap the configured layers of ``network`` in place and freeze as configured; ``None`` if classical.

        Errors name the trainer, its file, the pattern and the network's convolutions.
        """
        cls.check_qpg_settings()
        if not cls.qpg_targets:
            return None
        try:
            report = apply_qpg(network, targets=list(cls.qpg_targets), mode=cls.qpg_mode, post=cls.qpg_post,
                               blocks=cls.qpg_blocks, r=cls.qpg_lora_rank, alpha=cls.qpg_lora_alpha,
                               start_at_base=cls.qpg_start_at_base, train_bias=cls.qpg_train_bias)
            if cls.qpg_train_only is not None:
                find_layers_or_modules(network, cls.qpg_train_only)
                report.trainable_after = mark_only_adapters_trainable(network, also_train=cls.qpg_train_only)
        except ValueError as error:
            raise ValueError(f"{cls._where()}: {error}\nFix the trainer's qpg_targets / qpg_train_only.") from error
        report.settings.update(train_only=None if cls.qpg_train_only is None else list(cls.qpg_train_only))
        return report

    @classmethod
    def check_targets(cls, network: nn.Module) -> None:
        """Fail now, before any training, if a pattern matches nothing in the planned (plain) network."""
        if not cls.qpg_targets:
            return
        try:
            find_layers(network, list(cls.qpg_targets))
            if cls.qpg_train_only is not None:
                find_layers_or_modules(network, cls.qpg_train_only)
        except ValueError as error:
            raise ValueError(f"{cls._where()}: {error}\nFix the trainer's qpg_targets / qpg_train_only.") from error

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's hook, also called on the class by ``nnUNetPredictor``: the plain network with QPG placed."""
        network = cls.build_plain_network(plans_manager, configuration_manager, num_input_channels,
                                          num_output_channels, enable_deep_supervision)
        cls.apply_qpg_settings(network)
        return network

    # -- training: build plain, swap after pretrained weights are in -------------------------------------------
    def initialize(self) -> None:
        # nnU-Net's initialize() calls self.build_network_architecture(...); the instance attribute shadows the
        # classmethod for this call only, so the network starts plain (see the module docstring for why).
        self.build_network_architecture = self.build_plain_network  # type: ignore[method-assign]
        try:
            super().initialize()
        finally:
            del self.build_network_architecture
        self.check_targets(unwrap_network(self.network))
        pretrained = pretrained_weights_argument(sys.argv)
        if pretrained is not None:  # nnU-Net loads them next, unpickling with weights_only=False
            check_pretrained_weights(unwrap_network(self.network), pretrained, self._where())

    def apply_qpg_to_network(self) -> None:
        """Swap once: on the unwrapped module, then re-compile, rebuild optimizer / scheduler, re-wrap DDP."""
        if self._qpg_swapped:
            return
        if not self.was_initialized:
            self.initialize()

        def swap(module: nn.Module) -> QPGReport | None:
            report = type(self).apply_qpg_settings(module)
            module.to(self.device)
            return report

        self.network, self.qpg_report = swap_network(
            self.network, swap, compile_network=self._do_i_compile(),
            ddp_device_ids=[self.local_rank] if self.device.type == "cuda" else None, ddp=self.is_ddp)
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        self._qpg_swapped = True
        self._log_qpg_settings()

    def _log_qpg_settings(self) -> None:
        module = unwrap_network(self.network)
        if self.qpg_report is not None:
            self.print_to_log_file(f"QPG layers of {type(self).__name__}:\n{self.qpg_report.table()}\n",
                                   add_timestamp=False)
        else:
            self.print_to_log_file(f"{type(self).__name__}: classical training, "
                                   f"{count_trainable(module):,} trainable parameters", add_timestamp=False)
        if self.local_rank == 0:
            write_json_atomically(os.path.join(self.output_folder, SETTINGS_FILE), qpg_settings_of(self, module))

    def on_train_start(self) -> None:
        self.apply_qpg_to_network()
        super().on_train_start()

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        self.apply_qpg_to_network()
        super().load_checkpoint(filename_or_checkpoint)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.network.parameters() if p.requires_grad)

    def configure_optimizers(self):
        if self.schedule_optimizer == "adam_constant":
            optimizer = torch.optim.Adam(self.trainable_parameters(), lr=self.initial_lr,
                                         weight_decay=self.weight_decay)
            return optimizer, ConstantLRScheduler(optimizer, self.initial_lr)
        if self._qpg_swapped or self.qpg_train_only is not None:
            # Frozen base kernels stay out of the optimizer (and its state in the checkpoint).
            from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

            optimizer = torch.optim.SGD(self.trainable_parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                        momentum=0.99, nesterov=True)
            return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)
        return super().configure_optimizers()


def pretrained_weights_argument(argv: list[str]) -> str | None:
    """The file after nnUNetv2_train's ``-pretrained_weights`` in ``argv`` (also ``-pretrained_weights=FILE``).

    nnU-Net hands that file to ``load_pretrained_weights`` after ``initialize()`` without telling the trainer,
    so the trainer reads the command line to check the file first.
    """
    for index, word in enumerate(argv):
        if word == "-pretrained_weights" and index + 1 < len(argv):
            return argv[index + 1]
        if word.startswith("-pretrained_weights="):
            return word.split("=", 1)[1]
    return None


def check_pretrained_weights(network: nn.Module, path: str, where: str = "") -> None:
    """Refuse (``ValueError``) pretrained weights that nnU-Net's ``load_pretrained_weights`` would reject.

    The file is read as data only (:func:`nnunet_qpg.safe_io.load_checkpoint`; a checkpoint that needs pickled
    code is refused before nnU-Net unpickles it), then checked with nnU-Net's rule: every key of the plain
    network except the segmentation heads is in the file with the same shape. The message names keys and shapes
    only; nnU-Net's own assertion prints the network's whole tensor.
    """
    from nnunet_qpg.safe_io import load_checkpoint

    prefix = f"{where}: " if where else ""
    try:
        pretrained = load_checkpoint(path)["network_weights"]
    except ValueError as error:
        raise ValueError(f"{prefix}-pretrained_weights: {error}") from None
    problems = []
    for key, value in network.state_dict().items():
        if ".seg_layers." in key:
            continue  # nnU-Net does not transfer the segmentation heads
        theirs = getattr(pretrained.get(key), "shape", None)
        if key not in pretrained:
            problems.append(f"{key}: not in the pretrained weights")
        elif theirs is None or tuple(theirs) != tuple(value.shape):
            problems.append(f"{key}: shape {tuple(theirs) if theirs is not None else '?'} in the pretrained "
                            f"weights, {tuple(value.shape)} in this network")
    if problems:
        shown = "\n  ".join(problems[:8])
        more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise ValueError(f"{prefix}-pretrained_weights {path} does not fit the network these plans build "
                         f"({len(problems)} weight(s) differ):\n  {shown}{more}\nUse a checkpoint trained with "
                         f"the same plans and configuration (nnU-Net transfers every weight except the "
                         f"segmentation heads).")


def find_layers_or_modules(network: nn.Module, patterns) -> None:
    """Raise ``ValueError`` if one of ``patterns`` (e.g. ``qpg_train_only``) names no module at all."""
    from nnunet_qpg.surgery import _conv_listing, _matches

    names = [name for name, _ in network.named_modules()]
    for pattern in patterns:
        if not any(_matches(name, pattern) for name in names):
            raise ValueError(f"pattern {pattern!r} matches no module. {_conv_listing(network)}")


class PaperProtocol:
    """Mixin with the paper's training protocol: Adam, lr 1e-3, weight decay 5e-4, no LR scheduler, 20 epochs.

    Put it first: ``class nnUNetTrainerQPG_Paper(PaperProtocol, nnUNetTrainerQPG)``. nnU-Net's default is
    1000 epochs of 250 iterations (SGD, poly LR); iterations per epoch stay nnU-Net's.
    """

    schedule_epochs: int | None = 20
    schedule_optimizer: str = "adam_constant"
    schedule_initial_lr: float | None = 1e-3
    schedule_weight_decay: float | None = 5e-4


def qpg_settings_of(trainer: nnUNetTrainerQPGBase, module: nn.Module) -> dict:
    """The JSON written beside the checkpoints: trainer, QPG report, trainable totals and schedule."""
    report = trainer.qpg_report.to_dict() if trainer.qpg_report is not None else None
    return {
        "trainer": type(trainer).__name__,
        "qpg": report,
        "trainable_parameters": count_trainable(module),
        "total_parameters": sum(p.numel() for p in module.parameters()),
        "schedule": {
            "optimizer": trainer.schedule_optimizer,
            "num_epochs": trainer.num_epochs,
            "num_iterations_per_epoch": trainer.num_iterations_per_epoch,
            "initial_lr": trainer.initial_lr,
            "weight_decay": trainer.weight_decay,
        },
    }
