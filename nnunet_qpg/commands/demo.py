"""Synthetic KiTS19 end to end on the CPU, in a few minutes: the first command to run after installing.

Steps (each a real command a user can also type; all data under the work folder, default ./nnunet_qpg_demo):
  1. synth-kits19: a small KiTS19-like folder (train cases 0-5, test cases 180-181);
  2. convert-kits19 --task kidney: the paper's 2D kidney dataset (Dataset701), at a small image size;
  3. nnUNetv2_plan_and_preprocess -c 2d;
  4. nnUNetv2_train with nnUNetTrainerQPG (QPGConv on the segmentation heads, LPP) and the classical baseline,
     both on a short schedule (demo trainers written to WORK/trainers; nnUNet_n_proc_DA=0 for training only);
  5. nnunet-qpg predict on the test cases' 3D CT volumes (NIfTI, the input geometry kept), and the QPG model again
     with --largest-components 2 (the stacked slices cleaned up in 3D);
  6. nnunet-qpg evaluate against the test cases' KiTS19 segmentations (per-slice IoU / DSC, Eqs. 10-11; per-case
     3D Dice, surface Dice, HD95, false-positive slices);
  7. nnunet-qpg report (the Table 1 comparison), the paper's per-slice protocol beside the whole-volume scores, and
     nnunet-qpg overlay (Fig. 4-style PNGs).
nnUNet_raw / nnUNet_preprocessed / nnUNet_results are set to folders inside the work folder for this run only.
Rerunning reuses finished steps (delete the work folder to start over).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATASET_ID, DATASET = 701, "Dataset701_KiTS19Kidney2D"
TRAIN_CASES, TEST_CASES = list(range(6)), [180, 181]
QPG_TRAINER, BASELINE_TRAINER = "nnUNetTrainerQPG_Demo", "nnUNetTrainer_Demo"
TRAINER_TEMPLATE = '''"""Demo trainers written by `nnunet-qpg demo`: the real trainers on a short schedule."""

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_qpg.nnunet_trainer import PaperProtocol
from nnunet_qpg.trainers.nnUNetTrainerQPG import nnUNetTrainerQPG


class DemoSchedule(PaperProtocol):
    """The paper's optimizer (Adam, lr 1e-3, weight decay 5e-4, constant LR) on a short schedule: it learns in a
    few dozen steps, where nnU-Net's poly schedule would decay to zero within a demo's few epochs."""

    schedule_epochs = {epochs}
    schedule_iterations_per_epoch = {iterations}
    schedule_val_iterations_per_epoch = 2


class {qpg}(DemoSchedule, nnUNetTrainerQPG):
    """nnUNetTrainerQPG: QPGConv (Eqs. 6, 8) on the segmentation heads, LPP, one block; short schedule."""


class {baseline}(DemoSchedule, nnUNetTrainer):
    """The classical baseline: stock nnU-Net, same schedule."""
'''


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", type=Path, default=Path("nnunet_qpg_demo"),
                        help="work folder to create (default: ./nnunet_qpg_demo)")
    # 3 x 10 iterations: both models reach a test DSC of about 0.75 on the synthetic set (4 x 15: 0.78) in about
    # 4 minutes end to end on 2 busy cores (4 x 15: 5.5-7 minutes); an idle machine is several times faster
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per model (default 3)")
    parser.add_argument("--iterations", type=int, default=10, help="training iterations per epoch (default 10)")
    parser.add_argument("--size", type=int, default=64, help="converted image size (default 64; the paper: 256)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")


def _nnunet_script(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


class Demo:
    def __init__(self, args: argparse.Namespace):
        from nnunet_qpg.commands.trainers_path import trainers_path

        self.args = args
        self.work = args.work.resolve()
        self.env = dict(os.environ)
        self.env.update(
            nnUNet_raw=str(self.work / "nnUNet_raw"),
            nnUNet_preprocessed=str(self.work / "nnUNet_preprocessed"),
            nnUNet_results=str(self.work / "nnUNet_results"),
            nnUNet_extTrainer=os.pathsep.join([str(self.work / "trainers"), trainers_path()]),
            nnUNet_compile="f",
            nnUNet_def_n_proc="1",  # nnU-Net's validation would otherwise spawn 8 export workers on 2 cores
        )
        self.env.pop("nnUNet_n_proc_DA", None)  # the planner passes it to torch.set_num_threads: not while planning
        self.started = time.time()

    def step(self, text: str) -> None:
        print(f"\n[{time.time() - self.started:6.0f} s] {text}", flush=True)

    def command(self, arguments: list[str], training: bool = False) -> None:
        env = {**self.env, "nnUNet_n_proc_DA": "0"} if training else self.env
        print("  $ " + " ".join(Path(arguments[0]).name if i == 0 else a for i, a in enumerate(arguments)), flush=True)
        done = subprocess.run(arguments, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(arguments)} failed (exit {done.returncode}):\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    def nnunet_qpg(self, arguments: list[str]) -> None:
        """Our own commands run in this process (their env is the demo's); a failing step stops the demo, which
        would otherwise go on and print a table of stale or missing results."""
        from nnunet_qpg.cli import main

        print("  $ nnunet-qpg " + " ".join(arguments), flush=True)
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        try:
            status = main(arguments)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        if status:
            raise RuntimeError(f"nnunet-qpg {arguments[0]} failed (exit {status}); its message is above")

    def _forget_results_of_other_settings(self) -> None:
        """Reruns reuse finished steps; after a change of --size/--epochs/--iterations those are stale: drop them."""
        import json

        settings = {"size": self.args.size, "epochs": self.args.epochs, "iterations": self.args.iterations}
        record = self.work / "demo_settings.json"
        if record.is_file() and json.loads(record.read_text()) != settings:
            # nnUNet_raw too: convert-kits19 refuses to mix images of another --size into an existing dataset
            for stale in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "predictions", "evaluation",
                          "figures"):
                shutil.rmtree(self.work / stale, ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(settings))

    def model_folder(self, trainer: str) -> Path:
        return self.work / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlans__2d"

    def run(self) -> int:
        from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_kits19

        args, work = self.args, self.work
        kits19 = work / "kits19"
        self._forget_results_of_other_settings()
        self.step(f"1/7 synthetic KiTS19 cases in {kits19}")
        if not (kits19 / f"case_{TEST_CASES[-1]:05d}" / "segmentation.nii.gz").is_file():
            make_synthetic_kits19(kits19, TRAIN_CASES + TEST_CASES, seed=0, shape=(12, 96, 96))

        self.step("2/7 convert to the paper's 2D kidney dataset")
        self.nnunet_qpg(["convert-kits19", str(kits19), "--task", "kidney", "--size", str(args.size),
                         "--workers", "1"])

        self.step("3/7 nnU-Net planning and preprocessing (2d)")
        if not (work / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json").is_file():
            self.command([_nnunet_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d",
                          "-np", "1", "-npfp", "1"])

        self.step(f"4/7 training {QPG_TRAINER} and {BASELINE_TRAINER} ({args.epochs} epochs x {args.iterations} "
                  f"iterations)")
        (work / "trainers").mkdir(parents=True, exist_ok=True)
        (work / "trainers" / "nnunet_qpg_demo_trainers.py").write_text(TRAINER_TEMPLATE.format(
            qpg=QPG_TRAINER, baseline=BASELINE_TRAINER, epochs=args.epochs, iterations=args.iterations))
        for trainer in (QPG_TRAINER, BASELINE_TRAINER):
            if not (self.model_folder(trainer) / "fold_0" / "checkpoint_final.pth").is_file():
                self.command([_nnunet_script("nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr", trainer,
                              "-device", args.device], training=True)

        self.step("5/7 predicting the test cases' 3D CT volumes")
        # the test cases as a clinic has them: CT volumes in one folder, their reference masks in another (the
        # KiTS19 folder also holds the training cases, which evaluate would list as unpredicted)
        volumes, references = work / "test_volumes", work / "test_labels"
        volumes.mkdir(exist_ok=True)
        references.mkdir(exist_ok=True)
        for case in (f"case_{number:05d}" for number in TEST_CASES):
            for source, target in ((kits19 / case / "imaging.nii.gz", volumes / f"{case}_0000.nii.gz"),
                                   (kits19 / case / "segmentation.nii.gz", references / f"{case}.nii.gz")):
                if not target.exists():
                    shutil.copyfile(source, target)
        predictions = {}
        for trainer in (QPG_TRAINER, BASELINE_TRAINER):
            predictions[trainer] = work / "predictions" / trainer
            self.nnunet_qpg(["predict", "-i", str(volumes), "-o", str(predictions[trainer]), "-m",
                             str(self.model_folder(trainer)), "-f", "0", "-device", args.device])
        # the whole-volume protocol: the same QPG model, its stacked slices cleaned up in 3D (two kidneys)
        whole_volume = work / "predictions" / f"{QPG_TRAINER}_largest_components"
        self.nnunet_qpg(["predict", "-i", str(volumes), "-o", str(whole_volume), "-m",
                         str(self.model_folder(QPG_TRAINER)), "-f", "0", "-device", args.device,
                         "--largest-components", "2"])

        self.step("6/7 evaluating against the test cases' KiTS19 segmentations")
        evaluations = {}
        for trainer, folder in predictions.items():
            evaluations[trainer] = work / "evaluation" / f"{trainer}.json"
            self.nnunet_qpg(["evaluate", str(folder), str(references), "-o", str(evaluations[trainer])])
        whole_volume_evaluation = work / "evaluation" / "whole_volume" / f"{QPG_TRAINER}_largest_components.json"
        self.nnunet_qpg(["evaluate", str(whole_volume), str(references), "-o", str(whole_volume_evaluation)])

        self.step("7/7 comparison table (paper Table 1) and figures (paper Fig. 4)")
        trainers = list(predictions)
        self.nnunet_qpg(["report", *(str(self.model_folder(t)) for t in trainers), "--test",
                         *(str(evaluations[t]) for t in trainers), "--names", "QPG", "classical",
                         "-o", str(work / "table1.json")])
        self.nnunet_qpg(["overlay", "--images", str(volumes), "--ground-truth", str(references),
                         "--prediction", f"QPG={predictions[QPG_TRAINER]}",
                         "--prediction", f"classical={predictions[BASELINE_TRAINER]}", "-o", str(work / "figures")])
        print_protocols({"QPG": evaluations[QPG_TRAINER], "classical": evaluations[BASELINE_TRAINER],
                         "QPG, 3D cleanup (--largest-components 2)": whole_volume_evaluation})
        print(f"\ndemo finished in {time.time() - self.started:.0f} s. Everything is in {work}:")
        print(f"  figures: {work / 'figures'}   table: {work / 'table1.json'}   masks: {work / 'predictions'}")
        print("  (a demo schedule: scores say nothing about QPG; train with nnUNetTrainerQPG_Paper for the paper's)")
        return 0


def print_protocols(evaluations: dict[str, Path]) -> None:
    """The paper's protocol (per-slice DSC on slices holding kidney) beside the whole-volume one a clinic gets
    (per-case 3D Dice, surface Dice, HD95, false-positive slices), from `evaluate` JSONs."""
    import json

    from nnunet_qpg.evaluation import format_table

    def number(summary: dict, key: str, digits: int = 3) -> str:
        value = summary.get(key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    rows = []
    for name, path in evaluations.items():
        summary = json.loads(path.read_text())["summary"]
        rows.append([name, number(summary, "dsc_mean"), number(summary, "dice_3d_mean"),
                     number(summary, "surface_dice_mean"), number(summary, "hd95_mm_mean", 1),
                     number(summary, "false_positive_slices_mean", 1)])
    print("\npaper's protocol vs whole volumes (test cases; the 2D model saw only slices with kidney):")
    print(format_table(rows, ["model", "per-slice DSC (kidney slices)", "3D Dice", "surface Dice @1 mm", "HD95 mm",
                              "false-positive slices"]))
    print("  a model can also see slices without kidney in training: convert-kits19 --background-slices "
          "(README, 'From CT to contours')")


def run(args: argparse.Namespace) -> int:
    try:
        return Demo(args).run()
    except RuntimeError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
