"""The shared mechanisms every command uses: the atomic writer, the output-location rule, the checkpoint loader and
the image reader (items 7, 8, 9 and 13 at their root)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from snapshots import assert_unchanged, snapshot

from nnunet_qpg.imaging import nifti_check
from nnunet_qpg.imaging.reading import UnreadableImageError, read_image
from nnunet_qpg.safe_io import (
    UnsafeCheckpointError,
    UnsafeOutputError,
    check_output_location,
    load_checkpoint,
    make_output_folder,
    missing_folders,
    remove_empty_folders,
    replace_folder,
    staging_folder,
    write_image_atomically,
    write_json_atomically,
    write_text_atomically,
)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the caller's."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda value: os.umask(value)
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path, umask, mask, mode):
    umask(mask)
    write_json_atomically(tmp_path / "a.json", {"x": 1})
    write_image_atomically(sitk.Image(4, 4, sitk.sitkUInt8), tmp_path / "m.nii.gz")
    for name in ("a.json", "m.nii.gz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "m.nii.gz"], "a temporary file was left"


def test_a_link_at_the_final_component_is_never_written_through(tmp_path):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"precious": true}')
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "plans.json").symlink_to(elsewhere)
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        write_text_atomically(tmp_path / "out" / "plans.json", "{}")
    assert elsewhere.read_text() == '{"precious": true}'
    # a linked PARENT folder is fine (a symlinked $nnUNet_raw)
    (tmp_path / "raw").symlink_to(tmp_path / "out", target_is_directory=True)
    write_text_atomically(tmp_path / "raw" / "new.txt", "ok")
    assert (tmp_path / "out" / "new.txt").read_text() == "ok"


def test_nan_is_refused_instead_of_written_as_invalid_json(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomically(tmp_path / "e.json", {"dice": float("nan")})
    assert not list(tmp_path.iterdir())


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "image.nii.gz"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_image_atomically("not an image", target)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["image.nii.gz"]


@pytest.mark.parametrize("output, input_, fragment", [
    ("data", "data", "is the input itself"),
    ("data/masks", "data", "lies inside the input folder"),
    ("data", "data/ct.nii.gz", "holds the input"),
    ("data/ct.nii.gz", "data/ct.nii.gz", "is the input itself"),
])
def test_outputs_that_are_or_hold_or_sit_in_inputs_are_refused(tmp_path, output, input_, fragment):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ct.nii.gz").write_bytes(b"ct")
    with pytest.raises(UnsafeOutputError, match=fragment):
        check_output_location(tmp_path / output, inputs=[tmp_path / input_])
    check_output_location(tmp_path / "elsewhere", inputs=[tmp_path / input_])


def test_outputs_inside_a_model_folder_or_reached_through_a_link_are_refused(tmp_path):
    model = tmp_path / "results" / "Dataset701_X" / "nnUNetTrainerQPG__nnUNetPlans__2d"
    model.mkdir(parents=True)
    with pytest.raises(UnsafeOutputError, match="inside the model folder"):
        check_output_location(model / "fold_0", models=[model])
    (tmp_path / "alias").symlink_to(model, target_is_directory=True)
    with pytest.raises(UnsafeOutputError, match="model folder itself"):
        check_output_location(tmp_path / "alias", models=[model])
    with pytest.raises(UnsafeOutputError, match="holds the model folder"):
        check_output_location(tmp_path / "results", models=[model])


def test_unwritable_or_file_outputs_are_named_before_any_work(tmp_path, read_only_folder):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnsafeOutputError, match="is a file"):
        make_output_folder(tmp_path / "file", "-o")
    with pytest.raises(UnsafeOutputError, match="cannot write into -o"):
        make_output_folder(read_only_folder, "-o")
    with pytest.raises(UnsafeOutputError, match="cannot write into -o"):
        make_output_folder(read_only_folder / "masks", "-o")


def test_a_failed_run_takes_back_exactly_the_empty_folders_it_created(tmp_path):
    (tmp_path / "existing").mkdir()
    target = tmp_path / "existing" / "a" / "b" / "c"
    created = missing_folders(target)
    assert created == [target, target.parent, target.parent.parent]
    target.mkdir(parents=True)
    (target.parent / "kept.txt").write_text("written by someone")
    remove_empty_folders(created)
    assert not target.exists() and (target.parent / "kept.txt").is_file() and (tmp_path / "existing").is_dir()
    assert missing_folders(tmp_path / "existing") == []


def test_a_folder_is_replaced_whole_and_staging_never_stays(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "fold_1").mkdir()
    (target / "fold_1" / "stale.pth").write_text("old")
    with staging_folder(target) as staged:
        (staged / "fold_0").mkdir()
        (staged / "fold_0" / "new.pth").write_text("new")
        replace_folder(staged, target)
    assert snapshot(target).keys() == {"fold_0", "fold_0/new.pth"}
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


# -- checkpoints --------------------------------------------------------------------------------------------------

class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _nnunet_like_checkpoint() -> dict:
    return {
        "network_weights": {"conv.weight": torch.zeros(2, 1, 3, 3)},
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5)], "dice_per_class_or_region": [[np.float32(0.4)]],
                    "lrs": [0.01], "epoch_start_timestamps": [1.0]},
        "_best_ema": np.float64(0.5),
        "current_epoch": 1,
        "init_args": {"plans": {"a": 1}, "configuration": "2d", "fold": 0, "dataset_json": {},
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainerQPG",
        "inference_allowed_mirroring_axes": (0, 1),
    }


def test_nnunet_checkpoints_load_as_data(tmp_path):
    torch.save(_nnunet_like_checkpoint(), tmp_path / "checkpoint_final.pth")
    loaded = load_checkpoint(tmp_path / "checkpoint_final.pth")
    assert loaded["trainer_name"] == "nnUNetTrainerQPG" and float(loaded["_best_ema"]) == 0.5
    assert loaded["init_args"]["device"] == torch.device("cpu")


def test_a_checkpoint_that_runs_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({**_nnunet_like_checkpoint(), "logging": _RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match="could run code") as error:
        load_checkpoint(tmp_path / "evil.pth")
    assert "system" in str(error.value)
    assert not marker.exists()


def test_truncated_or_foreign_checkpoints_are_named(tmp_path):
    torch.save(_nnunet_like_checkpoint(), tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:300])
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(UnsafeCheckpointError, match="cut.pth cannot be read"):
        load_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(UnsafeCheckpointError, match="not an nnU-Net checkpoint"):
        load_checkpoint(tmp_path / "other.pth")
    with pytest.raises(UnsafeCheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 12)  # neither a zip nor a pickle
    (tmp_path / "text.pth").write_text("hello world")
    for name in ("noise.pth", "text.pth"):
        with pytest.raises(UnsafeCheckpointError, match=f"{name} cannot be read as a PyTorch checkpoint") as error:
            load_checkpoint(tmp_path / name)
        assert "pickled object" not in str(error.value)


# -- the image reader ---------------------------------------------------------------------------------------------

def _write(array: np.ndarray, path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
def test_truncated_nifti_is_refused_compressed_or_not(tmp_path, name):
    full = _write(np.arange(4000, dtype=np.int16).reshape(10, 20, 20), tmp_path / name)
    assert read_image(full).GetSize() == (20, 20, 10)
    data = full.read_bytes()
    if name.endswith(".gz"):
        data = gzip.compress(gzip.decompress(data)[:-500])  # a complete gzip of an incomplete NIfTI
        full.write_bytes(data)
    else:
        full.write_bytes(data[:-500])
    with pytest.raises(UnreadableImageError, match="truncated"):
        read_image(full)


def test_itk_reads_nan_as_zero_so_the_reader_looks_at_the_raw_voxels(tmp_path):
    volume = np.linspace(-100, 100, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    volume[0, 0, 0], volume[1, 2, 3], volume[0, 1, 1] = np.nan, np.inf, -np.inf
    path = _write(volume, tmp_path / "ct.nii.gz")
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0, 0, 0] == 0  # what ITK alone would give
    with pytest.raises(UnreadableImageError, match="3 voxel.s. are NaN or infinite.*--non-finite replace"):
        read_image(path)
    fixed = sitk.GetArrayFromImage(read_image(path, non_finite="replace"))
    finite = volume[np.isfinite(volume)]
    assert fixed[0, 0, 0] == fixed[0, 1, 1] == finite.min() and fixed[1, 2, 3] == finite.max()
    assert np.array_equal(fixed[np.isfinite(volume)], finite)


def test_the_non_finite_count_is_streamed_across_chunks(tmp_path, monkeypatch):
    volume = np.zeros((7, 11, 13), dtype=np.float64)
    volume.flat[[0, 500, 1000]] = np.nan
    path = _write(volume, tmp_path / "ct.nii")
    monkeypatch.setattr(nifti_check, "CHUNK_BYTES", 100)  # many chunks, none aligned with the data's end
    assert nifti_check.count_non_finite(path) == 3
    assert nifti_check.count_non_finite(_write(volume.astype(np.int16), tmp_path / "int.nii")) == 0


def test_reading_never_changes_the_input(tmp_path):
    _write(np.ones((2, 3, 4), np.float32), tmp_path / "ct.nii.gz")
    before = snapshot(tmp_path)
    read_image(tmp_path / "ct.nii.gz", dimension=3)
    with pytest.raises(UnreadableImageError, match="is 3D; a 2D image is expected"):
        read_image(tmp_path / "ct.nii.gz", dimension=2)
    assert_unchanged(before, snapshot(tmp_path))
