"""`nnunet-qpg export` never writes over its source, another model or a file it was not asked to write (issue
items 1, 2, 4, 7, 8, 13 and 14), with the session's tiny QPG model.

Two exports keep the file fast: one into a copy of the model's results folder (OUT = the results folder itself,
beside a user's own `nnUNetTrainer__nnUNetPlans__2d` model, under umask 002) for the tests that look at an
export, and one re-export into a copy of it, with a stale fold and planted links, for items 4 and 8. No test
changes files another test looks at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from inference_model import DATASET, TINY_TRAINER, nnunet_qpg_command, shared_root, trained_qpg_model
from snapshots import assert_unchanged, snapshot

from nnunet_qpg.safe_io import load_checkpoint

pytestmark = pytest.mark.slow

SOURCE = f"{TINY_TRAINER}__nnUNetPlans__2d"
EXPORTED = f"{TINY_TRAINER}_baked__nnUNetPlans__2d"
USER_MODEL = "nnUNetTrainer__nnUNetPlans__2d"  # a classical baseline the user trained themselves


def export(env: dict[str, str], *args: str | Path, umask: int | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `nnunet-qpg export ARGS` (optionally under another umask) and return the finished process."""
    return subprocess.run([nnunet_qpg_command(), "export", *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def assert_refused(done: subprocess.CompletedProcess, *phrases: str) -> None:
    """Exit 2 with one message (no traceback) that holds each phrase."""
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for phrase in phrases:
        assert phrase in done.stderr, f"{phrase!r} not in: {done.stderr[-3000:]}"


def checkpoint_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.glob("fold_*/*.pth"))


@dataclass
class Exported:
    env: dict[str, str]
    results: Path  # a results folder: the source model, the user's own model, and the export beside them
    source: Path
    user_model: Path
    exported: Path
    before: dict  # snapshot of `results` before the export
    done: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    model = trained_qpg_model(shared_root(tmp_path_factory))
    results = tmp_path_factory.mktemp("export_safety") / "results"
    source = results / DATASET / SOURCE
    shutil.copytree(model.model_folder, source)
    shutil.copytree(source / "fold_0", source / "fold_1")  # two folds, so stale folds can show
    user_model = results / DATASET / USER_MODEL
    for name, content in {"plans.json": "{}", "fold_0/checkpoint_final.pth": "user weights",
                          "fold_0/progress.png": "user png", "fold_0/validation/summary.json": "{}"}.items():
        (user_model / name).parent.mkdir(parents=True, exist_ok=True)
        (user_model / name).write_text(content)
    before = snapshot(results)
    done = export(model.env, source, results, umask=0o002)
    assert done.returncode == 0, done.stderr[-3000:]
    return Exported(model.env, results, source, user_model, results / DATASET / EXPORTED, before, done)


def test_item1_chk_path_never_writes_over_the_source(exported, tmp_path):
    source = exported.source
    before = snapshot(source)
    out = tmp_path / "out"
    absolute = source / "fold_0" / "checkpoint_final.pth"
    relative = os.path.relpath(absolute, tmp_path)
    for given in (absolute, relative):
        done = export(exported.env, source, out, "-chk", given, cwd=tmp_path)
        assert_refused(done, "not a checkpoint file name", "-chk checkpoint_final.pth -f 0")
    assert_unchanged(before, snapshot(source), "source model")
    assert not out.exists()
    original = load_checkpoint(absolute)
    assert original["trainer_name"] == TINY_TRAINER and "optimizer_state" in original
    assert any("theta" in key for key in original["network_weights"])


def test_item2_export_into_results_lands_beside_the_source_in_its_own_folder(exported):
    after = snapshot(exported.results)
    new = [key for key in after if key not in exported.before]
    assert all(key.startswith(f"{DATASET}/{EXPORTED}") for key in new), new
    assert_unchanged(exported.before, {k: after[k] for k in exported.before if k in after},
                     "source model and the user's own nnUNetTrainer model")
    assert exported.exported.parent == exported.source.parent
    assert checkpoint_files(exported.exported) == ["fold_0/checkpoint_best.pth", "fold_0/checkpoint_final.pth",
                                                   "fold_1/checkpoint_best.pth", "fold_1/checkpoint_final.pth"]
    checkpoint = torch.load(exported.exported / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainer"  # all stock nnU-Net needs, besides the folder name
    manifest = json.loads((exported.exported / "nnunet_qpg_export.json").read_text())
    assert manifest["source"] == str(exported.source.resolve()) and manifest["source_trainer"] == TINY_TRAINER
    assert f"-tr {TINY_TRAINER}_baked " in exported.done.stdout

    # the user's model folder as OUT (or a folder inside it): refused, untouched
    for out in (exported.user_model, exported.user_model / "fold_0" / "exported"):
        before = snapshot(exported.user_model)
        assert_refused(export(exported.env, exported.source, out), str(exported.user_model), "Choose a separate OUT")
        assert_unchanged(before, snapshot(exported.user_model), "the user's own model")


@dataclass
class Reexported:
    out: Path
    target: Path
    neighbour: Path  # another model's export in the same OUT
    victims: dict[Path, bytes]  # files elsewhere that links planted in the earlier export point to
    done: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def reexported(exported, tmp_path_factory) -> Reexported:
    """An earlier export of the source (folds 0 and 1) with a stale file and planted links, then re-exported
    with `-f 1 -chk checkpoint_final.pth` (one re-export serves items 4 and 8)."""
    out = tmp_path_factory.mktemp("reexport") / "out"
    target = out / DATASET / EXPORTED
    shutil.copytree(exported.exported, target)
    (target / "fold_0" / "stale.txt").write_text("from the earlier export")
    neighbour = out / DATASET / "nnUNetTrainerQPGA_baked__nnUNetPlans__2d" / "fold_0" / "checkpoint_final.pth"
    neighbour.parent.mkdir(parents=True)
    neighbour.write_text("another model's export")
    victims = {}
    for name in ("plans.json", "fold_1/checkpoint_final.pth"):
        victim = out.parent / f"victim_{Path(name).name}"
        victim.write_text(f"the user's {victim.name}, not ours")
        (target / name).unlink()
        (target / name).symlink_to(victim)
        victims[victim] = victim.read_bytes()
    done = export(exported.env, exported.source, out, "-f", "1", "-chk", "checkpoint_final.pth")
    assert done.returncode == 0, done.stderr[-3000:]
    return Reexported(out, target, neighbour, victims, done)


def test_item4_reexport_replaces_the_earlier_export_whole_and_refuses_foreign_folders(exported, reexported, tmp_path):
    target = reexported.target
    assert "replaced its earlier export" in reexported.done.stdout
    assert checkpoint_files(target) == ["fold_1/checkpoint_final.pth"]  # no stale fold_0, no stale best checkpoint
    assert not (target / "fold_0").exists()
    assert json.loads((target / "nnunet_qpg_export.json").read_text())["folds"] == ["fold_1"]
    assert reexported.neighbour.read_text() == "another model's export"  # OUT's other exports are left alone
    assert sorted(p.name for p in (reexported.out / DATASET).iterdir()) == sorted(
        [EXPORTED, reexported.neighbour.parent.parent.name])  # no staging folder left

    # a folder under the export's name that is not an export of this source: refused, untouched
    for manifest in (None, {"source": "/elsewhere/Dataset701_X/nnUNetTrainerQPG__nnUNetPlans__2d"}):
        foreign_out = tmp_path / f"foreign_{manifest is None}"
        foreign = foreign_out / DATASET / EXPORTED
        (foreign / "fold_0").mkdir(parents=True)
        (foreign / "fold_0" / "checkpoint_final.pth").write_text("somebody's model")
        if manifest:
            (foreign / "nnunet_qpg_export.json").write_text(json.dumps(manifest))
        before = snapshot(foreign_out)
        assert_refused(export(exported.env, exported.source, foreign_out), str(foreign),
                       "is not an earlier export of")
        assert_unchanged(before, snapshot(foreign_out), "foreign folder")


def test_item7_exported_files_follow_the_umask(exported):
    modes = {key: entry for key, entry in snapshot(exported.exported).items()}
    assert modes and (exported.exported.stat().st_mode & 0o777) == 0o775
    for key, entry in modes.items():
        if entry[0] == "file":
            assert entry[2] == 0o664, (key, oct(entry[2]))  # umask 002: group-writable, never 0600
        else:
            assert (exported.exported / key).stat().st_mode & 0o777 == 0o775, key


def test_item8_reexport_never_writes_through_a_planted_link(exported, reexported):
    for victim, content in reexported.victims.items():
        assert victim.read_bytes() == content, victim
    for name in ("plans.json", "fold_1/checkpoint_final.pth"):
        path = reexported.target / name
        assert not path.is_symlink() and path.is_file(), name
    assert (reexported.target / "plans.json").read_bytes() == (exported.source / "plans.json").read_bytes()
    assert load_checkpoint(reexported.target / "fold_1" / "checkpoint_final.pth")["trainer_name"] == "nnUNetTrainer"


class _MakesMarker:
    """Unpickling this runs `touch MARKER` (what a crafted checkpoint could do with any command)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_item13_crafted_checkpoint_is_refused_and_never_run(exported, tmp_path):
    marker = tmp_path / "MARKER"
    crafted = tmp_path / "results" / DATASET / SOURCE
    (crafted / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(exported.source / name, crafted / name)
    torch.save({"network_weights": {}, "trainer_name": _MakesMarker(marker)}, crafted / "fold_0" /
               "checkpoint_final.pth")
    out = tmp_path / "out"
    out.mkdir()
    done = export(exported.env, crafted, out)
    assert_refused(done, str(crafted / "fold_0" / "checkpoint_final.pth"), "pickled")
    assert not marker.exists()
    assert list(out.iterdir()) == []

    # nnU-Net's real checkpoints (numpy scalars in `logging`, `_best_ema`, torch.device in init_args) load as data,
    # and so do the exported ones, which stock nnU-Net then reads
    for path in (exported.source / "fold_0" / "checkpoint_final.pth",
                 exported.exported / "fold_0" / "checkpoint_final.pth"):
        checkpoint = load_checkpoint(path)
        assert checkpoint["logging"]["mean_fg_dice"] and checkpoint["_best_ema"] is not None
        assert checkpoint["init_args"]["device"] == torch.device("cpu")


def test_item14_output_folder_problems_and_bad_folds_are_messages(exported, tmp_path, read_only_folder):
    before = snapshot(exported.source)
    refused = export(exported.env, exported.source, read_only_folder)
    assert_refused(refused, str(read_only_folder), "choose a folder you can write to")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    assert_refused(export(exported.env, exported.source, a_file), str(a_file), "is a file")
    out = tmp_path / "out"
    assert_refused(export(exported.env, exported.source, out, "-f", "abc"), "-f/--folds",
                   "a fold is a number (0, 1, ...) or 'all'")
    assert_refused(export(exported.env, exported.source, out, "-f", "5"), "-f 5", "folds with a checkpoint: 0, 1")
    assert_refused(export(exported.env, exported.source, exported.source / "fold_0"), "lies inside the model folder")
    assert not out.exists() and a_file.read_text() == "not a folder"
    assert_unchanged(before, snapshot(exported.source), "source model")
