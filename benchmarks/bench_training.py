"""nnU-Net training iteration time on the CPU: nnUNetTrainer vs nnUNetTrainerQPG vs nnUNetTrainerQPGDecoder vs
nnUNetTrainerQPGA vs nnUNetTrainerConvLoRA, same plans, same batch, interleaved in one process.

Every trainer is instantiated in-process from the same nnU-Net plans (``benchmarks/data/plans_2d_256x256.json``,
the plan nnU-Net 2.8 makes for a 2D 256x256 dataset: PlainConvUNet, 7 stages, features 32..512, batch 2, patch
256x256; ``--replan`` plans a synthetic 256x256 dataset afresh instead), initialised, swapped as it would be at
the start of training (``apply_qpg_to_network()``), and then ``train_step(batch)`` (forward, deep-supervision
loss, backward, gradient clipping, optimizer step) is timed on ONE fixed batch shared by all trainers,
round-robin. No data loading is timed: the data loader is the same for all trainers.

Targets (issue 6): QPG (segmentation heads) within 3% of nnUNetTrainer; QPGDecoder within 30%; QPGA not slower
than ConvLoRA.

usage: python benchmarks/bench_training.py [--quick] [--rounds N] [--threads T] [--batch-size B] [--replan]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (fmt_seconds, load_stored_plan, machine_description, print_table, set_threads,  # noqa: E402
                    shrink_for_quick, time_interleaved)

TRAINERS = ("nnUNetTrainer", "nnUNetTrainerQPG", "nnUNetTrainerQPGDecoder", "nnUNetTrainerQPGA",
            "nnUNetTrainerConvLoRA")
# (trainer, reference, allowed slowdown): trainer time / reference time must stay <= 1 + allowed slowdown.
TARGETS = (("nnUNetTrainerQPG", "nnUNetTrainer", 0.03), ("nnUNetTrainerQPGDecoder", "nnUNetTrainer", 0.30),
           ("nnUNetTrainerQPGA", "nnUNetTrainerConvLoRA", 0.0))


def replan(workdir: Path) -> tuple[dict, dict]:
    """Plan a synthetic 4-case 2D 256x256 dataset with nnUNetv2_plan_and_preprocess (about a minute)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from nnunet_helpers import make_tiny_2d_dataset, nnunet_env, plan_and_preprocess

    env = nnunet_env(workdir / "replan")
    make_tiny_2d_dataset(Path(env["nnUNet_raw"]), dataset_id=992, num_cases=4, size=256)
    plan_and_preprocess(env, 992)
    folder = next(Path(env["nnUNet_preprocessed"]).glob("Dataset992_*"))
    return json.loads((folder / "nnUNetPlans.json").read_text()), json.loads((folder / "dataset.json").read_text())


def prepare_nnunet_folders(workdir: Path, plans: dict, dataset_json: dict) -> None:
    """nnU-Net folders the trainers expect, set in the environment BEFORE nnunetv2 is imported (it reads them
    at import). initialize() only inspects the preprocessed folder's file endings to pick a dataset class; the
    data itself is never loaded here, so one empty placeholder file stands in for it."""
    preprocessed = workdir / "preprocessed" / plans["dataset_name"]
    (preprocessed / "nnUNetPlans_2d").mkdir(parents=True, exist_ok=True)
    (preprocessed / "nnUNetPlans_2d" / "placeholder.b2nd").touch()
    (preprocessed / "nnUNetPlans.json").write_text(json.dumps(plans))
    (preprocessed / "dataset.json").write_text(json.dumps(dataset_json))
    for name in ("raw", "results"):
        (workdir / name).mkdir(exist_ok=True)
    os.environ.update(nnUNet_raw=str(workdir / "raw"), nnUNet_preprocessed=str(workdir / "preprocessed"),
                      nnUNet_results=str(workdir / "results"), nnUNet_compile="f", nnUNet_n_proc_DA="0")


def make_trainer(name: str, plans: dict, dataset_json: dict):
    """Instantiate, initialize and (for QPG trainers) swap, seeded so every trainer starts from the same net."""
    import torch

    if name == "nnUNetTrainer":
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as cls
    else:
        import importlib

        cls = getattr(importlib.import_module(f"nnunet_qpg.trainers.{name}"), name)
    torch.manual_seed(0)
    # nnU-Net's run_training adds this key and the trainer pops it, so each trainer gets its own copy.
    plans = {**copy.deepcopy(plans), "continue_training": False}
    trainer = cls(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    if hasattr(trainer, "apply_qpg_to_network"):
        trainer.apply_qpg_to_network()  # what on_train_start() does before the first iteration
    return trainer


def fixed_batch(trainer, batch_size: int) -> dict:
    """One batch: noise images with a bright square and its label, downsampled for every deep-supervision
    output exactly as nnU-Net's DownsampleSegForDSTransform does (nearest, by the pooling strides)."""
    import torch

    patch = list(trainer.configuration_manager.patch_size)
    generator = torch.Generator().manual_seed(0)
    label = torch.zeros(batch_size, 1, *patch)
    label[..., patch[0] // 4: patch[0] // 2, patch[1] // 3: 2 * patch[1] // 3] = 1
    data = torch.randn(batch_size, 1, *patch, generator=generator) * 0.3 + 2.0 * label
    targets = []
    for scale in trainer._get_deep_supervision_scales():
        steps = [round(1 / s) for s in scale]
        targets.append(label[:, :, ::steps[0], ::steps[1]].contiguous())
    return {"data": data, "target": targets}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3-stage net, 32x32 patch, batch 1, 2 rounds (smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; quick 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1; a shared 2-core machine makes 2 threads noisy)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the plan's batch size (2)")
    parser.add_argument("--replan", action="store_true",
                        help="plan a synthetic 256x256 dataset with nnU-Net now instead of using the stored plan")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated subset of the trainers")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-training-"))
    try:
        if args.replan:
            plans, dataset_json = replan(workdir)
        else:
            plans, dataset_json = load_stored_plan()
        if args.quick:
            plans = shrink_for_quick(plans)
        prepare_nnunet_folders(workdir, plans, dataset_json)
        return run(args, plans, dataset_json)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(args, plans: dict, dataset_json: dict) -> int:
    import contextlib
    import io

    set_threads(args.threads)
    names = args.trainers.split(",")
    trainers = {}
    for name in names:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's banner and logs, once per trainer
            trainers[name] = make_trainer(name, plans, dataset_json)
    set_threads(args.threads)  # in case a constructor changed it
    first = trainers[names[0]]
    batch_size = args.batch_size or first.configuration_manager.batch_size
    batch = fixed_batch(first, batch_size)
    config = first.configuration_manager
    print(machine_description())
    print(f"\nplan: {plans['dataset_name']} 2d, patch {config.patch_size}, batch {batch_size}, features "
          f"{config.network_arch_init_kwargs['features_per_stage']}, deep supervision on, device cpu")

    with contextlib.redirect_stdout(io.StringIO()):
        timings = time_interleaved({n: (lambda t=t: t.train_step(batch)) for n, t in trainers.items()},
                                   rounds=args.rounds or (2 if args.quick else 7), warmup=2 if not args.quick else 1)
    base = timings.get("nnUNetTrainer")
    rows = []
    for name, t in timings.items():
        module = trainers[name].network
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        ratio = f"{t.median / base.median:.3f}" if base else "-"
        ratio_min = f"{t.min / base.min:.3f}" if base else "-"
        rows.append([name, f"{trainable:,}", fmt_seconds(t.min), fmt_seconds(t.median), ratio_min, ratio])
    print()
    print_table(["trainer", "trainable", "min", "median", "ratio min", "ratio med"], rows)
    print("ratio = trainer time / nnUNetTrainer time (same batch, interleaved rounds)")

    verdicts = []
    for name, reference, allowed in TARGETS:
        if name in timings and reference in timings:
            ratio = timings[name].median / timings[reference].median
            ratio_min = timings[name].min / timings[reference].min
            met = "met" if ratio <= 1 + allowed else "MISSED"
            verdicts.append([f"{name} / {reference}", f"{ratio_min:.3f}", f"{ratio:.3f}", f"<= {1 + allowed:.2f}", met])
    if verdicts:
        print()
        print_table(["target", "ratio min", "ratio med", "required", "verdict"], verdicts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
