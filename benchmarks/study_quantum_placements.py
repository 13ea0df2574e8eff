"""Issue 15: QPG and data-path circuits side by side on the demo's synthetic kidney task. Classical, QPG on the
segmentation heads, QPG on the decoder, and two hybrid layers with circuits in the data path at the bottleneck:
segmentation quality, trainable parameters, CPU step time and circuit executions per predicted slice.

The demo's task is prepared once in the work folder (the same code paths as ``nnunet-qpg demo``: synthetic KiTS19
cases 0-5 + 180-181, ``convert-kits19 --task kidney --size 64``, ``nnUNetv2_plan_and_preprocess -c 2d``). A
trainer module written to WORK/trainers holds one trainer per variant, each the shipped trainer on the demo's
short schedule (StudySchedule of demo_task_study.py: PaperProtocol's Adam lr 1e-3, wd 5e-4, constant LR;
--epochs x --iterations, 2 validation iterations; seeded from QPG_STUDY_SEED; nnU-Net's final validation export
skipped), so that all five share one base class (nnUNetTrainerQPGBase) and one optimizer:

  classical     nnUNetTrainerQPGBase, nothing set: no circuits
  qpg_heads     nnUNetTrainerQPG: QPGConv on every segmentation head (LPP, K=1)
  qpg_decoder   nnUNetTrainerQPGDecoder: QPGConv on every decoder convolution (LPP, K=1)
  qlayer        nnUNetTrainerQLayer (HQCM-EBTC): after the last encoder stage, per voxel: channels -> 5 circuits
                x 5 qubits (amplitude embedding, depth 2, <Y>, CNOT ring) -> linear back (zero-init) -> residual
  qlayer_angle  nnUNetTrainerQLayerAngle (HQCNN): the same place, 1 circuit x 4 qubits, angle embedding, <Z>

Per variant and seed (one nnUNet_results folder per seed, WORK/results_e{E}x{I}_seed{S}): ``nnUNetv2_train`` in a
subprocess (--jobs at once, one torch thread each), ``nnunet-qpg predict`` of the two synthetic test volumes and
``nnunet-qpg evaluate`` (per-slice DSC, Eq. 11, over the axial slices holding kidney), as study_hardware.py does;
``nnunet-qpg export`` of fold 0's final checkpoint (QPG layers baked into plain convolutions; a data-path model is
refused, which the JSON records). The trainable parameters come from each fold's qpg_settings.json.

In this process, after the trainings (nothing else of the study runs then), each variant's network is built from
the study's plans (``nnunet-qpg info``'s planned network, then the trainer's ``adapt_network``) and one training
step (forward, nnU-Net's DC+CE loss over the deep-supervision outputs, backward, Adam step; batch and patch of the
plans, random input and labels) is timed for every variant in interleaved rounds (benchmarks/common.py
``time_interleaved``, one thread): median and minimum step time and the ratio of medians to classical.

Circuit executions: for a data-path block, ``data_path_blocks(network, configuration_manager, [256, 256])``:
bottleneck voxels x circuits per forward pass, times nnU-Net's sliding-window tiles and 4 mirrorings per 256x256
slice (and per the plans' median slice); per training step, executions per forward pass x the batch size (the
simulator's backprop needs no more; parameter shift on a device would need 2 more per circuit weight). A QPG
variant executes its kernel circuits once per training forward pass (independent of the batch) and none once
baked; classical none.

Outputs (--out, default benchmarks/study_quantum_placements; --quick: WORK/study_out): study.json (every number)
and study_quantum_placements.png; the table is printed as markdown.

usage: python benchmarks/study_quantum_placements.py [--work DIR] [--seeds 0 1 2] [--epochs 3] [--iterations 10]
                                                     [--variants ...] [--skip-training] [--quick] [--out DIR]
                                                     [--jobs N] [--rounds N]
smoke test: python benchmarks/study_quantum_placements.py --quick --work TMPDIR   (one seed, classical and qlayer)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from demo_task_study import (DemoTaskStudy, begin_study, fmt, mean_std, resolve_study_arguments,  # noqa: E402
                              save_figure, study_parser, training_timing, write_study_json)

# variant -> (the study's trainer, the shipped trainer it puts the schedule on, what it places)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "classical": ("nnUNetTrainerPlacementStudy_Classical", "nnUNetTrainerQPGBase", "no circuits"),
    "qpg_heads": ("nnUNetTrainerPlacementStudy_QPGHeads", "nnUNetTrainerQPG",
                  "QPGConv on every segmentation head (LPP, K=1)"),
    "qpg_decoder": ("nnUNetTrainerPlacementStudy_QPGDecoder", "nnUNetTrainerQPGDecoder",
                    "QPGConv on every decoder conv (LPP, K=1)"),
    "qlayer": ("nnUNetTrainerPlacementStudy_QLayer", "nnUNetTrainerQLayer",
               "bottleneck: 5 circuits x 5 qubits, amplitude, depth 2, <Y>"),
    "qlayer_angle": ("nnUNetTrainerPlacementStudy_QLayerAngle", "nnUNetTrainerQLayerAngle",
                     "bottleneck: 1 circuit x 4 qubits, angle, depth 2, <Z>"),
}
QUICK_VARIANTS = ("classical", "qlayer")
TRAINER_MODULE = "nnunet_qpg_study_quantum_placements_trainers.py"
TRAINER_IMPORTS = """from nnunet_qpg.nnunet_trainer import nnUNetTrainerQPGBase
from nnunet_qpg.trainers.nnUNetTrainerQPGDecoder import nnUNetTrainerQPGDecoder
from nnunet_qpg.trainers.nnUNetTrainerQLayer import nnUNetTrainerQLayer, nnUNetTrainerQLayerAngle
"""
TRAINER_CLASS = '''

class {name}(StudySchedule, {base}):
    """{variant}: {base} ({what}) on the demo's schedule, seeded."""
'''
SLICE = [256, 256]  # the image size the executions are counted for (a CT slice at the paper's resolution)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = study_parser(__doc__.split("\n\n")[0], "study_quantum_placements",
                          "one seed, classical and qlayer, 1 x 2 iterations, a smaller task (8 x 48 x 48 volumes, "
                          "32 x 32 slices), 3 timing rounds")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                        help=f"variants (default all; --quick: {' '.join(QUICK_VARIANTS)}); the step time is "
                             f"measured for these and classical")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved timing rounds of one training step per variant (default 20; --quick: 3)")
    args = resolve_study_arguments(parser.parse_args(argv), "study_quantum_placements")
    chosen = set(args.variants or (QUICK_VARIANTS if args.quick else VARIANTS))
    args.variants = [v for v in VARIANTS if v in chosen]  # the table's order
    args.rounds = args.rounds or (3 if args.quick else 20)
    return args


class Study(DemoTaskStudy):
    # -- the task ----------------------------------------------------------------------------------------------
    def plans_file(self) -> Path:
        from nnunet_qpg.commands.demo import DATASET

        return self.work / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json"

    def prepare(self) -> None:
        """Cases, 2D dataset, nnU-Net plan (each skipped when there) and the study's trainer module."""
        from nnunet_qpg.commands.demo import DATASET, DATASET_ID, _nnunet_script

        kits19 = self.prepare_cases()
        dataset_json = self.work / "nnUNet_raw" / DATASET / "dataset.json"
        steps = (
            ("task 2/3: convert to the paper's 2D kidney dataset", dataset_json, lambda: self.demo.nnunet_qpg(
                ["convert-kits19", str(kits19), "--task", "kidney", "--size", str(self.args.size), "--workers",
                 "1"])),
            ("task 3/3: nnU-Net planning and preprocessing (2d)", self.plans_file(), lambda: self.demo.command(
                [_nnunet_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", "1",
                 "-npfp", "1"])),
        )
        for text, made, make in steps:
            self.demo.step(text)
            if not made.is_file():
                make()
        classes = "".join(TRAINER_CLASS.format(name=name, base=base, variant=variant, what=what)
                          for variant, (name, base, what) in VARIANTS.items())
        self.write_trainers(TRAINER_MODULE, "study_quantum_placements.py", classes, imports=TRAINER_IMPORTS)

    # -- one (variant, seed) -----------------------------------------------------------------------------------
    def model_folder(self, variant: str, seed: int) -> Path:
        from nnunet_qpg.commands.demo import DATASET

        return self.results_folder(seed) / DATASET / f"{VARIANTS[variant][0]}__nnUNetPlans__2d"

    def output(self, kind: str, variant: str, seed: int) -> Path:
        """WORK/{kind}/e{E}x{I}/{variant}_seed{seed}: the predictions, the evaluation (.json) or the export."""
        return self.work / kind / self.schedule / f"{variant}_seed{seed}{'.json' if kind == 'evaluation' else ''}"

    def train_variant(self, variant: str, seed: int) -> str | None:
        from nnunet_qpg.commands.demo import DATASET_ID

        return self.train(DATASET_ID, VARIANTS[variant][0], seed, self.model_folder(variant, seed),
                          f"{variant} seed {seed}")

    def score(self, variant: str, seed: int) -> None:
        """Predict the test volumes and evaluate them (our commands, in this process, as the demo runs them)."""
        model, predictions = self.model_folder(variant, seed), self.output("predictions", variant, seed)
        evaluation = self.output("evaluation", variant, seed)
        self.demo.step(f"scoring {variant} seed {seed}")
        self.demo.nnunet_qpg(["predict", "-i", str(self.volumes), "-o", str(predictions), "-m", str(model), "-f",
                              "0", "-device", self.args.device, "--overwrite"])
        evaluation.parent.mkdir(parents=True, exist_ok=True)
        self.demo.nnunet_qpg(["evaluate", str(predictions), str(self.references), "-o", str(evaluation)])

    def bake(self, variant: str, seed: int) -> dict:
        """``nnunet-qpg export`` of fold 0's final checkpoint: its manifest (baked layers, the probe difference,
        the stock trainer the checkpoint names), or the refusal's text for a model that cannot be baked."""
        import contextlib
        import io

        from nnunet_qpg.export import EXPORT_MANIFEST

        target = self.output("exported", variant, seed)
        found = list(target.glob(f"*/*/{EXPORT_MANIFEST}"))  # an earlier run's export
        if not found:
            messages = io.StringIO()
            try:
                with contextlib.redirect_stderr(messages):
                    self.demo.nnunet_qpg(["export", str(self.model_folder(variant, seed)), str(target), "-f", "0",
                                          "-chk", "checkpoint_final.pth"])
            except RuntimeError as error:
                return {"exported": False, "refusal": messages.getvalue().strip() or str(error)}
            found = list(target.glob(f"*/*/{EXPORT_MANIFEST}"))
        if not found:
            return {"exported": False, "refusal": f"export passed but wrote no {EXPORT_MANIFEST} under {target}"}
        written = json.loads(found[0].read_text())
        return {"exported": True, "folder": str(found[0].parent), "baked_layers": len(written["baked_layers"]),
                "checkpoint_trainer_name": written["checkpoint_trainer_name"],
                "max_abs_difference": written["max_abs_difference"]}

    def record(self, variant: str, seed: int, baked: dict) -> dict:
        model = self.model_folder(variant, seed)
        result = json.loads(self.output("evaluation", variant, seed).read_text())
        settings_file = model / "fold_0" / "qpg_settings.json"
        settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        timing, epoch_times = training_timing(model)
        summary = result["summary"]
        return {
            "variant": variant, "seed": seed, "trainer": VARIANTS[variant][0],
            "dsc_per_slice_mean": summary["dsc_mean"], "dsc_per_slice_std_over_slices": summary["dsc_std"],
            "slices": summary["images"], "dice_3d_mean": summary.get("dice_3d_mean"),
            "per_slice_dsc": [row["dsc"] for row in result["per_image"]],
            "trainable_parameters": settings.get("trainable_parameters"),
            "total_parameters": settings.get("total_parameters"),
            "qpg_layers": len((settings.get("qpg") or {}).get("layers", [])),
            "data_path": settings.get("data_path"), "export": baked,
            "epoch_times_s": epoch_times, **timing,
        }

    def run(self, train: bool) -> tuple[list[dict], dict]:
        """Train what is missing (--jobs at a time), then score and export; the records and the failures."""
        runs = [(variant, seed) for seed in self.args.seeds for variant in self.args.variants]  # seed-major
        checkpoint = {run: self.model_folder(*run) / "fold_0" / "checkpoint_final.pth" for run in runs}
        name = {run: f"{run[0]} seed {run[1]}" for run in runs}
        failures = {}
        if train:
            failures = self.train_missing(runs, checkpoint.__getitem__, lambda run: self.train_variant(*run),
                                          name.__getitem__)
        records = []
        for run in runs:
            if not checkpoint[run].is_file():
                if name[run] not in failures:
                    print(f"  (no finished training of {name[run]} in {self.work})")
                continue
            try:
                if not self.output("evaluation", *run).is_file():
                    self.score(*run)
                baked = self.bake(*run)
            except RuntimeError as error:
                failures[f"{name[run]} scoring"] = str(error)
                print(f"  FAILED: scoring {name[run]}: {error}", flush=True)
                continue
            row = self.record(*run, baked)
            records.append(row)
            print(f"  {name[run]:22s}: per-slice DSC {row['dsc_per_slice_mean']:.4f}  trainable "
                  f"{fmt(row['trainable_parameters'])}  export: "
                  f"{'%d layer(s) baked' % baked['baked_layers'] if baked['exported'] else 'refused'}  "
                  f"train {fmt(row.get('train_wall_s'))} s", flush=True)
        return records, failures


# ---------------------------------------------------------------------------------------------------------------
# in this process: the networks, one training step each, circuit executions
# ---------------------------------------------------------------------------------------------------------------
def shipped_trainers() -> dict[str, type]:
    from nnunet_qpg.nnunet_trainer import nnUNetTrainerQPGBase
    from nnunet_qpg.trainers.nnUNetTrainerQLayer import nnUNetTrainerQLayer, nnUNetTrainerQLayerAngle
    from nnunet_qpg.trainers.nnUNetTrainerQPG import nnUNetTrainerQPG
    from nnunet_qpg.trainers.nnUNetTrainerQPGDecoder import nnUNetTrainerQPGDecoder

    classes = {c.__name__: c for c in (nnUNetTrainerQPGBase, nnUNetTrainerQPG, nnUNetTrainerQPGDecoder,
                                       nnUNetTrainerQLayer, nnUNetTrainerQLayerAngle)}
    return {variant: classes[base] for variant, (_, base, _) in VARIANTS.items()}


def placed_networks(plans_file: Path, variants: list[str],
                    dataset_json: Path | None = None) -> tuple[dict, object, dict]:
    """(variant -> network with its trainer's circuits placed, the configuration manager, variant -> what the
    network holds: trainable parameters, QPG circuits per forward pass, data-path executions)."""
    import torch

    from nnunet_qpg.accounting import count_trainable
    from nnunet_qpg.commands.info import planned_network
    from nnunet_qpg.nnunet_trainer import data_path_blocks

    planned = planned_network(argparse.Namespace(plans=plans_file, dataset_json=dataset_json, dataset=None,
                                                 configuration="2d", trainer="nnUNetTrainer"), {})
    manager, batch = planned.configuration_manager, planned.plans["configurations"]["2d"]["batch_size"]
    trainers, networks, facts = shipped_trainers(), {}, {}
    for variant in variants:
        torch.manual_seed(0)
        network = copy.deepcopy(planned.network)
        report = trainers[variant].adapt_network(network)
        blocks = {"slice_256": data_path_blocks(network, manager, SLICE),
                  "median_slice": data_path_blocks(network, manager)}
        per_forward = sum(cost.executions_per_forward for _, _, cost in blocks["slice_256"])
        networks[variant] = network
        facts[variant] = {
            "trainer": trainers[variant].__name__, "trainable_parameters": count_trainable(network),
            "qpg_layers": len(report.layers) if report is not None else 0,
            "qpg_trainable_change": (report.trainable_after - report.trainable_before) if report is not None else 0,
            # QPG: every layer's VQCs run once per forward pass to generate its kernel, whatever the batch
            "qpg_circuits_per_training_step": sum(layer.vqcs for layer in report.layers) if report else 0,
            "data_path_executions_per_forward": per_forward,
            "data_path_executions_per_training_step": per_forward * batch,
            "executions_per_slice_256": sum(cost.executions_per_image for _, _, cost in blocks["slice_256"]),
            "executions_per_median_slice": sum(cost.executions_per_image for _, _, cost in blocks["median_slice"]),
            "data_path": [{"name": name, "settings": block.config.to_dict(), "parameters": block.parameter_counts,
                           "cost_slice_256": cost.to_dict(), "cost_median_slice": median.to_dict()}
                          for (name, block, cost), (_, _, median) in zip(blocks["slice_256"],
                                                                         blocks["median_slice"])],
        }
    plan = {"patch_size": list(manager.patch_size), "batch_size": batch,
            "median_slice": [float(v) for v in manager.median_image_size_in_voxels],
            "features_per_stage": manager.network_arch_init_kwargs["features_per_stage"],
            "strides": manager.network_arch_init_kwargs["strides"]}
    return networks, manager, {"plan": plan, "variants": facts}


def step_times(networks: dict, manager, batch: int, outputs: int, rounds: int) -> dict:
    """One training step per variant (forward, DC+CE over the deep-supervision outputs, backward, Adam step),
    timed in interleaved rounds; variant -> seconds of every round, median, min, ratio of medians to classical."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from common import time_interleaved

    generator = torch.Generator().manual_seed(0)
    patch = list(manager.patch_size)
    images = torch.randn(batch, 1, *patch, generator=generator)
    labels = torch.randint(0, outputs, (batch, 1, *patch), generator=generator).float()
    loss = DC_and_CE_loss({"batch_dice": manager.batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
    steps = {}
    for variant, network in networks.items():
        network.train()
        with torch.no_grad():
            shapes = [o.shape[2:] for o in network(images)]
        weights = np.array([1 / 2 ** i for i in range(len(shapes))])
        weights[-1] = 0 if len(shapes) > 1 else weights[-1]  # nnU-Net drops the lowest output
        wrapped = DeepSupervisionWrapper(loss, weights / weights.sum())
        targets = [F.interpolate(labels, size=shape, mode="nearest") for shape in shapes]
        optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-3,
                                     weight_decay=5e-4)

        def step(network=network, wrapped=wrapped, targets=targets, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            wrapped(network(images), targets).backward()
            optimizer.step()

        steps[variant] = step
    timings = time_interleaved(steps, rounds=rounds, warmup=1)
    reference = timings["classical"].median if "classical" in timings else None
    return {variant: {"seconds": t.seconds, "median_s": t.median, "min_s": t.min,
                      "ratio_median_to_classical": t.median / reference if reference else None,
                      "ratio_min_to_classical": t.min / timings["classical"].min if reference else None}
            for variant, t in timings.items()}


# ---------------------------------------------------------------------------------------------------------------
# summary, table, figure
# ---------------------------------------------------------------------------------------------------------------
def summarise(records: list[dict], variants: list[str], facts: dict, steps: dict) -> list[dict]:
    rows = []
    for variant in variants:
        mine = [r for r in records if r["variant"] == variant]
        dsc, dsc_sd = mean_std([r["dsc_per_slice_mean"] for r in mine])
        trainable = sorted({r["trainable_parameters"] for r in mine if r["trainable_parameters"] is not None})
        exports = [r["export"] for r in mine]
        fact, step = facts["variants"][variant], steps.get(variant, {})
        rows.append({
            "variant": variant, "trainer": VARIANTS[variant][0], "shipped_trainer": VARIANTS[variant][1],
            "placement": VARIANTS[variant][2], "seeds": [r["seed"] for r in mine],
            "dsc_mean": dsc, "dsc_std": dsc_sd, "dsc_per_seed": [r["dsc_per_slice_mean"] for r in mine],
            # the trainings' own count (qpg_settings.json); the network built here when none trained
            "trainable_parameters": trainable[0] if len(trainable) == 1 else (trainable or None),
            "trainable_parameters_built_here": fact["trainable_parameters"],
            "step_median_s": step.get("median_s"), "step_min_s": step.get("min_s"),
            "step_ratio_median": step.get("ratio_median_to_classical"),
            "step_ratio_min": step.get("ratio_min_to_classical"),
            "qpg_circuits_per_training_step": fact["qpg_circuits_per_training_step"],
            "data_path_executions_per_training_step": fact["data_path_executions_per_training_step"],
            "executions_per_slice_256": fact["executions_per_slice_256"],
            "executions_per_median_slice": fact["executions_per_median_slice"],
            "exported": sorted({e["exported"] for e in exports}),
            "baked_layers": sorted({e.get("baked_layers") for e in exports if e["exported"]}),
            "bake_max_abs_difference": max((e["max_abs_difference"] for e in exports if e["exported"]),
                                           default=None),
            "train_wall_s": [r.get("train_wall_s") for r in mine],
        })
    return rows


def inference_cell(row: dict) -> str:
    if row["executions_per_slice_256"]:
        return f"{row['executions_per_slice_256']:,} (export refused)" if row["exported"] == [False] else \
            f"{row['executions_per_slice_256']:,}"
    if row["qpg_circuits_per_training_step"]:
        baked = ", ".join(map(str, row["baked_layers"])) or "?"
        return f"0 (baked: {baked} layers)" if row["exported"] == [True] else "0 once baked"
    return "0"


def table(rows: list[dict]) -> str:
    lines = ["| variant | placement | seeds | per-slice DSC mean +- std | DSC per seed | trainable parameters | "
             "step median ms (ratio to classical) | circuit executions per training step | "
             "circuit executions per predicted 256x256 slice |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_step = (f"{r['data_path_executions_per_training_step']:,} (data path)"
                    if r["data_path_executions_per_training_step"] else
                    f"{r['qpg_circuits_per_training_step']:,} (kernel generation)"
                    if r["qpg_circuits_per_training_step"] else "0")
        trainable = r["trainable_parameters"] or r["trainable_parameters_built_here"]
        trainable = f"{trainable:,}" if isinstance(trainable, int) else str(trainable)
        step = "-" if r["step_median_s"] is None else \
            f"{r['step_median_s'] * 1e3:.0f} ({fmt(r['step_ratio_median'], 2)})"
        lines.append(f"| {r['variant']} | {r['placement']} | {len(r['seeds'])} | {fmt(r['dsc_mean'], 3)} +- "
                     f"{fmt(r['dsc_std'], 3)} | {', '.join(f'{v:.3f}' for v in r['dsc_per_seed']) or '-'} | "
                     f"{trainable} | {step} | {per_step} | {inference_cell(r)} |")
    return "\n".join(lines)


def draw(rows: list[dict], records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (ax_dsc, ax_step, ax_exec) = plt.subplots(1, 3, figsize=(16, 4.6))
    names = [r["variant"] for r in rows]
    xs = range(len(rows))
    colours = ["tab:grey" if r["variant"] == "classical" else "tab:blue" if r["variant"].startswith("qpg")
               else "tab:red" for r in rows]
    for x, row, colour in zip(xs, rows, colours):
        if row["dsc_mean"] is not None:
            ax_dsc.errorbar([x], [row["dsc_mean"]], yerr=[row["dsc_std"]], fmt="s", color=colour, capsize=5)
        seeds = [r["dsc_per_slice_mean"] for r in records if r["variant"] == row["variant"]]
        ax_dsc.plot([x + 0.12] * len(seeds), seeds, ".", color="black", alpha=0.5,
                    label="one seed" if x == 0 else None)
    ax_dsc.set_ylabel("test per-slice DSC (kidney slices)")
    ax_dsc.set_title("DSC, mean +- std over seeds", fontsize=9)
    if records:
        ax_dsc.legend(fontsize=7)
    ratios = [r["step_ratio_median"] or 0.0 for r in rows]
    ax_step.bar(xs, ratios, color=colours)
    ax_step.axhline(1.0, color="black", lw=0.8)
    for x, r in zip(xs, rows):
        if r["step_median_s"] is not None:
            ax_step.annotate(f"{r['step_ratio_median']:.2f}x\n{r['step_median_s'] * 1e3:.0f} ms", (x, ratios[x]),
                             ha="center", va="bottom", fontsize=7)
    ax_step.set_ylabel("training step time / classical (median)")
    ax_step.set_title("CPU, 1 thread, one step (fwd + bwd + Adam), interleaved", fontsize=9)
    ax_step.set_ylim(0, max(ratios + [1.0]) * 1.3)
    per_slice = [r["executions_per_slice_256"] for r in rows]
    shown = [max(v, 1) for v in per_slice]  # 0 drawn as no bar on the log axis
    ax_exec.bar(xs, per_slice, color=colours)
    ax_exec.set_yscale("log")
    ax_exec.set_ylim(0.5, max(shown) * 20)
    for x, r in zip(xs, rows):
        text = inference_cell(r).replace(" (", "\n(").replace(": ", ":\n")
        ax_exec.annotate(text, (x, shown[x]), ha="center", va="bottom", fontsize=7)
    ax_exec.set_ylabel("circuit executions per predicted 256x256 slice")
    ax_exec.set_title("inference: nnU-Net sliding window + 4 mirrorings (log axis; 0 = no bar)", fontsize=9)
    for axis in (ax_dsc, ax_step, ax_exec):
        axis.set_xticks(list(xs))
        axis.set_xticklabels(names, rotation=20, fontsize=8)
        axis.grid(alpha=0.3, axis="y")
    figure.suptitle(title, fontsize=9)
    save_figure(figure, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    begin_study(args, f"variants {' '.join(args.variants)} | jobs {args.jobs}")
    from common import machine_description
    started = time.time()
    study = Study(args)
    study.prepare()
    prepared = time.time()
    records, failures = study.run(train=not args.skip_training)
    trained = time.time()

    timed = ["classical"] + [v for v in args.variants if v != "classical"]
    study.demo.step(f"one training step per variant, {args.rounds} interleaved rounds, 1 thread")
    networks, manager, facts = placed_networks(study.plans_file(), timed)
    dataset = json.loads((study.plans_file().parent / "dataset.json").read_text())
    steps = step_times(networks, manager, facts["plan"]["batch_size"], len(dataset["labels"]), args.rounds)
    for variant, step in steps.items():
        print(f"  {variant:13s} median {step['median_s'] * 1e3:7.1f} ms  min {step['min_s'] * 1e3:7.1f} ms  "
              f"ratio {fmt(step['ratio_median_to_classical'], 2)}", flush=True)
    timing_seconds = time.time() - trained
    # the same placements on nnU-Net's plan of a 256x256 dataset (7 stages, patch 256x256): executions only
    from common import DATA

    _, _, reference = placed_networks(DATA / "plans_2d_256x256.json", timed, DATA / "dataset_2d_256x256.json")
    for variant, fact in reference["variants"].items():
        facts["variants"][variant]["executions_per_slice_256_plan_256"] = fact["executions_per_slice_256"]
        facts["variants"][variant]["data_path_executions_per_training_step_plan_256"] = \
            fact["data_path_executions_per_training_step"]
    rows = summarise(records, args.variants, facts, steps)
    seconds = time.time() - started

    plan = facts["plan"]
    print("\ncircuit executions per predicted 256x256 slice with nnU-Net's plan of a 256x256 dataset "
          f"(patch {reference['plan']['patch_size']}, {len(reference['plan']['strides'])} stages): " + ", ".join(
              f"{v} {reference['variants'][v]['executions_per_slice_256']:,}" for v in timed))
    print(f"\n## Quantum placements on the demo task ({args.epochs} epochs x {args.iterations} iterations, seeds "
          f"{args.seeds}; plan: patch {plan['patch_size']}, batch {plan['batch_size']})\n")
    print(table(rows))

    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / "study_quantum_placements.png"
    draw(rows, records, figure, f"demo task, {args.epochs}x{args.iterations} it, seeds "
                                f"{' '.join(map(str, args.seeds))}; blue: QPG (circuits generate kernels), red: "
                                f"circuits in the data path (bottleneck), grey: classical")
    payload = {
        "command": "python benchmarks/study_quantum_placements.py " + " ".join(sys.argv[1:] if argv is None
                                                                               else argv),
        "machine": machine_description(),
        "settings": {"work": str(args.work), "seeds": args.seeds, "epochs": args.epochs,
                     "iterations": args.iterations, "val_iterations": 2, "variants": args.variants,
                     "size": args.size, "volume_shape": list(args.volume_shape), "device": args.device,
                     "jobs": args.jobs, "timing_rounds": args.rounds, "executions_image_size": SLICE},
        "variants": {v: {"trainer": f"{VARIANTS[v][0]}(StudySchedule, {VARIANTS[v][1]})",
                         "placement": VARIANTS[v][2]} for v in args.variants},
        "plan": plan,
        "reference_plan_256": {"plans": "benchmarks/data/plans_2d_256x256.json", **reference["plan"]},
        "networks": facts["variants"],
        "step_times": steps,
        "summary": rows,
        "trainings": records,
        "failures": failures,
        "trainings_wall_s_total": sum(r.get("train_wall_s") or 0.0 for r in records),
        "wall_s": {"total": seconds, "task_preparation": prepared - started, "train_score_export": trained - prepared,
                   "step_timing": timing_seconds},
    }
    written = write_study_json(args.out, payload, failures)
    print(f"\nwrote {figure} and {written} ({seconds:.0f} s: preparation {prepared - started:.0f} s, "
          f"trainings + scoring {trained - prepared:.0f} s, step timing {timing_seconds:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
