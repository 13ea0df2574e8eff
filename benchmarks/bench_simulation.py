"""Weight generation (forward + backward) of every decoder convolution of nnU-Net's 2D PlainConvUNet planned for
256x256 inputs (features 32..512): our batched simulator ("native") vs the TorchQuantum backend, same layer,
same angles, interleaved in one run.

For each distinct decoder convolution shape, each post-processing strategy (rce, lpp, sst) and K = 1 and 3
blocks, one QPGConv is built from the planned convolution and ``generate_weight()`` is run forward and backward
(loss = sum(weight * fixed random tensor)) with ``set_backend("native")`` and ``set_backend("torchquantum")``.

Targets: native >= 20x faster than TorchQuantum on the largest layer (1024->512 3x3: 4608 VQCs of 10 qubits, 1024
outputs each) at 1 block; at 3 blocks >= 15x on the largest layer and >= 8x on every decoder convolution (issue
"QPG on the GPU"; the median ratio over rounds is the one judged, the min ratio is printed beside it).

Bandwidth: the nominal state traffic of a state-vector simulation is one read and one write of every VQC's
full state (2^n complex64 amplitudes) per block forward, and twice that backward. Dividing it by the measured
time gives an effective bandwidth, reported next to a plain large tensor copy's bandwidth measured interleaved
in the same run. (At one block the native simulator never forms the full state, so its "effective" bandwidth
can exceed the copy's: it is a way to compare, not a hardware counter.)

usage: python benchmarks/bench_simulation.py [--quick] [--rounds N] [--threads T] [--blocks 1,3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (copy_bandwidth_contender, fmt_seconds, machine_description, plainconvunet_2d_256,  # noqa: E402
                    print_table, set_threads, time_interleaved)

from nnunet_qpg.layers import QPGConv, is_convolution  # noqa: E402

STRATEGIES = ("rce", "lpp", "sst")
TARGETS = {1: 20.0, 3: 15.0}  # blocks -> required speed-up on the largest layer
EVERY_LAYER_TARGETS = {3: 8.0}  # blocks -> required speed-up on every decoder convolution


def decoder_convolutions(network: torch.nn.Module) -> list[tuple[str, torch.nn.Module, int]]:
    """(a representative name, the conv, how many decoder convs share its type and weight shape), largest first.

    Layers of identical type and shape do identical work, so each shape is timed once.
    """
    by_shape: dict[tuple, list] = {}
    for name, module in network.named_modules():
        if name.startswith("decoder.") and not name.startswith("decoder.encoder") and is_convolution(module):
            key = (type(module).__name__, tuple(module.weight.shape))
            by_shape.setdefault(key, [name, module, 0])[2] += 1
    rows = [tuple(v) for v in by_shape.values()]
    return sorted(rows, key=lambda r: -r[1].weight.numel())


def fwd_bwd(layer: QPGConv, grad_output: torch.Tensor):
    """One weight generation, forward and backward, as a training step would run it."""

    def run():
        for p in layer.parameters():
            p.grad = None
        weight = layer.generate_weight()
        (weight * grad_output).sum().backward()

    return run


def with_backend(layer: QPGConv, backend: str, run):
    def call():
        layer.set_backend(backend)
        run()

    return call


def nominal_state_bytes(layer: QPGConv) -> int:
    """Forward: read + write of every full state per block; backward: twice that (see the module docstring)."""
    state = layer.num_vqcs * (1 << layer.num_qubits) * 8  # complex64
    return 3 * 2 * layer.blocks * state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the two smallest layers, 2 rounds (a smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per layer (default 2, largest 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared, loaded 2-core machine a second OpenMP "
                             "thread mostly waits at barriers and makes every timing 2-10x noisier)")
    parser.add_argument("--blocks", default="1,3", help="comma-separated block counts K (default 1,3)")
    args = parser.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    print(machine_description())
    block_counts = [int(b) for b in args.blocks.split(",")]

    convs = decoder_convolutions(plainconvunet_2d_256())
    if args.quick:
        convs = convs[-2:]  # the two smallest (segmentation heads): seconds, TorchQuantum included
    print(f"\n{len(convs)} distinct decoder convolution shapes, fwd+bwd of generate_weight(), native vs TorchQuantum")

    copy_call, copy_bytes = copy_bandwidth_contender(16 if args.quick else 256)
    header = ["layer (count)", "weight", "VQCs x qubits", "K", "post", "native min", "native med",
              "TQ min", "TQ med", "ratio min", "ratio med"]
    rows, largest, per_layer = [], [], []
    for index, (name, conv, count) in enumerate(convs):
        is_largest = index == 0 and not args.quick
        rounds = args.rounds or (2 if args.quick else 3 if is_largest else 2)
        for blocks in block_counts:
            for post in STRATEGIES:
                torch.manual_seed(1)
                layer = QPGConv.from_conv(conv, post=post, blocks=blocks)
                grad_output = torch.randn(layer.weight_shape)
                run = fwd_bwd(layer, grad_output)
                contenders = {"native": with_backend(layer, "native", run),
                              "torchquantum": with_backend(layer, "torchquantum", run)}
                if is_largest:
                    contenders["copy"] = copy_call
                t = time_interleaved(contenders, rounds=rounds, warmup=1, min_round_seconds=0.05)
                native, tq = t["native"], t["torchquantum"]
                rows.append([f"{name} ({count})", "x".join(map(str, conv.weight.shape)),
                             f"{layer.num_vqcs} x {layer.num_qubits}", blocks, post,
                             fmt_seconds(native.min), fmt_seconds(native.median), fmt_seconds(tq.min),
                             fmt_seconds(tq.median), f"{tq.min / native.min:.1f}x", f"{tq.median / native.median:.1f}x"])
                if is_largest:
                    largest.append((blocks, post, native, tq, t["copy"], nominal_state_bytes(layer)))
                per_layer.append((name, "x".join(map(str, conv.weight.shape)),
                                  f"{layer.num_vqcs} x {layer.num_qubits}", blocks, post,
                                  tq.median / native.median, tq.min / native.min))
                print(f"  {name} K={blocks} {post}: ratio (median) {tq.median / native.median:.1f}x", flush=True)

    print()
    print_table(header, rows)
    print("ratio = TorchQuantum time / native time (higher is better); min over rounds and median over rounds")

    for blocks, target in EVERY_LAYER_TARGETS.items():
        entries = [e for e in per_layer if e[3] == blocks]
        if not entries:
            continue
        print(f"\nEvery decoder convolution at K={blocks}: target >= {target:g}x (median ratio; worst strategy shown)")
        table, misses = [], 0
        for key in dict.fromkeys((e[0], e[1], e[2]) for e in entries):
            mine = [e for e in entries if (e[0], e[1], e[2]) == key]
            worst = min(mine, key=lambda e: e[5])
            verdict = "met" if worst[5] >= target else "MISSED"
            misses += verdict != "met"
            table.append([*key, worst[4], f"{worst[5]:.1f}x", f"{worst[6]:.1f}x",
                          " ".join(f"{e[4]} {e[5]:.1f}x" for e in mine), verdict])
        print_table(["layer", "weight", "VQCs x qubits", "worst post", "ratio med", "ratio min", "all (median)",
                     "verdict"], table)
        print(f"{len(table) - misses} of {len(table)} decoder convolution shapes meet the target")

    if largest:
        print(f"\nLargest layer ({convs[0][0]}, weight {'x'.join(map(str, convs[0][1].weight.shape))}): "
              "targets and effective bandwidth (nominal state bytes / native median time)")
        table = []
        for blocks, post, native, tq, copy, state_bytes in largest:
            copy_gbs = copy_bytes / copy.median / 1e9
            native_gbs = state_bytes / native.median / 1e9
            ratio = tq.median / native.median
            target = TARGETS.get(blocks)
            verdict = "n/a" if target is None else ("met" if ratio >= target else "MISSED")
            table.append([f"K={blocks} {post}", f"{ratio:.1f}x", f"{tq.min / native.min:.1f}x",
                          f">= {target:g}x" if target else "-", verdict, f"{native_gbs:.1f} GB/s",
                          f"{copy_gbs:.1f} GB/s", f"{native_gbs / copy_gbs:.0%}"])
        print_table(["largest layer", "ratio med", "ratio min", "target", "verdict", "native eff. BW",
                     "copy BW", "of copy"], table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
