"""Time and peak memory of convert-kits19 on KiTS19's largest case (1059x512x512) and a typical one (100x512x512).

Each conversion runs in its own child process (`--task both --workers 1`, so the whole case lives in that
process), which reports its own peak resident memory (VmHWM from /proc/self/status, Linux).
With --workers N the converter holds at most N cases at once, so its peak is about N times this figure.
The issue asks for a peak under 3 GiB on the largest case.

usage: python benchmarks/bench_conversion.py [--workdir DIR] [--keep] [--cases largest,typical] [--dtype int16]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nnunet_qpg.dataset_conversion.synth_kits19 import make_synthetic_case

CASES = {
    # name: (case folder, shape slices x rows x cols, spacing mm)
    "largest": ("case_00000", (1059, 512, 512), (0.5, 0.78, 0.78)),
    "typical": ("case_00001", (100, 512, 512), (5.0, 0.78, 0.78)),
}
MEMORY_LIMIT_GIB = 3.0


# Runs in the child: convert, then report the child's own high-water RSS. VmHWM belongs to the process's own
# address space, so unlike ru_maxrss it does not inherit the (large) parent's peak across fork/exec.
CHILD = """
import sys
from nnunet_qpg.cli import main
code = main(sys.argv[1:])
peak_kib = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print(f'PEAK_KIB {peak_kib}', file=sys.stderr)
sys.exit(code)
"""


def convert_in_child(kits19: Path, output: Path) -> tuple[float, float, int]:
    """Run the converter in a child process; returns (seconds, peak RSS GiB, exit code)."""
    command = [sys.executable, "-c", CHILD, "convert-kits19", str(kits19), "--output", str(output),
               "--task", "both", "--workers", "1"]
    started = time.perf_counter()
    child = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    peaks = [int(line.split()[1]) for line in child.stderr.splitlines() if line.startswith("PEAK_KIB")]
    if child.returncode != 0 or not peaks:
        print(child.stderr[-2000:], file=sys.stderr)
    return seconds, (peaks[0] / 2**20 if peaks else float("nan")), child.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where to write the synthetic cases (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic cases and outputs")
    parser.add_argument("--cases", default="largest,typical", help="comma-separated subset of: largest, typical")
    parser.add_argument("--dtype", choices=("int16", "float32"), default="int16",
                        help="voxel type of the synthetic imaging.nii.gz (default: int16)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-kits19-"))
    failed = False
    print(f"{'case':8s} {'shape':>14s} {'synth s':>8s} {'convert s':>10s} {'peak RSS GiB':>13s} {'2D images':>10s}")
    try:
        for name in args.cases.split(","):
            folder, shape, spacing = CASES[name]
            kits19, output = workdir / name / "kits19", workdir / name / "out"
            started = time.perf_counter()
            make_synthetic_case(kits19 / folder, seed=1, shape=shape, spacing=spacing, dtype=args.dtype)
            synth_seconds = time.perf_counter() - started
            seconds, peak_gib, code = convert_in_child(kits19, output)
            images = sum(1 for _ in output.glob("Dataset*/images*/*.nii.gz"))
            failed |= code != 0 or peak_gib >= MEMORY_LIMIT_GIB
            print(f"{name:8s} {'x'.join(map(str, shape)):>14s} {synth_seconds:8.1f} {seconds:10.1f} {peak_gib:13.2f} "
                  f"{images:10d}{'' if code == 0 else f'  (exit code {code})'}", flush=True)
            if not args.keep:
                shutil.rmtree(workdir / name)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"limit: peak RSS < {MEMORY_LIMIT_GIB} GiB per converting process -> {'FAIL' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
