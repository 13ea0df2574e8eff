"""Issue 13: does QPG still train under hardware conditions? Finite shots, parameter-shift gradients, device noise
and the no-entanglement control on the demo's tiny synthetic kidney task, plus a barren-plateau check.

Part 1 (training study). The demo's task is prepared once in the work folder (the same code paths as
``nnunet-qpg demo``: synthetic KiTS19 cases 0-5 + 180-181, ``convert-kits19 --task kidney --size 64``,
``nnUNetv2_plan_and_preprocess -c 2d``). A trainer module written to WORK/trainers holds short-schedule variants
(the demo's DemoSchedule: PaperProtocol's Adam lr 1e-3, wd 5e-4, constant LR; --epochs x --iterations, 2
validation iterations) of nnUNetTrainerQPG (QPGConv on every segmentation head, LPP, K=1):

  exact       exact probabilities, autograd (nnUNetTrainerQPG itself)
  shots10000  10,000 shots per circuit per training step, parameter-shift gradients (as a device would)
  shots1000   1,000 shots, parameter shift (nnUNetTrainerQPG_Shots's settings)
  shots100    100 shots, parameter shift
  noisy1000   1,000 shots, parameter shift, readout error 2%, depolarizing 0.1% / 1% (nnUNetTrainerQPG_Noisy's)
  noisy100    the same noise with 100 shots
  noent       exact, no CNOT ring (nnUNetTrainerQPG_NoEntanglement's control)

Each variant is trained once per seed (the trainer seeds random, numpy and torch from QPG_STUDY_SEED in
``__init__``; nnU-Net has no seed flag), each seed into its own nnUNet_results folder
(WORK/results_e{E}x{I}_seed{S}), with nnUNetv2_train in a subprocess (nnUNet_n_proc_DA=0, nnUNet_compile=f,
nnUNet_def_n_proc=1, OMP_NUM_THREADS=1; --jobs of them at once; nnU-Net's final validation export is skipped, the
test cases score the model). Every trained model predicts the two synthetic test volumes
(``nnunet-qpg predict``, in this process as the demo does; prediction reads the exact distribution of the trained
circuits, noise and ring kept) and is scored by ``nnunet-qpg evaluate``: the per-slice DSC (Eq. 11) over the
axial slices holding kidney, the demo's "per-slice DSC". Reruns reuse every training whose checkpoint_final.pth
and evaluation JSON exist.

Part 2 (barren-plateau check, no training). For n = 4..10 qubits and K = 1..5 blocks of the paper's circuit
(H on every qubit, then per block RY, RX per qubit and a CNOT ring), many angle sets are drawn uniformly in
[0, 2 pi) and, by autograd through ``simulate_vqcs(theta, None, "probabilities")``, the variance over draws of
dC/dtheta[0, 0, 0] (block 0's first RY angle, on qubit 0) is computed for
  global  C = 2^n p_0 (the probability of basis state 0, scaled so a uniform distribution gives 1);
  local   C = <Z_0> = sum_i p_i (1 - 2 b_0(i)), qubit 0 being the most significant bit of the basis index.
The unscaled global variance Var(dp_0/dtheta) = Var(global) / 4^n is saved to the JSON as well.

Outputs (--out, default benchmarks/study_hardware; --quick: WORK/study_out): study.json (every number) and
study_hardware.png (DSC against shots; the barren-plateau variances); the tables are printed as markdown.

usage: python benchmarks/study_hardware.py [--work DIR] [--seeds 0 1 2] [--epochs 3] [--iterations 10]
                                           [--variants ...] [--skip-training] [--quick] [--out DIR] [--jobs N]
smoke test (CI): python benchmarks/study_hardware.py --quick --work TMPDIR   (about 2 minutes on 2 busy cores)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from demo_task_study import (TIMING_FILE, DemoTaskStudy, begin_study, fmt, mean_std,  # noqa: E402
                              resolve_study_arguments, save_figure, study_parser, training_timing,
                              write_study_json)

# variant -> (trainer class, QPGConfig changes as source text, shots for the plot (None: exact), series)
VARIANTS: dict[str, tuple[str, str, int | None, str]] = {
    "exact": ("nnUNetTrainerQPGStudy_Exact", "", None, "exact"),
    "shots10000": ("nnUNetTrainerQPGStudy_Shots10000", "shots=10000, gradient='parameter-shift'", 10000, "shots"),
    "shots1000": ("nnUNetTrainerQPGStudy_Shots1000", "shots=1000, gradient='parameter-shift'", 1000, "shots"),
    "shots100": ("nnUNetTrainerQPGStudy_Shots100", "shots=100, gradient='parameter-shift'", 100, "shots"),
    "noisy1000": ("nnUNetTrainerQPGStudy_Noisy1000",
                  "shots=1000, gradient='parameter-shift', noise=DEVICE_NOISE", 1000, "noisy"),
    "noisy100": ("nnUNetTrainerQPGStudy_Noisy100",
                 "shots=100, gradient='parameter-shift', noise=DEVICE_NOISE", 100, "noisy"),
    "noent": ("nnUNetTrainerQPGStudy_NoEntanglement", "entangle=False", None, "noent"),
}
QUICK_VARIANTS = ("exact", "shots100")
TRAINER_MODULE = "nnunet_qpg_study_hardware_trainers.py"
TRAINER_CLASS = '''

class {name}(StudySchedule, nnUNetTrainerQPG):
    """{variant}: nnUNetTrainerQPG.qpg_config.replace({changes})"""

    qpg_config = nnUNetTrainerQPG.qpg_config.replace({changes})
'''
# nnUNetTrainerQPG_Noisy's noise figures (readout error 2%, depolarizing 0.1% per one-qubit gate, 1% per CNOT),
# written into the study's trainers and checked against the shipped trainer at run time
DEVICE_NOISE = dict(readout_error=0.02, one_qubit_depolarizing=0.001, two_qubit_depolarizing=0.01)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = study_parser(__doc__.split("\n\n")[0], "study_hardware",
                          "one seed, exact and shots100, 1 x 2 iterations, a smaller task, barren plateau for "
                          "n=4..5, K=1..2")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                        help=f"variants to train (default all; --quick: {' '.join(QUICK_VARIANTS)})")
    parser.add_argument("--draws", type=int, default=None,
                        help="random angle sets per (n, K) for the barren-plateau check (default 2000; --quick 100)")
    args = resolve_study_arguments(parser.parse_args(argv), "study_hardware")
    quick = args.quick
    args.variants = args.variants or list(QUICK_VARIANTS if quick else VARIANTS)
    args.draws = args.draws or (100 if quick else 2000)
    args.qubits = range(4, 6) if quick else range(4, 11)
    args.blocks = range(1, 3) if quick else range(1, 6)
    return args


# ---------------------------------------------------------------------------------------------------------------
# Part 1: training study
# ---------------------------------------------------------------------------------------------------------------
class Study(DemoTaskStudy):
    def prepare(self) -> None:
        """The demo's steps 1-3, each skipped when done, and the study's trainers."""
        from nnunet_qpg.commands.demo import DATASET, DATASET_ID, _nnunet_script

        args, work, demo = self.args, self.work, self.demo
        kits19 = self.prepare_cases()
        demo.step("task 2/3: convert to the paper's 2D kidney dataset")
        if not (work / "nnUNet_raw" / DATASET / "dataset.json").is_file():
            demo.nnunet_qpg(["convert-kits19", str(kits19), "--task", "kidney", "--size", str(args.size),
                             "--workers", "1"])
        demo.step("task 3/3: nnU-Net planning and preprocessing (2d)")
        if not (work / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json").is_file():
            demo.command([_nnunet_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d",
                          "-np", "1", "-npfp", "1"])
        classes = "".join(TRAINER_CLASS.format(name=name, variant=variant, changes=changes)
                          for variant, (name, changes, _, _) in VARIANTS.items())
        self.write_trainers(TRAINER_MODULE, "study_hardware.py", classes,
                            imports=f"from nnunet_qpg.simulator.noise import NoiseModel\n\n"
                                    f"DEVICE_NOISE = NoiseModel(**{DEVICE_NOISE!r})\n")
        self.noise_check = check_against_shipped_noisy_trainer()
        print(f"  {self.noise_check}")

    # -- one training ------------------------------------------------------------------------------------------
    def model_folder(self, variant: str, seed: int) -> Path:
        from nnunet_qpg.commands.demo import DATASET

        return self.results_folder(seed) / DATASET / f"{VARIANTS[variant][0]}__nnUNetPlans__2d"

    def evaluation_file(self, variant: str, seed: int) -> Path:
        return self.work / "evaluation" / self.schedule / f"{variant}_seed{seed}.json"

    def train_variant(self, variant: str, seed: int) -> str | None:
        from nnunet_qpg.commands.demo import DATASET_ID

        return self.train(DATASET_ID, VARIANTS[variant][0], seed, self.model_folder(variant, seed),
                          f"{variant} seed {seed}")

    def score(self, variant: str, seed: int) -> None:
        """Predict the test volumes (in this process, as the demo does) and evaluate against the references."""
        predictions = self.work / "predictions" / self.schedule / f"{variant}_seed{seed}"
        evaluation = self.evaluation_file(variant, seed)
        started = time.perf_counter()
        self.demo.nnunet_qpg(["predict", "-i", str(self.volumes), "-o", str(predictions), "-m",
                              str(self.model_folder(variant, seed)), "-f", "0", "-device", self.args.device,
                              "--overwrite"])
        seconds = time.perf_counter() - started
        evaluation.parent.mkdir(parents=True, exist_ok=True)
        self.demo.nnunet_qpg(["evaluate", str(predictions), str(self.references), "-o", str(evaluation)])
        timing, _ = training_timing(self.model_folder(variant, seed))
        (self.model_folder(variant, seed) / "fold_0" / TIMING_FILE).write_text(
            json.dumps({**timing, "predict_wall_s": seconds}, indent=1))

    def record(self, variant: str, seed: int) -> dict:
        model, evaluation = self.model_folder(variant, seed), self.evaluation_file(variant, seed)
        result = json.loads(evaluation.read_text())
        timing, epoch_times = training_timing(model)
        summary = result["summary"]
        settings_file = model / "fold_0" / "qpg_settings.json"
        settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        return {
            "variant": variant, "seed": seed, "trainer": VARIANTS[variant][0],
            "qpg_config": settings.get("qpg_config"),
            "dsc_per_slice_mean": summary["dsc_mean"], "dsc_per_slice_std": summary["dsc_std"],
            "iou_per_slice_mean": summary["iou_mean"], "slices": summary["images"],
            "dice_3d_mean": summary.get("dice_3d_mean"),
            "per_slice_dsc": [row["dsc"] for row in result["per_image"]],
            "epoch_times_s": epoch_times, "training_epochs_s": sum(epoch_times) if epoch_times else None,
            **timing,
        }

    def run(self, train: bool) -> tuple[list[dict], dict]:
        """Train what is missing (--jobs at a time), score what is unscored; the records and the failures."""
        # seed-major: a partial run has every variant of the first seeds
        runs = [(variant, seed) for seed in self.args.seeds for variant in self.args.variants]
        checkpoint = {run: self.model_folder(*run) / "fold_0" / "checkpoint_final.pth" for run in runs}
        failures = self.train_missing(runs, checkpoint.__getitem__, lambda run: self.train_variant(*run),
                                      lambda run: f"{run[0]} seed {run[1]}") if train else {}
        records = []
        for run in runs:
            if not checkpoint[run].is_file():
                if f"{run[0]} seed {run[1]}" not in failures:
                    print(f"  (no finished training of {run[0]} seed {run[1]} in {self.work})")
                continue
            if not self.evaluation_file(*run).is_file():
                self.score(*run)
            row = self.record(*run)
            records.append(row)
            print(f"  {run[0]:11s} seed {run[1]}: per-slice DSC {row['dsc_per_slice_mean']:.4f}  "
                  f"train {fmt(row.get('train_wall_s'))} s (epochs {fmt(row['training_epochs_s'])} s)", flush=True)
        return records, failures


def check_against_shipped_noisy_trainer() -> str:
    """Whether the noise written into the study's trainers is that of the shipped nnUNetTrainerQPG_Noisy (found
    by class name in whichever file of nnunet_qpg.trainers holds it); a line for the log and the JSON."""
    import importlib
    import pkgutil

    import nnunet_qpg.trainers as shipped
    from nnunet_qpg.simulator.noise import NoiseModel

    for module in pkgutil.iter_modules(shipped.__path__):
        try:
            found = getattr(importlib.import_module(f"nnunet_qpg.trainers.{module.name}"), "nnUNetTrainerQPG_Noisy",
                            None)
        except Exception as error:  # another file's problem is not this study's
            print(f"  note: nnunet_qpg.trainers.{module.name} does not import: {error!r}")
            continue
        if found is not None:
            config = found.resolved_qpg_config()
            same = (config.noise == NoiseModel(**DEVICE_NOISE) and config.shots == 1000
                    and config.gradient == "parameter-shift")
            return (f"nnUNetTrainerQPG_Noisy ({module.name}.py): {config.execution.describe()}; the study's "
                    f"noisy1000 {'matches it' if same else 'DIFFERS from it'}")
    return "nnUNetTrainerQPG_Noisy not found among the shipped trainers; the study uses " + repr(DEVICE_NOISE)


def summarise(records: list[dict], variants: list[str]) -> list[dict]:
    rows = []
    for variant in variants:
        mine = [r for r in records if r["variant"] == variant]
        if not mine:
            continue
        dsc, dsc_sd = mean_std([r["dsc_per_slice_mean"] for r in mine])
        dice, dice_sd = mean_std([r["dice_3d_mean"] for r in mine if r["dice_3d_mean"] is not None])
        train, train_sd = mean_std([r["train_wall_s"] for r in mine if r.get("train_wall_s") is not None])
        epochs, _ = mean_std([r["training_epochs_s"] for r in mine if r["training_epochs_s"] is not None])
        # the machine is shared: the least disturbed epoch says what a variant costs, the wall times what it took
        epoch_times = [t for r in mine for t in r["epoch_times_s"]]
        walls = [r["train_wall_s"] for r in mine if r.get("train_wall_s") is not None]
        rows.append({"variant": variant, "trainer": VARIANTS[variant][0], "changes": VARIANTS[variant][1] or "-",
                     "seeds": [r["seed"] for r in mine], "dsc_mean": dsc, "dsc_std": dsc_sd,
                     "dsc_per_seed": [r["dsc_per_slice_mean"] for r in mine],
                     "dice_3d_mean": dice, "dice_3d_std": dice_sd,
                     "train_wall_s_mean": train, "train_wall_s_std": train_sd,
                     "train_wall_s_min": min(walls) if walls else None, "training_epochs_s_mean": epochs,
                     "epoch_s_min": min(epoch_times) if epoch_times else None,
                     "epoch_s_median": statistics.median(epoch_times) if epoch_times else None})
    return rows


def training_table(rows: list[dict]) -> str:
    lines = ["| variant | settings (nnUNetTrainerQPG.qpg_config.replace) | seeds | per-slice DSC mean +- std "
             "| DSC per seed | 3D Dice mean +- std | training wall s: mean +- std (min) | epoch s: min (median) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['changes']} | {len(r['seeds'])} | {r['dsc_mean']:.3f} +- {r['dsc_std']:.3f} | "
            f"{', '.join(f'{v:.3f}' for v in r['dsc_per_seed'])} | "
            f"{fmt(r['dice_3d_mean'], 3)} +- {fmt(r['dice_3d_std'], 3)} | "
            f"{fmt(r['train_wall_s_mean'])} +- {fmt(r['train_wall_s_std'])} ({fmt(r['train_wall_s_min'])}) | "
            f"{fmt(r['epoch_s_min'], 1)} ({fmt(r['epoch_s_median'], 1)}) |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Part 2: barren-plateau check
# ---------------------------------------------------------------------------------------------------------------
def gradient_variances(n: int, blocks: int, draws: int, seed: int = 0, chunk: int = 500) -> dict:
    """Var over ``draws`` uniform angle sets of dC/dtheta[0, 0, 0] for the global and local costs (float64)."""
    import torch

    from nnunet_qpg.simulator import simulate_vqcs

    generator = torch.Generator().manual_seed(seed * 1_000_003 + 1000 * n + blocks)
    index = torch.arange(1 << n)
    sign = 1.0 - 2.0 * ((index >> (n - 1)) & 1).double()  # 1 - 2 b_0(i), qubit 0 the most significant bit
    sign_1 = 1.0 - 2.0 * ((index >> (n - 2)) & 1).double()  # the same for qubit 1
    global_grads, local_grads, local_1_grads = [], [], []
    for start in range(0, draws, chunk):
        count = min(chunk, draws - start)
        theta = (torch.rand(count, blocks, 2, n, generator=generator, dtype=torch.float64) * (2 * math.pi))
        theta.requires_grad_(True)
        probabilities = simulate_vqcs(theta, None, "probabilities")  # [count, 2^n]
        global_cost = probabilities[:, 0] * float(1 << n)
        local_cost, local_1_cost = probabilities @ sign, probabilities @ sign_1
        # the VQCs are independent: the gradient of the sum holds each one's own derivative
        (g_global,) = torch.autograd.grad(global_cost.sum(), theta, retain_graph=True)
        (g_local,) = torch.autograd.grad(local_cost.sum(), theta, retain_graph=True)
        (g_local_1,) = torch.autograd.grad(local_1_cost.sum(), theta)
        global_grads.append(g_global[:, 0, 0, 0])
        local_grads.append(g_local[:, 0, 0, 0])
        local_1_grads.append(g_local_1[:, 0, 0, 0])
    g_global, g_local, g_local_1 = torch.cat(global_grads), torch.cat(local_grads), torch.cat(local_1_grads)
    var_global, var_local = g_global.var().item(), g_local.var().item()
    # K=1: the ring maps Z_0 to Z_1 ... Z_{n-1}, so <Z_0> does not depend on qubit 0's angles (a zero gradient,
    # rounding aside); <Z_1> (mapped to Z_0 Z_1) is the nearest local cost that does
    var_local = 0.0 if var_local < ZERO_VARIANCE else var_local
    return {"n": n, "K": blocks, "draws": draws, "var_global": var_global,
            "var_global_unscaled": var_global / 4.0 ** n, "var_local": var_local,
            "var_local_qubit1": g_local_1.var().item(),
            "mean_global": g_global.mean().item(), "mean_local": g_local.mean().item(),
            # K=1 in closed form: the ring permutes basis states and fixes |0...0>, so p_0 = prod_q p_q(0) with
            # p_q(0) = (1 - sin(theta_q) cos(phi_q)) / 2 (RX(phi) RY(theta) H|0>): E[p^2] = 5/16,
            # E[(dp/dtheta)^2] = 1/16, hence Var(d 2^n p_0 / d theta_0) = (1/4)(5/4)^(n-1); and <Z_1> maps to
            # <Z_0 Z_1> = z_0 z_1 with z = -sin(theta) cos(phi), hence Var(d<Z_1>/d theta_0) = 1/16
            "analytic_var_global": 0.25 * 1.25 ** (n - 1) if blocks == 1 else None,
            "analytic_var_local_qubit1": 1 / 16 if blocks == 1 else None,
            # the standard error of a variance estimate, sqrt(2 / (N - 1)) of it for near-normal draws
            "relative_standard_error": math.sqrt(2.0 / (draws - 1))}


ZERO_VARIANCE = 1e-24  # float64 rounding of an exactly zero derivative gives ~1e-34


def barren_plateau(args: argparse.Namespace) -> list[dict]:
    results = []
    for n in args.qubits:
        for blocks in args.blocks:
            results.append(gradient_variances(n, blocks, args.draws))
    return results


def plateau_table(results: list[dict], key: str) -> str:
    blocks = sorted({r["K"] for r in results})
    lines = ["| n \\ K | " + " | ".join(f"K={k}" for k in blocks) + " |", "|---" * (len(blocks) + 1) + "|"]
    for n in sorted({r["n"] for r in results}):
        cells = {r["K"]: r[key] for r in results if r["n"] == n}
        lines.append(f"| {n} | " + " | ".join(f"{cells[k]:.3g}" for k in blocks) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# figure
# ---------------------------------------------------------------------------------------------------------------
def draw(rows: list[dict], records: list[dict], plateau: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (ax, ax_global, ax_local) = plt.subplots(1, 3, figsize=(16, 4.8))
    by_variant = {r["variant"]: r for r in rows}
    exact_x, noent_x = 1e5, 1.35e5
    exact = by_variant.get("exact")
    if exact is not None:
        ax.axhspan(exact["dsc_mean"] - exact["dsc_std"], exact["dsc_mean"] + exact["dsc_std"], color="tab:blue",
                   alpha=0.12, label="exact (mean +- std band)")
        ax.axhline(exact["dsc_mean"], color="tab:blue", lw=1, alpha=0.6)
        ax.errorbar([exact_x], [exact["dsc_mean"]], yerr=[exact["dsc_std"]], fmt="s", color="tab:blue",
                    capsize=4)
    for series, colour, offset, label in (("shots", "tab:blue", 1.0, "shots + parameter shift"),
                                          ("noisy", "tab:red", 1.12, "shots + parameter shift + device noise")):
        points = sorted((VARIANTS[v][2], r) for v, r in by_variant.items() if VARIANTS[v][3] == series)
        if points:
            xs = [shots * offset for shots, _ in points]
            ax.errorbar(xs, [r["dsc_mean"] for _, r in points], yerr=[r["dsc_std"] for _, r in points],
                        fmt="o-", color=colour, capsize=4, label=label)
    noent = by_variant.get("noent")
    if noent is not None:
        ax.errorbar([noent_x], [noent["dsc_mean"]], yerr=[noent["dsc_std"]], fmt="D", color="tab:green",
                    capsize=4, label="exact, no CNOT ring")
    for number, record in enumerate(records):  # every seed, faint
        variant = record["variant"]
        x = {"exact": exact_x, "noent": noent_x}.get(variant) or VARIANTS[variant][2] * (
            1.12 if VARIANTS[variant][3] == "noisy" else 1.0)
        ax.plot([x], [record["dsc_per_slice_mean"]], ".", color="grey", alpha=0.6,
                label="one seed" if number == 0 else None)
    ax.set_xscale("log")
    ticks = sorted({VARIANTS[v][2] for v in by_variant if VARIANTS[v][2]})
    labels = [f"{t:,}" for t in ticks]
    if exact is not None or noent is not None:
        ticks, labels = ticks + [exact_x], labels + ["exact"]
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels)
    ax.minorticks_off()
    ax.set_xlabel("shots per circuit per training step")
    ax.set_ylabel("test per-slice DSC (kidney slices)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    for axis, key, name in ((ax_global, "var_global", "global cost 2^n p_0"),
                            (ax_local, "var_local", "local cost <Z_0>")):
        for number, blocks in enumerate(sorted({r["K"] for r in plateau})):
            mine = sorted((r["n"], r[key]) for r in plateau if r["K"] == blocks)
            if all(v == 0.0 for _, v in mine):  # <Z_0> at K=1: exactly zero (see gradient_variances)
                mine = sorted((r["n"], r["var_local_qubit1"]) for r in plateau if r["K"] == blocks)
                axis.plot([n for n, _ in mine], [v for _, v in mine], "o--", color=f"C{number}",
                          label=f"K={blocks}: <Z_1> (<Z_0>'s derivative is 0)")
                continue
            axis.plot([n for n, _ in mine], [v for _, v in mine], "o-", color=f"C{number}", label=f"K={blocks}")
            if key == "var_global" and blocks == 1:
                ns = [n for n, _ in mine]
                axis.plot(ns, [0.25 * 1.25 ** (n - 1) for n in ns], ":", color=f"C{number}",
                          label="K=1 closed form (1/4)(5/4)^(n-1)")
        axis.set_yscale("log")
        axis.set_xticks(sorted({r["n"] for r in plateau}))
        axis.set_xlabel("qubits n")
        axis.set_ylabel("Var over draws of dC / d theta[0,0,0]")
        axis.set_title(f"barren plateau: {name}", fontsize=9)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3, which="both")
    save_figure(figure, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    begin_study(args, f"variants {' '.join(args.variants)}")
    started = time.time()

    study = Study(args)
    study.prepare()
    records, failures = study.run(train=not args.skip_training)
    rows = summarise(records, args.variants)
    training_seconds = time.time() - started

    plateau_started = time.time()
    plateau = barren_plateau(args)
    plateau_seconds = time.time() - plateau_started

    print(f"\n## Training study: per-slice DSC on the synthetic test cases' kidney slices "
          f"({args.epochs} epochs x {args.iterations} iterations, seeds {args.seeds})\n")
    print(training_table(rows))
    print(f"\n## Barren plateau: Var of dC/dtheta[0,0,0] over {args.draws} uniform draws "
          f"(relative standard error ~{math.sqrt(2 / (args.draws - 1)):.0%} for near-normal draws)\n")
    print("global cost C = 2^n p_0:\n")
    print(plateau_table(plateau, "var_global"))
    print("\nK=1 in closed form (1/4)(5/4)^(n-1): " + ", ".join(
        f"n={r['n']}: {r['analytic_var_global']:.3g}" for r in plateau if r["K"] == 1)
        + " (the sampled K=1 column is heavy-tailed: a product of n factors)")
    print("\nlocal cost C = <Z_0>:\n")
    print(plateau_table(plateau, "var_local"))
    print("\nlocal cost C = <Z_1> (for K=1, where <Z_0>'s derivative is exactly 0: the ring maps Z_0 to "
          "Z_1...Z_{n-1}):\n")
    print(plateau_table(plateau, "var_local_qubit1"))

    args.out.mkdir(parents=True, exist_ok=True)
    title = (f"QPG heads (LPP, K=1), demo task, {args.epochs}x{args.iterations} it, "
             f"seeds {' '.join(map(str, args.seeds))}; mean +- std over seeds")
    figure = args.out / "study_hardware.png"
    draw(rows, records, plateau, figure, title)
    from common import machine_description as describe

    payload = {
        "command": "python benchmarks/study_hardware.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": describe(),
        "settings": {"work": str(args.work), "seeds": args.seeds, "epochs": args.epochs,
                     "iterations": args.iterations, "val_iterations": 2, "variants": args.variants,
                     "size": args.size, "volume_shape": list(args.volume_shape), "draws": args.draws,
                     "device": args.device},
        "noise_check": study.noise_check,
        "variants": {v: {"trainer": VARIANTS[v][0], "qpg_config_changes": VARIANTS[v][1] or None}
                     for v in args.variants},
        "summary": rows,
        "trainings": records,
        "failures": failures,
        "trainings_wall_s_total": sum(r.get("train_wall_s") or 0.0 for r in records),
        "barren_plateau": plateau,
        "wall_s": {"training_study": training_seconds, "barren_plateau": plateau_seconds},
    }
    written = write_study_json(args.out, payload, failures)
    print(f"\nwrote {figure} and {written} "
          f"(training part {training_seconds:.0f} s, barren plateau {plateau_seconds:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
