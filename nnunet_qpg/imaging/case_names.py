"""Case names of NIfTI files, as nnU-Net names them: ``case_00181_0000.nii.gz`` is case ``case_00181`` (the
channel suffix dropped), ``ct.nii`` is ``ct``; a KiTS19 data folder's ``case_*/`` folders are cases too.

Several files of one folder may map to one case name (``scan.nii``, ``scan.nii.gz``, ``scan_0000.nii.gz``, or
``case_00001.nii.gz`` beside ``case_00001/``). They would share one mask or one score, so they are kept together
(:func:`files_by_case`) for callers to name and refuse, never one of them picked silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["NIFTI_ENDINGS", "CaseNameCollisionError", "case_files", "case_name", "collision_problem",
           "files_by_case", "list_volumes"]

NIFTI_ENDINGS = (".nii.gz", ".nii")


class CaseNameCollisionError(ValueError):
    """Several files of one folder map to the same case name, so they would share one mask or one score.

    ``collisions`` maps each such case name to all of its files; the message names every one of them.
    """

    def __init__(self, folder: Path | str, collisions: dict[str, list[Path]]):
        self.folder = Path(folder)
        self.collisions = collisions
        described = "; ".join(collision_problem(case, paths) for case, paths in sorted(collisions.items()))
        super().__init__(f"{folder}: {described}")


def case_name(path: Path) -> str:
    """'case_00181_0000.nii.gz' -> 'case_00181' (nnU-Net's channel suffix is dropped), 'ct.nii' -> 'ct'."""
    name = next((path.name[: -len(e)] for e in NIFTI_ENDINGS if path.name.endswith(e)), path.stem)
    return name[:-5] if name.endswith("_0000") else name


def list_volumes(input_folder: Path) -> list[Path]:
    """The NIfTI volumes of a folder, sorted (hidden and temporary files are left out).

    Several of them may map to one case name: use :func:`files_by_case` where the names matter.
    """
    return sorted(p for p in input_folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_ENDINGS))


def files_by_case(folder: Path, kits19_file: str | None = None) -> dict[str, list[Path]]:
    """case name -> the NIfTI file(s) of a flat folder (and ``case_*/kits19_file`` of a KiTS19 data folder).

    More than one file per case is kept as a list so callers can refuse the case instead of silently taking one
    of them (they would share one mask, or one score).
    """
    grouped: dict[str, list[Path]] = {}
    for path in list_volumes(folder):
        grouped.setdefault(case_name(path), []).append(path)
    if kits19_file:
        for case_dir in sorted(folder.glob("case_*")):
            if (case_dir / kits19_file).is_file():
                grouped.setdefault(case_dir.name, []).append(case_dir / kits19_file)
    return grouped


def collision_problem(case: str, paths: Sequence[Path]) -> str:
    """One sentence naming every file that maps to ``case``, and the fix."""
    names = ", ".join(path.name if path.parent.name != case else f"{case}/{path.name}" for path in paths)
    return (f"{names} all map to the case name {case!r} (output {case}.nii.gz), so nnunet-qpg cannot tell which "
            f"one is meant; rename or move all but one of them")


def case_files(folder: Path, kits19_file: str | None = None) -> dict[str, Path]:
    """case name -> file, for a flat folder of NIfTI files or a KiTS19 data folder (``case_*/kits19_file``).

    Raises CaseNameCollisionError (a ValueError naming every file) when several files share a case name.
    """
    grouped = files_by_case(folder, kits19_file)
    collisions = {case: paths for case, paths in grouped.items() if len(paths) > 1}
    if collisions:
        raise CaseNameCollisionError(folder, collisions)
    return {case: paths[0] for case, paths in grouped.items()}
