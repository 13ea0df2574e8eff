"""Kernel-launching operations QPG adds to one nnU-Net training step (forward + backward), per placement.

What is counted (the issue's definition)
----------------------------------------
One training step (``network.zero_grad(set_to_none=True)`` outside, then forward, loss, ``loss.backward()``
inside) runs under ``torch.profiler`` with the CPU activity only, after one uncounted warm-up step. The profiler
gives a tree of events per thread; an event counts when

1. it is an *operator event*: a ``RecordScope.FUNCTION`` event (what the dispatcher records for every
   ``namespace::op`` call; an unqualified name such as ``detach`` is read as ``aten::detach``), not one of the
   autograd engine's wrappers (``autograd::engine::evaluate_function: ...``). Autograd node events
   (``ConvolutionBackward0``, ``torch::autograd::AccumulateGrad``: ``RecordScope.BACKWARD_FUNCTION``) and user
   annotations are not operators: the backward pass counts by the aten ops under them. Kernels of a compiled
   graph (``--compile``: ``triton_*`` / ``cpp_fused_*`` records) are operator events too, one per kernel;
2. it is *not free*: not a view, metadata change, metadata query or allocation, since those launch no GPU
   kernel. The rule comes from torch's own op schemas first: an op is a view when every overload of it that
   returns tensors returns only non-mutable aliases of its inputs (``Tensor(a)``, ``Tensor(a)[]``: view,
   reshape, expand, transpose, permute, t, slice, select, narrow, split, unbind, chunk, (un)squeeze, detach,
   alias, view_as_real, as_strided, lift_fresh, and the no-op forms of ``to`` / ``contiguous``), or when it is
   tagged ``inplace_view`` (``as_strided_``, ``squeeze_``, ``transpose_``, ``resize_``: metadata changed in
   place). A short explicit list adds allocations and metadata that the schemas do not show
   (:data:`FREE_OPS`: ``empty``, ``empty_like``, ``empty_strided``, ``new_empty*``, ``_unsafe_view``,
   ``result_type``, ``size``/``stride``/``numel`` queries, ``requires_grad_``, ...) and, by name, setup and
   metadata queries (``is_*``, ``_use_*``, ``_has_*``, ``*_available`` such as ``_nnpack_available``,
   ``cudnn_is_acceptable``). Ops that return only non-tensors are otherwise counted: ``_local_scalar_dense``
   (``.item()``) copies device to host, ``equal`` compares on the device;
3. it is a *leaf*: no event below it counts. Free events are removed from the tree first, so an op whose only
   children are allocations (``mkldnn_convolution`` allocating its output) is a leaf and counts, and a composite
   (``conv2d`` -> ``convolution`` -> ... ) counts once, by its innermost op. A view op that had to copy
   (``reshape`` of a non-contiguous tensor -> ``clone`` -> ``copy_``) counts by its ``copy_``.

"Ops the step adds" = the count with the placement minus the count of the same step on the plain network (same
seed, same input, same loss). A placement that freezes the base kernels (QPGA, ConvLoRA) skips their weight
gradients, so its difference to the plain step can be small or negative; the issue therefore budgets QPGA
against ConvLoRA. The count is deterministic for a given torch build, network and device, and it is the
dispatcher's view: on the CPU a reduction such as ``sum`` shows up as its ``fill_`` child, so CPU and CUDA counts
differ slightly; both sides of every difference use the same device.

Networks and loss
-----------------
* 2d: nnU-Net's PlainConvUNet from the stored 2D 256x256 plan (``benchmarks/data/plans_2d_256x256.json``: 7
  stages, features 32..512), deep supervision on, input 2 x 1 x 128 x 128.
* 3d: a 3d_fullres ResidualEncoderUNet (ResEnc-M blocks 1,3,4,6,6,6; features 32..320; first kernel 1x3x3;
  anisotropic strides), stored as nnU-Net plans store an architecture in
  ``benchmarks/data/plans_3d_fullres_resenc.json`` and built with ``get_network_from_plans``; deep supervision
  on, input 1 x 1 x 16 x 64 x 64.
* Loss: nnU-Net's own training loss, built as ``nnUNetTrainer._build_loss`` builds it: ``DC_and_CE_loss``
  (MemoryEfficientSoftDiceLoss, batch dice from the plan, do_bg False) wrapped in ``DeepSupervisionWrapper``
  with weights 1/2^i, the lowest output weighted 0, normalised; targets are a fixed random label map
  downsampled by striding for each deep-supervision output. No gradient clipping, no optimizer step.

Placements come from the shipped trainers (``trainers/*.py``, ``cls.resolved_qpg_config()``), so they stay in
sync: heads = nnUNetTrainerQPG, decoder K=1 / K=3 = nnUNetTrainerQPGDecoder (``blocks=3``), QPGA =
nnUNetTrainerQPGA, ConvLoRA = nnUNetTrainerConvLoRA.

Peak memory (unless ``--no-memory``): each placement in a fresh subprocess (``--quick``: all in one, one after
the other) builds its network, runs one warm-up step, drops the gradients, and then measures three steps. CPU:
the process's resident-set high-water mark (VmHWM) is reset before each step (``/proc/self/clear_refs`` = 5) and
the step's peak is VmHWM minus the RSS before the step (the median of the three is reported), with glibc's mmap
threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so freed tensors go back to the OS and do not hide the
next step's peak; where clear_refs cannot be written it falls back to the growth of
``getrusage(RUSAGE_SELF).ru_maxrss`` over the steps. CUDA: ``torch.cuda.max_memory_allocated()`` after
``reset_peak_memory_stats()``, minus the allocated memory before the step. "process peak" is the whole
process's high-water mark (imports included), for scale only.

usage: python benchmarks/bench_launches.py [--quick] [--dims 2d,3d] [--device cpu|cuda] [--compile]
                                           [--threads T] [--no-memory] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))  # the shipped trainers/ package

import torch  # noqa: E402
from torch import nn  # noqa: E402

from common import DATA, load_stored_plan, machine_description, print_table, set_threads  # noqa: E402

# Allocations, metadata and metadata queries that launch no kernel and that the op schemas do not mark as views.
FREE_OPS = frozenset({
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
    "aten::_empty_affine_quantized", "aten::_unsafe_view", "aten::resize_", "aten::resize_as_", "aten::set_",
    "aten::result_type", "aten::size", "aten::sym_size", "aten::stride", "aten::sym_stride", "aten::numel",
    "aten::sym_numel", "aten::dim", "aten::storage_offset", "aten::is_contiguous", "aten::is_complex",
    "aten::is_floating_point", "aten::is_nonzero", "aten::is_same_size", "aten::is_set_to", "aten::is_leaf",
    "aten::is_conj", "aten::is_neg", "aten::is_inference", "aten::output_nr", "aten::_version",
    "aten::requires_grad_", "aten::retain_grad", "aten::_has_compatible_shallow_copy_type",
    "aten::_make_per_tensor_quantized_tensor", "aten::lift", "aten::lift_fresh", "aten::record_stream",
    "aten::_nested_tensor_size",
})
# Setup / metadata queries by name (they return a bool or an int and touch no tensor data).
QUERY_PREFIXES = ("is_", "_is_", "_use_", "_has_")
QUERY_SUFFIXES = ("_available", "_is_acceptable")
# Placements: name -> (trainer module, class, QPGConfig changes).
PLACEMENTS = {
    "heads": ("nnUNetTrainerQPG", "nnUNetTrainerQPG", {}),
    "decoder K=1": ("nnUNetTrainerQPGDecoder", "nnUNetTrainerQPGDecoder", {}),
    "decoder K=3": ("nnUNetTrainerQPGDecoder", "nnUNetTrainerQPGDecoder", {"blocks": 3}),
    "QPGA": ("nnUNetTrainerQPGA", "nnUNetTrainerQPGA", {}),
    "ConvLoRA": ("nnUNetTrainerConvLoRA", "nnUNetTrainerConvLoRA", {}),
}
DIFFERENCE = ("QPGA minus ConvLoRA", "QPGA", "ConvLoRA")
ROWS = {"2d": ("heads", "decoder K=1", "decoder K=3", "QPGA", "ConvLoRA"),
        "3d": ("QPGA", "ConvLoRA", "heads", "decoder K=1")}
# The budgets of added ops (for "QPGA minus ConvLoRA": QPGA's step minus ConvLoRA's step).
BUDGETS = {"2d": {"heads": 100, "decoder K=1": 150, "decoder K=3": 400, "QPGA minus ConvLoRA": 150},
           "3d": {"QPGA minus ConvLoRA": 200}}
PLAN_3D = DATA / "plans_3d_fullres_resenc.json"
INPUT_2D = (2, 1, 128, 128)


# -- counting ----------------------------------------------------------------------------------------------------
def _qualified(name: str) -> str:
    return name if "::" in name else f"aten::{name}"


@functools.lru_cache(maxsize=None)
def is_free_op(name: str) -> bool:
    """True for an op that launches no kernel: a view / in-place metadata change by its schemas, or FREE_OPS."""
    name = _qualified(name)
    if name in FREE_OPS:
        return True
    try:
        schemas = torch._C._jit_get_schemas_for_operator(name)
    except Exception:  # an unregistered name: not a view we know of
        return False
    op_name = name.partition("::")[2]
    if op_name.startswith(QUERY_PREFIXES) or op_name.endswith(QUERY_SUFFIXES):
        return True  # _nnpack_available, is_pinned, _use_cudnn_*, cudnn_is_acceptable: queries of the setup
    tensor_schemas = [s for s in schemas if s.returns and all("Tensor" in str(r.type) for r in s.returns)]
    if not tensor_schemas:
        return False
    namespace, _, op_name = name.partition("::")
    try:
        packet = getattr(getattr(torch.ops, namespace), op_name)
        if any(torch.Tag.inplace_view in getattr(packet, overload).tags for overload in packet.overloads()):
            return True
    except (AttributeError, RuntimeError):
        pass
    return all(r.alias_info is not None and not r.alias_info.is_write for s in tensor_schemas for r in s.returns)


def _is_compiled_kernel(name: str) -> bool:
    """A kernel of a torch.compile'd graph: Triton (``triton_poi_fused_...``) or Inductor C++ (``cpp_fused_...``,
    ``graph_0_cpp_fused_...``; recorded when ``torch._inductor.config.cpp.enable_kernel_profile`` is on)."""
    return name.startswith("triton_") or "cpp_fused" in name


@functools.lru_cache(maxsize=None)
def _is_registered_aten_op(name: str) -> bool:
    if not name.isidentifier():
        return False
    try:
        return bool(torch._C._jit_get_schemas_for_operator(f"aten::{name}"))
    except Exception:
        return False


def _is_operator_event(event) -> bool:
    """A dispatcher op (``namespace::op``, or an unqualified registered aten name such as ``detach``) or a compiled
    kernel; not the autograd engine's wrappers, autograd nodes, or annotations (``Torch-Compiled Region``,
    ``## Call CompiledFxGraph ...``, ``TorchDynamo Cache Lookup``, ``record_function`` blocks)."""
    name = event.name
    if _is_compiled_kernel(name):
        return True
    if name.startswith("autograd::") or getattr(event, "scope", 0) != 0:
        return False
    if "::" in name:
        namespace, _, op_name = name.partition("::")
        return namespace.isidentifier() and op_name.replace(".", "_").isidentifier()
    return _is_registered_aten_op(name)


def leaf_op_counts(events) -> Counter:
    """Counter of counted op names (see the module docstring) over the profiler's event list."""
    counts: Counter = Counter()
    visited: set[int] = set()

    def visit(event) -> bool:  # True when this event or one below it counted
        visited.add(id(event))
        below = False
        for child in event.cpu_children:
            below |= visit(child)
        if below:
            return True
        if _is_operator_event(event) and not is_free_op(event.name):
            counts[_qualified(event.name) if not _is_compiled_kernel(event.name) else event.name] += 1
            return True
        return False

    roots = [e for e in events if e.cpu_parent is None]
    for root in roots:
        visit(root)
    # An event the tree builder left unattached (it should not happen) still counts as its own root.
    for event in events:
        if id(event) not in visited:
            visit(event)
    return counts


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(network: nn.Module, inputs: torch.Tensor, loss_fn) -> None:
    """Forward, loss, backward; gradients set to None before, as nnU-Net's train_step does."""
    network.zero_grad(set_to_none=True)
    loss = loss_fn(network(inputs))
    loss.backward()


def step_op_counts(network: nn.Module, inputs: torch.Tensor, loss_fn, warmup: int = 1) -> Counter:
    """Counter of the counted ops of one training step (forward + backward), by op name."""
    from torch.profiler import ProfilerActivity, profile

    network.train()
    for _ in range(warmup):
        train_step(network, inputs, loss_fn)
    network.zero_grad(set_to_none=True)
    _synchronize(inputs.device)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = loss_fn(network(inputs))
        loss.backward()
        _synchronize(inputs.device)
    network.zero_grad(set_to_none=True)
    return leaf_op_counts(prof.events())


def count_step_ops(network: nn.Module, inputs: torch.Tensor, loss_fn, warmup: int = 1) -> int:
    """How many kernel-launching operations one training step (forward + backward) of ``network`` runs."""
    return sum(step_op_counts(network, inputs, loss_fn, warmup).values())


# -- networks, inputs and the loss -------------------------------------------------------------------------------
def _quiet_import(module: str):
    import importlib

    with contextlib.redirect_stdout(io.StringIO()):  # nnunetv2.paths prints when nnUNet_* are not set
        return importlib.import_module(module)


def network_spec(dims: str, quick: bool = False) -> dict:
    """Architecture (as nnU-Net plans store it), input shape, classes and batch dice of the chosen network."""
    if dims == "2d":
        plans, dataset_json = load_stored_plan()
        config = plans["configurations"]["2d"]
        architecture = copy.deepcopy(config["architecture"])
        shape = list(INPUT_2D)
        spec = dict(architecture=architecture, input_shape=shape, batch_dice=config["batch_dice"],
                    num_input_channels=len(dataset_json["channel_names"]),
                    num_output_channels=len(dataset_json["labels"]))
        stages = 3 if quick else None
        if quick:
            spec["input_shape"] = [1, 1, 32, 32]
    elif dims == "3d":
        stored = json.loads(PLAN_3D.read_text())
        spec = dict(architecture=copy.deepcopy(stored["architecture"]),
                    input_shape=[stored["batch_size"], stored["num_input_channels"], *stored["patch_size"]],
                    batch_dice=stored["batch_dice"], num_input_channels=stored["num_input_channels"],
                    num_output_channels=stored["num_output_channels"])
        stages = 3 if quick else None
        if quick:
            spec["input_shape"] = [1, 1, 4, 16, 16]
    else:
        raise ValueError(f"dims must be '2d' or '3d', got {dims!r}")
    if stages:
        kwargs = spec["architecture"]["arch_kwargs"]
        kwargs["n_stages"] = stages
        for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage", "n_blocks_per_stage"):
            if key in kwargs:
                kwargs[key] = list(kwargs[key])[:stages]
        if "n_blocks_per_stage" in kwargs:
            kwargs["n_blocks_per_stage"] = [1] * stages
        kwargs["n_conv_per_stage_decoder"] = list(kwargs["n_conv_per_stage_decoder"])[:stages - 1]
    return spec


def build_plain_network(spec: dict, seed: int = 0) -> nn.Module:
    get_network_from_plans = _quiet_import("nnunetv2.utilities.get_network_from_plans").get_network_from_plans
    architecture = spec["architecture"]
    torch.manual_seed(seed)
    requires_import = architecture.get("_kw_requires_import", architecture.get("arch_kwargs_req_import", ()))
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  list(requires_import), spec["num_input_channels"], spec["num_output_channels"],
                                  deep_supervision=True)


def make_inputs_and_loss(spec: dict, device: torch.device, seed: int = 0):
    """(input batch, loss function of the network's outputs): nnU-Net's deep-supervision DC + CE loss."""
    import numpy as np

    compound = _quiet_import("nnunetv2.training.loss.compound_losses")
    deep_supervision = _quiet_import("nnunetv2.training.loss.deep_supervision")
    dice = _quiet_import("nnunetv2.training.loss.dice")
    generator = torch.Generator().manual_seed(seed)
    shape = spec["input_shape"]
    inputs = torch.randn(*shape, generator=generator).to(device)
    label = torch.randint(0, spec["num_output_channels"], (shape[0], 1, *shape[2:]), generator=generator,
                          dtype=torch.int16)
    strides = np.cumprod(np.vstack(spec["architecture"]["arch_kwargs"]["strides"]), axis=0)[:-1]
    targets = [label[(slice(None), slice(None), *(slice(None, None, int(s)) for s in step))].contiguous().to(device)
               for step in strides]
    loss = compound.DC_and_CE_loss({"batch_dice": spec["batch_dice"], "smooth": 1e-5, "do_bg": False, "ddp": False},
                                   {}, weight_ce=1, weight_dice=1, ignore_label=None,
                                   dice_class=dice.MemoryEfficientSoftDiceLoss)
    weights = np.array([1 / (2 ** i) for i in range(len(targets))])
    weights[-1] = 0
    loss = deep_supervision.DeepSupervisionWrapper(loss, weights / weights.sum())
    return inputs, (lambda outputs: loss(outputs, targets))


@functools.lru_cache(maxsize=None)
def placement_config(placement: str):
    """The QPGConfig of a placement, read from its shipped trainer."""
    module, cls_name, changes = PLACEMENTS[placement]
    cls = getattr(_quiet_import(f"trainers.{module}"), cls_name)
    config = cls.resolved_qpg_config()
    return config.replace(**changes) if changes else config


def build_network(placement: str | None, dims: str = "2d", quick: bool = False, device: str = "cpu",
                  compile_network: bool = False):
    """(network, inputs, loss_fn, swapped layers) with the placement applied (None: the plain network)."""
    spec = network_spec(dims, quick)
    network = build_plain_network(spec)
    layers = 0
    if placement is not None:
        from nnunet_qpg import apply_qpg

        layers = len(apply_qpg(network, placement_config(placement)))
    device = torch.device(device)
    network = network.to(device)
    inputs, loss_fn = make_inputs_and_loss(spec, device)
    if compile_network:
        if device.type == "cpu":
            import torch._inductor.config as inductor_config

            inductor_config.cpp.enable_kernel_profile = True  # so each C++ kernel call is a profiler event
        network = torch.compile(network)
    return network, inputs, loss_fn, layers


@functools.lru_cache(maxsize=None)
def _count(placement: str | None, dims: str, quick: bool, device: str, compile_network: bool) -> tuple[int, int]:
    network, inputs, loss_fn, layers = build_network(placement, dims, quick, device, compile_network)
    return count_step_ops(network, inputs, loss_fn), layers


def plain_ops(dims: str = "2d", quick: bool = False, device: str = "cpu", compile_network: bool = False) -> int:
    """Counted ops of one training step of the plain network."""
    return _count(None, dims, quick, device, compile_network)[0]


def added_ops(placement: str, dims: str = "2d", quick: bool = False, device: str = "cpu",
              compile_network: bool = False) -> dict:
    """Ops one training step runs with ``placement`` (a key of PLACEMENTS, or "QPGA minus ConvLoRA") applied,
    and the difference to the reference step: {"placement", "dims", "reference", "ops", "added", "ratio",
    "layers", "per_layer"}. The reference is the plain network's step; for "QPGA minus ConvLoRA" it is
    ConvLoRA's step (``ops`` is QPGA's, ``added`` = QPGA - ConvLoRA, ``ratio`` = QPGA / ConvLoRA)."""
    if placement == DIFFERENCE[0]:
        ops, layers = _count(DIFFERENCE[1], dims, quick, device, compile_network)
        reference = _count(DIFFERENCE[2], dims, quick, device, compile_network)[0]
    else:
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; known: {', '.join(PLACEMENTS)}, {DIFFERENCE[0]}")
        ops, layers = _count(placement, dims, quick, device, compile_network)
        reference = plain_ops(dims, quick, device, compile_network)
    added = ops - reference
    return {"placement": placement, "dims": dims, "reference": reference, "ops": ops, "added": added,
            "ratio": ops / reference if reference else float("nan"), "layers": layers,
            "per_layer": added / layers if layers else float("nan")}


# -- peak memory (a fresh subprocess per placement) --------------------------------------------------------------
def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def measure_memory_here(placement: str | None, dims: str, quick: bool, device: str, compile_network: bool,
                        steps: int = 3) -> dict:
    """Peak memory of a training step above the memory before it, in this process (see the module docstring)."""
    import resource

    network, inputs, loss_fn, _ = build_network(placement, dims, quick, device, compile_network)
    network.train()
    train_step(network, inputs, loss_fn)  # warm-up
    network.zero_grad(set_to_none=True)
    gc.collect()
    dev = torch.device(device)
    peaks = []
    if dev.type == "cuda":
        for _ in range(steps):
            torch.cuda.synchronize(dev)
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            train_step(network, inputs, loss_fn)
            torch.cuda.synchronize(dev)
            peaks.append(torch.cuda.max_memory_allocated(dev) - base)
            network.zero_grad(set_to_none=True)
        return {"method": "cuda max_memory_allocated", "step_peak_bytes": int(statistics.median(peaks)),
                "absolute_peak_bytes": int(torch.cuda.max_memory_allocated(dev))}
    if _reset_peak_rss() and _read_status_kib("VmHWM") is not None:
        for _ in range(steps):
            gc.collect()
            base = _read_status_kib("VmRSS")
            _reset_peak_rss()
            train_step(network, inputs, loss_fn)
            peaks.append((_read_status_kib("VmHWM") - base) * 1024)
            network.zero_grad(set_to_none=True)
        return {"method": "VmHWM reset per step", "step_peak_bytes": int(statistics.median(peaks)),
                "absolute_peak_bytes": _read_status_kib("VmHWM") * 1024}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(steps):
        train_step(network, inputs, loss_fn)
        network.zero_grad(set_to_none=True)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": "ru_maxrss growth", "step_peak_bytes": (after - before) * 1024,
            "absolute_peak_bytes": after * 1024}


def measure_memory(placements: list[str | None], dims: str, quick: bool, device: str, compile_network: bool,
                   threads: int, fresh: bool = True) -> dict:
    """{placement or "plain": measure_memory_here(...)}, each placement in a fresh Python process (so nothing of
    another placement's step lingers), or with ``fresh=False`` all in one process, one after the other."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads)}
    results = {}
    for group in ([[p] for p in placements] if fresh else [list(placements)]):
        request = json.dumps(dict(placements=group, dims=dims, quick=quick, device=device,
                                  compile_network=compile_network, threads=threads))
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_memory-worker", request],
                              capture_output=True, text=True, env=env, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"memory worker for {group} {dims} failed:\n{done.stderr[-3000:]}")
        results.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def _memory_worker(request: str) -> int:
    settings = json.loads(request)
    set_threads(settings.pop("threads"))
    results = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for placement in settings.pop("placements"):
            results[placement or "plain"] = measure_memory_here(placement, **settings)
            gc.collect()
    print(json.dumps(results))
    return 0


# -- the report ----------------------------------------------------------------------------------------------------
def _mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def report(dims: str, args) -> dict:
    spec = network_spec(dims, args.quick)
    kwargs = spec["architecture"]["arch_kwargs"]
    name = spec["architecture"]["network_class_name"].rsplit(".", 1)[-1]
    rows_wanted = [p for p in ROWS[dims] if p in args.placements]
    started = time.perf_counter()
    plain = plain_ops(dims, args.quick, args.device, args.compile)
    results = {}
    for placement in rows_wanted:
        results[placement] = added_ops(placement, dims, args.quick, args.device, args.compile)
    if DIFFERENCE[1] in results and DIFFERENCE[2] in results:
        results[DIFFERENCE[0]] = added_ops(DIFFERENCE[0], dims, args.quick, args.device, args.compile)
    seconds = time.perf_counter() - started
    print(f"\n{dims}: {name}, {kwargs['n_stages']} stages, features {list(kwargs['features_per_stage'])}, input "
          f"{' x '.join(map(str, spec['input_shape']))}, deep supervision on, nnU-Net DC+CE deep-supervision loss, "
          f"device {args.device}{', torch.compile' if args.compile else ''}")
    print(f"plain step (forward + backward): {plain} ops")
    budgets = BUDGETS.get(dims, {}) if not args.quick else {}
    rows = []
    for placement, r in results.items():
        budget = budgets.get(placement)
        verdict = "-" if budget is None else ("met" if r["added"] <= budget else "MISSED")
        reference = "plain" if placement != DIFFERENCE[0] else DIFFERENCE[2]
        rows.append([placement, str(r["layers"]), f"{r['ops']:,}", reference, f"{r['reference']:,}",
                     f"{r['added']:,}", f"{r['ratio']:.2f}", f"{r['per_layer']:.1f}",
                     "-" if budget is None else f"<= {budget}", verdict])
    print_table(["placement", "layers", "step ops", "minus", "ref ops", "added ops", "ratio", "added/layer",
                 "budget", "verdict"], rows)
    print("added ops = step ops - ref ops (the plain step, or ConvLoRA's step for QPGA minus ConvLoRA); "
          "ratio = step ops / ref ops; layers = convolutions swapped")
    print(f"(counted in {seconds:.1f} s)")
    figures = {"network": name, "input_shape": spec["input_shape"], "plain": plain, "placements": results,
               "budgets": budgets}
    if not args.no_memory:
        # --quick measures every placement in one process, one after the other (seconds, less robust).
        memory = measure_memory([None, *rows_wanted], dims, args.quick, args.device, args.compile, args.threads,
                                fresh=not args.quick)
        base = memory["plain"]["step_peak_bytes"]
        mem_rows = [[p, _mib(m["step_peak_bytes"]), f"{m['step_peak_bytes'] / base:.2f}" if base > 0 else "-",
                     _mib(m["absolute_peak_bytes"])] for p, m in memory.items()]
        print()
        print_table(["placement", "step peak MiB", "ratio", "process peak MiB"], mem_rows)
        where = "all placements in one process (--quick)" if args.quick else "a fresh process per placement"
        print(f"step peak = {next(iter(memory.values()))['method']}: peak during a step above the memory before it "
              f"(median of 3 steps after a warm-up, {where}); ratio = / plain")
        figures["memory"] = memory
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="3-stage 2D net on 32x32 and 3-stage 3D net on 4x16x16 (seconds; budgets not judged)")
    parser.add_argument("--dims", default="2d,3d", help="comma-separated networks to count: 2d, 3d (default both)")
    parser.add_argument("--placements", default=",".join(PLACEMENTS),
                        help=f"comma-separated subset of: {', '.join(PLACEMENTS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (CPU-side profiler events of the CUDA ops)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (a compiled kernel is one op)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-placement peak-memory subprocesses")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    parser.add_argument("--_memory-worker", dest="memory_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker is not None:
        return _memory_worker(args.memory_worker)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    args.placements = [p.strip() for p in args.placements.split(",") if p.strip()]
    unknown = [p for p in args.placements if p not in PLACEMENTS]
    if unknown:
        parser.error(f"unknown placements {unknown}; known: {', '.join(PLACEMENTS)}")
    set_threads(args.threads)
    started = time.perf_counter()
    print(machine_description())
    figures = {"device": args.device, "compile": args.compile, "quick": args.quick, "threads": args.threads}
    for dims in [d.strip() for d in args.dims.split(",") if d.strip()]:
        figures[dims] = report(dims, args)
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
