"""What QPG training would cost on a quantum computer (`nnunet_qpg.hardware_cost`, `nnunet-qpg hardware-cost`):
the numbers of a layer by hand, routing with real Qiskit, the epoch-time formula and the command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from torch import nn

from nnunet_qpg.hardware_cost import RCE_NOT_MEASURABLE, hardware_cost, routed_two_qubit_gates
from nnunet_qpg.layers import ConvLoRA, QPGAConv, QPGConv

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))


def small_model() -> nn.Module:
    return nn.Sequential(
        # Conv2d 32 -> 8, 3x3: C_in > C_out, so the 8 outputs are the targets: 8 * 9 = 72 VQCs of log2(32) = 5 qubits
        QPGConv.from_conv(nn.Conv2d(32, 8, 3), post="lpp"),
        # 8 -> 16, 1x1, K = 2, SST: the 8 inputs are the targets: 8 VQCs of 4 qubits
        QPGAConv.from_conv(nn.Conv2d(8, 16, 1), post="sst", blocks=2, shots=64),
        QPGConv.from_conv(nn.Conv2d(16, 4, 1), post="rce"),  # cannot be measured
        ConvLoRA.from_conv(nn.Conv2d(4, 4, 3), r=2),  # classical
    )


def test_one_layer_by_hand():
    cost = hardware_cost(small_model(), shots=100, gradient="parameter-shift", iterations=10)
    assert [layer.name for layer in cost.layers] == ["0", "1", "2"]  # the ConvLoRA layer is not quantum
    first, second, rce = cost.layers
    assert (first.layer_class, first.vqcs, first.qubits, first.blocks) == ("QPGConv", 72, 5, 1)
    assert (first.depth, first.cnots, first.one_qubit_gates) == (1 + 2 + 5, 5, 5 + 10)
    assert first.forward_circuits == 72
    assert first.shift_circuits == 72 * 2 * (2 * 5 * 1) == 1440  # every RY and RX angle shifted +-pi/2
    assert first.circuits == 1512 and first.shots_per_step == 151_200
    assert (second.vqcs, second.qubits, second.blocks, second.depth, second.cnots) == (8, 4, 2, 1 + 2 * 6, 8)
    assert second.shift_circuits == 8 * 2 * (2 * 4 * 2) == 256 and second.shots == 100  # shots= overrides
    assert not rce.runnable and rce.note == RCE_NOT_MEASURABLE == "n/a (RCE needs amplitudes)"
    assert rce.circuits is None and rce.shots_per_step is None
    # totals leave RCE out
    assert cost.forward_circuits_per_step == 80 and cost.shift_circuits_per_step == 1696
    assert cost.circuits_per_step == 1776 and cost.shots_per_step == 177_600 and cost.jobs_per_step == 2
    assert cost.circuits_per_epoch == 17_760 and cost.shots_per_epoch == 1_776_000 and cost.jobs_per_epoch == 20
    assert cost.epoch_seconds is None
    table = cost.table()
    assert "n/a (RCE needs amplitudes)" in table and "1,776 circuits" in table and "ConvLoRA" not in table
    assert "validation and inference" in table

    # without shots= each layer's own setting, else 1000; backprop runs no shifted circuits and one job per step
    backprop = hardware_cost(small_model(), shots=None, gradient="backprop", iterations=10)
    assert [layer.shots for layer in backprop.layers[:2]] == [1000, 64]
    assert backprop.shift_circuits_per_step == 0 and backprop.jobs_per_step == 1
    assert backprop.shots_per_step == 72 * 1000 + 8 * 64
    data = backprop.to_dict()
    assert json.loads(json.dumps(data)) == data and data["totals"]["per_step"]["circuits"] == 80


def test_epoch_time_formula():
    cost = hardware_cost(small_model(), shots=100, gradient="parameter-shift", iterations=10,
                         circuits_per_second=50.0, job_latency=2.5)
    assert cost.epoch_seconds == pytest.approx(17_760 / 50.0 + 20 * 2.5)
    assert hardware_cost(small_model(), 100, "parameter-shift", 10, circuits_per_second=50.0).epoch_seconds == \
        pytest.approx(17_760 / 50.0)
    assert "circuits/s" in cost.table() and cost.to_dict()["totals"]["per_epoch"]["seconds"] == cost.epoch_seconds
    for bad in ({"gradient": "adjoint"}, {"coupling_map": "torus"}, {"iterations": 0}, {"shots": 0},
                {"circuits_per_second": 0.0}):
        with pytest.raises(ValueError):
            hardware_cost(small_model(), **{"shots": 10, "gradient": "backprop", "iterations": 1, **bad})


def test_routing_adds_two_qubit_gates_on_a_line():
    pytest.importorskip("qiskit")
    for n in (3, 5):
        line, _ = routed_two_qubit_gates(n, 1, "line")
        assert line > n  # CNOT(n-1, 0) closes the ring across the line: SWAPs (3 CNOTs each) are needed
        ring, _ = routed_two_qubit_gates(n, 1, "ring")
        assert ring == n  # the ring is the device's own connectivity
    assert routed_two_qubit_gates(2, 1, "line")[0] == 2
    assert routed_two_qubit_gates(5, 2, "line", entangle=False)[0] == 0
    heavy, _ = routed_two_qubit_gates(5, 1, "heavy-hex")
    assert heavy >= 5
    cost = hardware_cost(small_model(), 10, "parameter-shift", 1, coupling_map="line")
    first, second, _ = cost.layers
    assert first.routed_two_qubit_gates >= first.cnots == 5 and second.routed_two_qubit_gates >= second.cnots
    assert "2q routed (line)" in cost.table()


# -- the command -----------------------------------------------------------------------------------------------------

def run_command(capsys, *args) -> tuple[int, str, str]:
    from nnunet_qpg.cli import main

    code = main(["hardware-cost", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def plans_file(tmp_path_factory) -> Path:
    """nnU-Net's stored 2D plan (3 stages, 32x32) and its dataset.json side by side."""
    from common import load_stored_plan, shrink_for_quick  # benchmarks/common.py

    plans, dataset_json = load_stored_plan()
    folder = tmp_path_factory.mktemp("hardware_cost_plans")
    (folder / "nnUNetPlans.json").write_text(json.dumps(shrink_for_quick(plans)))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return folder / "nnUNetPlans.json"


def test_command_on_a_planned_network(plans_file, capsys):
    code, out, err = run_command(capsys, "--plans", plans_file, "-c", "2d", "--shots", "10", "--iterations", "5",
                                 "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["trainer"] == "nnUNetTrainerQPG" and report["gradient"] == "parameter-shift"
    names = [layer["name"] for layer in report["layers"]]
    assert names == ["decoder.seg_layers.0", "decoder.seg_layers.1"]  # both deep-supervision heads train
    for layer in report["layers"]:
        # a head Conv2d(C -> 2, 1x1): 2 VQCs of log2(C) qubits
        assert layer["vqcs"] == 2 and layer["forward_circuits"] == 2
        assert layer["shift_circuits"] == 2 * 2 * 2 * layer["qubits"] and layer["shots"] == 10
    assert report["totals"]["per_epoch"]["iterations"] == 5

    code, out, err = run_command(capsys, "--plans", plans_file, "--post", "rce", "--circuits-per-second", "100")
    assert code == 0, err
    assert out.count("n/a (RCE needs amplitudes)") >= 2 and "no QPG layer can run on hardware" in out

    code, out, err = run_command(capsys, "--plans", plans_file, "--mode", "lora")
    assert code == 0 and "no QPG layer" in out


def test_command_counts_data_path_circuits_at_training_and_inference(plans_file, capsys):
    """A data-path trainer is not "nothing runs on quantum hardware": its block runs per voxel, every step and
    every predicted image (SPEC section 8)."""
    plans = json.loads(plans_file.read_text())["configurations"]["2d"]
    batch = plans["batch_size"]
    code, out, err = run_command(capsys, "--plans", plans_file, "-tr", "nnUNetTrainerQLayerAngle", "--shots", "100")
    assert code == 0, err
    assert "nothing runs" not in out and "no QPG layer" in out
    assert "data-path circuits at encoder.stages.2.1: 1 circuit(s) x 4 qubits" in out
    code, out, err = run_command(capsys, "--plans", plans_file, "-tr", "nnUNetTrainerQLayerAngle", "--json")
    (entry,) = json.loads(out)["data_path"]
    per_forward = entry["cost"]["executions_per_forward"]
    assert per_forward == entry["cost"]["bottleneck_shape"][0] * entry["cost"]["bottleneck_shape"][1] * 1
    assert entry["executions_per_training_step"] == per_forward * batch


def test_command_help_and_bad_arguments(plans_file, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_command(capsys, "--help")
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--shots", "--gradient {parameter-shift,backprop}", "--coupling-map", "heavy-hex",
                   "--circuits-per-second", "--job-latency", "--iterations", "circuits / R + jobs * S",
                   "validation and inference use the exact simulation", "n/a (RCE needs amplitudes)"):
        assert phrase in text, phrase

    for args, phrase in ((["--shots", "0"], "argument --shots: must be at least 1, got 0"),
                         (["--coupling-map", "torus"], "invalid choice: 'torus'"),
                         (["--circuits-per-second", "-3"], "must be a positive number")):
        with pytest.raises(SystemExit) as exit_:
            run_command(capsys, "--plans", plans_file, *args)
        assert exit_.value.code == 2 and phrase in capsys.readouterr().err

    code, out, err = run_command(capsys, "-c", "2d")  # no planned network named
    assert code == 2 and "give -d DATASET" in err and "Traceback" not in err
    code, out, err = run_command(capsys, "--plans", plans_file, "-c", "3d_fullres")
    assert code == 2 and "configuration '3d_fullres' is not planned" in err
