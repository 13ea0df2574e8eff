"""Parameter table of QPG placed on a network planned by nnU-Net, without training.

Builds the network of a planned configuration (after nnUNetv2_plan_and_preprocess) exactly as a trainer would,
applies the trainer's QPG settings (or the ones given here) and prints, per swapped layer, the classic and QPG
parameter counts, qubits and VQCs, then the trainable totals before and after. For a trainer with circuits in
the data path (nnUNetTrainerQLayer, nnUNetTrainerQLayerAngle) it prints the block's parameters and its circuit
executions per forward pass and per predicted image (what a baked QPG network does not need). --list prints the
convolution names that --targets patterns match against.

examples:
  nnunet-qpg info -d 701 -c 2d                                  # nnUNetTrainerQPG on the planned network
  nnunet-qpg info -d 701 -c 2d -tr nnUNetTrainerQPGA
  nnunet-qpg info -d 701 -c 2d -tr nnUNetTrainerQLayer --image-size 512 512   # circuits in the data path
  nnunet-qpg info -d 701 -c 2d --targets "decoder.stages.0.*" --mode adapter --blocks 2
  nnunet-qpg info --plans nnUNetPlans.json --dataset-json dataset.json -c 2d --list
"""

from __future__ import annotations

import argparse
import json
import os
import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

from nnunet_qpg.commands.arguments import positive_int
from nnunet_qpg.config import MODES, POSTS


def add_planned_network_arguments(parser: argparse.ArgumentParser, trainer_help: str) -> argparse._ArgumentGroup:
    """-d/--plans, -p, --dataset-json, -c, -tr and the override group (--targets, --mode, --post, --blocks), which
    `info` and `hardware-cost` share; returns the override group for more options."""
    source = parser.add_argument_group("planned network (one of)")
    source.add_argument("-d", "--dataset", help="dataset name or id in $nnUNet_preprocessed")
    source.add_argument("--plans", type=Path, help="a plans .json file (e.g. from a results folder)")
    parser.add_argument("-p", "--plans-name", default="nnUNetPlans", help="plans identifier with -d (default: nnUNetPlans)")
    parser.add_argument("--dataset-json", type=Path, default=None,
                        help="dataset.json for --plans (default: the one beside the plans file)")
    parser.add_argument("-c", "--configuration", default="2d", help="configuration (default: 2d)")
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerQPG",
                        help=f"{trainer_help} (default: nnUNetTrainerQPG); searched as nnU-Net does, then in this "
                             f"package's trainers")
    override = parser.add_argument_group("override the trainer's settings")
    override.add_argument("--targets", nargs="+", metavar="PATTERN", help="glob patterns over module names")
    override.add_argument("--mode", choices=tuple(MODES))
    override.add_argument("--post", choices=tuple(POSTS))
    override.add_argument("--blocks", type=positive_int, help="circuit blocks K of Eq. 1")
    return override


def add_arguments(parser: argparse.ArgumentParser) -> None:
    override = add_planned_network_arguments(parser, "trainer whose settings to apply")
    override.add_argument("--rank", type=positive_int, help="LoRA rank")
    parser.add_argument("--image-size", type=positive_int, nargs="+", metavar="N",
                        help="image size for the circuit executions of a data-path block (nnUNetTrainerQLayer...): "
                             "voxels per axis of one predicted image (2d: a slice); default: the plans' median")
    parser.add_argument("--list", action="store_true", help="list the network's convolutions and stop")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


@dataclass
class PlannedNetwork:
    """The network of a planned configuration, built as a trainer builds it (deep supervision on, the trainer's
    data-path block placed if it has one), and the trainer's QPG settings with the command line's overrides (not
    applied yet)."""

    plans: dict
    configuration_manager: object
    trainer: type
    config: object
    network: object


def planned_network(args: argparse.Namespace, changes: dict) -> PlannedNetwork:
    """Build what -d/--plans, -c and -tr name; ``changes`` are QPGConfig overrides (None values ignored).
    ValueError with the fix for a missing plan, configuration or trainer."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_qpg.config import QPGConfig
    from nnunet_qpg.nnunet_trainer import nnUNetTrainerQPGBase
    from nnunet_qpg.quantum_bottleneck import place_quantum_bottleneck

    plans, dataset_json = _load_plans(args)
    plans_manager = PlansManager(plans)
    if args.configuration not in plans.get("configurations", {}):
        raise ValueError(f"configuration {args.configuration!r} is not planned; planned: "
                         f"{', '.join(plans.get('configurations', {}))}")
    configuration_manager = plans_manager.get_configuration(args.configuration)
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its trainer search; --json must stay JSON
        trainer = _find_trainer(args.trainer)
    config = trainer.resolved_qpg_config() if issubclass(trainer, nnUNetTrainerQPGBase) else QPGConfig()
    config = config.replace(**{name: value for name, value in changes.items() if value is not None})
    num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    network = nnUNetTrainerQPGBase.build_plain_network(plans_manager, configuration_manager, num_inputs,
                                                       num_outputs, True)
    block_config = getattr(trainer, "quantum_block", None)
    if block_config is not None:  # circuits in the data path (nnUNetTrainerQLayer...), placed as the trainer does
        place_quantum_bottleneck(network, block_config)
    return PlannedNetwork(plans, configuration_manager, trainer, config, network)


def _find_trainer(name: str):
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from nnunet_qpg.commands.trainers_path import trainers_path

    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        found = recursive_find_python_class(trainers_path(), name, None, base_folder=trainers_path())
        if found is None:
            raise ValueError(f"trainer {name!r} not found in nnU-Net, in $nnUNet_extTrainer nor in "
                             f"{trainers_path()}") from None
        return found


def _load_plans(args: argparse.Namespace) -> tuple[dict, dict]:
    if args.plans is not None:
        plans_file = args.plans
        dataset_json_file = args.dataset_json or plans_file.parent / "dataset.json"
    elif args.dataset is not None:
        from nnunetv2.paths import nnUNet_preprocessed
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        if not nnUNet_preprocessed:
            raise ValueError("nnUNet_preprocessed is not set; export it or pass --plans PLANS.json")
        folder = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(args.dataset)
        plans_file = folder / f"{args.plans_name}.json"
        dataset_json_file = args.dataset_json or folder / "dataset.json"
    else:
        raise ValueError("give -d DATASET (planned in $nnUNet_preprocessed) or --plans PLANS.json")
    for path in (plans_file, dataset_json_file):
        if not path.is_file():
            raise ValueError(f"{path} does not exist; run nnUNetv2_plan_and_preprocess first or give the right path")
    return json.loads(plans_file.read_text()), json.loads(dataset_json_file.read_text())


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.nnunet_trainer import data_path_blocks
    from nnunet_qpg.quantum_bottleneck import data_path_report, data_path_summary
    from nnunet_qpg.surgery import apply_qpg, conv_listing

    try:
        planned = planned_network(args, {"targets": tuple(args.targets) if args.targets else None, "mode": args.mode,
                                         "post": args.post, "blocks": args.blocks, "rank": args.rank})
        plans, configuration_manager, trainer, config, network = (
            planned.plans, planned.configuration_manager, planned.trainer, planned.config, planned.network)
        if args.list:
            print(conv_listing(network, limit=10**6))
            return 0
        report = None if config.is_classical else apply_qpg(network, config)
        if args.image_size is not None and len(args.image_size) != len(configuration_manager.patch_size):
            raise ValueError(f"--image-size needs {len(configuration_manager.patch_size)} numbers for the "
                             f"{args.configuration} configuration, got {len(args.image_size)}")
        blocks = data_path_blocks(network, configuration_manager, args.image_size)
    except ValueError as error:
        print(f"info: {error}", file=sys.stderr)
        return 2
    total = sum(p.numel() for p in network.parameters() if p.requires_grad)
    if args.json:
        data_path = [data_path_summary(*entry) for entry in blocks]
        out = report.to_dict() if report is not None else {"trainer": args.trainer, "qpg": None, "trainable": total}
        if data_path:
            out["data_path"] = data_path
        print(json.dumps(out, indent=2) if report is not None or data_path else json.dumps(out))
        return 0
    if report is None and not blocks:
        print(f"{args.trainer}: classical training, nothing swapped; {total:,} trainable parameters")
        return 0
    heading = (f"{trainer.__name__} ({config.describe() if report is not None else 'no QPG layers'}) on "
               f"{plans['dataset_name']} {args.configuration} "
               f"({configuration_manager.network_arch_class_name.split('.')[-1]})")
    print(heading + (os.linesep + report.table() if report is not None else ""))
    for name, block, cost in blocks:
        print(data_path_report(name, block, cost))
    if blocks:
        print(f"{total:,} trainable parameters in all")
    return 0
