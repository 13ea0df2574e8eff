"""Safe I/O: the one way every nnunet-qpg command writes its outputs and opens checkpoints.

Rules (README, "Data safety"):

- **Whole or nothing.** Every file is written under a temporary name in its own folder and moved into place with
  ``os.replace``, so a crash or Ctrl-C never leaves a half-written file under a final name. Folders of several
  files are built in a staging folder and swapped in (:func:`replace_folder`); staging folders never stay behind.
- **The user's umask.** ``tempfile`` creates files readable by their owner only (0600); every file we write gets
  the mode a plain ``open()`` would give it (0666 minus the umask), so colleagues and containers can read it.
- **No writing through links.** A symbolic link at the final path component of a file we create, replace or
  delete is refused (it would change the link's target, somewhere the user did not name). Linked parent folders,
  such as a symlinked ``$nnUNet_raw``, are fine.
- **Outputs are not inputs.** :func:`check_output_location` refuses an output that is one of the command's
  inputs, holds one, or lies inside an input folder or a source model folder.
- **Checkpoints hold data, not code.** :func:`load_checkpoint` reads with ``torch.load(weights_only=True)`` and
  an allow-list of the types nnU-Net checkpoints hold (tensors, numbers, strings, containers, ``torch.device``,
  numpy scalars and arrays); a checkpoint that needs any other pickled object is refused with a message, never
  executed. :func:`check_checkpoint` runs the same check on a file that nnU-Net's own predictor will then load
  with ``weights_only=False``.

Errors are :class:`UnsafeOutputError` / :class:`UnsafeCheckpointError` (both ``ValueError``), whose messages
name the file and the fix; commands print them and exit non-zero.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = [
    "UnsafeCheckpointError",
    "UnsafeOutputError",
    "atomic_path",
    "check_checkpoint",
    "check_output_location",
    "copy_file_atomically",
    "file_mode",
    "folder_mode",
    "guarded",
    "load_checkpoint",
    "make_output_folder",
    "missing_folders",
    "refuse_link",
    "remove_empty_folders",
    "remove_file",
    "replace_folder",
    "save_torch_atomically",
    "staging_folder",
    "write_image_atomically",
    "write_json_atomically",
    "write_text_atomically",
]

PathLike = str | os.PathLike


class UnsafeOutputError(ValueError):
    """An output the command refuses to write (it is an input, a link, another model's folder ...)."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint that cannot be read as plain data (it needs pickled code, or is not a checkpoint)."""


_umask_lock = threading.Lock()


def _umask() -> int:
    with _umask_lock:  # os.umask can only be read by setting it
        umask = os.umask(0o022)
        os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file under the current umask (0666 & ~umask)."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode ``os.mkdir`` would give a new folder under the current umask (0777 & ~umask)."""
    return 0o777 & ~_umask()


def refuse_link(path: PathLike) -> None:
    """Raise UnsafeOutputError if the final component of ``path`` is a symbolic link."""
    path = Path(path)
    if path.is_symlink():
        raise UnsafeOutputError(
            f"{path} is a symbolic link (to {os.readlink(path)}); nnunet-qpg never writes or deletes through a "
            f"link, since that would change a file you did not name. Remove the link or choose another output."
        )


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path``; on success it is given the umask's mode and moved onto ``path``.

    ``suffix`` keeps an ending writers look at (``.nii.gz``). The parent folder is created. On any exception the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    refuse_link(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, file_mode())
        refuse_link(path)  # a link planted while we wrote
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomically(path: PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json_atomically(path: PathLike, content: Any) -> None:
    """JSON with ``allow_nan=False``: NaN is not JSON, so a NaN in ``content`` is a bug to fix, not to write."""
    text = json.dumps(content, indent=2, allow_nan=False)
    write_text_atomically(path, text + "\n")


def write_image_atomically(image, path: PathLike, compress: bool = True) -> None:
    """Write a SimpleITK image (the temporary name keeps the ending, which selects the file format)."""
    import SimpleITK as sitk

    name = Path(path).name
    ending = ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix
    with atomic_path(path, suffix=ending) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=compress)


def save_torch_atomically(content: Any, path: PathLike) -> None:
    import torch

    with atomic_path(path) as temporary:
        torch.save(content, temporary)


def copy_file_atomically(source: PathLike, target: PathLike) -> None:
    """Copy the bytes of ``source`` to ``target`` (a link at ``target`` is refused, never written through)."""
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)


def remove_file(path: PathLike) -> None:
    """Delete a file we wrote; refuses a link (deleting it would leave its target looking like our output)."""
    path = Path(path)
    refuse_link(path)
    path.unlink(missing_ok=True)


def make_output_folder(folder: PathLike, option: str = "output folder") -> Path:
    """Create ``folder`` (and parents) and check that files can be written there.

    Raises UnsafeOutputError naming the folder when it is a file, cannot be created or is read-only, so a
    command finds out before it loads a model or converts anything.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UnsafeOutputError(f"{option} {folder} is a file, not a folder; give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".nnunet-qpg-write-check.", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UnsafeOutputError(f"cannot write into {option} {folder}: {error.strerror or error}; choose a "
                                f"folder you can write to, or fix its permissions") from None
    return folder


def missing_folders(folder: PathLike) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: what ``mkdir(parents=True)``
    creates, so a run that fails can take back exactly those with :func:`remove_empty_folders`."""
    folder = Path(folder)
    missing = []
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty_folders(folders: Iterable[PathLike]) -> None:
    """Remove those of ``folders`` that are empty, deepest first; a folder that holds anything stays."""
    for folder in sorted(map(Path, folders), key=lambda path: len(path.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_location(output: PathLike, inputs: Iterable[PathLike] = (), models: Iterable[PathLike] = (),
                          option: str = "output") -> None:
    """Refuse an output that would mix with or overwrite what the command reads.

    ``output`` (a file or folder, existing or not) must not be an input, hold an input, lie inside an input
    folder, or lie inside a source model folder. Paths are compared after resolving links, so ``-o`` reached
    through a link to the input is caught too.
    """
    resolved = Path(output).resolve()
    for kind, paths in (("input", inputs), ("model folder", models)):
        for path in paths:
            source = Path(path).resolve()
            if resolved == source:
                problem = f"is the {kind} itself"
            elif kind == "input" and source in resolved.parents and source.is_dir():
                problem = f"lies inside the input folder {path}"
            elif kind == "model folder" and source in resolved.parents:
                problem = f"lies inside the model folder {path}"
            elif resolved in source.parents:
                problem = f"holds the {kind} {path}"
            else:
                continue
            raise UnsafeOutputError(f"{option} {output} {problem}; writing there could overwrite or mix with what "
                                    f"the command reads. Choose a separate {option}.")


@contextlib.contextmanager
def staging_folder(beside: PathLike) -> Iterator[Path]:
    """A fresh hidden folder next to ``beside`` (same file system, so its contents can be moved with a rename);
    removed on exit whatever happens."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{beside.name}.staging-", dir=beside.parent))
    try:
        os.chmod(folder, folder_mode())
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def replace_folder(staged: PathLike, target: PathLike) -> None:
    """Move the finished folder ``staged`` to ``target``, replacing an earlier ``target`` whole.

    The old folder is renamed aside first and deleted only after the new one is in place, so an interruption
    leaves either the old or the new folder under ``target``, never a mixture.
    """
    staged, target = Path(staged), Path(target)
    refuse_link(target)
    if not target.exists():
        os.replace(staged, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, aside / target.name)
    os.replace(staged, target)
    shutil.rmtree(aside, ignore_errors=True)


# -- checkpoints --------------------------------------------------------------------------------------------------

def _allowed_checkpoint_globals() -> list:
    """What an nnU-Net checkpoint holds besides tensors and plain containers: its log and best EMA are numpy
    scalars, and arrays may appear in logged values. All of these rebuild data; none runs code."""
    import numpy as np

    multiarray = getattr(np, "_core", None)
    multiarray = multiarray.multiarray if multiarray is not None else np.core.multiarray
    allowed: list = [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype]
    allowed += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return allowed


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict:
    """A checkpoint's content, read as data only (``weights_only=True`` with nnU-Net's types allowed).

    Raises UnsafeCheckpointError naming the file when it is missing, unreadable, or needs other pickled objects
    (which would run code while loading).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UnsafeCheckpointError(f"{path} does not exist; check the model folder, fold and checkpoint name")
    try:
        with torch.serialization.safe_globals(_allowed_checkpoint_globals()):
            content = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many kinds for files that are no checkpoint at all
        needed = _unsafe_globals(path) if isinstance(error, pickle.UnpicklingError) else []
        if needed:
            raise UnsafeCheckpointError(
                f"{path} is not a plain nnU-Net checkpoint: loading it would need the pickled object(s) "
                f"{', '.join(needed)}, which could run code. nnunet-qpg only opens checkpoints that hold data "
                f"(weights, numbers, strings). If you made this file yourself and trust it, re-save it from its "
                f"network's state_dict."
            ) from None
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeCheckpointError(f"{path} cannot be read as a PyTorch checkpoint ({reason[:200]}); is the file "
                                    f"complete? Copy or train it again.") from None
    if not isinstance(content, dict) or "network_weights" not in content:
        raise UnsafeCheckpointError(f"{path} is not an nnU-Net checkpoint (no 'network_weights'); give a "
                                    f"fold_X/checkpoint_*.pth written by nnUNetv2_train")
    return content


def _unsafe_globals(path: Path) -> list[str]:
    import torch

    allowed = {f"{item.__module__}.{item.__qualname__}" for item in _allowed_checkpoint_globals()}
    try:
        return [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if name not in allowed]
    except Exception:  # the listing is only for the message
        return []


def check_checkpoint(path: PathLike) -> None:
    """Refuse (UnsafeCheckpointError) a checkpoint that nnU-Net's predictor would unpickle with code in it."""
    load_checkpoint(path)


def guarded(command: str, action: Callable[[], int]) -> int:
    """Run a command body, turning our refusal errors into one message and exit code 2 (no traceback)."""
    import sys

    try:
        return action()
    except (UnsafeOutputError, UnsafeCheckpointError) as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
