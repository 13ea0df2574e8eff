"""QPG's circuits out, counts back in (SPEC section 7): OpenQASM 2 export, Qiskit's bit order, kernels rebuilt from
counts measured by Qiskit Aer, and `nnunet-qpg export-circuits` on an nnU-Net model folder.

Everything is real: Qiskit parses the exported programs, its Statevector and Aer's sampler run them, the layers are
the package's QPGConv / QPGAConv, and the model folder holds nnU-Net's plans, its network and a checkpoint in
nnUNetv2_train's format (built, not trained: training costs minutes, and export-circuits only reads the angles).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nnunet_qpg.layers import QPGAConv, QPGConv
from nnunet_qpg.simulator.qasm import (circuit_resources, probabilities_from_counts, qiskit_bitstring, vqc_qasm,
                                       vqcs_qasm)
from nnunet_qpg.simulator.reference import reference_states

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))


def our_order(qiskit_vector, n: int) -> torch.Tensor:
    """A Qiskit state vector (qubit 0 least significant) re-indexed to ours (qubit 0 most significant)."""
    reverse = [int(format(i, f"0{n}b")[::-1], 2) for i in range(1 << n)]
    return torch.as_tensor(qiskit_vector)[reverse]


def test_program_text_is_spec_section_7():
    theta = torch.tensor([[[0.25, 1.0 / 3.0], [-2.5, 0.1]]], dtype=torch.float64)  # K=1, n=2
    assert vqc_qasm(theta) == (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\nh q[1];\n'
        "ry(0.25) q[0];\nry(0.3333333333333333) q[1];\nrx(-2.5) q[0];\nrx(0.1) q[1];\n"
        "cx q[0],q[1];\ncx q[1],q[0];\nmeasure q[0] -> c[0];\nmeasure q[1] -> c[1];\n")
    assert "cx" not in vqc_qasm(theta, entangle=False) and "cx" not in vqc_qasm(torch.rand(2, 2, 1))
    # float64 angles survive the text exactly
    angle = float(torch.rand(1, dtype=torch.float64))
    assert f"ry({angle!r}) q[0];" in vqc_qasm(torch.full((1, 2, 1), angle, dtype=torch.float64))
    assert len(vqcs_qasm(torch.rand(7, 2, 2, 3))) == 7
    with pytest.raises(ValueError, match=r"\[K, 2, n\]"):
        vqc_qasm(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="non-finite"):
        vqc_qasm(torch.full((1, 2, 2), float("nan")))


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("entangle", [True, False])
def test_exported_program_is_our_circuit_in_qiskit(n, blocks, entangle):
    pytest.importorskip("qiskit")
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import Statevector

    theta = torch.rand(3, blocks, 2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(10 * n + blocks))
    theta = 4 * theta - 2  # angles of both signs
    ours = reference_states(theta, entangle=entangle)
    if not entangle and n > 1:  # the ring matters, so the comparison can tell the two apart
        assert (ours - reference_states(theta)).abs().max() > 1e-3
    for v, text in enumerate(vqcs_qasm(theta, entangle)):
        circuit = QuantumCircuit.from_qasm_str(text)
        operations = circuit.count_ops()
        assert circuit.num_qubits == circuit.num_clbits == n and operations["measure"] == n
        bare = circuit.remove_final_measurements(inplace=False)
        resources = circuit_resources(n, blocks, entangle)
        assert bare.depth() == resources["depth"]
        assert operations.get("cx", 0) == resources["cnots"] == (n * blocks if entangle and n > 1 else 0)
        assert operations["h"] + operations["ry"] + operations["rx"] == resources["one_qubit_gates"]
        # H, RY, RX and CX carry no global phase in Qiskit either: amplitudes agree, phase included
        state = our_order(Statevector(bare).data, n)
        torch.testing.assert_close(state, ours[v], atol=1e-10, rtol=0)


def test_circuit_resources_by_hand():
    assert circuit_resources(1, 1) == {"qubits": 1, "blocks": 1, "depth": 3, "one_qubit_gates": 3, "cnots": 0}
    assert circuit_resources(2, 1)["depth"] == 5 and circuit_resources(2, 1)["cnots"] == 2
    assert circuit_resources(6, 2) == {"qubits": 6, "blocks": 2, "depth": 17, "one_qubit_gates": 30, "cnots": 12}
    assert circuit_resources(6, 2, entangle=False)["depth"] == 5
    with pytest.raises(ValueError, match="blocks"):
        circuit_resources(3, 0)


# -- bit order and counts ---------------------------------------------------------------------------------------------

def test_bit_order_by_hand():
    assert qiskit_bitstring(1, 3) == "100" and qiskit_bitstring(6, 3) == "011" and qiskit_bitstring(4, 3) == "001"
    assert [qiskit_bitstring(i, 2) for i in range(4)] == ["00", "10", "01", "11"]
    expected = torch.zeros(1, 8, dtype=torch.float64)
    expected[0, 1], expected[0, 6] = 0.75, 0.25  # '100' is our 1, '011' our 6
    for counts in ({"100": 3, "011": 1}, {"1 00": 3, "01 1": 1}, {4: 3, 3: 1}, {"0x4": 3, "0x3": 1},
                   {"100": 3, "011": 1, "000": 0}):
        torch.testing.assert_close(probabilities_from_counts([counts], 3), expected, atol=0, rtol=0)
    both = probabilities_from_counts([{"10": 1}, {"01": 2, "11": 2}], 2, expected=2)
    torch.testing.assert_close(both, torch.tensor([[0, 1, 0, 0], [0, 0, 0.5, 0.5]], dtype=torch.float64))
    with pytest.raises(ValueError):
        qiskit_bitstring(8, 3)


@pytest.mark.parametrize("counts, expected, message", [
    ([{"00": 1}], 2, "1 count dictionaries for 2 VQCs"),
    ([{"00": 1}, {"000": 4}], None, "VQC 1: bitstring '000' has 3 bits"),
    ([{"00": 1}, {"00": 0, "11": 0}], None, "VQC 1: the counts hold no shots"),
    ([{"00": 1}, {}], None, "VQC 1: the counts hold no shots"),
    ([{"00": 1}, {"01": -3, "11": 5}], None, "VQC 1: count -3 of outcome '01' is negative"),
    ([{"00": 1}, {"0a": 1}], None, "VQC 1: counts key '0a' is not a bitstring"),
    ([{"00": 1}, {4: 1}], None, "VQC 1: integer outcome 4 does not fit 2 qubit"),
    ([{"00": 1}, {"0x9": 1}], None, "VQC 1: hexadecimal outcome '0x9' does not fit"),
    ([{"00": 1}, {"01": 0.5}], None, "VQC 1: count 0.5 of outcome '01' is not a whole number"),
    ({"00": 1}, None, "not a single mapping"),
])
def test_bad_counts_are_named(counts, expected, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        probabilities_from_counts(counts, 2, expected=expected)


def test_known_basis_states_measured_by_aer():
    """Angles that make each qubit a basis state: RY(+pi/2) H|0> = |1>, RY(-pi/2) H|0> = |0> (RX(0) = I).
    Qubit 0 = 1, others 0 is our index 0b100 = 4 (Qiskit '001'); the ring maps it to q = (0, 1, 1), our 3."""
    pytest.importorskip("qiskit_aer")
    from nnunet_qpg.samplers import QiskitSampler

    angles = torch.zeros(1, 2, 3, dtype=torch.float64)
    angles[0, 0] = torch.tensor([math.pi / 2, -math.pi / 2, -math.pi / 2])
    counts = QiskitSampler(seed=1).run([vqc_qasm(angles, entangle=False), vqc_qasm(angles)], shots=50)
    assert counts == [{"001": 50}, {"110": 50}]
    probabilities = probabilities_from_counts(counts, 3, expected=2)
    assert probabilities[0, 4] == 1 and probabilities[1, 3] == 1


# -- kernels from measured counts -------------------------------------------------------------------------------------

def standard_errors(layer, shots: int) -> torch.Tensor:
    """Per weight entry: |scale| * sqrt(p (1 - p) / N), p the exact probability (the reference, ring as the layer)."""
    theta = layer.theta.detach().double()
    probabilities = reference_states(theta, entangle=layer.entangle).abs() ** 2
    scale = abs(float(layer.post.projection.weight.detach()[0, 0])) if layer.post_name == "lpp" else math.pi / 2
    se = scale * torch.sqrt(probabilities * (1 - probabilities) / shots)[:, :layer.other_channels]
    return layer.layout.from_vqc_rows(se)


CASES = {
    "QPGConv-lpp": lambda: QPGConv.from_conv(nn.Conv2d(6, 3, 2), post="lpp"),
    "QPGAConv-lpp": lambda: QPGAConv.from_conv(nn.Conv2d(6, 3, 2), post="lpp"),
    "QPGConv-sst-K2": lambda: QPGConv.from_conv(nn.Conv2d(3, 5, (1, 2)), post="sst", blocks=2),
    "QPGAConv-sst-no-ring": lambda: QPGAConv.from_conv(nn.Conv2d(6, 3, 2), post="sst", entangle=False),
    "QPGConv-transposed-lpp": lambda: QPGConv.from_conv(nn.ConvTranspose2d(3, 7, 2), post="lpp"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_from_aer_counts_is_the_exact_kernel_within_shot_noise(case):
    pytest.importorskip("qiskit_aer")
    from nnunet_qpg.samplers import QiskitSampler

    torch.manual_seed(sorted(CASES).index(case))
    layer = CASES[case]().double().eval()
    shots = 20_000
    with torch.no_grad():
        exact = layer.generate_weight()
    counts = QiskitSampler(seed=7).run(layer.circuits_qasm(), shots)
    measured = layer.kernel_from_counts(counts)
    assert measured.shape == exact.shape == layer.weight_shape and measured.dtype == torch.float64
    error = (measured - exact).abs()
    se = standard_errors(layer, shots)
    assert bool((error <= 5 * se + 1e-12).all()), f"largest error / SE {float((error / (se + 1e-15)).max()):.2f}"
    assert float(error.max()) > 0  # they are estimates, not the exact values
    # the bit order matters: the same counts read with the bits reversed give another kernel
    reversed_counts = [{key[::-1]: value for key, value in entry.items()} for entry in counts]
    assert not bool(((layer.kernel_from_counts(reversed_counts) - exact).abs() <= 5 * se + 1e-12).all())


def test_measure_kernel_runs_the_layer_through_a_sampler_in_jobs():
    pytest.importorskip("qiskit_aer")
    from nnunet_qpg.samplers import QiskitSampler, measure_kernel

    torch.manual_seed(5)
    layer = QPGAConv.from_conv(nn.Conv2d(4, 3, 2), post="lpp").double().eval()  # 12 VQCs of 2 qubits
    sampler = QiskitSampler(seed=3, batch_size=5)  # 3 jobs
    measured = measure_kernel(layer, sampler, 2000)
    again = layer.kernel_from_counts(QiskitSampler(seed=3, batch_size=5).run(layer.circuits_qasm(), 2000))
    torch.testing.assert_close(measured, again, atol=0, rtol=0)  # same seed and jobs: same counts
    counts = QiskitSampler(seed=3, batch_size=5).run(layer.circuits_qasm(), 2000)
    # no two jobs share a seed: circuits 0, 5 and 10 (first of each job) are not sampled alike when equal
    same = vqc_qasm(layer.theta[0])
    first_of_jobs = QiskitSampler(seed=3, batch_size=1).run([same] * 3, 2000)
    assert first_of_jobs[0] != first_of_jobs[1] != first_of_jobs[2]
    with torch.no_grad():
        exact = layer.generate_weight()
    assert bool(((measured - exact).abs() <= 5 * standard_errors(layer, 2000) + 1e-12).all())
    assert all(sum(entry.values()) == 2000 for entry in counts)
    rce = QPGConv.from_conv(nn.Conv2d(4, 2, 1), post="rce")
    with pytest.raises(ValueError, match="RCE, which reads the real parts of amplitudes"):
        measure_kernel(rce, sampler, 100)


def test_reference_sampler_primitive_and_errors():
    pytest.importorskip("qiskit")
    from qiskit.primitives import Sampler as ReferenceSampler

    from nnunet_qpg.samplers import QiskitSampler, Sampler

    torch.manual_seed(3)
    layer = QPGConv.from_conv(nn.Conv2d(4, 2, 1), post="sst").double().eval()
    sampler = QiskitSampler(ReferenceSampler(options={"seed": 5}))
    assert isinstance(sampler, Sampler) and not sampler.v2
    counts = sampler.run(layer.circuits_qasm(), shots=4000)
    assert len(counts) == layer.num_vqcs and all(sum(c.values()) == 4000 for c in counts)
    assert all(len(key) == layer.num_qubits for c in counts for key in c)
    with torch.no_grad():
        exact = layer.generate_weight()
    assert bool(((layer.kernel_from_counts(counts) - exact).abs() <= 5 * standard_errors(layer, 4000) + 1e-12).all())
    assert layer.num_vqcs == 2  # Conv2d 4 -> 2, 1x1: the 2 outputs are the targets
    with pytest.raises(ValueError, match="1 count dictionaries for 2 VQCs"):
        layer.kernel_from_counts(counts[:1])
    with pytest.raises(ValueError, match="shots"):
        sampler.run(layer.circuits_qasm(), shots=0)
    with pytest.raises(ValueError, match="batch_size"):
        QiskitSampler(batch_size=0)


# -- export-circuits on an nnU-Net model folder ------------------------------------------------------------------------

def make_model_folder(results: Path, trainer: str, folds: dict[str, list[str]]) -> Path:
    """DatasetX/<trainer>__nnUNetPlans__2d with nnU-Net's stored 2D plan (3 stages, 32x32) and checkpoints in
    nnUNetv2_train's format, each with its own random weights."""
    from common import load_stored_plan, shrink_for_quick  # benchmarks/common.py

    from nnunet_qpg.commands.trainers_path import use_shipped_trainers
    from nnunet_qpg.export import build_network

    use_shipped_trainers()
    plans, dataset_json = load_stored_plan()
    plans = shrink_for_quick(plans)
    folder = results / plans["dataset_name"] / f"{trainer}__nnUNetPlans__2d"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    for seed, (fold, names) in enumerate(folds.items()):
        for offset, name in enumerate(names):
            torch.manual_seed(100 * seed + offset)
            network = build_network(trainer, plans, dataset_json, "2d")
            (folder / fold).mkdir(exist_ok=True)
            torch.save({"network_weights": network.state_dict(), "trainer_name": trainer, "current_epoch": 1,
                        "init_args": {"plans": plans, "configuration": "2d", "fold": fold.removeprefix("fold_"),
                                      "dataset_json": dataset_json, "device": "cpu"}}, folder / fold / name)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    results = tmp_path_factory.mktemp("circuits_results")
    qpg = make_model_folder(results, "nnUNetTrainerQPG", {"fold_0": ["checkpoint_final.pth", "checkpoint_best.pth"],
                                                          "fold_1": ["checkpoint_final.pth"]})
    lora = make_model_folder(results, "nnUNetTrainerConvLoRA", {"fold_0": ["checkpoint_final.pth"]})
    return qpg, lora


def cli(capsys, *args) -> tuple[int, str, str]:
    from nnunet_qpg.cli import main

    code = main(["export-circuits", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(result, *phrases):
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, (phrase, err)


def network_of(checkpoint: Path):
    from nnunet_qpg.export import build_network
    from nnunet_qpg.safe_io import load_checkpoint

    content = load_checkpoint(checkpoint)
    plans = json.loads((checkpoint.parents[1] / "plans.json").read_text())
    dataset_json = json.loads((checkpoint.parents[1] / "dataset.json").read_text())
    network = build_network(content["trainer_name"], plans, dataset_json, "2d")
    network.load_state_dict(content["network_weights"])
    return network.double().eval()


def test_export_circuits_end_to_end(models, tmp_path, capsys):
    qpg, _ = models
    out = tmp_path / "circuits"
    code, stdout, stderr = cli(capsys, qpg, out)
    assert code == 0, stderr
    assert "2 QPG layer(s)" in stdout and "3 checkpoint(s)" in stdout and "12 circuits, 16 files" in stdout

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    qasm = [f for f in files if f.endswith(".qasm")]
    assert len(qasm) == 12 and len(files) == 16  # 3 checkpoints x 2 heads x 2 VQCs, 3 + 1 index files
    assert "fold_0/checkpoint_best/decoder.seg_layers.1/vqc_00001.qasm" in qasm
    manifest = json.loads((out / "index.json").read_text())
    assert manifest["written_by"] == "nnunet-qpg export-circuits" and manifest["source"] == str(qpg.resolve())
    assert [(c["fold"], c["checkpoint"]) for c in manifest["checkpoints"]] == [
        ("fold_0", "checkpoint_final.pth"), ("fold_0", "checkpoint_best.pth"), ("fold_1", "checkpoint_final.pth")]

    index = json.loads((out / "fold_0" / "checkpoint_final" / "index.json").read_text())
    assert index["trainer_name"] == "nnUNetTrainerQPG" and index["configuration"] == "2d"
    network = network_of(qpg / "fold_0" / "checkpoint_final.pth")
    assert [entry["name"] for entry in index["layers"]] == ["decoder.seg_layers.0", "decoder.seg_layers.1"]
    for entry in index["layers"]:
        layer = network.get_submodule(entry["name"])
        assert isinstance(layer, QPGConv)
        # seg layer Conv2d(C -> 2, 1x1): C_in > C_out, so the 2 outputs are the targets (axis 0)
        assert entry["class"] == "QPGConv" and entry["transposed"] is False and entry["target_axis"] == 0
        assert entry["weight_shape"] == list(layer.weight_shape) and entry["kernel_size"] == [1, 1]
        assert entry["qubits"] == layer.num_qubits and entry["blocks"] == 1 and entry["entangle"] is True
        assert entry["target_channels"] == 2 and entry["other_channels"] == layer.weight_shape[1]
        assert entry["post"]["name"] == "lpp" and entry["post"]["measurable"] is True
        assert entry["post"]["weight"] == layer.post.projection.weight.detach().view(-1).tolist()
        assert entry["post"]["bias"] == float(layer.post.projection.bias.detach())
        assert entry["shots"] is None and entry["gradient"] == "backprop" and entry["noise"] is None
        assert entry["vqcs"] == [{"file": "vqc_00000.qasm", "target_channel": 0, "kernel_position": [0, 0]},
                                 {"file": "vqc_00001.qasm", "target_channel": 1, "kernel_position": [0, 0]}]
        folder = out / "fold_0" / "checkpoint_final" / entry["folder"]
        texts = [(folder / vqc["file"]).read_text() for vqc in entry["vqcs"]]
        assert texts == vqcs_qasm(layer.theta)  # this checkpoint's trained angles, in VQC order
    # the best checkpoint has other weights, so other programs
    best, final = (out / "fold_0" / name / "decoder.seg_layers.0" / "vqc_00000.qasm"
                   for name in ("checkpoint_best", "checkpoint_final"))
    assert best.read_text() != final.read_text()

    # an earlier output is replaced whole: no stale fold after -f 1
    code, stdout, stderr = cli(capsys, qpg, out, "-f", "1", "-chk", "checkpoint_final.pth")
    assert code == 0, stderr
    assert "replaced its earlier export-circuits output" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["fold_1", "index.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_exported_files_run_in_aer_and_rebuild_the_kernel(models, tmp_path, capsys):
    pytest.importorskip("qiskit_aer")
    from nnunet_qpg.samplers import QiskitSampler

    qpg, _ = models
    out = tmp_path / "circuits"
    assert cli(capsys, qpg, out, "-f", "0", "-chk", "checkpoint_final.pth")[0] == 0
    index = json.loads((out / "fold_0" / "checkpoint_final" / "index.json").read_text())
    network = network_of(Path(index["source_checkpoint"]))
    shots = 20_000
    for entry in index["layers"]:
        folder = out / "fold_0" / "checkpoint_final" / entry["folder"]
        counts = QiskitSampler(seed=11).run([(folder / v["file"]).read_text() for v in entry["vqcs"]], shots)
        layer = network.get_submodule(entry["name"])
        with torch.no_grad():
            exact = layer.generate_weight()
        rebuilt = layer.kernel_from_counts(counts)
        assert bool(((rebuilt - exact).abs() <= 5 * standard_errors(layer, shots) + 1e-12).all())


def test_export_circuits_refusals(models, tmp_path, capsys, monkeypatch):
    qpg, lora = models
    # not a model folder
    plain = tmp_path / "not_a_model"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    assert_refused(cli(capsys, plain, tmp_path / "out1"), "plans.json is missing")
    assert_refused(cli(capsys, tmp_path / "missing", tmp_path / "out1"), "does not exist")
    assert not (tmp_path / "out1").exists()
    # an OUT holding other files: refused, untouched
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "results.csv").write_text("mine")
    assert_refused(cli(capsys, qpg, busy), "is not empty and is not an earlier export-circuits output",
                   "move that folder's files away")
    assert [p.name for p in busy.iterdir()] == ["results.csv"] and (busy / "results.csv").read_text() == "mine"
    # another command's index.json is not ours
    (busy / "index.json").write_text(json.dumps({"written_by": "someone else"}))
    assert_refused(cli(capsys, qpg, busy), "written by 'someone else'")
    # OUT inside the model folder
    assert_refused(cli(capsys, qpg, qpg / "circuits"), "lies inside the model folder")
    assert not (qpg / "circuits").exists()
    # a model without QPG layers
    assert_refused(cli(capsys, lora, tmp_path / "out2"), "has no QPG layers", "nothing to export")
    assert not (tmp_path / "out2").exists()
    # folds and checkpoints as `nnunet-qpg export` checks them
    assert_refused(cli(capsys, qpg, tmp_path / "out3", "-f", "3"), "-f 3", "folds with a checkpoint: 0, 1")
    assert_refused(cli(capsys, qpg, tmp_path / "out3", "-chk", qpg / "fold_0" / "checkpoint_final.pth"),
                   "not a checkpoint file name")
    assert not (tmp_path / "out3").exists()
    # the current folder (empty, but replaced whole) or a folder holding it
    here = tmp_path / "here" / "inner"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    assert_refused(cli(capsys, qpg, "."), "is the current folder or holds it")
    assert_refused(cli(capsys, qpg, ".."), "is the current folder or holds it")
    monkeypatch.chdir(tmp_path)
    assert here.is_dir()
    # an empty OUT is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(capsys, qpg, empty, "-f", "1")[0] == 0 and (empty / "index.json").is_file()


def test_layer_index_of_an_adapter_with_sst():
    from nnunet_qpg.commands.export_circuits import layer_index

    layer = QPGAConv.from_conv(nn.ConvTranspose3d(2, 9, (1, 2, 3)), post="sst", start_at_base=True, entangle=False)
    entry = layer_index("up.0", layer, "up.0")
    # transposed weight [C_in=2, C_out=9, 1, 2, 3]: inputs (axis 0) are the targets; 2 x 6 VQCs of 4 qubits
    assert entry["class"] == "QPGAConv" and entry["transposed"] is True and entry["target_axis"] == 0
    assert entry["num_vqcs"] == 12 and entry["qubits"] == 4 and entry["entangle"] is False
    assert entry["post"] == {"name": "sst", "readout": "probabilities", "measurable": True,
                             "formula": "y_i = (pi/2) (p_i - 0.5), Eq. 5", "scale": math.pi / 2,
                             "offset": -math.pi / 4}
    assert "up.0.weight" in entry["base_kernel"] and "initial_increment" in entry["base_kernel"]
    assert entry["vqcs"][7] == {"file": "vqc_00007.qasm", "target_channel": 1, "kernel_position": [0, 0, 1]}
