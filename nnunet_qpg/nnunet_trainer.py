"""nnU-Net v2 trainer machinery for QPG: the base class every trainer in ``trainers/`` configures.

A trainer is a subclass that sets one class attribute, its :class:`~nnunet_qpg.config.QPGConfig` (PEFT's
``LoraConfig`` / nnU-Net variant style)::

    class nnUNetTrainerQPG(nnUNetTrainerQPGBase):
        qpg_config = QPGConfig(
            targets=("decoder.seg_layers.*",),  # glob patterns over canonical module names
            mode="replace",                     # QPGConv, Eqs. (6), (8)
            post="lpp",                         # post-processing, Eqs. (3)-(5): rce | lpp | sst
            blocks=1,                           # K circuit blocks, Eq. (1)
        )

The base holds only when and where to swap (below); schedule numbers come from :class:`ScheduleSettings` and the
paper's optimizer from the :class:`PaperProtocol` variant hook. Trainer files in the earlier attribute form
(``qpg_targets = (...)``, ``qpg_mode = ...``) still work (:meth:`nnUNetTrainerQPGBase.resolved_qpg_config`).

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
``torch.compile`` and DDP need nothing else: ``apply_qpg`` hooks the network so that its forward pass generates every
QPG kernel in one batched call before the compiled graph runs (``nnunet_qpg.generation_hooks``).

Circuits in the data path (SPEC section 8)
------------------------------------------
A trainer may also set ``quantum_block = QuantumBlockConfig(...)`` (``trainers/nnUNetTrainerQLayer.py``): a
:class:`~nnunet_qpg.quantum_bottleneck.QuantumBottleneck` is then appended to the last encoder stage by the same
deferred swap (:meth:`nnUNetTrainerQPGBase.adapt_network`), and the log and ``qpg_settings.json`` add its
parameters and circuit executions per forward pass and per predicted image (``data_path``).

Parameter table and settings file
---------------------------------
At the swap the log shows :meth:`QPGReport.table` (classic vs QPG parameters per layer, trainable totals before
and after), and rank 0 writes ``qpg_settings.json`` beside the checkpoints (the fold's output folder) with the
trainer name, its QPGConfig as is (``qpg_config``), the report (:meth:`QPGReport.to_dict`) and the schedule.
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
from nnunet_qpg.config import QPGConfig, QPGConfigError
from nnunet_qpg.quantum_bottleneck import (DataPathCost, QuantumBlockConfig, QuantumBottleneck, bottleneck_channels,
                                           data_path_cost, data_path_report, data_path_summary,
                                           place_quantum_bottleneck)
from nnunet_qpg.safe_io import write_json_atomically
from nnunet_qpg.surgery import apply_qpg, find_layers, find_modules

__all__ = [
    "SETTINGS_FILE",
    "ConstantLRScheduler",
    "LEGACY_ATTRIBUTES",
    "PaperProtocol",
    "QPGConfig",
    "ScheduleSettings",
    "check_pretrained_weights",
    "data_path_blocks",
    "data_path_lines",
    "nnUNetTrainerQPGBase",
    "paper_optimizer",
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


class ScheduleSettings:
    """Mixin: class attributes that override nnU-Net's schedule numbers (``None`` keeps nnU-Net's default).

    ``schedule_epochs``, ``schedule_iterations_per_epoch``, ``schedule_val_iterations_per_epoch``,
    ``schedule_initial_lr``, ``schedule_weight_decay``. Works on any nnUNetTrainer (put it before it).
    """

    schedule_epochs: int | None = None
    schedule_iterations_per_epoch: int | None = None
    schedule_val_iterations_per_epoch: int | None = None
    schedule_initial_lr: float | None = None
    schedule_weight_decay: float | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)  # type: ignore[call-arg]
        for attribute, nnunet_name in (("schedule_epochs", "num_epochs"),
                                       ("schedule_iterations_per_epoch", "num_iterations_per_epoch"),
                                       ("schedule_val_iterations_per_epoch", "num_val_iterations_per_epoch"),
                                       ("schedule_initial_lr", "initial_lr"),
                                       ("schedule_weight_decay", "weight_decay")):
            value = getattr(self, attribute)
            if value is not None:
                setattr(self, nnunet_name, value)


# Today's attribute form (trainer files written before QPGConfig): attribute -> QPGConfig field
LEGACY_ATTRIBUTES = {
    "qpg_targets": "targets",
    "qpg_mode": "mode",
    "qpg_post": "post",
    "qpg_blocks": "blocks",
    "qpg_lora_rank": "rank",
    "qpg_lora_alpha": "alpha",
    "qpg_start_at_base": "start_at_base",
    "qpg_train_bias": "train_bias",
    "qpg_train_only": "train_only",
}


class nnUNetTrainerQPGBase(ScheduleSettings, nnUNetTrainer):
    """nnUNetTrainer that places QPG / adapter / LoRA layers where its ``qpg_config`` says.

    One class attribute configures a trainer (PEFT's ``LoraConfig`` style)::

        class nnUNetTrainerQPGMine(nnUNetTrainerQPGBase):
            qpg_config = QPGConfig(targets=("encoder.stages.4.*",), mode="adapter",
                                   train_only=("decoder.seg_layers.*",))

    ``qpg_config`` None (the base) means classical training. Trainer files in the earlier attribute form
    (``qpg_targets``, ``qpg_mode``, ``qpg_post``, ``qpg_blocks``, ``qpg_lora_rank``, ``qpg_lora_alpha``,
    ``qpg_start_at_base``, ``qpg_train_bias``, ``qpg_train_only``) keep working: along the class hierarchy, from
    the base down, a ``qpg_config`` replaces what came before and such attributes change single fields of it
    (:meth:`resolved_qpg_config`). Schedule numbers come from :class:`ScheduleSettings`; the paper's optimizer
    from :class:`PaperProtocol`.
    """

    qpg_config: QPGConfig | None = None
    # A data-path circuit block after the last encoder stage (SPEC section 8; nnUNetTrainerQLayer), or None.
    quantum_block: QuantumBlockConfig | None = None
    records_qpg_settings = True  # this trainer writes qpg_settings.json itself (see PaperProtocol)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        type(self).check_qpg_settings()
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
    def resolved_qpg_config(cls) -> QPGConfig:
        """This trainer's QPGConfig (validated); ``ValueError`` naming the trainer, its file and the setting."""
        config = QPGConfig()
        for klass in reversed(cls.__mro__):
            own = vars(klass)
            if own.get("qpg_config") is not None:
                config = own["qpg_config"]
                if not isinstance(config, QPGConfig):
                    raise ValueError(f"{cls._where()}: qpg_config must be a QPGConfig(...), got "
                                     f"{type(config).__name__}")
            for attribute, field_name in LEGACY_ATTRIBUTES.items():
                if attribute in own:
                    try:
                        config = config.replace(**{field_name: own[attribute]})
                    except QPGConfigError as error:
                        raise ValueError(f"{cls._where()}: {attribute}={own[attribute]!r} is not valid: "
                                         f"{error}") from None
        return config

    @classmethod
    def check_qpg_settings(cls) -> None:
        """Raise ``ValueError`` naming the trainer and its file when a setting is not one the library knows."""
        cls.resolved_qpg_config()
        if cls.quantum_block is not None and not isinstance(cls.quantum_block, QuantumBlockConfig):
            raise ValueError(f"{cls._where()}: quantum_block must be a QuantumBlockConfig(...), got "
                             f"{type(cls.quantum_block).__name__}")

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
        config = cls.resolved_qpg_config()
        if config.is_classical:
            return None
        try:
            return apply_qpg(network, config)
        except ValueError as error:
            raise ValueError(f"{cls._where()}: {error}\nFix the trainer's qpg_config targets / train_only "
                             f"(qpg_targets / qpg_train_only in the attribute form).") from error

    @classmethod
    def adapt_network(cls, network: nn.Module) -> QPGReport | None:
        """Everything this trainer places on the plain ``network``, in place: the data-path block (if
        ``quantum_block`` is set), then the QPG layers; returns the QPG report (None if nothing is swapped)."""
        if cls.quantum_block is not None:
            place_quantum_bottleneck(network, cls.quantum_block)
        return cls.apply_qpg_settings(network)

    @classmethod
    def check_targets(cls, network: nn.Module) -> None:
        """Fail now, before any training, if a pattern matches nothing in the planned (plain) network."""
        if cls.quantum_block is not None:
            try:
                bottleneck_channels(network)
            except ValueError as error:
                raise ValueError(f"{cls._where()}: quantum_block: {error}") from error
        config = cls.resolved_qpg_config()
        if config.is_classical:
            return
        try:
            find_layers(network, config.targets)
            if config.train_only is not None:
                find_modules(network, config.train_only)
        except ValueError as error:
            raise ValueError(f"{cls._where()}: {error}\nFix the trainer's qpg_config targets / train_only "
                             f"(qpg_targets / qpg_train_only in the attribute form).") from error

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's hook, also called on the class by ``nnUNetPredictor``: the plain network with QPG (and the
        data-path block, if any) placed."""
        network = cls.build_plain_network(plans_manager, configuration_manager, num_input_channels,
                                          num_output_channels, enable_deep_supervision)
        cls.adapt_network(network)
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
            report = type(self).adapt_network(module)
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
        elif self.quantum_block is None:
            self.print_to_log_file(f"{type(self).__name__}: classical training, "
                                   f"{count_trainable(module):,} trainable parameters", add_timestamp=False)
        for line in data_path_lines(module, self.configuration_manager):
            self.print_to_log_file(line, add_timestamp=False)
        if self.quantum_block is not None:
            self.print_to_log_file(f"{type(self).__name__}: {count_trainable(module):,} trainable parameters",
                                   add_timestamp=False)
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
        if getattr(self, "schedule_optimizer", "sgd") == "adam_constant":  # the attribute form of PaperProtocol
            return paper_optimizer(self)
        if self._qpg_swapped or self.resolved_qpg_config().train_only is not None:
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


def paper_optimizer(trainer: nnUNetTrainer) -> tuple[torch.optim.Optimizer, ConstantLRScheduler]:
    """The paper's optimizer: Adam over the trainable parameters (frozen base kernels stay out), no schedule."""
    parameters = (p for p in trainer.network.parameters() if p.requires_grad)
    optimizer = torch.optim.Adam(parameters, lr=trainer.initial_lr, weight_decay=trainer.weight_decay)
    return optimizer, ConstantLRScheduler(optimizer, trainer.initial_lr)


class PaperProtocol(ScheduleSettings):
    """The paper's training protocol as a variant hook: Adam, lr 1e-3, weight decay 5e-4, no LR schedule, 20 epochs.

    Like nnU-Net's ``nnUNetTrainerVanillaAdam`` it overrides ``configure_optimizers`` only (plus the schedule
    numbers), so it fits any trainer; put it first: ``class nnUNetTrainer_Paper(PaperProtocol, nnUNetTrainer)``,
    ``class nnUNetTrainerQPG_Paper(PaperProtocol, nnUNetTrainerQPG)``. Iterations per epoch stay nnU-Net's.
    A classical trainer with this protocol also writes ``qpg_settings.json`` (nothing swapped, its trainable
    parameters and schedule), so ``nnunet-qpg report`` lists it beside the QPG models.
    """

    schedule_epochs: int | None = 20
    schedule_initial_lr: float | None = 1e-3
    schedule_weight_decay: float | None = 5e-4
    schedule_optimizer = "adam_constant"  # recorded in qpg_settings.json

    def configure_optimizers(self):
        return paper_optimizer(self)  # type: ignore[arg-type]

    def on_train_start(self) -> None:
        super().on_train_start()  # type: ignore[misc]
        if not getattr(self, "records_qpg_settings", False) and self.local_rank == 0:  # type: ignore[attr-defined]
            write_json_atomically(os.path.join(self.output_folder, SETTINGS_FILE),  # type: ignore[attr-defined]
                                  qpg_settings_of(self, unwrap_network(self.network)))  # type: ignore[attr-defined]


def qpg_settings_of(trainer: nnUNetTrainer, module: nn.Module) -> dict:
    """The JSON written beside the checkpoints: trainer, its QPGConfig as is, the QPG report (None when nothing
    is swapped), trainable totals and schedule."""
    report = getattr(trainer, "qpg_report", None)
    config = trainer.resolved_qpg_config() if isinstance(trainer, nnUNetTrainerQPGBase) else QPGConfig()
    return {
        "trainer": type(trainer).__name__,
        "qpg_config": config.to_dict(),
        "qpg": report.to_dict() if report is not None else None,
        "data_path": [data_path_summary(*entry) for entry in data_path_blocks(module, trainer.configuration_manager)],
        "trainable_parameters": count_trainable(module),
        "total_parameters": sum(p.numel() for p in module.parameters()),
        "schedule": {
            "optimizer": getattr(trainer, "schedule_optimizer", "sgd"),
            "num_epochs": trainer.num_epochs,
            "num_iterations_per_epoch": trainer.num_iterations_per_epoch,
            "initial_lr": trainer.initial_lr,
            "weight_decay": trainer.weight_decay,
        },
    }


def data_path_blocks(network: nn.Module, configuration_manager: ConfigurationManager,
                     image_size: list[int] | None = None) -> list[tuple[str, QuantumBottleneck, DataPathCost]]:
    """Every data-path block of ``network`` with its inference cost for the configuration's patch and strides,
    per image of ``image_size`` (default: the plans' median image, a slice for 2D configurations)."""
    found = [(name, module) for name, module in network.named_modules() if isinstance(module, QuantumBottleneck)]
    if not found:
        return []
    strides = getattr(getattr(network, "encoder", None), "strides", None)
    if strides is None:
        strides = configuration_manager.network_arch_init_kwargs["strides"]
    patch = list(configuration_manager.patch_size)
    size = list(image_size or configuration_manager.median_image_size_in_voxels)[-len(patch):]
    return [(name, block, data_path_cost(block.quantum, patch, strides, size)) for name, block in found]


def data_path_lines(network: nn.Module, configuration_manager: ConfigurationManager,
                    image_size: list[int] | None = None) -> list[str]:
    """The report of every data-path block (parameters, executions per forward and per predicted image)."""
    return [data_path_report(name, block, cost)
            for name, block, cost in data_path_blocks(network, configuration_manager, image_size)]
