"""Inference: a QPG model in eval mode vs its exported (baked) plain model, same volume, same predictor path.

Both networks are built by the trainer class from nnU-Net's 256x256 2D plan (``benchmarks/data``) as the predictor
builds them, the baked one with ``nnunet_qpg.surgery.bake`` (what ``nnunet-qpg export`` does). Each goes into its
own ``nnUNetPredictor`` (manual_initialization with a copy of its state dict, as if loaded from a checkpoint) and
predicts a synthetic volume slice by slice with ``nnunet_qpg.inference.predict_slice`` (the project's volume
prediction path: one 2D image per nnU-Net call). Both are timed interleaved, and the masks compared.

nnU-Net's predictor calls ``load_state_dict`` before EVERY image, which bumps the parameters' versions: the
QPG layers' eval-mode kernel cache must survive that, or every slice regenerates every kernel.

Target (issue 6): QPG model within 2% of the exported model, identical masks.

usage: python benchmarks/bench_inference.py [--quick] [--rounds N] [--slices Z] [--threads T] [--mirroring]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (fmt_seconds, load_stored_plan, machine_description, print_table, set_threads,  # noqa: E402
                    shrink_for_quick, time_interleaved)

TRAINERS = ("nnUNetTrainerQPG", "nnUNetTrainerQPGDecoder")
ALLOWED_SLOWDOWN = 0.02


def build_networks(trainer_name: str, plans: dict, dataset_json: dict):
    """(QPG network in eval mode, its baked copy in eval mode), as the predictor / the exporter build them."""
    import importlib

    from nnunet_qpg.surgery import bake
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    trainer_class = getattr(importlib.import_module(f"nnunet_qpg.trainers.{trainer_name}"), trainer_name)
    plans_manager = PlansManager(plans)
    config = plans_manager.get_configuration("2d")
    torch.manual_seed(0)
    qpg = trainer_class.build_network_architecture(plans_manager, config, 1, 2, enable_deep_supervision=False)
    baked = copy.deepcopy(qpg)
    bake(baked)
    return qpg.eval(), baked.eval()


def make_predictor(network, plans: dict, dataset_json: dict, trainer_name: str, mirroring: bool):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    predictor = nnUNetPredictor(use_mirroring=mirroring, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    # A separate copy of the weights, as a checkpoint would give: the predictor loads it before every image.
    weights = copy.deepcopy(network.state_dict())
    predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration("2d"), [weights],
                                    dataset_json, trainer_name, inference_allowed_mirroring_axes=(0, 1))
    return predictor


def synthetic_volume(slices: int, size: int) -> np.ndarray:
    """Noise with a bright square per slice (the square moves): [slices, size, size] float32."""
    rng = np.random.default_rng(0)
    volume = rng.normal(0.0, 0.3, (slices, size, size)).astype(np.float32)
    for z in range(slices):
        y = size // 4 + z % (size // 4)
        volume[z, y:y + size // 4, size // 3:size // 3 + size // 4] += 2.0
    return volume


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3-stage net, 32x32 slices, 2 slices, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5; quick 2)")
    parser.add_argument("--slices", type=int, default=None, help="slices in the volume (default 8; quick 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring (nnU-Net's default; 4x time)")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated QPG trainers to compare")
    args = parser.parse_args()
    set_threads(args.threads)

    from nnunet_qpg.inference import predict_slice

    plans, dataset_json = load_stored_plan()
    if args.quick:
        plans = shrink_for_quick(plans)
    size = plans["configurations"]["2d"]["patch_size"][0]
    volume = synthetic_volume(args.slices or (2 if args.quick else 8), size)
    print(machine_description())
    print(f"\nvolume {volume.shape[0]} x {size} x {size}, slice by slice through nnUNetPredictor, mirroring "
          f"{'on' if args.mirroring else 'off'}, device cpu")

    contenders, pairs = {}, []
    for name in args.trainers.split(","):
        qpg, baked = build_networks(name, plans, dataset_json)
        for label, network in ((f"{name} (QPG, eval)", qpg), (f"{name} (exported)", baked)):
            predictor = make_predictor(network, plans, dataset_json, name, args.mirroring)
            contenders[label] = (lambda p=predictor: np.stack([predict_slice(p, s) for s in volume]))
        pairs.append((name, f"{name} (QPG, eval)", f"{name} (exported)"))

    masks = {label: run() for label, run in contenders.items()}
    with torch.inference_mode():
        timings = time_interleaved(contenders, rounds=args.rounds or (2 if args.quick else 5), warmup=0)
    rows = []
    for name, qpg_label, baked_label in pairs:
        q, b = timings[qpg_label], timings[baked_label]
        same = bool(np.array_equal(masks[qpg_label], masks[baked_label]))
        ratio = q.median / b.median
        verdict = "met" if ratio <= 1 + ALLOWED_SLOWDOWN and same else "MISSED"
        rows.append([name, fmt_seconds(q.min), fmt_seconds(q.median), fmt_seconds(b.min), fmt_seconds(b.median),
                     f"{q.min / b.min:.3f}", f"{ratio:.3f}", "yes" if same else "NO", verdict])
    print()
    print_table(["model", "QPG min", "QPG med", "exported min", "exported med", "ratio min", "ratio med",
                 "same masks", f"<= {1 + ALLOWED_SLOWDOWN:.2f}"], rows)
    print("ratio = QPG eval time / exported time for the whole volume (interleaved rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
