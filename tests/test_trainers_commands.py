"""Fast checks of the trainer files, the trainer base class and the trainers-path / new-trainer commands."""

from __future__ import annotations

import importlib.util
import inspect
import shlex
from pathlib import Path

import pytest
import torch

from nnunet_qpg.cli import main
from nnunet_qpg.nnunet_trainer import ConstantLRScheduler, PaperProtocol, nnUNetTrainerQPGBase

REPO = Path(__file__).resolve().parents[1]
TRAINER_FILES = sorted(p for p in (REPO / "trainers").glob("nnUNetTrainer*.py"))


def _import_as_top_level(path: Path, name: str):
    """Import a trainer file the way nnU-Net does (a top-level module of a folder on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trainer_classes(module) -> list[type]:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, nnUNetTrainer) and c.__module__ == module.__name__]


@pytest.mark.parametrize("path", TRAINER_FILES, ids=lambda p: p.stem)
def test_trainer_files_stand_alone(path: Path) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    module = _import_as_top_level(path, f"copied_{path.stem}")  # as if copied into nnunetv2's variants/
    classes = _trainer_classes(module)
    assert path.stem in {c.__name__ for c in classes}, "the file is named after its main class"
    for trainer in classes:
        assert issubclass(trainer, nnUNetTrainer)
        if issubclass(trainer, nnUNetTrainerQPGBase):
            trainer.check_qpg_settings()
        # nnU-Net and its predictor tell the new signature by this parameter name
        assert "plans_manager" in inspect.signature(trainer.build_network_architecture).parameters
        assert trainer.__doc__


def test_nnunet_finds_the_shipped_trainers(monkeypatch) -> None:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", str(REPO / "trainers"))
    for name in ("nnUNetTrainerQPG", "nnUNetTrainerQPG_SST", "nnUNetTrainerQPGDecoder", "nnUNetTrainerQPGA",
                 "nnUNetTrainerConvLoRA", "nnUNetTrainerQPG_Paper", "nnUNetTrainer_Paper", "nnUNetTrainerQPG_Shots",
                 "nnUNetTrainerQPG_Noisy", "nnUNetTrainerQPG_NoEntanglement"):
        assert recursive_find_trainer_class_by_name(name).__name__ == name


def test_paper_protocol_and_placements() -> None:
    qpg = _import_as_top_level(REPO / "trainers" / "nnUNetTrainerQPG.py", "t_qpg")
    qpga = _import_as_top_level(REPO / "trainers" / "nnUNetTrainerQPGA.py", "t_qpga")
    lora = _import_as_top_level(REPO / "trainers" / "nnUNetTrainerConvLoRA.py", "t_lora")
    classical = _import_as_top_level(REPO / "trainers" / "nnUNetTrainer_Paper.py", "t_paper").nnUNetTrainer_Paper
    paper = qpg.nnUNetTrainerQPG_Paper
    config = qpg.nnUNetTrainerQPG.qpg_config
    assert issubclass(paper, PaperProtocol) and paper.resolved_qpg_config() == config
    for protocol in (paper, classical):
        assert (protocol.schedule_optimizer, protocol.schedule_initial_lr, protocol.schedule_weight_decay,
                protocol.schedule_epochs) == ("adam_constant", 1e-3, 5e-4, 20)
    # the classical baseline is stock nnU-Net with the paper's optimizer hook, not the QPG base with no targets
    assert issubclass(classical, PaperProtocol) and not issubclass(classical, nnUNetTrainerQPGBase)
    assert not hasattr(qpg.nnUNetTrainerQPG, "schedule_optimizer") and qpg.nnUNetTrainerQPG.schedule_epochs is None
    assert (config.targets, config.mode, config.post, config.blocks) == (("decoder.seg_layers.*",), "replace", "lpp", 1)
    assert [qpg.nnUNetTrainerQPG_RCE.qpg_config.post, qpg.nnUNetTrainerQPG_SST.qpg_config.post] == ["rce", "sst"]
    assert qpg.nnUNetTrainerQPG_FrozenEncoder.resolved_qpg_config().train_only == ("decoder.*",)
    assert qpga.nnUNetTrainerQPGA.qpg_config.targets == lora.nnUNetTrainerConvLoRA.qpg_config.targets
    assert qpga.nnUNetTrainerQPGA.qpg_config.train_only == ("decoder.seg_layers.*",)
    assert lora.nnUNetTrainerConvLoRA.qpg_config.rank == 8 and lora.nnUNetTrainerConvLoRA_r16.qpg_config.rank == 16


def test_the_attribute_form_of_earlier_trainer_files_still_resolves() -> None:
    from nnunet_qpg.config import QPGConfig

    legacy = type("nnUNetTrainerLegacy", (nnUNetTrainerQPGBase,),
                  {"qpg_targets": ("encoder.*",), "qpg_mode": "lora", "qpg_lora_rank": 4, "qpg_train_only": ()})
    assert legacy.resolved_qpg_config() == QPGConfig(targets=("encoder.*",), mode="lora", rank=4, train_only=())
    qpg = _import_as_top_level(REPO / "trainers" / "nnUNetTrainerQPG.py", "t_qpg_legacy")
    # an attribute in a subclass changes one field of the config it inherits
    sst = type("nnUNetTrainerQPGMySST", (qpg.nnUNetTrainerQPG,), {"qpg_post": "sst", "qpg_blocks": 2})
    assert sst.resolved_qpg_config() == qpg.nnUNetTrainerQPG.qpg_config.replace(post="sst", blocks=2)
    # and a qpg_config further down replaces attributes set above it
    mine = type("nnUNetTrainerMine", (sst,), {"qpg_config": QPGConfig(targets=("decoder.*",))})
    assert mine.resolved_qpg_config() == QPGConfig(targets=("decoder.*",))


def test_constant_lr_scheduler_keeps_the_rate() -> None:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = ConstantLRScheduler(optimizer, 1e-3)
    for epoch in range(5):
        scheduler.step(epoch)
        assert optimizer.param_groups[0]["lr"] == 1e-3


def test_bad_settings_name_the_trainer_and_its_file() -> None:
    bad = type("nnUNetTrainerBadMode", (nnUNetTrainerQPGBase,), {"qpg_targets": ("x",), "qpg_mode": "magic"})
    with pytest.raises(ValueError, match="nnUNetTrainerBadMode.*qpg_mode='magic'.*unknown mode 'magic'"):
        bad.check_qpg_settings()
    bad = type("nnUNetTrainerBadPost", (nnUNetTrainerQPGBase,), {"qpg_targets": ("x",), "qpg_post": "fft"})
    with pytest.raises(ValueError, match="qpg_post='fft'.*'rce', 'lpp', 'sst'"):
        bad.check_qpg_settings()
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3))
    bad = type("nnUNetTrainerBadTarget", (nnUNetTrainerQPGBase,), {"qpg_targets": ("decoder.*",)})
    with pytest.raises(ValueError, match=r"(?s)'decoder\.\*' matches no module.*\b0\b.*qpg_targets"):
        bad.apply_qpg_settings(network)


def test_trainers_path_prints_the_shipped_folder(capsys) -> None:
    assert main(["trainers-path"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "nnUNetTrainerQPG.py").is_file()


def test_new_trainer_writes_an_importable_trainer(tmp_path: Path, capsys) -> None:
    argv = ["new-trainer", "nnUNetTrainerQPGChosen", "--targets", "decoder.stages.0.*", "encoder.stages.3.*",
            "--mode", "adapter", "--post", "sst", "--blocks", "2", "--paper-schedule", "-o", str(tmp_path)]
    assert main(argv) == 0
    path = tmp_path / "nnUNetTrainerQPGChosen.py"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    module = _import_as_top_level(path, "chosen")
    trainer = module.nnUNetTrainerQPGChosen
    # the command that wrote it, recorded as a string (never in a docstring or comment)
    assert shlex.split(module.CREATED_WITH) == ["nnunet-qpg", *argv]
    config = trainer.resolved_qpg_config()
    assert config.targets == ("decoder.stages.0.*", "encoder.stages.3.*")
    assert (config.mode, config.post, config.blocks) == ("adapter", "sst", 2)
    assert config.train_only == ("decoder.seg_layers.*",)  # adapters: heads trained, the rest frozen
    assert issubclass(trainer, PaperProtocol)

    assert main(argv) == 1  # exists: refuses without --force
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    assert main(["new-trainer", "9lives", "--targets", "x", "-o", str(tmp_path)]) == 2
    assert main(["new-trainer", "nnUNetTrainerQPG", "--targets", "x", "-o", str(tmp_path)]) == 2
    assert "already a shipped trainer" in capsys.readouterr().err
    assert main(["new-trainer", "PaperProtocol", "--targets", "x", "-o", str(tmp_path)]) == 2
    assert "a class the trainer file builds on" in capsys.readouterr().err


def test_hardware_trainers_and_their_settings() -> None:
    hardware = _import_as_top_level(REPO / "trainers" / "nnUNetTrainerQPG_Shots.py", "t_hardware")
    shots = hardware.nnUNetTrainerQPG_Shots.resolved_qpg_config()
    assert (shots.post, shots.shots, shots.gradient, shots.noise, shots.entangle) == (
        "lpp", 1000, "parameter-shift", None, True)
    noisy = hardware.nnUNetTrainerQPG_Noisy.resolved_qpg_config()
    assert noisy.noise.readout_error == (0.02, 0.02)
    assert (noisy.noise.one_qubit_depolarizing, noisy.noise.two_qubit_depolarizing) == (0.001, 0.01)
    assert (noisy.shots, noisy.gradient) == (1000, "parameter-shift")
    control = hardware.nnUNetTrainerQPG_NoEntanglement.resolved_qpg_config()
    assert control.entangle is False and control.replace(entangle=True) == hardware.nnUNetTrainerQPG.qpg_config


def test_new_trainer_writes_hardware_settings(tmp_path: Path, capsys) -> None:
    argv = ["new-trainer", "nnUNetTrainerQPGDevice", "--targets", "decoder.seg_layers.*", "--mode", "replace",
            "--post", "sst", "--blocks", "1", "--shots", "500", "--gradient", "parameter-shift", "--readout-error", "0.02", "--depolarizing", "0.001",
            "0.01", "--no-entanglement", "-o", str(tmp_path)]
    assert main(argv) == 0
    module = _import_as_top_level(tmp_path / "nnUNetTrainerQPGDevice.py", "device_trainer")
    assert shlex.split(module.CREATED_WITH) == ["nnunet-qpg", *argv]
    config = module.nnUNetTrainerQPGDevice.resolved_qpg_config()
    assert (config.shots, config.gradient, config.entangle) == (500, "parameter-shift", False)
    assert config.noise.readout_error == (0.02, 0.02) and config.noise.two_qubit_depolarizing == 0.01
    assert main(["new-trainer", "nnUNetTrainerQPGBad", "--targets", "x", "--post", "rce", "--shots", "100",
                 "-o", str(tmp_path)]) == 2
    assert "amplitudes" in capsys.readouterr().err
    assert not (tmp_path / "nnUNetTrainerQPGBad.py").exists()


def test_new_trainer_lora_with_short_schedule(tmp_path: Path) -> None:
    assert main(["new-trainer", "nnUNetTrainerLoRAEnc", "--targets", "encoder.*", "--mode", "lora", "--rank", "4",
                 "--train-only", "--epochs", "3", "--iterations-per-epoch", "10", "-o", str(tmp_path)]) == 0
    trainer = _import_as_top_level(tmp_path / "nnUNetTrainerLoRAEnc.py", "lora_enc").nnUNetTrainerLoRAEnc
    config = trainer.resolved_qpg_config()
    assert (config.mode, config.rank, config.train_only) == ("lora", 4, ())
    assert (trainer.schedule_epochs, trainer.schedule_iterations_per_epoch,
            trainer.schedule_val_iterations_per_epoch) == (3, 10, 2)


def test_our_commands_find_the_shipped_trainers_without_nnunet_exttrainer(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    own = tmp_path / "my_trainers"
    assert main(["new-trainer", "nnUNetTrainerMineFound", "--targets", "decoder.seg_layers.*", "-o", str(own)]) == 0
    data = REPO / "benchmarks" / "data"
    cases = [(None, "nnUNetTrainerQPGA"), (str(own), "nnUNetTrainerMineFound"), (str(own), "nnUNetTrainerConvLoRA")]
    # one fresh process (nothing imported or set by this test session) runs `nnunet-qpg info` for each case
    script = f"""
import contextlib, io, json, os, sys
from nnunet_qpg.cli import main
results = []
for ext_trainer, trainer in {cases!r}:
    os.environ.pop("nnUNet_extTrainer", None)
    if ext_trainer:
        os.environ["nnUNet_extTrainer"] = ext_trainer
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["info", "--plans", {str(data / "plans_2d_256x256.json")!r}, "--dataset-json",
                     {str(data / "dataset_2d_256x256.json")!r}, "-c", "2d", "-tr", trainer])
    results.append([code, out.getvalue(), os.environ["nnUNet_extTrainer"]])
print("RESULTS=" + json.dumps(results))
"""
    env = {key: value for key, value in os.environ.items() if key != "nnUNet_extTrainer"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.split("RESULTS=")[1])
    for (ext_trainer, trainer), (code, out, folders) in zip(cases, results):
        assert code == 0 and f"{trainer} (" in out and "trainable" in out, out
        folders = folders.split(os.pathsep)
        assert Path(folders[-1]).name == "trainers" and (Path(folders[-1]) / "nnUNetTrainerQPG.py").is_file()
        assert folders[:-1] == ([ext_trainer] if ext_trainer else []), "the user's folders stay, first"
