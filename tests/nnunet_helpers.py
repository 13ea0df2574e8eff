"""Helpers for tests that run real nnU-Net commands: a tiny 2D dataset, the environment, the command runner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
TRAINERS_DIR = REPO / "trainers"


def make_tiny_2d_dataset(raw_dir: Path | str, dataset_id: int = 901, num_cases: int = 8, size: int = 64,
                         name: str = "TinySquares", seed: int = 0) -> Path:
    """Write ``Dataset{id}_{name}`` under ``raw_dir``: 2D NIfTI images (noise + a bright square) and labels.

    nnU-Net's SimpleITKIO reads 2D NIfTI directly (as one slice with a large out-of-plane spacing). The square's
    position and size vary per case; label 1 is the square. Returns the dataset folder.
    """
    rng = np.random.default_rng(seed)
    folder = Path(raw_dir) / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case in range(num_cases):
        side = int(rng.integers(size // 6, size // 3))
        y, x = (int(v) for v in rng.integers(2, size - side - 2, size=2))
        label = np.zeros((size, size), dtype=np.uint8)
        label[y:y + side, x:x + side] = 1
        image = rng.normal(0.0, 0.3, (size, size)).astype(np.float32) + 2.0 * label
        for array, path in ((image, folder / "imagesTr" / f"case_{case:03d}_0000.nii.gz"),
                            (label, folder / "labelsTr" / f"case_{case:03d}.nii.gz")):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing((1.0, 1.0))
            sitk.WriteImage(itk, str(path))
    dataset_json = {
        "channel_names": {"0": "noise"},
        "labels": {"background": 0, "square": 1},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
        "name": name,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def nnunet_env(tmp_path: Path | str, ext_trainer_dirs: list[Path | str] = ()) -> dict[str, str]:
    """Environment for nnU-Net subprocesses rooted at ``tmp_path`` (raw / preprocessed / results made here).

    ``nnUNet_extTrainer`` lists ``ext_trainer_dirs`` then this repository's ``trainers/`` folder. Training
    settings for 2 CPU cores: single-threaded augmentation, no torch.compile. Remove ``nnUNet_n_proc_DA`` before
    planning (see :func:`planning_env`).
    """
    tmp_path = Path(tmp_path)
    env = dict(os.environ)
    for name in ("raw", "preprocessed", "results"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    env.update(
        nnUNet_raw=str(tmp_path / "raw"),
        nnUNet_preprocessed=str(tmp_path / "preprocessed"),
        nnUNet_results=str(tmp_path / "results"),
        nnUNet_extTrainer=os.pathsep.join([*(str(d) for d in ext_trainer_dirs), str(TRAINERS_DIR)]),
        nnUNet_n_proc_DA="0",
        nnUNet_compile="f",
        nnUNet_def_n_proc="1",  # validation / export worker pools: 8 spawned processes cost minutes on 2 cores
        OMP_NUM_THREADS="2",
        MKL_NUM_THREADS="2",
        PYTHONWARNINGS="ignore",
    )
    return env


def planning_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without ``nnUNet_n_proc_DA``: the planner passes it to torch.set_num_threads and crashes on 0."""
    env = dict(env)
    env.pop("nnUNet_n_proc_DA", None)
    return env


def nnunet_command(name: str) -> str:
    """Full path of an nnU-Net console script of this interpreter's environment (falls back to PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def run_command(args: list[str], env: dict[str, str], timeout: float = 600,
                check: bool = True) -> subprocess.CompletedProcess:
    """Run ``args`` (first item: a console-script name) and return the completed process; on failure with
    ``check`` raise AssertionError showing the output tail."""
    args = [nnunet_command(args[0]), *args[1:]]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}\n--- stdout ---\n{done.stdout[-6000:]}"
                             f"\n--- stderr ---\n{done.stderr[-6000:]}")
    return done


def plan_and_preprocess(env: dict[str, str], dataset_id: int, configuration: str = "2d") -> None:
    run_command(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration, "-np", "1",
                 "-npfp", "1", "--verify_dataset_integrity"], planning_env(env))


def write_trainer_module(folder: Path | str, module_name: str, source: str) -> Path:
    """Write a trainer module for ``nnUNet_extTrainer`` (``folder`` is created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module_name}.py"
    path.write_text(source)
    return path
