"""Issue 12: a 2D kidney model trained only on slices with kidney (the paper's protocol) marks kidney on slices
without any. Do background slices in training (``convert-kits19 --background-slices``) and a 3D cleanup at
prediction (``predict --largest-components 2``) fix the whole-volume results, and what do they cost on the
paper's per-slice metric?

The demo's task is prepared once in the work folder (the same code paths as ``nnunet-qpg demo``: synthetic
KiTS19 cases 0-5 + 180-181 of shape 12 x 96 x 96, ``convert-kits19 --task kidney --size 64``), once per
background fraction, each into its own dataset so that all exist side by side:

  bg0     --background-slices 0    Dataset701 (the paper's protocol: only slices with kidney or tumour)
  bg0.5   --background-slices 0.5  Dataset721 (plus half of each training case's slices without kidney)
  bg1     --background-slices 1    Dataset731 (plus all of them)

then ``nnUNetv2_plan_and_preprocess -c 2d`` for each. A trainer module written to WORK/trainers holds one trainer:
nnUNetTrainerQPG (QPGConv on every segmentation head, LPP, K=1) on the demo's short schedule (DemoSchedule:
PaperProtocol's Adam lr 1e-3, wd 5e-4, constant LR; --epochs x --iterations, 2 validation iterations), seeded
from QPG_STUDY_SEED (random, numpy, torch) in ``__init__`` as in study_hardware.py, nnU-Net's final validation
export skipped. Each (fraction, seed) is trained once with nnUNetv2_train in a subprocess (nnUNet_n_proc_DA=0,
nnUNet_compile=f, nnUNet_def_n_proc=1, OMP_NUM_THREADS=1), each seed into its own nnUNet_results folder
(WORK/results_e{E}x{I}_seed{S}).

Every trained model predicts the two synthetic test volumes (cases 180, 181, whole 3D CT volumes, every axial
slice) twice with ``nnunet-qpg predict`` (in this process, as the demo does): as is (the paper's per-slice
output) and with ``--largest-components 2`` (the two largest 26-connected 3D components kept). Each is scored by
``nnunet-qpg evaluate`` against the KiTS19 segmentations (evaluated structure: kidney + tumour):
  per-slice DSC        Eq. 11 over the axial slices holding kidney (the paper's protocol metric);
  3D Dice              per case over all voxels; surface Dice at 1 mm; HD95 (mm, over the cases where defined);
  FP slices            per case, axial slices where the prediction has foreground and the reference has none;
and each is reported per variant as the mean +- std over seeds of the per-seed means over the two test cases.
Reruns reuse every training whose checkpoint_final.pth exists and every evaluation JSON found.

Outputs (--out, default benchmarks/study_background_slices; --quick: WORK/study_out): study.json (every number)
and study_background_slices.png; the table is printed as markdown.

usage: python benchmarks/study_background_slices.py [--work DIR] [--seeds 0 1 2] [--epochs 3] [--iterations 10]
                                                    [--fractions 0 0.5 1] [--skip-training] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from demo_task_study import (DemoTaskStudy, begin_study, fmt, mean_std, resolve_study_arguments,  # noqa: E402
                              save_figure, study_parser, training_timing, write_study_json)

# background fraction -> nnU-Net dataset id (the demo's 701 for the paper's protocol)
DATASET_IDS = {0.0: 701, 0.5: 721, 1.0: 731}
QUICK_FRACTIONS = (0.0, 0.5)
TRAINER = "nnUNetTrainerQPGBackgroundStudy"
TRAINER_MODULE = "nnunet_qpg_study_background_trainers.py"
TRAINER_CLASS = f'''

class {TRAINER}(StudySchedule, nnUNetTrainerQPG):
    """nnUNetTrainerQPG (QPGConv on the segmentation heads, LPP, K=1), the demo's schedule, seeded."""
'''
# prediction variants: name -> extra predict options
CLEANUPS = {"none": [], "lcc2": ["--largest-components", "2"]}
CLEANUP_TEXT = {"none": "none (per-slice output)", "lcc2": "--largest-components 2"}
# (JSON key of a per-seed record, table header, digits)
METRICS = (("dsc_per_slice", "per-slice DSC (kidney slices)", 3), ("dice_3d", "3D Dice", 3),
           ("surface_dice", "surface Dice @ 1 mm", 3), ("hd95_mm", "HD95 mm", 1),
           ("false_positive_slices", "FP slices / volume", 2), ("predicted_slices", "predicted slices / volume", 2))


def variant_name(fraction: float) -> str:
    return f"bg{fraction:g}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = study_parser(__doc__.split("\n\n")[0], "study_background_slices",
                          "one seed, fractions 0 and 0.5, 1 x 2 iterations, a smaller task (8 x 48 x 48 volumes, "
                          "32 x 32 slices), two trainings at once")
    parser.add_argument("--fractions", type=float, nargs="+", choices=list(DATASET_IDS), default=None,
                        help="background fractions to train (default 0 0.5 1; --quick: 0 0.5)")
    args = resolve_study_arguments(parser.parse_args(argv), "study_background_slices")
    args.fractions = sorted(set(args.fractions or (QUICK_FRACTIONS if args.quick else DATASET_IDS)))
    return args


class Study(DemoTaskStudy):
    @staticmethod
    def dataset(fraction: float) -> str:
        return f"Dataset{DATASET_IDS[fraction]:03d}_KiTS19Kidney2D"

    # -- the task ----------------------------------------------------------------------------------------------
    def prepare(self) -> dict:
        """The demo's steps 1-3 per fraction, each skipped when done; a work folder of other task settings is
        refused. Returns the training-set sizes per fraction."""
        from nnunet_qpg.commands.demo import _nnunet_script

        args, work, demo = self.args, self.work, self.demo
        kits19 = self.prepare_cases()
        demo.step("task 2/3: convert to the paper's 2D kidney dataset, once per background fraction")
        for fraction in args.fractions:
            if not (work / "nnUNet_raw" / self.dataset(fraction) / "dataset.json").is_file():
                demo.nnunet_qpg(["convert-kits19", str(kits19), "--task", "kidney", "--size", str(args.size),
                                 "--workers", "1", "--dataset-id", str(DATASET_IDS[fraction]),
                                 "--background-slices", f"{fraction:g}"])
        demo.step("task 3/3: nnU-Net planning and preprocessing (2d)")
        todo = [str(DATASET_IDS[f]) for f in args.fractions
                if not (work / "nnUNet_preprocessed" / self.dataset(f) / "nnUNetPlans.json").is_file()]
        if todo:
            demo.command([_nnunet_script("nnUNetv2_plan_and_preprocess"), "-d", *todo, "-c", "2d",
                          "-np", "1", "-npfp", "1"])
        self.write_trainers(TRAINER_MODULE, "study_background_slices.py", TRAINER_CLASS)
        return {variant_name(f): self.training_set(f) for f in args.fractions}

    def training_set(self, fraction: float) -> dict:
        """Slices in the dataset's fold-0 training split: with kidney and without (the manifest's background)."""
        folder = self.work / "nnUNet_raw" / self.dataset(fraction)
        # background slices: named case_XXXXX_SSSS_bg by convert-kits19 (manifest rows say "background": true)
        manifest = json.loads((folder / "manifest.json").read_text())
        flagged = sum(row.get("background") is True and row.get("split") == "train"
                      for row in manifest.get("images", []))
        split_file = folder / "splits_final.json"
        train = json.loads(split_file.read_text())[0]["train"] if split_file.is_file() else None
        all_training = sorted(p.name[:-len("_0000.nii.gz")] for p in (folder / "imagesTr").glob("*_0000.nii.gz"))
        fold0 = [name for name in all_training if train is None or name in train]
        return {"dataset": self.dataset(fraction), "background_slices": fraction,
                "imagesTr": len(all_training), "imagesTr_background": sum(n.endswith("_bg") for n in all_training),
                "manifest_train_background": flagged,
                "fold0_train": len(fold0), "fold0_train_background": sum(n.endswith("_bg") for n in fold0)}

    # -- one training ------------------------------------------------------------------------------------------
    def model_folder(self, fraction: float, seed: int) -> Path:
        return self.results_folder(seed) / self.dataset(fraction) / f"{TRAINER}__nnUNetPlans__2d"

    def evaluation_file(self, fraction: float, seed: int, cleanup: str) -> Path:
        return self.work / "evaluation" / self.schedule / f"{variant_name(fraction)}_seed{seed}_{cleanup}.json"

    def train_fraction(self, fraction: float, seed: int) -> str | None:
        return self.train(DATASET_IDS[fraction], TRAINER, seed, self.model_folder(fraction, seed),
                          f"{variant_name(fraction)} seed {seed}")

    def score(self, fraction: float, seed: int, cleanup: str) -> None:
        """Predict the test volumes (in this process, as the demo does) and evaluate against the references."""
        predictions = self.work / "predictions" / self.schedule / f"{variant_name(fraction)}_seed{seed}" / cleanup
        evaluation = self.evaluation_file(fraction, seed, cleanup)
        self.demo.step(f"scoring {variant_name(fraction)} seed {seed}, cleanup {cleanup}")
        self.demo.nnunet_qpg(["predict", "-i", str(self.volumes), "-o", str(predictions), "-m",
                              str(self.model_folder(fraction, seed)), "-f", "0", "-device", self.args.device,
                              "--overwrite", *CLEANUPS[cleanup]])
        evaluation.parent.mkdir(parents=True, exist_ok=True)
        self.demo.nnunet_qpg(["evaluate", str(predictions), str(self.references), "-o", str(evaluation)])

    def record(self, fraction: float, seed: int, cleanup: str) -> dict:
        model = self.model_folder(fraction, seed)
        result = json.loads(self.evaluation_file(fraction, seed, cleanup).read_text())
        timing, epoch_times = training_timing(model)
        summary, volumes = result["summary"], result["per_volume"]
        predicted = [row["predicted_slices"] for row in volumes]
        return {
            "variant": variant_name(fraction), "background_slices": fraction, "cleanup": cleanup, "seed": seed,
            "dsc_per_slice": summary["dsc_mean"], "dsc_per_slice_std_over_slices": summary["dsc_std"],
            "iou_per_slice": summary["iou_mean"], "scored_slices": summary["images"],
            "dice_3d": summary.get("dice_3d_mean"), "surface_dice": summary.get("surface_dice_mean"),
            "hd95_mm": summary.get("hd95_mm_mean"), "hd95_volumes": summary.get("hd95_volumes"),
            "false_positive_slices": summary.get("false_positive_slices_mean"),
            "false_positive_slices_total": summary.get("false_positive_slices_total"),
            "predicted_slices": sum(predicted) / len(predicted) if predicted else None,
            "kits19_kidney_dice": summary.get("kits19_kidney_dice_mean"),
            "surface_tolerance_mm": summary.get("surface_tolerance_mm"),
            "per_volume": volumes, "unscored": result.get("unscored", []),
            "epoch_times_s": epoch_times, **timing,
        }

    def run(self, train: bool) -> tuple[list[dict], dict]:
        """Train what is missing (--jobs at a time), score what is unscored; the records and the failures."""
        # seed-major: a partial run has every fraction of the first seeds
        runs = [(fraction, seed) for seed in self.args.seeds for fraction in self.args.fractions]
        checkpoint = {run: self.model_folder(*run) / "fold_0" / "checkpoint_final.pth" for run in runs}
        failures = self.train_missing(runs, checkpoint.__getitem__, lambda run: self.train_fraction(*run),
                                      lambda run: f"{variant_name(run[0])} seed {run[1]}") if train else {}
        records = []
        for run in runs:
            name = f"{variant_name(run[0])} seed {run[1]}"
            if not checkpoint[run].is_file():
                if name not in failures:
                    print(f"  (no finished training of {name} in {self.work})")
                continue
            for cleanup in CLEANUPS:
                if not self.evaluation_file(*run, cleanup).is_file():
                    try:
                        self.score(*run, cleanup)
                    except RuntimeError as error:
                        failures[f"{name} {cleanup}"] = str(error)
                        print(f"  FAILED: scoring {name} {cleanup}: {error}", flush=True)
                        continue
                row = self.record(*run, cleanup)
                records.append(row)
                print(f"  {name} {cleanup:4s}: per-slice DSC {fmt(row['dsc_per_slice'], 3)}  3D Dice "
                      f"{fmt(row['dice_3d'], 3)}  FP slices/vol {fmt(row['false_positive_slices'], 1)}  "
                      f"train {fmt(row.get('train_wall_s'))} s", flush=True)
        return records, failures


def summarise(records: list[dict], fractions: list[float], training_sets: dict) -> list[dict]:
    rows = []
    for fraction in fractions:
        for cleanup in CLEANUPS:
            mine = [r for r in records if r["background_slices"] == fraction and r["cleanup"] == cleanup]
            if not mine:
                continue
            row = {"variant": variant_name(fraction), "background_slices": fraction, "cleanup": cleanup,
                   "dataset": Study.dataset(fraction), "training_set": training_sets.get(variant_name(fraction)),
                   "seeds": [r["seed"] for r in mine]}
            for key, _, _ in METRICS:
                values = [r[key] for r in mine if r[key] is not None]
                row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
                row[f"{key}_per_seed"] = [r[key] for r in mine]
            walls = [r["train_wall_s"] for r in mine if r.get("train_wall_s") is not None]
            row["train_wall_s_mean"], row["train_wall_s_std"] = mean_std(walls)
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    header = ["background slices (dataset)", "3D cleanup", "fold-0 training slices (of them background)", "seeds",
              *(name for _, name, _ in METRICS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        sizes = r["training_set"] or {}
        cells = [f"{r['background_slices']:g} ({r['dataset'][:10]})", CLEANUP_TEXT[r["cleanup"]],
                 f"{sizes.get('fold0_train', '?')} ({sizes.get('fold0_train_background', '?')})",
                 str(len(r["seeds"]))]
        for key, _, digits in METRICS:
            cells.append(f"{fmt(r[f'{key}_mean'], digits)} +- {fmt(r[f'{key}_std'], digits)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw(rows: list[dict], records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in METRICS if m[0] != "predicted_slices"]
    figure, axes = plt.subplots(1, len(shown), figsize=(3.3 * len(shown), 3.8))
    fractions = sorted({r["background_slices"] for r in rows})
    for axis, (key, name, _) in zip(axes, shown):
        for number, cleanup in enumerate(CLEANUPS):
            mine = sorted((r["background_slices"], r) for r in rows if r["cleanup"] == cleanup)
            shift = (number - 0.5) * 0.04
            axis.errorbar([f + shift for f, _ in mine], [r[f"{key}_mean"] for _, r in mine],
                          yerr=[r[f"{key}_std"] or 0.0 for _, r in mine], fmt="o-", capsize=4, color=f"C{number}",
                          label=CLEANUP_TEXT[cleanup])
            for record in records:
                if record["cleanup"] == cleanup and record[key] is not None:
                    axis.plot([record["background_slices"] + shift], [record[key]], ".", color="grey", alpha=0.6)
        axis.set_xticks(fractions)
        axis.set_xlabel("--background-slices")
        axis.set_title(name, fontsize=9)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    save_figure(figure, path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    begin_study(args, f"background fractions {' '.join(f'{f:g}' for f in args.fractions)}")
    from common import machine_description
    started = time.time()
    study = Study(args)
    training_sets = study.prepare()
    prepared = time.time()
    for name, sizes in training_sets.items():
        print(f"  {name}: {sizes}")
    records, failures = study.run(train=not args.skip_training)
    rows = summarise(records, args.fractions, training_sets)
    seconds = time.time() - started

    print(f"\n## Whole test volumes (2 synthetic cases), mean +- std over seeds {args.seeds} "
          f"({args.epochs} epochs x {args.iterations} iterations, nnUNetTrainerQPG)\n")
    print(table(rows))

    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / "study_background_slices.png"
    try:
        draw(rows, records, figure, f"nnUNetTrainerQPG, demo task, {args.epochs}x{args.iterations} it, seeds "
                                    f"{' '.join(map(str, args.seeds))}; mean +- std over seeds (grey: each seed)")
    except Exception as error:  # the figure is optional; the numbers are in the JSON
        print(f"  (no figure: {error!r})")
        figure = None
    payload = {
        "command": "python benchmarks/study_background_slices.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_description(),
        "settings": {"work": str(args.work), "seeds": args.seeds, "epochs": args.epochs,
                     "iterations": args.iterations, "val_iterations": 2, "fractions": args.fractions,
                     "dataset_ids": {variant_name(f): DATASET_IDS[f] for f in args.fractions},
                     "trainer": f"{TRAINER}(StudySchedule, nnUNetTrainerQPG)", "size": args.size,
                     "volume_shape": list(args.volume_shape), "device": args.device,
                     "cleanups": {k: v or None for k, v in CLEANUPS.items()}},
        "metrics": {"dsc_per_slice": "Eq. 11 per axial slice with ground-truth kidney, mean over those slices",
                    "dice_3d": "per-case 3D Dice, mean over the test cases",
                    "surface_dice": "per-case surface Dice at 1 mm, mean over the test cases",
                    "hd95_mm": "per-case HD95, mean over the cases where it is defined",
                    "false_positive_slices": "per case, slices with predicted but no reference kidney; mean",
                    "predicted_slices": "per case, slices with predicted kidney; mean",
                    "summary": "mean and sample std over seeds of the per-seed values"},
        "training_sets": training_sets,
        "summary": rows,
        "records": records,
        "failures": failures,
        "wall_s": seconds, "task_preparation_s": prepared - started,
    }
    written = write_study_json(args.out, payload, failures)
    print(f"\nwrote {written}{f' and {figure}' if figure else ''} ({seconds:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
