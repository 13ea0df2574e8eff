"""Make a small synthetic KiTS19-like folder: case_XXXXX/imaging.nii.gz + segmentation.nii.gz, for tests and demos.

The files look like KiTS19's: the slice axis is the first sitk index axis (nibabel's axis 0; numpy axis 2 of
sitk.GetArrayFromImage), direction matrix [[0,0,1],[0,1,0],[-1,0,0]], origin 0, anisotropic spacing (3 or 5 mm
slices, 0.7-0.9 mm pixels), int16 HU and uint8 labels 0 background, 1 kidney, 2 tumor.

Anatomy: a body ellipse of soft tissue with a fat rim in air, two kidney ellipsoids and one or two tumors on
their surface. Intensities are chosen so BOTH presets see contrast (they are not real non-contrast HU):
  air -1000, fat -100, soft tissue 40, kidney -15, tumor -25 (plus Gaussian noise, default std 6 HU).
With the paper's narrow [-30, 0] window, soft tissue clips to 0, fat to -30, and kidney/tumor stay in between.
Same seed, same files.

example: nnunet-qpg synth-kits19 /tmp/kits19 --cases 0-9 180-181
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

HU = {"air": -1000.0, "fat": -100.0, "soft_tissue": 40.0, "kidney": -15.0, "tumor": -25.0}
KIDNEY, TUMOR = 1, 2
# sitk index axes (as logical axes 0 = slice, 1 = row, 2 = column) for each position of the slice axis
SITK_AXES_FOR_SLICE_AXIS = {0: (0, 1, 2), 1: (1, 0, 2), 2: (2, 1, 0)}
# physical direction of each logical axis: slices run feet-ward (-z) as in KiTS19, rows +y, columns +x
PHYSICAL_DIRECTION = {0: (0.0, 0.0, -1.0), 1: (0.0, 1.0, 0.0), 2: (1.0, 0.0, 0.0)}
DEFAULT_SHAPE = (32, 112, 112)


def _ellipsoids(rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """Kidney and tumor ellipsoids in normalised coordinates: slice t in [0, 1], row v and column u in [-1, 1]."""
    kidneys = []
    for side in (-1.0, 1.0):
        kidneys.append(
            {
                "centre": (0.5 + rng.uniform(-0.08, 0.08), 0.25 + rng.uniform(-0.05, 0.05), side * rng.uniform(0.36, 0.44)),
                "radii": (rng.uniform(0.18, 0.26), rng.uniform(0.16, 0.2), rng.uniform(0.11, 0.15)),
            }
        )
    tumors = []
    for kidney in (kidneys[i] for i in rng.permutation(2)[: rng.integers(1, 3)]):
        (t, v, u), (rt, rv, ru) = kidney["centre"], kidney["radii"]
        angle = rng.uniform(0, 2 * np.pi)  # a point on the kidney's in-plane rim: the tumor bulges out of it
        tumors.append(
            {
                "centre": (t + rng.uniform(-0.4, 0.4) * rt, v + 0.8 * rv * np.sin(angle), u + 0.8 * ru * np.cos(angle)),
                "radii": (rng.uniform(0.06, 0.12), rng.uniform(0.05, 0.09), rng.uniform(0.05, 0.09)),
            }
        )
    return kidneys, tumors


def _inside(shape: dict, t: float, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    (ct, cv, cu), (rt, rv, ru) = shape["centre"], shape["radii"]
    return ((t - ct) / rt) ** 2 + ((v - cv) / rv) ** 2 + ((u - cu) / ru) ** 2 <= 1.0


def make_synthetic_case(
    case_dir: Path | str,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    slice_axis: int = 0,
    noise_std: float = 6.0,
    dtype: str = "int16",
) -> dict:
    """Write one synthetic case folder; returns its description (shape, spacing, slice axis, path).

    shape: (slices, rows, columns). spacing: (slice, row, column) mm; random KiTS19-like if None.
    slice_axis: the sitk index axis that holds the slices (0 as in KiTS19; 2 is the usual ITK layout).
    noise_std: HU noise; 0 gives exactly the HU table's values (used by the alignment tests).
    Memory: about 2x the volume (a 1059x512x512 case needs ~2 GiB).
    """
    if slice_axis not in SITK_AXES_FOR_SLICE_AXIS:
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    rng = np.random.default_rng(seed)
    slices, rows, cols = (int(n) for n in shape)
    if spacing is None:
        in_plane = round(float(rng.uniform(0.7, 0.9)), 4)
        spacing = (float(rng.choice([3.0, 5.0])), in_plane, in_plane)
    kidneys, tumors = _ellipsoids(rng)

    sitk_axes = SITK_AXES_FOR_SLICE_AXIS[slice_axis]
    file_shape = tuple((slices, rows, cols)[axis] for axis in reversed(sitk_axes))  # numpy order = sitk reversed
    image = np.empty(file_shape, dtype=dtype)
    labels = np.empty(file_shape, dtype=np.uint8)
    # logical (slice, row, column) views into the file-layout arrays: fill slice by slice, little memory
    to_logical = tuple(2 - sitk_axes.index(axis) for axis in range(3))
    image_zyx, labels_zyx = image.transpose(to_logical), labels.transpose(to_logical)

    v, u = np.meshgrid((np.arange(rows) + 0.5) / rows * 2 - 1, (np.arange(cols) + 0.5) / cols * 2 - 1, indexing="ij")
    body_radius = (u / 0.9) ** 2 + (v / 0.7) ** 2
    base = np.where(body_radius <= 0.8, HU["soft_tissue"], np.where(body_radius <= 1.0, HU["fat"], HU["air"]))
    for z in range(slices):
        t = (z + 0.5) / slices
        label_slice = np.zeros((rows, cols), dtype=np.uint8)
        for kidney in kidneys:
            label_slice[_inside(kidney, t, v, u)] = KIDNEY
        for tumor in tumors:
            label_slice[_inside(tumor, t, v, u)] = TUMOR
        hu = np.where(label_slice == KIDNEY, HU["kidney"], np.where(label_slice == TUMOR, HU["tumor"], base))
        if noise_std > 0:
            hu = hu + rng.normal(0.0, noise_std, size=hu.shape)
        image_zyx[z] = np.round(hu) if np.issubdtype(image.dtype, np.integer) else hu
        labels_zyx[z] = label_slice

    direction = np.zeros((3, 3))
    for column, axis in enumerate(sitk_axes):
        direction[:, column] = PHYSICAL_DIRECTION[axis]  # physical (x, y, z) of this index axis
    case_dir = Path(case_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    for array, name in ((image, "imaging.nii.gz"), (labels, "segmentation.nii.gz")):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing(tuple(float(spacing[axis]) for axis in sitk_axes))
        volume.SetDirection(tuple(direction.ravel()))
        volume.SetOrigin((0.0, 0.0, 0.0))
        sitk.WriteImage(volume, str(case_dir / name), useCompression=True)
    return {"case_dir": str(case_dir), "shape": (slices, rows, cols), "spacing": tuple(spacing), "slice_axis": slice_axis}


def make_synthetic_kits19(out: Path | str, cases: Iterable[int], seed: int = 0, **case_options) -> list[Path]:
    """Write case_XXXXX folders for `cases` under `out` (case n uses seed `seed * 1000 + n`); returns them."""
    folders = []
    for case in cases:
        folder = Path(out) / f"case_{int(case):05d}"
        make_synthetic_case(folder, seed=seed * 1000 + int(case), **case_options)
        folders.append(folder)
    return folders


def parse_case_list(tokens: Iterable[str]) -> list[int]:
    """'0-3 180,182' -> [0, 1, 2, 3, 180, 182]."""
    cases: list[int] = []
    for token in (part for text in tokens for part in text.split(",") if part):
        first, _, last = token.partition("-")
        cases.extend(range(int(first), int(last or first) + 1))
    return sorted(set(cases))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="folder to create the case_XXXXX folders in")
    parser.add_argument("--cases", nargs="+", default=["0-4", "180-181"], help="case numbers or ranges (default: 0-4 180-181)")
    parser.add_argument("--shape", nargs=3, type=int, metavar=("SLICES", "ROWS", "COLS"), default=DEFAULT_SHAPE,
                        help=f"volume size (default: {' '.join(map(str, DEFAULT_SHAPE))}; KiTS19's largest: 1059 512 512)")
    parser.add_argument("--slice-axis", type=int, choices=(0, 1, 2), default=0,
                        help="sitk index axis holding the slices (0 as in KiTS19; 2 = usual ITK layout)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--noise", type=float, default=6.0, help="HU noise standard deviation (default: 6)")
    parser.add_argument("--dtype", choices=("int16", "float32"), default="int16", help="image pixel type (default: int16)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    cases = parse_case_list(args.cases)
    for case in tqdm(cases, desc="synthetic cases", unit="case", file=sys.stderr):
        make_synthetic_kits19(args.out, [case], seed=args.seed, shape=args.shape, slice_axis=args.slice_axis,
                              noise_std=args.noise, dtype=args.dtype)
    print(f"wrote {len(cases)} synthetic KiTS19 case(s) to {args.out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
