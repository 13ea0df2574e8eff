"""Shared helpers of the benchmarks: machine description, interleaved timing, copy bandwidth, table printing.

The machine these run on is shared and noisy, so contenders are never timed one after the other in separate
phases: every round times each contender once (A, B, C, A, B, C, ...), the order rotating each round, and the
figures reported are the minimum (the least disturbed run) and the median over rounds, with their ratios.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

# The nnU-Net plan of a 2D 256x256 dataset: 7 stages, nnU-Net's default 2D feature widths (32 doubling to 512).
UNET_2D_256_FEATURES = (32, 64, 128, 256, 512, 512, 512)


def plainconvunet_2d_256(input_channels: int = 1, output_channels: int = 2, deep_supervision: bool = True):
    """nnU-Net's 2D PlainConvUNet for 256x256 patches, built as nnU-Net builds it (get_network_from_plans)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    stages = len(UNET_2D_256_FEATURES)
    arch_kwargs = dict(
        n_stages=stages,
        features_per_stage=list(UNET_2D_256_FEATURES),
        conv_op="torch.nn.modules.conv.Conv2d",
        kernel_sizes=[[3, 3]] * stages,
        strides=[[1, 1]] + [[2, 2]] * (stages - 1),
        n_conv_per_stage=[2] * stages,
        n_conv_per_stage_decoder=[2] * (stages - 1),
        conv_bias=True,
        norm_op="torch.nn.modules.instancenorm.InstanceNorm2d",
        norm_op_kwargs={"eps": 1e-05, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin="torch.nn.LeakyReLU",
        nonlin_kwargs={"inplace": True},
    )
    return get_network_from_plans(
        "dynamic_network_architectures.architectures.unet.PlainConvUNet", arch_kwargs,
        ["conv_op", "norm_op", "dropout_op", "nonlin"], input_channels, output_channels,
        deep_supervision=deep_supervision)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description() -> str:
    """One paragraph naming the CPU, cores, torch and thread settings; printed at the top of every benchmark."""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"date: {datetime.datetime.now().isoformat(timespec='seconds')}\n"
            f"cpu: {cpu_model()} | logical cores: {os.cpu_count()} | load average: {load}\n"
            f"torch {torch.__version__} | intra-op threads: {torch.get_num_threads()} | "
            f"python {platform.python_version()} | gpu: {gpu}")


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


@dataclass
class Timing:
    """Seconds of every round for one contender."""

    name: str
    seconds: list[float]

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_interleaved(contenders: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                     min_round_seconds: float = 0.0) -> dict[str, Timing]:
    """Time each callable once per round, interleaved, the order rotating each round (so none always runs
    first after a pause). ``warmup`` untimed rounds come first. A callable faster than ``min_round_seconds``
    is repeated within its slot and the time divided, so tiny calls are not all timer resolution.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    repeats = {}
    for name in names:
        started = time.perf_counter()
        contenders[name]()
        once = time.perf_counter() - started
        repeats[name] = max(1, int(min_round_seconds / max(once, 1e-9)))
    timings = {name: Timing(name, []) for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            for _ in range(repeats[name]):
                contenders[name]()
            timings[name].seconds.append((time.perf_counter() - started) / repeats[name])
    return timings


def copy_bandwidth_contender(mebibytes: int = 256) -> tuple[Callable[[], object], int]:
    """A plain large tensor copy (dst.copy_(src)) and the bytes it moves (read + write), as a reference."""
    numel = mebibytes * 2**20 // 4
    src = torch.rand(numel)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), 2 * numel * 4


def fmt_seconds(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A plain-text table with right-aligned columns (the first column left-aligned)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
