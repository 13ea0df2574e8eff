"""Each benchmark's --quick mode runs and prints its ratio table. No timing is asserted: the machine is shared."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script, ratio_line", [
    ("bench_simulation.py", "ratio = TorchQuantum time / native time"),
    ("bench_training.py", "ratio = trainer time / nnUNetTrainer time"),
    ("bench_inference.py", "ratio = QPG eval time / exported time"),
    ("bench_network_generation.py", "ratio = network time / per-layer time"),
    ("bench_volume_inference.py", "ratio = per-slice time / batched time"),
])
def test_quick_mode_prints_ratios(script: str, ratio_line: str) -> None:
    if script == "bench_simulation.py":
        pytest.importorskip("torchquantum")
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", "--rounds", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch " in done.stdout and "cpu: " in done.stdout  # the machine is described
    assert ratio_line in done.stdout
    assert "ratio med" in done.stdout
