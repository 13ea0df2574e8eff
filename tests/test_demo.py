"""`nnunet-qpg demo`, the README's first command, run as a user runs it (a subprocess) on its smallest schedule."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from inference_model import nnunet_qpg_command
from PIL import Image

pytestmark = pytest.mark.slow

EXPECTED_MODELS = ("QPG", "classical")  # the demo's --names for nnUNetTrainerQPG_Demo and nnUNetTrainer_Demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "nnunet_qpg_demo"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    # the demo sets the nnU-Net variables itself; stray ones from the caller must not leak into its run
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_n_proc_DA"):
        env.pop(name, None)
    done = subprocess.run([nnunet_qpg_command(), "demo", "--work", str(work), "--epochs", "1", "--iterations", "2",
                           "--size", "32"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"demo exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return work, done.stdout


def test_demo_prints_the_comparison_table(demo):
    _, stdout = demo
    header = next(line for line in stdout.splitlines() if "trainable params" in line)
    for column in ("model", "strategy", "train DSC", "test IoU", "test DSC"):
        assert column in header
    report = stdout[:stdout.index("paper's protocol vs whole volumes")]
    rows = [line for line in report.splitlines() if line.strip().startswith(EXPECTED_MODELS)]
    assert len(rows) == 2 and "QPGConv LPP" in rows[0] and "classical" in rows[1], stdout[-3000:]
    assert "demo finished" in stdout
    protocols = stdout[stdout.index("paper's protocol vs whole volumes"):]
    for row in ("QPG ", "classical", "QPG, 3D cleanup (--largest-components 2)"):
        assert row in protocols
    assert "false-positive slices" in protocols and "--background-slices" in protocols
    assert "without a prediction" not in stdout, "evaluation must score the test cases only"


def test_demo_writes_evaluations_table_and_figures(demo):
    work, stdout = demo
    evaluations = sorted((work / "evaluation").glob("*.json"))
    assert [p.stem for p in evaluations] == ["nnUNetTrainerQPG_Demo", "nnUNetTrainer_Demo"]
    for path in evaluations:
        summary = json.loads(path.read_text())["summary"]
        assert summary["volumes"] == 2 and summary["images"] > 0  # the two held-out test volumes, 180 and 181
        assert 0.0 <= summary["dsc_mean"] <= 1.0
    table = json.loads((work / "table1.json").read_text())
    assert [row["name"] for row in table] == list(EXPECTED_MODELS)
    assert table[0]["trainable_parameters"] > 0 and table[0]["test"]["volumes"] == 2
    figures = sorted((work / "figures").glob("*.png"))
    assert [p.name for p in figures] == ["case_00180.png", "case_00181.png"]
    for png in figures:
        with Image.open(png) as image:
            assert image.size[0] > image.size[1] > 100  # one row of panels: image, ground truth, two models
    assert str(work / "figures") in stdout
