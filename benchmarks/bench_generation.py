"""Kernel generation, forward + backward, of nnUNetTrainerQPGA's layers vs nnUNetTrainerConvLoRA's (item 2's miss).

For every encoder/decoder convolution of nnU-Net's 2D PlainConvUNet for 256x256 (the 32 the QPGA and ConvLoRA
trainers swap: everything but the segmentation heads), a QPGAConv (LPP, 1 block, the trainer's settings) and a
ConvLoRA (r = 8) are built from the same convolution and ``generate_weight()`` runs forward and backward (loss =
sum(weight * fixed random tensor)), interleaved in one process. Prints per distinct shape and the sum over all 32.

    python benchmarks/bench_generation.py [--rounds 5] [--threads 1] [--post lpp] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_seconds, machine_description, plainconvunet_2d_256, print_table, set_threads, time_interleaved  # noqa: E402

from nnunet_qpg.layers import ConvLoRA, QPGAConv, is_convolution  # noqa: E402


def fwd_bwd(layer, grad):
    def step():
        layer.zero_grad(set_to_none=True)
        layer.generate_weight().backward(grad)
    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--post", default="lpp", choices=["lpp", "sst", "rce"])
    parser.add_argument("--quick", action="store_true", help="only the three smallest shapes, 2 rounds")
    args = parser.parse_args()
    set_threads(args.threads)
    print(machine_description())
    torch.manual_seed(0)
    network = plainconvunet_2d_256()
    groups: dict[tuple, list] = {}
    for name, module in network.named_modules():
        if is_convolution(module) and "seg_layers" not in name:
            key = (type(module).__name__, tuple(module.weight.shape))
            groups.setdefault(key, [name, module, 0])[2] += 1
    items = sorted(groups.values(), key=lambda g: g[1].weight.numel())
    if args.quick:
        items, args.rounds = items[:3], 2
    rows, total = [], {"qpga": 0.0, "lora": 0.0}
    total_min = {"qpga": 0.0, "lora": 0.0}
    for name, conv, count in items:
        qpga = QPGAConv.from_conv(conv, post=args.post)
        lora = ConvLoRA.from_conv(conv, r=8)
        with torch.no_grad():
            lora.lora_B.normal_()
        grad = torch.randn(conv.weight.shape)
        t = time_interleaved({"qpga": fwd_bwd(qpga, grad), "lora": fwd_bwd(lora, grad)}, args.rounds, warmup=1,
                             min_round_seconds=0.02)
        for k in total:
            total[k] += count * t[k].median
            total_min[k] += count * t[k].min
        rows.append([f"{name} ({count})", "x".join(map(str, conv.weight.shape)), fmt_seconds(t["qpga"].min),
                     fmt_seconds(t["qpga"].median), fmt_seconds(t["lora"].min), fmt_seconds(t["lora"].median),
                     f"{t['qpga'].median / t['lora'].median:.2f}"])
    rows.append(["all (sum x count)", "", fmt_seconds(total_min["qpga"]), fmt_seconds(total["qpga"]),
                 fmt_seconds(total_min["lora"]), fmt_seconds(total["lora"]), f"{total['qpga'] / total['lora']:.2f}"])
    print(f"\nQPGAConv ({args.post}, K=1) vs ConvLoRA (r=8): generate_weight() forward + backward, {args.rounds} rounds")
    print_table(["layer (count)", "weight", "QPGA min", "QPGA med", "LoRA min", "LoRA med", "QPGA/LoRA med"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
