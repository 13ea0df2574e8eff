"""The QPG trainers in 3D through nnU-Net's own commands, as real subprocesses on tiny synthetic CT (CPU).

Two datasets, each made and planned once per module:

* ``Dataset911_TinyKidney3D``: 16x24x24 voxels at (3.0, 0.8, 0.8) mm, planned with ``nnUNetPlannerResEncM``
  (``nnUNetResEncUNetMPlans``: a 3-stage ``ResidualEncoderUNet`` whose stem and first stage have 1x3x3 kernels,
  as nnU-Net plans for KiTS). QPG and the classical baseline train in ``3d_fullres``, then QPGA and ConvLoRA
  from the baseline's ``-pretrained_weights``; the QPGA model is predicted with ``nnUNetv2_predict``, exported
  and predicted again by stock nnU-Net; ``nnUNetv2_find_best_configuration`` and ``nnUNetv2_ensemble`` run over
  the QPG and QPGA models.
* ``Dataset912_TinyKidneyRegions``: region-based (kidney = {1, 2}, tumor = {2}, as nnU-Net's KiTS setup), planned
  with the default planner (``PlainConvUNet``) and ``-gpu_memory_target 0.01``, nnU-Net's own option: on a
  16x40x40 image the patch it affords is then under 25 % of the image, so it plans ``3d_lowres`` and
  ``3d_cascade_fullres`` exactly as it does for a large CT on a real GPU (both with 3 stages: nnU-Net's
  deep-supervision weights are 0/0 = NaN for the 2-stage networks that smaller targets plan). The lowres stage
  trains on fold ``all`` (its validation then predicts the next stage for every case, which the cascade reads),
  then the cascade trains and both predict. This chain runs in a background thread beside the first dataset's
  (nnU-Net commands spend most of their time importing and spawning workers on one core).

Short variants of the shipped trainers (1 epoch of 1 iteration, batch size 2, no mirroring so that validation
and prediction run one forward pass per tile; ``QPG_TINY_VALIDATION=0`` skips the final validation where a test
does not use it) live in a temporary folder that ``nnUNet_extTrainer`` lists before this repository's
``trainers/``. Nothing is changed in the plans or in nnU-Net.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_helpers import (make_tiny_3d_dataset, nnunet_env, planning_env, run_command, run_commands,
                            write_trainer_module)

pytestmark = pytest.mark.slow

RESENC_ID, RESENC_DATASET = 911, "Dataset911_TinyKidney3D"
RESENC_PLANS = "nnUNetResEncUNetMPlans"
RESENC_SHAPE = (16, 24, 24)
RESENC_CASES = 6
CASCADE_ID, CASCADE_DATASET = 912, "Dataset912_TinyKidneyRegions"
CASCADE_SHAPE = (16, 40, 40)
CASCADE_CASES = 4
SPACING = (3.0, 0.8, 0.8)  # (z, y, x): nnU-Net plans a 1x3x3 first kernel
PREDICTED_CASES = ("case_000", "case_001")
QPG, QPGA, CONVLORA, BASELINE = ("nnUNetTrainerQPG_Tiny", "nnUNetTrainerQPGA_Tiny", "nnUNetTrainerConvLoRA_Tiny",
                                 "nnUNetTrainer_Tiny")

SHORT_VARIANTS = '''
"""Short 3D variants of the shipped trainers: 1 epoch of 1 iteration, batch size 2, no mirroring."""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_qpg.trainers.nnUNetTrainerConvLoRA import nnUNetTrainerConvLoRA
from nnunet_qpg.trainers.nnUNetTrainerQPG import nnUNetTrainerQPG
from nnunet_qpg.trainers.nnUNetTrainerQPGA import nnUNetTrainerQPGA


class Tiny:
    """Keeps the planned network and patch; trains and validates as little as nnU-Net allows."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        # nnU-Net records these exact argument names in the checkpoint: no *args here
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 1
        self.num_val_iterations_per_epoch = 1

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        self.batch_size = 2  # the ResEnc planners fill an 8 GB GPU

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        # as nnU-Net's nnUNetTrainerNoMirroring: one forward pass per tile in validation and prediction
        rotation, dummy_2d, patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, patch_size, None

    def perform_actual_validation(self, save_probabilities: bool = False):
        # QPG_TINY_VALIDATION=0 where a test does not use the validation (its export worker costs seconds)
        if os.environ.get("QPG_TINY_VALIDATION", "1") == "0":
            self.print_to_log_file("validation skipped (QPG_TINY_VALIDATION=0)")
            return
        super().perform_actual_validation(save_probabilities)


class nnUNetTrainerQPG_Tiny(Tiny, nnUNetTrainerQPG):
    pass


class nnUNetTrainerQPGA_Tiny(Tiny, nnUNetTrainerQPGA):
    pass


class nnUNetTrainerConvLoRA_Tiny(Tiny, nnUNetTrainerConvLoRA):
    pass


class nnUNetTrainer_Tiny(Tiny, nnUNetTrainer):
    """The classical baseline, as short."""
'''


class Planned:
    """A tiny dataset's folders and environment, with nnU-Net's commands as methods."""

    def __init__(self, root: Path, dataset_id: int, dataset_name: str, plans: str) -> None:
        self.root, self.dataset_id, self.dataset_name, self.plans = root, dataset_id, dataset_name, plans
        self.ext = root / "ext_trainers"
        write_trainer_module(self.ext, "qpg_3d_test_variants", SHORT_VARIANTS)
        self.env = nnunet_env(root, [self.ext])
        self.raw = root / "raw" / dataset_name
        self.results = root / "results" / dataset_name
        self.inputs = root / "predict_in"

    def plan(self, *args: str) -> dict:
        run_command(["nnUNetv2_plan_and_preprocess", "-d", str(self.dataset_id), "-np", "1", "-npfp", "1",
                     *args], planning_env(self.env))
        self.inputs.mkdir(exist_ok=True)
        for case in PREDICTED_CASES:
            name = f"{case}_0000.nii.gz"
            (self.inputs / name).write_bytes((self.raw / "imagesTr" / name).read_bytes())
        return json.loads(self.plans_file.read_text())

    @property
    def plans_file(self) -> Path:
        return self.root / "preprocessed" / self.dataset_name / f"{self.plans}.json"

    def model_dir(self, trainer: str, configuration: str) -> Path:
        return self.results / f"{trainer}__{self.plans}__{configuration}"

    def train_command(self, trainer: str, configuration: str, fold: str = "0", *extra: str,
                      validate: bool = True) -> tuple[list[str], dict]:
        env = self.env if validate else {**self.env, "QPG_TINY_VALIDATION": "0"}
        return ["nnUNetv2_train", str(self.dataset_id), configuration, fold, "-tr", trainer, "-p", self.plans,
                "-device", "cpu", *extra], env

    def train(self, *args, **kwargs):
        return run_command(*self.train_command(*args, **kwargs))

    def predict_command(self, trainer: str, configuration: str, output: Path, *extra: str, fold: str = "0",
                        env: dict | None = None) -> tuple[list[str], dict]:
        # -npp 0 -nps 0: nnU-Net's sequential path (no spawned worker processes, each costs seconds on 2 cores)
        return ["nnUNetv2_predict", "-i", str(self.inputs), "-o", str(output), "-d", str(self.dataset_id),
                "-c", configuration, "-f", fold, "-tr", trainer, "-p", self.plans, "-device", "cpu",
                "-npp", "0", "-nps", "0", *extra], env or self.env

    def predict(self, trainer: str, configuration: str, output: Path, *extra: str, **kwargs) -> list[Path]:
        run_command(*self.predict_command(trainer, configuration, output, *extra, **kwargs))
        return sorted(output.glob("case_*.nii.gz"))


class Background:
    """``work()`` in a thread; :meth:`result` waits and returns its value or raises its error."""

    def __init__(self, work) -> None:
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work) -> None:
        try:
            self._value = work()
        except BaseException as error:  # noqa: BLE001 - re-raised in the test
            self._error = error

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def wait(self) -> None:
        self._thread.join()


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def read_mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def assert_on_grid_of(mask_path: Path, image_path: Path) -> None:
    """The mask lies on the image's exact grid (size, spacing, origin, direction) and holds labels 0 / 1 / 2."""
    mask, image = sitk.ReadImage(str(mask_path)), sitk.ReadImage(str(image_path))
    assert mask.GetSize() == image.GetSize()
    assert np.allclose(mask.GetSpacing(), image.GetSpacing())
    assert np.allclose(mask.GetOrigin(), image.GetOrigin())
    assert np.allclose(mask.GetDirection(), image.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(mask)).tolist()) <= {0, 1, 2}


def assert_masks_match_inputs(paths: list[Path], inputs: Path) -> None:
    assert [p.name for p in paths] == [f"{case}.nii.gz" for case in PREDICTED_CASES]
    for path in paths:
        assert_on_grid_of(path, inputs / path.name.replace(".nii.gz", "_0000.nii.gz"))


def swapped_layers(weights: dict, suffix: str) -> set[str]:
    """Canonical names of the layers whose state holds ``suffix`` (nnU-Net's state dicts also list the
    ``.all_modules.0`` alias of each ConvDropoutNormReLU convolution and the decoder's ``encoder`` alias)."""
    return {k.removesuffix("." + suffix).replace(".all_modules.0", ".conv") for k in weights
            if k.endswith("." + suffix) and not k.startswith("decoder.encoder.")}


# -- where every shipped trainer places QPG, on the networks nnU-Net plans ---------------------------------------

def shipped_trainers() -> dict[str, type]:
    import nnunet_qpg.trainers as package
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, cls in vars(module).items():
            if inspect.isclass(cls) and issubclass(cls, nnUNetTrainer) and cls.__module__ == module.__name__:
                found[name] = cls
    return found


def expected_placement(cls: type, convolutions: list[str]) -> tuple[str | None, set[str]]:
    """(layer type, canonical names) each trainer's docstring promises."""
    from nnunet_qpg.trainers.nnUNetTrainerConvLoRA import nnUNetTrainerConvLoRA
    from nnunet_qpg.trainers.nnUNetTrainerQPG import nnUNetTrainerQPG
    from nnunet_qpg.trainers.nnUNetTrainerQPGA import nnUNetTrainerQPGA
    from nnunet_qpg.trainers.nnUNetTrainerQPGDecoder import nnUNetTrainerQPGDecoder

    heads = {name for name in convolutions if name.startswith("decoder.seg_layers.")}
    if issubclass(cls, nnUNetTrainerQPGDecoder):  # every decoder conv: stages, transposed convs, heads
        return "QPGConv", {name for name in convolutions if name.startswith("decoder.")}
    if issubclass(cls, nnUNetTrainerQPG):  # every segmentation head
        return "QPGConv", heads
    if issubclass(cls, nnUNetTrainerQPGA):  # every encoder / decoder conv but the heads
        return "QPGAConv", set(convolutions) - heads
    if issubclass(cls, nnUNetTrainerConvLoRA):  # as QPGA
        return "ConvLoRA", set(convolutions) - heads
    if cls.__name__ == "nnUNetTrainer_Paper":  # classical
        return None, set()
    if getattr(cls, "quantum_block", None) is not None:  # circuits in the data path, no QPG layer (checked below)
        return None, set()
    raise AssertionError(f"{cls.__name__}: no expected placement in this test; add it")


def assert_shipped_trainers_place_qpg(plans_file: Path, dataset_json_file: Path, configurations: list[str],
                                      architecture: str) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_qpg.layers import GeneratedKernelConv, is_convolution
    from nnunet_qpg.surgery import module_names

    plans_manager = PlansManager(str(plans_file))
    dataset_json = json.loads(dataset_json_file.read_text())
    heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    trainers = shipped_trainers()
    assert len(trainers) >= 15, sorted(trainers)
    for configuration in configurations:
        manager = plans_manager.get_configuration(configuration)
        channels = determine_num_input_channels(plans_manager, manager, dataset_json)
        plain = nnUNetTrainer.build_network_architecture(plans_manager, manager, channels, heads, True)
        assert type(plain).__name__ == architecture
        by_id = {id(m): m for _, m in plain.named_modules(remove_duplicate=False)}
        convolutions = [names[0] for key, names in module_names(plain).items() if is_convolution(by_id[key])]
        for name, cls in sorted(trainers.items()):
            layer_type, expected = expected_placement(cls, convolutions)
            network = cls.build_network_architecture(plans_manager, manager, channels, heads, True)
            names = module_names(network)
            swapped = {names[id(module)][0]: type(module).__name__ for module in network.modules()
                       if isinstance(module, GeneratedKernelConv)}
            assert set(swapped) == expected, (configuration, name, sorted(set(swapped) ^ expected)[:6])
            assert set(swapped.values()) <= {layer_type}, (configuration, name, set(swapped.values()))
            blocks = [names[id(module)][0] for module in network.modules()
                      if type(module).__name__ == "QuantumBottleneck"]
            last_stage = f"encoder.stages.{len(plain.encoder.stages) - 1}."
            wanted = 1 if getattr(cls, "quantum_block", None) is not None else 0
            assert len(blocks) == wanted and all(b.startswith(last_stage) for b in blocks), (configuration, name,
                                                                                              blocks)


# -- Dataset911: ResEnc M, 3d_fullres ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cascade_run(tmp_path_factory):
    """Dataset912's whole chain (make, plan, 3d_lowres, 3d_cascade_fullres, both predictions), in a thread."""
    planned = Planned(tmp_path_factory.mktemp("nnunet_qpg_cascade"), CASCADE_ID, CASCADE_DATASET, "nnUNetPlans")

    def chain() -> dict:
        make_tiny_3d_dataset(planned.root / "raw", CASCADE_ID, CASCADE_CASES, CASCADE_SHAPE, SPACING,
                             name="TinyKidneyRegions", regions=True, seed=1)
        plans = planned.plan("-c", "3d_fullres", "3d_lowres", "-gpu_memory_target", "0.01")
        assert "3d_lowres" in plans["configurations"], "nnU-Net planned no 3d_lowres for this dataset"
        # the lowres stage on fold "all": its validation writes the next stage's input for every case
        planned.train(QPG, "3d_lowres", "all")
        planned.train(QPG, "3d_cascade_fullres", "all", validate=False)  # the prediction below runs it
        low = planned.predict(QPG, "3d_lowres", planned.root / "pred_lowres", fold="all")
        full = planned.predict(QPG, "3d_cascade_fullres", planned.root / "pred_cascade", "-prev_stage_predictions",
                               str(planned.root / "pred_lowres"), fold="all")
        return {"plans": plans, "lowres": low, "cascade": full}

    run = Background(chain)
    yield planned, run
    run.wait()  # never leave its nnU-Net processes running after the module


@pytest.fixture(scope="module")
def resenc(tmp_path_factory, request) -> Planned:
    if any(getattr(item, "originalname", "") == "test_region_based_cascade_trains_and_predicts"
           for item in request.session.items):
        request.getfixturevalue("cascade_run")  # starts dataset 912's chain now, beside this one
    planned = Planned(tmp_path_factory.mktemp("nnunet_qpg_3d"), RESENC_ID, RESENC_DATASET, RESENC_PLANS)
    make_tiny_3d_dataset(planned.root / "raw", RESENC_ID, RESENC_CASES, RESENC_SHAPE, SPACING,
                         name="TinyKidney3D")
    plans = planned.plan("-pl", "nnUNetPlannerResEncM", "-c", "3d_fullres")
    fullres = plans["configurations"]["3d_fullres"]
    assert fullres["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    assert fullres["architecture"]["arch_kwargs"]["kernel_sizes"][0] == [1, 3, 3]
    assert fullres["patch_size"] == list(RESENC_SHAPE)
    return planned


@pytest.fixture(scope="module")
def baseline_and_qpg(resenc: Planned) -> dict:
    """The classical baseline (only its weights are used: no validation) and QPG (--npz: validation
    probabilities for find_best_configuration), trained side by side in 3d_fullres, fold 0."""
    _, qpg = run_commands([resenc.train_command(BASELINE, "3d_fullres", validate=False),
                           resenc.train_command(QPG, "3d_fullres", "0", "--npz")])
    return {"baseline": resenc.model_dir(BASELINE, "3d_fullres") / "fold_0" / "checkpoint_final.pth",
            "qpg_stdout": qpg.stdout}


@pytest.fixture(scope="module")
def adapters(resenc: Planned, baseline_and_qpg: dict) -> Path:
    """QPGA (--npz, for the ensembles) and ConvLoRA fine-tuned side by side from the baseline's weights."""
    pretrained = ("-pretrained_weights", str(baseline_and_qpg["baseline"]))
    run_commands([resenc.train_command(QPGA, "3d_fullres", "0", "--npz", *pretrained),
                  resenc.train_command(CONVLORA, "3d_fullres", "0", *pretrained, validate=False)])
    return baseline_and_qpg["baseline"]


def test_every_shipped_trainer_places_qpg_on_resenc(resenc: Planned) -> None:
    # the plans hold 2d as well (only 3d_fullres is preprocessed): both ResidualEncoderUNets
    assert_shipped_trainers_place_qpg(resenc.plans_file, resenc.raw / "dataset.json", ["2d", "3d_fullres"],
                                      "ResidualEncoderUNet")


def test_qpg_trains_in_3d_fullres_on_resenc(resenc: Planned, baseline_and_qpg: dict) -> None:
    assert "decoder.seg_layers.1  QPGConv" in baseline_and_qpg["qpg_stdout"]  # the parameter table
    fold = resenc.model_dir(QPG, "3d_fullres") / "fold_0"
    checkpoint = load_checkpoint(fold / "checkpoint_final.pth")
    weights = checkpoint["network_weights"]
    heads = {"decoder.seg_layers.0", "decoder.seg_layers.1"}  # 3 stages: 2 deep-supervision heads
    assert swapped_layers(weights, "theta") == heads
    assert "decoder.seg_layers.1.weight" not in weights  # the kernel is generated, not stored
    assert checkpoint["trainer_name"] == QPG and checkpoint["current_epoch"] == 1
    assert (fold / "qpg_settings.json").is_file()
    # nnU-Net's validation ran the QPG network over whole volumes and kept the probabilities (--npz)
    validation = sorted(fold.joinpath("validation").glob("case_*.npz"))
    assert len(validation) == 2  # fold 0 of 6 cases
    for path in validation:
        assert np.load(path)["probabilities"].shape == (3, *RESENC_SHAPE)
        assert_on_grid_of(path.with_suffix("").with_suffix(".nii.gz"),
                          resenc.raw / "imagesTr" / path.name.replace(".npz", "_0000.nii.gz"))


@pytest.mark.parametrize("trainer, layer_type, added", [
    (QPGA, "QPGAConv", "theta"),
    (CONVLORA, "ConvLoRA", "lora_A"),
])
def test_adapters_fine_tune_a_resenc_baseline_in_3d_fullres(resenc: Planned, adapters: Path, trainer: str,
                                                            layer_type: str, added: str) -> None:
    fold = resenc.model_dir(trainer, "3d_fullres") / "fold_0"
    baseline = load_checkpoint(adapters)["network_weights"]
    weights = load_checkpoint(fold / "checkpoint_final.pth")["network_weights"]

    # ResidualEncoderUNet's names: stem, residual blocks (conv1 / conv2, the 1x1 skip projection), decoder
    expected = {name.removesuffix(".weight") for name in baseline
                if name.endswith(".weight") and baseline[name].dim() == 5 and ".all_modules." not in name
                and not name.startswith(("decoder.encoder.", "decoder.seg_layers."))}
    assert swapped_layers(weights, added) == expected
    for name in ("encoder.stem.convs.0.conv", "encoder.stages.0.blocks.0.conv1.conv",
                 "encoder.stages.1.blocks.0.conv2.conv", "encoder.stages.1.blocks.0.skip.1.conv",
                 "decoder.stages.0.convs.0.conv", "decoder.transpconvs.1"):
        assert name in expected, name
    for name in expected:
        # the adapters wrap the pretrained kernels, which stayed frozen through training
        assert torch.equal(weights[f"{name}.weight"], baseline[f"{name}.weight"]), name
    assert baseline["encoder.stem.convs.0.conv.weight"].shape[2:] == (1, 3, 3)
    assert not any(k.startswith("decoder.seg_layers.") and k.endswith(added) for k in weights)

    saved = json.loads((fold / "qpg_settings.json").read_text())
    layers = {layer["name"]: layer for layer in saved["qpg"]["layers"]}
    assert set(layers) == expected and {layer["layer_type"] for layer in layers.values()} == {layer_type}
    assert layers["encoder.stem.convs.0.conv"]["kernel_size"] == [1, 3, 3]
    if layer_type == "ConvLoRA":  # the anisotropic stem: loralib's factorisation folded on its largest side
        assert layers["encoder.stem.convs.0.conv"]["lora_factorisation"] == "largest side (k=3 of 1x3x3)"
        assert layers["encoder.stages.1.blocks.0.conv2.conv"]["lora_factorisation"] == "loralib (k=3)"
    assert saved["qpg"]["trainable_after"] < 0.25 * saved["qpg"]["trainable_before"]


def test_export_gives_stock_nnunet_the_same_masks(resenc: Planned, adapters: Path) -> None:
    out = resenc.root / "exported"
    predicted = resenc.root / "pred_qpga"
    run_commands([resenc.predict_command(QPGA, "3d_fullres", predicted),
                  (["nnunet-qpg", "export", str(resenc.model_dir(QPGA, "3d_fullres")), str(out), "-f", "0",
                    "-chk", "checkpoint_final.pth"], resenc.env)])
    qpga_masks = sorted(predicted.glob("case_*.nii.gz"))
    assert_masks_match_inputs(qpga_masks, resenc.inputs)

    exported = out / RESENC_DATASET / f"{QPGA}_baked__{RESENC_PLANS}__3d_fullres"
    checkpoint = load_checkpoint(exported / "fold_0" / "checkpoint_final.pth")
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    assert not any(k.endswith((".theta", ".lora_A")) or ".post." in k for k in checkpoint["network_weights"])
    assert checkpoint["network_weights"]["encoder.stem.convs.0.conv.weight"].shape[2:] == (1, 3, 3)

    # stock nnU-Net: no nnUNet_extTrainer, the exported folder as nnUNet_results
    stock_env = {key: value for key, value in resenc.env.items() if key != "nnUNet_extTrainer"}
    stock_env["nnUNet_results"] = str(out)
    stock = resenc.predict(f"{QPGA}_baked", "3d_fullres", resenc.root / "pred_stock", env=stock_env)
    assert [p.name for p in stock] == [p.name for p in qpga_masks]
    for path in stock:
        assert_on_grid_of(path, resenc.inputs / path.name.replace(".nii.gz", "_0000.nii.gz"))
        assert np.array_equal(read_mask(path), read_mask(predicted / path.name)), path.name


def test_find_best_configuration_and_ensemble_over_two_qpg_models(resenc: Planned, adapters: Path) -> None:
    # the two models' validation predictions with probabilities (--npz), as prediction folders (which
    # nnUNetv2_predict --save_probabilities writes with dataset.json and plans.json)
    folders = []
    for trainer in (QPG, QPGA):
        model = resenc.model_dir(trainer, "3d_fullres")
        folder = resenc.root / "validation_predictions" / trainer
        shutil.copytree(model / "fold_0" / "validation", folder)
        for name in ("dataset.json", "plans.json"):
            shutil.copyfile(model / name, folder / name)
        folders.append(folder)
    output = resenc.root / "ensemble"
    run_commands([
        (["nnUNetv2_find_best_configuration", str(RESENC_ID), "-c", "3d_fullres", "-tr", QPG, QPGA,
          "-p", RESENC_PLANS, "-f", "0", "-np", "1"], resenc.env),
        (["nnUNetv2_ensemble", "-i", *map(str, folders), "-o", str(output), "-np", "1"], resenc.env),
    ])
    instructions = (resenc.results / "inference_instructions.txt").read_text()
    information = json.loads((resenc.results / "inference_information.json").read_text())
    # whichever wins (QPG, QPGA or their ensemble; the tiny trainings are not seeded), the instructions name it
    selected = [model["trainer"] for model in information["best_model_or_ensemble"]["selected_model_or_models"]]
    assert selected and set(selected) <= {QPG, QPGA}, selected
    assert "nnUNetv2_predict" in instructions and all(trainer in instructions for trainer in selected)
    ensembles = [key for key in information["all_results"] if key.startswith("ensemble___")]
    assert len(ensembles) == 1 and QPG in ensembles[0] and QPGA in ensembles[0], list(information["all_results"])
    assert (resenc.results / "ensembles" / ensembles[0] / "summary.json").is_file()

    # nnUNetv2_ensemble on the two models' validation probabilities (--npz): their average, then the argmax
    masks = sorted(output.glob("case_*.nii.gz"))
    assert [p.name for p in masks] == sorted(p.name for p in folders[0].glob("case_*.nii.gz"))
    assert len(masks) == 2
    for path in masks:
        stem = path.name.removesuffix(".nii.gz")
        probabilities = [np.load(folder / f"{stem}.npz")["probabilities"] for folder in folders]
        assert not np.array_equal(*probabilities)  # two different models
        assert_on_grid_of(path, resenc.raw / "imagesTr" / f"{stem}_0000.nii.gz")
        assert np.array_equal(read_mask(path), ((probabilities[0] + probabilities[1]) / 2).argmax(0)), stem


# -- Dataset912: region-based, default planner, 3d_lowres -> 3d_cascade_fullres ----------------------------------

def test_region_based_cascade_trains_and_predicts(cascade_run: tuple[Planned, Background]) -> None:
    planned, run = cascade_run
    outcome = run.result()
    configurations = outcome["plans"]["configurations"]
    assert configurations["3d_lowres"]["next_stage"] == "3d_cascade_fullres"
    assert configurations["3d_cascade_fullres"]["previous_stage"] == "3d_lowres"
    assert configurations["3d_lowres"]["spacing"][1] > configurations["3d_fullres"]["spacing"][1]
    for name in ("3d_lowres", "3d_fullres"):
        assert len(configurations[name]["architecture"]["arch_kwargs"]["kernel_sizes"]) >= 3
        assert configurations[name]["architecture"]["arch_kwargs"]["kernel_sizes"][0] == [1, 3, 3]

    lowres = planned.model_dir(QPG, "3d_lowres")
    next_stage = sorted(p.name for p in (lowres / "predicted_next_stage" / "3d_cascade_fullres").iterdir())
    assert len([n for n in next_stage if n.startswith("case_")]) >= CASCADE_CASES, next_stage

    weights = load_checkpoint(planned.model_dir(QPG, "3d_cascade_fullres") / "fold_all" / "checkpoint_final.pth")[
        "network_weights"]
    assert swapped_layers(weights, "theta") == {"decoder.seg_layers.0", "decoder.seg_layers.1"}
    # input: the image plus the previous stage's one-hot foreground labels (1 and 2)
    assert weights["encoder.stages.0.0.convs.0.conv.weight"].shape[1] == 3
    # region-based: one sigmoid output per region (kidney, tumor), no background channel
    assert weights["decoder.seg_layers.1.bias"].shape == (2,)

    assert_masks_match_inputs(outcome["lowres"], planned.inputs)
    assert_masks_match_inputs(outcome["cascade"], planned.inputs)

    assert_shipped_trainers_place_qpg(planned.plans_file, planned.raw / "dataset.json",
                                      ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"], "PlainConvUNet")
