"""Volume prediction (`nnunet-qpg predict`): the slice-by-slice loop it ran before vs batched slices.

Two contenders predict the same synthetic CT file with the same model, interleaved (benchmarks/common.py), and
each writes its mask as `predict` does:

- "per slice (before)": the loop `predict` ran before batching, kept verbatim below: each axial slice windowed
  and filtered with scipy's 7x7 median (``scipy.ndimage.median_filter``), resized, and predicted alone by a plain
  ``nnUNetPredictor.predict_single_npy_array`` (all folds, mirroring), the label map resized back;
- "batched": ``nnunet_qpg.inference.predict_volume`` as `predict` runs it now: window and filters on a batch of
  slices (the exact fast median), nnU-Net's preprocessing per slice, the network on a batch of slices at a time
  (``SliceBatchPredictor``: nnU-Net's sliding window and mirroring, one network call per batch), while a thread
  preprocesses the next batch.

Per volume, each is split into read (``read_axial_volume``), start-up (loading the model: checkpoint check,
network build, weights), preprocessing (window, filters, resize, nnU-Net's preprocessing), network (nnU-Net's
sliding window, mirroring and folds), masks (logits to labels, back to the slice size) and writing (the .nii.gz
mask, ``write_image_atomically``). The batched path's preprocessing runs on its thread, overlapping the network, so
its parts add up to more than its total. Totals are end to end (read to written mask), the minimum and the median
over the rounds; the ratio is per-slice time / batched time. The masks of the two paths are compared voxel by
voxel (they may differ only where two classes' logits tie to within float16 rounding: see nnunet_qpg/inference.py).

The model. Full mode trains (once; cached in --work) a tiny QPG model as tests/inference_model.py does, at the
demo's size: synthetic KiTS19 -> `convert-kits19 --task kidney --size 64` (the paper preset: window [-30, 0], 3x3
mean and 7x7 median) -> `nnUNetv2_plan_and_preprocess -c 2d` -> `nnUNetv2_train` with nnUNetTrainerQPG for 1 epoch
of 2 iterations (prediction time does not depend on how well it learned). --quick writes a model folder by hand
instead, in seconds: nnU-Net's stored 2D plan (benchmarks/data) cut to 3 stages and a 32 x 32 patch with CT
normalisation, nnUNetTrainerQPG's network with its initial weights as fold_0's checkpoint, and dataset.json with the
paper's conversion settings at size 32. The CT volumes are `synth-kits19` cases (int16 HU, 512 x 512 slices; quick:
a few 128 x 128 slices), cached in --work.

usage: python benchmarks/bench_volume_inference.py [--quick] [--rounds N] [--slices 100,300] [--device cpu|cuda]
                                                   [--batch-size B] [--threads T] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (fmt_seconds, load_stored_plan, machine_description, print_table,  # noqa: E402
                    shrink_for_quick)

REPOSITORY = Path(__file__).resolve().parents[1]
DATASET_ID, DATASET = 701, "Dataset701_KiTS19Kidney2D"
TRAINER = "nnUNetTrainerQPG_BenchVolume"
TRAINER_SOURCE = f'''
from nnunet_qpg.trainers.nnUNetTrainerQPG import nnUNetTrainerQPG


class {TRAINER}(nnUNetTrainerQPG):
    """nnUNetTrainerQPG (QPGConv on the segmentation heads, LPP) trained just enough to have a checkpoint."""

    schedule_epochs = 1
    schedule_iterations_per_epoch = 2
    schedule_val_iterations_per_epoch = 1
'''
PAPER_CONVERSION = {"preset": "paper", "window": [-30.0, 0.0], "denoise": True, "mean_filter_size": 3,
                    "median_filter_size": 7, "task": "kidney", "format_version": 1}
STAGES = ("read", "start-up", "preprocessing", "network", "masks", "writing")


# --- the model ---------------------------------------------------------------------------------------------------

def _script(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def _run(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([_script(args[0]), *args[1:]], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def trained_model(work: Path, size: int = 64) -> Path:
    """The tiny trained QPG model folder (tests/inference_model.py's recipe at the demo's size), made once."""
    root = work / f"model_{size}"
    trainers = root / "trainers"
    trainers.mkdir(parents=True, exist_ok=True)
    (trainers / "bench_volume_trainers.py").write_text(TRAINER_SOURCE)
    env = dict(os.environ)
    for name in ("raw", "preprocessed", "results"):
        (root / name).mkdir(exist_ok=True)
        env[f"nnUNet_{name}"] = str(root / name)
    env.update(nnUNet_extTrainer=os.pathsep.join([str(trainers), str(REPOSITORY / "trainers")]),
               nnUNet_compile="f", nnUNet_def_n_proc="1", PYTHONWARNINGS="ignore")
    # the predictor finds the trainer class there
    os.environ["nnUNet_extTrainer"] = os.pathsep.join([str(trainers), os.environ.get("nnUNet_extTrainer", "")])
    folder = root / "results" / DATASET / f"{TRAINER}__nnUNetPlans__2d"
    if (folder / "fold_0" / "checkpoint_final.pth").is_file():
        return folder
    print(f"training the benchmark model once into {root} (a few minutes) ...", flush=True)
    from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_kits19

    if not (root / "raw" / DATASET / "dataset.json").is_file():
        make_synthetic_kits19(root / "kits19", [0, 1, 2, 3, 180], seed=5, shape=(8, 2 * size, 2 * size))
        _run(["nnunet-qpg", "convert-kits19", str(root / "kits19"), "--task", "kidney", "--size", str(size),
              "--workers", "1"], env)
    if not (root / "preprocessed" / DATASET / "nnUNetPlans.json").is_file():
        planning = {key: value for key, value in env.items() if key != "nnUNet_n_proc_DA"}
        _run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", "1", "-npfp", "1"], planning)
    _run(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu"],
         {**env, "nnUNet_n_proc_DA": "0"})
    return folder


def hand_built_model(work: Path, size: int = 32) -> Path:
    """A model folder without training (--quick): the stored plan cut down, nnUNetTrainerQPG's initial weights."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_qpg.trainers.nnUNetTrainerQPG import nnUNetTrainerQPG

    folder = work / f"hand_built_{size}" / "nnUNetTrainerQPG__nnUNetPlans__2d"
    if (folder / "fold_0" / "checkpoint_final.pth").is_file():
        return folder
    final, folder = folder, Path(tempfile.mkdtemp(dir=work)) / folder.name  # built aside, moved in whole
    plans, dataset_json = load_stored_plan()
    plans = shrink_for_quick(plans)
    configuration = plans["configurations"]["2d"]
    configuration["patch_size"] = [size, size]
    configuration["normalization_schemes"] = ["CTNormalization"]
    plans["foreground_intensity_properties_per_channel"] = {"0": {
        "max": 0.0, "mean": -14.0, "median": -14.0, "min": -30.0, "percentile_00_5": -30.0,
        "percentile_99_5": 0.0, "std": 9.0}}
    dataset_json = {**dataset_json, "channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": 1},
                    "name": DATASET, "conversion": {**PAPER_CONVERSION, "size": size}}
    plans_manager = PlansManager(plans)
    torch.manual_seed(0)
    network = nnUNetTrainerQPG.build_network_architecture(plans_manager, plans_manager.get_configuration("2d"), 1,
                                                          2, enable_deep_supervision=False)
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainerQPG",
                "init_args": {"configuration": "2d"}, "inference_allowed_mirroring_axes": (0, 1)},
               folder / "fold_0" / "checkpoint_final.pth")
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.rename(final)
    except OSError:  # another run put it there first
        pass
    shutil.rmtree(folder.parent, ignore_errors=True)
    return final


def ct_volume(work: Path, slices: int, side: int) -> Path:
    """A synth-kits19 CT volume file (slices x side x side int16 HU), made once."""
    from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_case

    case = work / f"ct_{slices}x{side}x{side}"
    if not (case / "imaging.nii.gz").is_file():
        print(f"writing a {slices} x {side} x {side} synthetic CT into {case} ...", flush=True)
        aside = Path(tempfile.mkdtemp(dir=work))
        make_synthetic_case(aside, seed=1, shape=(slices, side, side), spacing=(3.0, 0.8, 0.8))
        case.mkdir(exist_ok=True)
        os.replace(aside / "imaging.nii.gz", case / "imaging.nii.gz")  # whole or nothing
        shutil.rmtree(aside, ignore_errors=True)
    return case / "imaging.nii.gz"


# --- the per-slice loop predict ran before (kept verbatim, scipy's median) ----------------------------------------

def legacy_window_and_denoise(slice_hu: np.ndarray, window, denoise: bool) -> np.ndarray:
    from scipy import ndimage

    clipped = np.clip(slice_hu.astype(np.float32, copy=False), window[0], window[1])
    if not denoise:
        return clipped
    smoothed = ndimage.uniform_filter(clipped, size=3, mode="nearest")
    return ndimage.median_filter(smoothed, size=7, mode="nearest")


def legacy_load_predictor(choice, device: str):
    """load_predictor as it was: a plain nnUNetPredictor."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_qpg.inference import check_checkpoints

    check_checkpoints(choice)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=device == "cuda", device=torch.device(device),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(choice.folder), choice.folds,
                                                   checkpoint_name=choice.checkpoint_name)
    return predictor


def legacy_predict_volume(predictor, preprocessing, volume, timings: dict):
    from nnunet_qpg.imaging.resizing import resize_mask_to
    from nnunet_qpg.inference import predict_slice

    def labels_of_slice(slice_hu):
        started = time.perf_counter()
        image = preprocessing.resized(legacy_window_and_denoise(slice_hu, preprocessing.window, preprocessing.denoise))
        middle = time.perf_counter()
        labels = predict_slice(predictor, image)
        end = time.perf_counter()
        labels = resize_mask_to(labels, slice_hu.shape)
        timings["preprocessing"] += middle - started
        timings["network"] += end - middle
        timings["masks"] += time.perf_counter() - end
        return labels

    return volume.label_slices(labels_of_slice)


# --- one end-to-end run ---------------------------------------------------------------------------------------------

def run_once(kind: str, choice, preprocessing, path: Path, output: Path, device: str, batch_size, masks: dict):
    from nnunet_qpg.inference import load_predictor, predict_volume, read_axial_volume
    from nnunet_qpg.safe_io import write_image_atomically

    timings = dict.fromkeys(STAGES, 0.0)
    begin = time.perf_counter()
    volume = read_axial_volume(path)
    timings["read"] = time.perf_counter() - begin
    started = time.perf_counter()
    if kind == "legacy":
        predictor = legacy_load_predictor(choice, device)
    else:
        predictor = load_predictor(choice, device=device, batch_size=batch_size)
    timings["start-up"] = time.perf_counter() - started
    started = time.perf_counter()
    if kind == "legacy":
        mask = legacy_predict_volume(predictor, preprocessing, volume, timings)
    else:
        mask = predict_volume(predictor, preprocessing, volume, timings=timings)
    timings["predict"] = time.perf_counter() - started
    started = time.perf_counter()
    write_image_atomically(mask, output / f"{kind}.nii.gz")
    timings["writing"] = time.perf_counter() - started
    timings["total"] = time.perf_counter() - begin
    import SimpleITK as sitk

    masks[kind] = sitk.GetArrayFromImage(mask)
    return timings


def median_table(side: int, rounds: int) -> None:
    """The 7x7 median on one CT-like slice (after the paper's window and 3x3 mean): scipy (what the converter used),
    nnunet_qpg's exact fast median, and the alternatives considered (SimpleITK's multithreaded Median, whose
    zero-flux Neumann border is scipy's 'nearest'; torch unfold + median), interleaved; same bits as scipy?"""
    import SimpleITK as sitk
    import torch
    from scipy import ndimage

    from common import time_interleaved

    from nnunet_qpg.imaging.intensity import median_filter_nearest

    rng = np.random.default_rng(0)
    hu = rng.normal(-15, 25, (side, side)).round()
    hu[: side // 10] = 60.0  # plateaus: many ties
    smoothed = ndimage.uniform_filter(np.clip(hu.astype(np.float32), -30, 0), size=3, mode="nearest")

    def torch_median():
        padded = torch.nn.functional.pad(torch.from_numpy(smoothed)[None, None], (3, 3, 3, 3), mode="replicate")
        windows = padded.unfold(2, 7, 1).unfold(3, 7, 1)
        return windows.reshape(side, side, 49).median(dim=-1).values.numpy()

    contenders = {
        "scipy.ndimage.median_filter": lambda: ndimage.median_filter(smoothed, size=7, mode="nearest"),
        "nnunet_qpg median_filter_nearest": lambda: median_filter_nearest(smoothed),
        "SimpleITK Median (radius 3)": lambda: sitk.GetArrayFromImage(sitk.Median(sitk.GetImageFromArray(smoothed),
                                                                                  [3, 3])),
        "torch unfold + median": torch_median,
    }
    reference = contenders["scipy.ndimage.median_filter"]()
    timings = time_interleaved(contenders, rounds=rounds, warmup=1)
    base = timings["scipy.ndimage.median_filter"].median
    print(f"\n7x7 median of one {side} x {side} slice ({rounds} rounds, interleaved)")
    print_table(["implementation", "min", "med", "scipy / this", "same bits as scipy"],
                [[name, fmt_seconds(timing.min), fmt_seconds(timing.median), f"{base / timing.median:.1f}",
                  "yes" if np.array_equal(contenders[name](), reference) else "NO"]
                 for name, timing in timings.items()])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="hand-built 32x32 model, one 6 x 128 x 128 volume, 1 round (a smoke test, < 1 minute)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per volume (default 2; quick 1)")
    parser.add_argument("--slices", default=None, help="comma-separated volume lengths (default 100,300)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices per network call of the batched path (default: predict's, 16 on the CPU, "
                             "32 on a GPU)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, as the other benchmarks: on a shared, busy machine "
                             "more threads than free cores make small ops wait on each other; 0: torch's default)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "nnunet_qpg_bench_volume",
                        help="cache folder for the model and the CT volumes (default: %(default)s)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here")
    args.work.mkdir(parents=True, exist_ok=True)
    from nnunet_qpg.commands.trainers_path import use_shipped_trainers

    use_shipped_trainers()  # as every nnunet-qpg command does: the predictor finds nnUNetTrainerQPG

    from nnunet_qpg.inference import SlicePreprocessing, choose_model, default_batch_size

    model = hand_built_model(args.work) if args.quick else trained_model(args.work)
    choice = choose_model(model, [0])
    preprocessing = SlicePreprocessing.from_model_folder(model)
    patch = json.loads((model / "plans.json").read_text())["configurations"]["2d"]["patch_size"]
    side = 128 if args.quick else 512
    lengths = [6] if args.quick and not args.slices else [int(n) for n in (args.slices or "100,300").split(",")]
    rounds = args.rounds or (1 if args.quick else 2)
    volumes = [(n, ct_volume(args.work, n, side)) for n in lengths]
    batch = args.batch_size or default_batch_size(patch, args.device)

    print(machine_description())
    print(f"\nmodel: {'hand-built (untrained)' if args.quick else 'trained tiny'} nnUNetTrainerQPG, "
          f"{preprocessing.size}x{preprocessing.size} slices, patch {patch[0]}x{patch[1]}, paper preset "
          f"(window {preprocessing.window}, denoise {preprocessing.denoise}), fold 0, mirroring on, device "
          f"{args.device}, torch threads {threads}; batched: {batch} slices per network call")
    # untimed warm-up: the first load imports nnU-Net's modules and finds the trainer class, for either path
    from nnunet_qpg.inference import load_predictor

    legacy_load_predictor(choice, args.device)
    load_predictor(choice, device=args.device)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch)
        for length, path in volumes:
            runs = {"legacy": [], "batched": []}
            masks: dict[str, np.ndarray] = {}
            for index in range(rounds):
                order = ["legacy", "batched"] if index % 2 == 0 else ["batched", "legacy"]
                for kind in order:
                    runs[kind].append(run_once(kind, choice, preprocessing, path, output, args.device,
                                               args.batch_size, masks))
            differ = int((masks["legacy"] != masks["batched"]).sum())
            results[length] = (runs, differ, masks["legacy"].size)

    names = {"legacy": "per slice (before)", "batched": f"batched ({batch} slices)"}
    for length, (runs, differ, voxels) in results.items():
        print(f"\nvolume {length} x {side} x {side} ({rounds} round(s); median seconds per stage; "
              f"batched preprocessing* runs on a thread, overlapping the network)")
        rows = []
        for kind, name in names.items():
            stages = [statistics.median(run[stage] for run in runs[kind]) for stage in STAGES]
            totals = [run["total"] for run in runs[kind]]
            cells = [fmt_seconds(value) + ("*" if stage == "preprocessing" and kind == "batched" else "")
                     for stage, value in zip(STAGES, stages)]
            rows.append([name, *cells, fmt_seconds(min(totals)), fmt_seconds(statistics.median(totals)),
                         f"{length / statistics.median(totals):.1f}"])
        print_table(["path", *STAGES, "total min", "total med", "slices/s"], rows)
        print(f"masks: {'identical' if differ == 0 else f'{differ} of {voxels} voxels differ'}")
    print()
    rows = []
    for length, (runs, _, _) in results.items():
        legacy = [run["total"] for run in runs["legacy"]]
        batched = [run["total"] for run in runs["batched"]]
        rows.append([f"{length} x {side} x {side}", fmt_seconds(statistics.median(legacy)),
                     fmt_seconds(statistics.median(batched)), f"{min(legacy) / min(batched):.2f}",
                     f"{statistics.median(legacy) / statistics.median(batched):.2f}"])
    print_table(["volume", "per slice med", "batched med", "ratio min", "ratio med"], rows)
    print("ratio = per-slice time / batched time, end to end (read, start-up, predict, write), same volume")
    median_table(side, 3 if args.quick else 7)
    return 0


if __name__ == "__main__":
    sys.exit(main())
