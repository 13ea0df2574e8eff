"""What volume prediction does with each mask besides writing it: 3D cleanup, the per-volume summary a clinician
reads (CSV and JSON: each structure's volume in mL, axial slice range, number of components) and overlay PNGs.

The cleanup (``--largest-components``, ``--min-component-ml``) acts on the stacked slices in 3D, per label value
(:mod:`nnunet_qpg.imaging.components`); it is off by default so the paper's per-slice output is unchanged.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnunet_qpg.imaging.axial import axial_pixels, axial_view
from nnunet_qpg.imaging.components import axial_spacing, component_summary, keep_largest_components

__all__ = ["Cleanup", "SUMMARY_COLUMNS", "structure_rows", "summary_files", "write_overlay", "write_summary"]

SUMMARY_COLUMNS = ("case", "structure", "label", "volume_ml", "components", "first_axial_slice",
                   "last_axial_slice", "axial_slices", "largest_component_ml")


@dataclass(frozen=True)
class Cleanup:
    """3D cleanup of a predicted mask: per label value, keep the ``largest_components`` largest 26-connected
    components and drop those under ``min_component_ml`` (either may be None: not applied)."""

    largest_components: int | None = None
    min_component_ml: float | None = None

    @property
    def active(self) -> bool:
        return self.largest_components is not None or self.min_component_ml is not None

    def describe(self) -> str:
        """A stable text of the settings, e.g. "largest-components=2 min-component-ml=5.0" ("" when off)."""
        parts = []
        if self.largest_components is not None:
            parts.append(f"largest-components={self.largest_components}")
        if self.min_component_ml is not None:
            parts.append(f"min-component-ml={self.min_component_ml:g}")
        return " ".join(parts)

    def apply(self, mask: sitk.Image) -> sitk.Image:
        """The cleaned mask with the same geometry (``mask`` itself when the cleanup is off)."""
        if not self.active:
            return mask
        array = sitk.GetArrayFromImage(mask)
        view = axial_view(array, mask.GetDirection())  # (axial slice, row, column), a view of ``array``
        view[...] = keep_largest_components(np.array(view), self.largest_components, axial_spacing(mask),
                                            min_volume_ml=self.min_component_ml)
        cleaned = sitk.GetImageFromArray(array)
        cleaned.CopyInformation(mask)
        for key in mask.GetMetaDataKeys():
            cleaned.SetMetaData(key, mask.GetMetaData(key))
        return cleaned


def structure_rows(case: str, mask: sitk.Image, label_names: dict[int, str]) -> list[dict[str, Any]]:
    """One row per structure in the mask (label value > 0): volume in mL, number of 3D components, the axial slice
    range (0-based indices along the axial axis, in the volume's own axial order)."""
    summary = component_summary(axial_pixels(mask), axial_spacing(mask))
    rows = []
    for label, entry in sorted(summary.items()):
        rows.append({
            "case": case,
            "structure": label_names.get(int(label), f"label {int(label)}"),
            "label": int(label),
            "volume_ml": round(float(entry["volume_ml"]), 3),
            "components": int(entry["components"]),
            "first_axial_slice": int(entry["first_slice"]),
            "last_axial_slice": int(entry["last_slice"]),
            "axial_slices": int(entry["slices"]),
            "largest_component_ml": round(float(max(entry["largest_components_ml"], default=0.0)), 3),
        })
    return rows


def summary_files(output_folder: Path, num_parts: int = 1, part_id: int = 0) -> tuple[Path, Path]:
    """(CSV, JSON) paths of a batch's summary: ``summary.csv`` / ``summary.json``, or per part when the batch is
    split (``summary_part1of4.csv``) so concurrent parts never write one file."""
    stem = "summary" if num_parts == 1 else f"summary_part{part_id + 1}of{num_parts}"
    return output_folder / f"{stem}.csv", output_folder / f"{stem}.json"


SUMMARY_MARK = "nnunet-qpg per-volume summary"


def write_summary(output_folder: Path, volumes: dict[str, list[dict[str, Any]]], settings: dict[str, Any],
                  num_parts: int = 1, part_id: int = 0) -> tuple[tuple[Path, ...], str | None]:
    """Write the per-volume summary as CSV and JSON, atomically: one row per structure of every mask in
    ``output_folder`` this summary knows (an empty mask is one row without a structure). ``volumes`` are this
    run's masks (predicted or found done); rows an earlier run wrote for masks still in the folder are kept, so a
    rerun with nothing to do changes nothing. Returns (the files, None), or ((), why nothing was written): files
    of those names that nnunet-qpg did not write are kept."""
    import json

    from nnunet_qpg.safe_io import write_json_atomically, write_text_atomically

    csv_path, json_path = summary_files(output_folder, num_parts, part_id)
    earlier = None
    if json_path.is_file():
        try:
            earlier = json.loads(json_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            earlier = None
    ours = isinstance(earlier, dict) and earlier.get("written_by") == SUMMARY_MARK
    if (csv_path.exists() or json_path.exists()) and not ours:
        return (), (f"{csv_path.name} / {json_path.name} exist in {output_folder} and were not written by "
                    f"nnunet-qpg; they are kept and no summary is written (move them away and rerun)")
    known = dict(earlier.get("volumes", {})) if ours and isinstance(earlier.get("volumes"), dict) else {}
    known = {case: rows for case, rows in known.items() if (output_folder / f"{case}.nii.gz").is_file()}
    known.update(volumes)
    volumes = known
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for case in sorted(volumes):
        rows = volumes[case] or [{"case": case, "structure": "(none predicted)", "label": 0, "volume_ml": 0.0,
                                  "components": 0, "first_axial_slice": "", "last_axial_slice": "",
                                  "axial_slices": 0, "largest_component_ml": 0.0}]
        writer.writerows(rows)
    content = {"written_by": SUMMARY_MARK, "settings": settings,
               "volumes": {case: volumes[case] for case in sorted(volumes)}}
    if not (ours and earlier == json.loads(json.dumps(content)) and csv_path.is_file()
            and csv_path.read_text() == text.getvalue()):
        write_text_atomically(csv_path, text.getvalue())
        write_json_atomically(json_path, content)
    return (csv_path, json_path), None


def write_overlay(path: Path, image: sitk.Image, mask: sitk.Image, label_names: dict[int, str], title: str) -> Path:
    """An overlay PNG of the axial slice with the most structures (then the most foreground): CT | mask."""
    from nnunet_qpg.figures import save_overlay_figure
    from nnunet_qpg.overlays import most_telling_slice

    masks = axial_pixels(mask)
    index = most_telling_slice(masks)
    return save_overlay_figure(path, np.asarray(axial_pixels(image)[index], dtype=np.float32), None,
                               {"prediction": np.asarray(masks[index])}, title=f"{title} (axial slice {index})",
                               label_names={"prediction": label_names})
