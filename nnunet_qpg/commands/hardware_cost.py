"""What training QPG on a quantum computer would cost: circuits, shots, jobs and time per step and per epoch.

Builds the network of a planned configuration as `nnunet-qpg info` does (-d/-c/-tr or --plans), applies the
trainer's QPG settings (or the overrides below) and counts, per swapped QPG layer and per training step:

  VQCs, qubits, blocks K, logical depth and CNOTs of one circuit (Eq. 1), the two-qubit gates after routing onto
  --coupling-map, forward circuits (one per VQC), parameter-shift circuits (VQCs * 2 * (2 n K): every RY and RX
  angle shifted by +pi/2 and -pi/2 alone) and shots (circuits * --shots);

then the network's totals per step and per epoch (--iterations steps), its jobs (one forward job and one gradient
job per step for the whole network) and, with --circuits-per-second R and --job-latency S, the time of an epoch:
circuits / R + jobs * S.

Assumptions: only training steps run circuits; validation and inference use the exact simulation or the baked
kernels (`nnunet-qpg export`), so they cost none. RCE layers read amplitudes, which no measurement gives: they are
marked 'n/a (RCE needs amplitudes)' and left out of the totals. ConvLoRA layers are classical: not listed. A
device that limits circuits per job needs more jobs than counted here. A trainer with circuits in the data path
(nnUNetTrainerQLayer...) runs them at training and at inference: its block's executions per training step and per
predicted image are printed after the table.

examples:
  nnunet-qpg hardware-cost -d 701 -c 2d                                  # nnUNetTrainerQPG, 1000 shots
  nnunet-qpg hardware-cost -d 701 -c 2d --shots 4000 --coupling-map heavy-hex --circuits-per-second 500 \\
      --job-latency 10
  nnunet-qpg hardware-cost --plans nnUNetPlans.json -c 2d --targets "decoder.stages.0.*" --post sst --json
"""

from __future__ import annotations

import argparse
import json
import sys

from nnunet_qpg.commands.arguments import non_negative_float, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_qpg.commands.info import add_planned_network_arguments
    from nnunet_qpg.hardware_cost import COUPLING_MAPS, GRADIENT_CHOICES

    add_planned_network_arguments(parser, "trainer whose QPG settings and schedule to use")
    device = parser.add_argument_group("the device")
    device.add_argument("--shots", type=positive_int, default=None,
                        help="measurements per circuit (default: the trainer's shots setting, else 1000)")
    device.add_argument("--gradient", choices=tuple(GRADIENT_CHOICES), default="parameter-shift",
                        help="parameter-shift (default; hardware has no backprop): 2 * (2 n K) shifted circuits "
                             "per VQC and step; backprop: forward circuits only, gradients from a simulator")
    device.add_argument("--coupling-map", choices=tuple(COUPLING_MAPS), default="none",
                        help="route one circuit per distinct (qubits, blocks) with qiskit.transpile "
                             "(optimization_level=1, seed_transpiler=0) and report its two-qubit gates: "
                             + "; ".join(f"{k}: {v}" for k, v in COUPLING_MAPS.items()) + " (default: none)")
    device.add_argument("--circuits-per-second", type=positive_float, default=None, metavar="R",
                        help="circuits (each with its shots) the device runs per second; gives the epoch time "
                             "circuits / R + jobs * S")
    device.add_argument("--job-latency", type=non_negative_float, default=None, metavar="S",
                        help="seconds each job costs besides its circuits (queue, compilation, loading; default 0)")
    parser.add_argument("--iterations", type=positive_int, default=None,
                        help="training steps per epoch (default: the trainer's schedule_iterations_per_epoch if set, "
                             "else nnU-Net's 250)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.commands.info import planned_network
    from nnunet_qpg.hardware_cost import DEFAULT_SHOTS, NNUNET_ITERATIONS_PER_EPOCH, hardware_cost
    from nnunet_qpg.nnunet_trainer import data_path_blocks
    from nnunet_qpg.quantum_bottleneck import data_path_report, data_path_summary
    from nnunet_qpg.surgery import apply_qpg

    try:
        planned = planned_network(args, {"targets": tuple(args.targets) if args.targets else None,
                                         "mode": args.mode, "blocks": args.blocks})
        plans, trainer, config, network = planned.plans, planned.trainer, planned.config, planned.network
        if args.post == "rce" and config.execution.measures:
            # the trainer's measured settings cannot hold for RCE; the cost table marks RCE layers instead
            config = config.replace(post="rce", shots=None, gradient="backprop", noise=None)
        elif args.post is not None:
            config = config.replace(post=args.post)
        shots = args.shots if args.shots is not None else (config.shots or DEFAULT_SHOTS)
        iterations = args.iterations or getattr(trainer, "schedule_iterations_per_epoch", None) \
            or NNUNET_ITERATIONS_PER_EPOCH
        if not config.is_classical:
            apply_qpg(network, config)
        blocks = data_path_blocks(network, planned.configuration_manager)
        cost = hardware_cost(network, shots, args.gradient, int(iterations), args.coupling_map,
                             args.circuits_per_second, args.job_latency)
    except ImportError as error:
        print(f"hardware-cost: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"hardware-cost: {error}", file=sys.stderr)
        return 2
    described = "data-path circuits, no QPG layers" if config.is_classical and blocks else config.describe()
    title = (f"{trainer.__name__} ({described}) on {plans.get('dataset_name', '?')} {args.configuration}, "
             f"{shots:,} shots per circuit, gradient {args.gradient}")
    batch = planned.configuration_manager.batch_size
    data_path = [dict(data_path_summary(*entry), executions_per_training_step=entry[2].executions_per_forward * batch)
                 for entry in blocks]
    if args.json:
        print(json.dumps({"trainer": trainer.__name__, "qpg": None if config.is_classical else config.describe(),
                          "configuration": args.configuration, **cost.to_dict(),
                          **({"data_path": data_path} if data_path else {})}, indent=2))
        return 0
    if not cost.layers and not blocks:
        print(f"{title}: no QPG layer, so nothing runs on quantum hardware"
              + (" (ConvLoRA layers are classical)" if config.mode == "lora" and not config.is_classical else ""))
        return 0
    print(f"{title}\n{cost.table()}" if cost.layers else f"{title}: no QPG layer")
    for (name, block, block_cost), entry in zip(blocks, data_path):
        # Circuits in the data path run at training AND at inference, unlike QPG's (SPEC section 8).
        print(data_path_report(name, block, block_cost))
        print(f"  per training step (batch {batch}, forward only): {entry['executions_per_training_step']:,} "
              f"circuit executions, {entry['executions_per_training_step'] * shots:,} shots at {shots:,} each")
    return 0
