"""What the studies on the demo's synthetic kidney task share (study_hardware.py, study_background_slices.py).

:class:`DemoTaskStudy` keeps a work folder with the demo's environment (nnU-Net folders inside it, its trainers
on nnUNet_extTrainer), the synthetic KiTS19 cases and the test volumes, writes seeded short-schedule trainers
(:data:`SEEDED_SCHEDULE`), trains them with `nnUNetv2_train` in subprocesses (--jobs at a time, one results folder
per seed) and reads back their timings. Each study adds its own datasets, variants, scoring and tables.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Hashable, Sequence

# The trainer module's head: the demo's schedule, seeded from QPG_STUDY_SEED. {script}, {imports}, {epochs} and
# {iterations} are filled in by DemoTaskStudy.write_trainers (str.replace: the text holds other braces).
SEEDED_SCHEDULE = '''"""Written by benchmarks/{script}: trainers on the demo's short schedule, seeded."""

import os
import random

import numpy as np
import torch

from nnunet_qpg.nnunet_trainer import PaperProtocol
from nnunet_qpg.trainers.nnUNetTrainerQPG import nnUNetTrainerQPG
{imports}

class StudySchedule(PaperProtocol):
    """The demo's DemoSchedule (the paper's optimizer on a short schedule), seeded from QPG_STUDY_SEED."""

    schedule_epochs = {epochs}
    schedule_iterations_per_epoch = {iterations}
    schedule_val_iterations_per_epoch = 2

    # nnU-Net records its __init__ arguments by name (my_init_kwargs): the signature must be spelled out
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        seed = int(os.environ.get("QPG_STUDY_SEED", "0"))
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        super().__init__(plans, configuration, fold, dataset_json, device)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Skipped: the study scores every model on the test volumes; nnU-Net's final export of the validation
        cases would cost more than the short training itself."""
        self.print_to_log_file("final validation skipped (benchmarks/{script} scores the test cases)")
'''
EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")
TIMING_FILE = "study_timing.json"


class DemoTaskStudy:
    """The demo's task in ``args.work`` (``args``: work, epochs, iterations, size, device, volume_shape, jobs)."""

    def __init__(self, args: argparse.Namespace):
        from nnunet_qpg.commands.demo import Demo

        self.args = args
        demo_args = argparse.Namespace(work=args.work, epochs=args.epochs, iterations=args.iterations,
                                       size=args.size, device=args.device)
        self.demo = Demo(demo_args)  # its env: nnU-Net folders in WORK, extTrainer WORK/trainers + shipped ones
        self.demo.env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.work = self.demo.work
        self.schedule = f"e{args.epochs}x{args.iterations}"

    def prepare_cases(self) -> Path:
        """The synthetic KiTS19 cases (made once) and the test cases as the demo holds them (``self.volumes``:
        CT volumes, ``self.references``: their masks); a work folder of other task settings is refused.
        Returns the KiTS19 folder."""
        from nnunet_qpg.commands.demo import TEST_CASES, TRAIN_CASES
        from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_kits19

        args, work = self.args, self.work
        settings = {"size": args.size, "volume_shape": list(args.volume_shape)}
        record = work / "study_task.json"
        if record.is_file() and json.loads(record.read_text()) != settings:
            raise SystemExit(f"{work} holds a task of other settings ({record.read_text()}, wanted {settings}); "
                             f"give another --work (the --quick task is smaller than the full study's)")
        work.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(settings))
        kits19 = work / "kits19"
        self.demo.step(f"task 1/3: synthetic KiTS19 cases in {kits19}")
        if not (kits19 / f"case_{TEST_CASES[-1]:05d}" / "segmentation.nii.gz").is_file():
            make_synthetic_kits19(kits19, TRAIN_CASES + TEST_CASES, seed=0, shape=tuple(args.volume_shape))
        self.volumes, self.references = work / "test_volumes", work / "test_labels"
        self.volumes.mkdir(exist_ok=True)
        self.references.mkdir(exist_ok=True)
        for case in (f"case_{number:05d}" for number in TEST_CASES):
            for source, target in ((kits19 / case / "imaging.nii.gz", self.volumes / f"{case}_0000.nii.gz"),
                                   (kits19 / case / "segmentation.nii.gz", self.references / f"{case}.nii.gz")):
                if not target.exists():
                    shutil.copyfile(source, target)
        return kits19

    def write_trainers(self, module: str, script: str, classes: str, imports: str = "") -> None:
        """WORK/trainers/``module``: :data:`SEEDED_SCHEDULE` and the study's trainer ``classes`` on it."""
        text = (SEEDED_SCHEDULE.replace("{script}", script).replace("{imports}", imports)
                .replace("{epochs}", str(self.args.epochs)).replace("{iterations}", str(self.args.iterations)))
        trainers = self.work / "trainers"
        trainers.mkdir(exist_ok=True)
        (trainers / module).write_text(text + classes)

    def results_folder(self, seed: int) -> Path:
        return self.work / f"results_{self.schedule}_seed{seed}"

    def train(self, dataset_id: int, trainer: str, seed: int, model_folder: Path, label: str) -> str | None:
        """nnUNetv2_train in a subprocess (its own env: results folder and seed); None, or the failure's text.
        The wall time goes into the fold's study_timing.json."""
        from nnunet_qpg.commands.demo import _nnunet_script

        env = {**self.demo.env, "nnUNet_n_proc_DA": "0", "nnUNet_results": str(self.results_folder(seed)),
               "QPG_STUDY_SEED": str(seed)}
        arguments = [_nnunet_script("nnUNetv2_train"), str(dataset_id), "2d", "0", "-tr", trainer,
                     "-device", self.args.device]
        self.demo.step(f"training {label} ({self.schedule})")
        started = time.perf_counter()
        done = subprocess.run(arguments, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            text = f"{' '.join(arguments[1:])} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n" \
                   f"{done.stderr[-5000:]}"
            print(f"  FAILED: {label}\n{text}", flush=True)
            return text
        timing = {"train_wall_s": seconds, "load_average_after": list(os.getloadavg()),
                  "concurrent_trainings": self.args.jobs}
        (model_folder / "fold_0" / TIMING_FILE).write_text(json.dumps(timing, indent=1))
        print(f"  trained {label} in {seconds:.0f} s", flush=True)
        return None

    def train_missing(self, runs: Sequence[Hashable], checkpoint: Callable[[Hashable], Path],
                      train: Callable[[Hashable], str | None], label: Callable[[Hashable], str]) -> dict[str, str]:
        """Train the runs without a checkpoint, --jobs at a time; label -> failure text of those that failed."""
        missing = [run for run in runs if not checkpoint(run).is_file()]
        failures = {}
        if missing:
            with ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
                for run, failure in zip(missing, pool.map(train, missing)):
                    if failure is not None:
                        failures[label(run)] = failure
        return failures


def training_timing(model_folder: Path) -> tuple[dict, list[float]]:
    """(the fold's study_timing.json, or {}; the epoch times of its last nnU-Net training log, or [])."""
    timing_file = model_folder / "fold_0" / TIMING_FILE
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    epoch_times: list[float] = []
    for log in sorted((model_folder / "fold_0").glob("training_log_*.txt")):
        epoch_times = [float(x) for x in EPOCH_TIME.findall(log.read_text())] or epoch_times
    return timing, epoch_times


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation; 0 for one value), or (None, None) for none."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def study_parser(description: str, name: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every demo-task study shares (--work, --seeds, --epochs, --iterations, --skip-training,
    --quick, --out, --jobs, --device); ``name`` names its default folders, ``quick_help`` says what --quick runs.
    The study adds its own options, then calls :func:`resolve_study_arguments`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None,
                        help=f"work folder (default ./{name}_work; --quick: ./{name}_quick_work)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per training (default 3; --quick: 1)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations per epoch (default 10; --quick: 2)")
    parser.add_argument("--skip-training", action="store_true",
                        help="train nothing: score and report the finished trainings found in the work folder")
    parser.add_argument("--quick", action="store_true", help=f"smoke test: {quick_help}")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for study.json and the PNG (default benchmarks/{name}; --quick: WORK/study_out)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="trainings run at once, one torch thread each (default 1; --quick: 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="training device (default cpu)")
    return parser


def resolve_study_arguments(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """The shared options' defaults: 3 seeds, 3 x 10 iterations, the demo's task at --size 64, one training at a
    time; --quick one seed, 1 x 2 iterations, a smaller task (same cases, smaller volumes and slices), 2 at once."""
    quick = args.quick
    args.work = (args.work or Path(f"{name}_quick_work" if quick else f"{name}_work")).resolve()
    args.seeds = args.seeds if args.seeds is not None else ([0] if quick else [0, 1, 2])
    args.epochs = args.epochs or (1 if quick else 3)
    args.iterations = args.iterations or (2 if quick else 10)
    args.out = (args.out or (args.work / "study_out" if quick else Path(__file__).resolve().parent / name)).resolve()
    args.jobs = args.jobs or (2 if quick else 1)
    args.size, args.volume_shape = (32, (8, 48, 48)) if quick else (64, (12, 96, 96))
    return args


def begin_study(args: argparse.Namespace, chosen: str) -> None:
    """Every study's start: one torch thread (and OMP's default of one), the machine and the run's settings
    printed; ``chosen`` ends the settings line (the variants or fractions the run trains)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from common import machine_description, set_threads

    set_threads(1)
    print(machine_description())
    print(f"work: {args.work} | out: {args.out} | seeds {args.seeds} | {args.epochs} epochs x {args.iterations} "
          f"iterations | {chosen}", flush=True)


def save_figure(figure, path: Path, dpi: int) -> None:
    """Lay out, write (the folder made if needed) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def write_study_json(out: Path, payload: dict, failures: dict[str, str]) -> Path:
    """OUT/study.json with every number; each failed training's text tail to stderr. Returns the file."""
    path = out / "study.json"
    path.write_text(json.dumps(payload, indent=1))
    for what, failure in failures.items():
        print(f"\nFAILED: {what}: {failure[-1500:]}", file=sys.stderr)
    return path
