"""Shared helpers of the benchmarks: machine description, interleaved timing, copy bandwidth, table printing.

The machine these run on is shared and noisy, so contenders are never timed one after the other in separate
phases: every round times each contender once (A, B, C, A, B, C, ...), the order rotating each round, and the
figures reported are the minimum (the least disturbed run) and the median over rounds, with their ratios.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

DATA = Path(__file__).resolve().parent / "data"
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


def load_stored_plan() -> tuple[dict, dict]:
    """(plans, dataset.json) nnU-Net 2.8 made for a synthetic 4-case 2D 256x256 dataset (tests/nnunet_helpers'
    make_tiny_2d_dataset(size=256) + nnUNetv2_plan_and_preprocess -c 2d): PlainConvUNet, 7 stages, batch 2."""
    return (json.loads((DATA / "plans_2d_256x256.json").read_text()),
            json.loads((DATA / "dataset_2d_256x256.json").read_text()))


def shrink_for_quick(plans: dict) -> dict:
    """The same plan cut to 3 stages and a 32x32 patch, batch 1: a smoke test of the whole path in seconds."""
    config = plans["configurations"]["2d"]
    kwargs = config["architecture"]["arch_kwargs"]
    stages = 3
    kwargs["n_stages"] = stages
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
        kwargs[key] = kwargs[key][:stages]
    kwargs["n_conv_per_stage_decoder"] = kwargs["n_conv_per_stage_decoder"][:stages - 1]
    config["patch_size"] = [32, 32]
    config["batch_size"] = 1
    return plans


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
    once = {}
    for _ in range(max(warmup, 1 if min_round_seconds > 0 else 0)):
        for name in names:
            started = time.perf_counter()
            contenders[name]()
            once[name] = time.perf_counter() - started  # the last warm-up call sizes the repeats
    repeats = {name: max(1, int(min_round_seconds / max(once.get(name, 1.0), 1e-9))) for name in names}
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
