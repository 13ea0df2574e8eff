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


def make_tiny_3d_dataset(raw_dir: Path | str, dataset_id: int = 911, num_cases: int = 6,
                         shape: tuple[int, int, int] = (24, 32, 32),
                         spacing: tuple[float, float, float] = (3.0, 0.8, 0.8), name: str = "TinyKidney3D",
                         regions: bool = False, seed: int = 0) -> Path:
    """Write ``Dataset{id}_{name}`` under ``raw_dir``: 3D NIfTI CT-like volumes with a kidney and a tumour.

    ``shape`` and ``spacing`` are (z, y, x), as numpy arrays and KiTS19 list them; the default anisotropic
    spacing (3.0, 0.8, 0.8) makes nnU-Net plan a 1x3x3 first kernel, as it does for KiTS. Label 1 is an
    ellipsoidal "kidney" blob, label 2 a smaller "tumour" sphere inside it (its position and size vary per case).
    ``regions=True`` writes nnU-Net's region-based dataset.json as its KiTS setup does: regions kidney = {1, 2}
    and tumor = {2}, ``regions_class_order`` [1, 2] (predictions still come back as labels 0 / 1 / 2). Returns the
    dataset folder.
    """
    rng = np.random.default_rng(seed)
    folder = Path(raw_dir) / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    shape = tuple(int(s) for s in shape)
    zz, yy, xx = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    for case in range(num_cases):
        radii = np.array(shape, dtype=np.float32) * rng.uniform(0.22, 0.32, size=3)
        centre = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-0.1, 0.1, size=3) * np.array(shape)
        kidney = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 \
            + ((xx - centre[2]) / radii[2]) ** 2 <= 1.0
        tumour_centre = centre + rng.uniform(-0.3, 0.3, size=3) * radii
        tumour_radius = 0.45 * radii
        tumour = kidney & (((zz - tumour_centre[0]) / tumour_radius[0]) ** 2
                           + ((yy - tumour_centre[1]) / tumour_radius[1]) ** 2
                           + ((xx - tumour_centre[2]) / tumour_radius[2]) ** 2 <= 1.0)
        label = kidney.astype(np.uint8)
        label[tumour] = 2
        image = (rng.normal(0.0, 20.0, shape) + 150.0 * kidney + 100.0 * tumour - 50.0).astype(np.float32)
        for array, path in ((image, folder / "imagesTr" / f"case_{case:03d}_0000.nii.gz"),
                            (label, folder / "labelsTr" / f"case_{case:03d}.nii.gz")):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # SimpleITK orders spacing (x, y, z)
            sitk.WriteImage(itk, str(path))
    if regions:
        labels: dict = {"background": 0, "kidney": [1, 2], "tumor": 2}
    else:
        labels = {"background": 0, "kidney": 1, "tumor": 2}
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
        "name": name,
    }
    if regions:
        dataset_json["regions_class_order"] = [1, 2]
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def run_commands(commands: list[tuple[list[str], dict[str, str]]], timeout: float = 600
                 ) -> list[subprocess.CompletedProcess]:
    """Run independent commands (``(args, env)`` pairs, as :func:`run_command`) at the same time; return their
    completed processes in order, or raise the first failure once all have ended.

    nnU-Net commands spend seconds importing and spawning worker processes, single-threaded: two at once use
    2 cores where one leaves a core idle.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = [pool.submit(run_command, args, env, timeout) for args, env in commands]
        return [future.result() for future in futures]
