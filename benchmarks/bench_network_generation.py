"""Every QPG kernel of a network, forward + backward: one network-level call vs one call per layer, interleaved.

For each shipped placement on nnU-Net's 2D PlainConvUNet for 256x256 (QPG heads, QPGDecoder K=1 and K=3, QPGA),
the network's QPG layers are generated forward and backward (loss = sum over layers of weight * fixed random
tensor) two ways in one process, interleaved: ``per layer`` (each layer's own ``generate_weight()``, the path a
layer called on its own takes) and ``network`` (the batched call ``apply_qpg``'s forward hook makes,
``nnunet_qpg.simulator.network``). Both give the same numbers (tests/test_network_generation.py).

    python benchmarks/bench_network_generation.py [--rounds 5] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import fmt_seconds, machine_description, plainconvunet_2d_256, print_table, set_threads, time_interleaved  # noqa: E402

from nnunet_qpg import apply_qpg  # noqa: E402
from nnunet_qpg.layers import QuantumKernelConv  # noqa: E402


def placements() -> dict:
    from trainers.nnUNetTrainerQPG import nnUNetTrainerQPG
    from trainers.nnUNetTrainerQPGA import nnUNetTrainerQPGA
    from trainers.nnUNetTrainerQPGDecoder import nnUNetTrainerQPGDecoder

    decoder = nnUNetTrainerQPGDecoder.resolved_qpg_config()
    return {"heads": nnUNetTrainerQPG.resolved_qpg_config(), "decoder K=1": decoder,
            "decoder K=3": decoder.replace(blocks=3), "QPGA": nnUNetTrainerQPGA.resolved_qpg_config()}


def contenders(config, quick: bool):
    network = plainconvunet_2d_256()
    apply_qpg(network, config)
    layers = [m for m in network.modules() if isinstance(m, QuantumKernelConv)]
    if quick:
        layers = layers[-3:]
    generation = network.__dict__["_qpg_network_generation"]
    generation.layers = layers  # --quick: the hook generates only these
    weights = [torch.randn(layer.weight_shape) for layer in layers]

    def per_layer():
        network.zero_grad(set_to_none=True)
        sum((layer.generate_weight() * w).sum() for layer, w in zip(layers, weights)).backward()

    def batched():
        network.zero_grad(set_to_none=True)
        generation.generate()
        kernels = [layer._pending_kernel for layer in layers]
        generation.clear()
        sum((k * w).sum() for k, w in zip(kernels, weights)).backward()

    return len(layers), {"per layer": per_layer, "network": batched}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the last three layers of each placement, 2 rounds")
    args = parser.parse_args()
    set_threads(args.threads)
    rounds = 2 if args.quick else args.rounds
    print(machine_description())
    print()
    rows = []
    for name, config in placements().items():
        count, runs = contenders(config, args.quick)
        timing = time_interleaved(runs, rounds)
        old, new = timing["per layer"], timing["network"]
        rows.append([name, str(count), fmt_seconds(old.min), fmt_seconds(old.median), fmt_seconds(new.min),
                     fmt_seconds(new.median), f"{new.min / old.min:.2f}", f"{new.median / old.median:.2f}"])
    print_table(["placement", "layers", "per layer min", "per layer med", "network min", "network med",
                 "ratio min", "ratio med"], rows)
    print("ratio = network time / per-layer time (forward + backward of every QPG kernel, interleaved rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
