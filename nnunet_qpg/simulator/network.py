"""Every QPG layer of a network generated together, once per forward pass, in a handful of batched operations.

On a GPU every tensor operation is a kernel launch of several microseconds whatever its size, so what QPG costs per
training step is set by how many operations generation dispatches. Generating layer by layer costs ~160 operations
per layer (forward and backward); here the whole network's kernels cost a fixed few dozen plus a few per group of
large layers, with the same numbers (the per-layer path, :func:`~nnunet_qpg.simulator.generation.generate_kernel`,
and the gate-by-gate reference are their twins in the tests).

One block (the paper's setting, K = 1) with an affine post-processing (LPP Eq. 4, SST Eq. 5):

1. Before its CNOT ring a VQC's state is the product state ``(x)_q RX(b_q) RY(a_q) |+>``, whose qubit q has
   probabilities ``(1 - z_q) / 2`` and ``(1 + z_q) / 2`` with ``z_q = sin(a_q) cos(b_q)``. Every qubit of every
   layer gets its ``z_q`` in one pass over all angles (:class:`_HalfRegisterStage`).
2. A VQC's probabilities over its high half (the first ceil(n/2) qubits) and its low half are Kronecker products
   of those 2-vectors. All layers share one padded table of H = max ceil(n/2) slots per half: a layer with fewer
   qubits fills the last slots and the rest hold the factor (1, 1), so one chain of H - 1 products serves every
   layer, and a layer reads its halves as the first 2^h and 2^l entries. The factor 2^-n the padding leaves out
   joins the post-processing's scale w_p, folded into the high half.
3. The outputs after the ring (Eq. 1) and the post-processing (Eqs. 4-5) are
   ``w_p p_src(i) + sum_k w_k d_k(i) + b = X[j_h] Y[j_l] + offset[i]`` with ``src(i) = (j_h, j_l)`` the ring's
   source index. Large layers with the same (n, C_other) form a group computed as one outer product and one ring
   gather; small layers all together are one gather per factor (:class:`_OutputStage`). The offsets of every
   layer are one matrix product of the coefficients with the bits of the output indices.

Other layers (K >= 2, RCE) are simulated in one :func:`~nnunet_qpg.simulator.statevector.simulate_vqcs` call per
(qubits, blocks, readout, outputs) group, with the post-processing applied to the whole group at once.

The result for each layer is its generated tensor in the weight layout, possibly a non-contiguous view: the layer
adds its base kernel (QPGAConv, Eq. 7) or makes it contiguous (QPGConv, Eq. 6), one operation either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from nnunet_qpg.simulator.generation import KernelLayout, PostProcessingLike, generate_kernel
from nnunet_qpg.simulator.ring import cnot_ring_permutation
from nnunet_qpg.simulator.statevector import simulate_vqcs

__all__ = ["FLAT_LAYER_LIMIT", "KernelRequest", "NetworkGenerator"]

# Layers with at most this many weights are computed together by gathers with per-weight indices (cheap for small
# layers, 24 bytes of index per weight); larger ones by an outer product per group (no per-weight index).
FLAT_LAYER_LIMIT = 1 << 16


@dataclass(frozen=True)
class KernelRequest:
    """What one layer asks of the generator: its angles, its weight layout, its post-processing and backend."""

    theta: torch.Tensor
    layout: KernelLayout
    post: PostProcessingLike
    backend: str = "native"


def _request_route(request: KernelRequest) -> str:
    if request.backend != "native":
        return "single"
    if request.theta.shape[1] == 1 and request.post.coefficient_count() is not None:
        return "one_block"
    return "simulated"


@dataclass
class _Group:
    """Large one-block layers sharing (n, C_other): rows ``[start, stop)`` of the half-register table."""

    start: int
    stop: int
    high: int
    low: int
    outputs: int
    sources: torch.Tensor  # ring source indices of the first `outputs` basis states
    inverse: torch.Tensor | None  # the ring's inverse permutation when every basis state is an output
    layers: torch.Tensor  # the members' rows in the offset table
    membership: torch.Tensor  # [members, rows]: 1 where a row (VQC) belongs to a member
    sizes: list[int]  # rows per layer
    members: list[int]  # request indices


@dataclass
class _SimulatedGroup:
    """Layers simulated in one ``simulate_vqcs`` call (K >= 2, or RCE): same (n, K, readout, C_other)."""

    members: list[int]
    outputs: int
    readout: str
    row_layer: torch.Tensor | None  # affine strategies: per row, its layer's row of the offset table
    scale_position: torch.Tensor | None  # affine strategies: per row, where its layer's w_p sits
    sizes: list[int]


@dataclass
class _Plan:
    """Index tables for one network structure, built once per (structure, device, dtype)."""

    one_block: list[int] = field(default_factory=list)
    simulated: list[_SimulatedGroup] = field(default_factory=list)
    single: list[int] = field(default_factory=list)
    affine_members: list[int] = field(default_factory=list)  # requests in the coefficient table, in its row order
    # coefficient table
    max_qubits: int = 0
    coefficient_index: torch.Tensor | None = None  # [layers, N + 1] positions in the padded coefficient vector
    coefficient_length: int = 0
    bits_and_one: torch.Tensor | None = None  # [N + 1, 2^N]: bit k of i, then a row of ones
    # one-block stage
    slots: int = 0
    rows: int = 0
    angle_order: torch.Tensor | None = None
    angle_inverse: torch.Tensor | None = None
    slot_index: torch.Tensor | None = None
    slot_inverse: torch.Tensor | None = None
    scale_position: torch.Tensor | None = None  # per row, where its layer's w_p sits in the coefficient vector
    scale_factor: torch.Tensor | None = None  # per row, 2^-n
    groups: list[_Group] = field(default_factory=list)
    largest_state: int = 0  # max over groups of 2^n x V_g: the scratch buffers' size
    flat_members: list[int] = field(default_factory=list)
    flat_high: torch.Tensor | None = None
    flat_low: torch.Tensor | None = None
    flat_offset: torch.Tensor | None = None
    flat_sizes: list[int] = field(default_factory=list)
    signs: torch.Tensor | None = None
    ones: torch.Tensor | None = None


class NetworkGenerator:
    """Generates the kernels of many QPG layers at once; keeps the index tables of each structure it has seen."""

    def __init__(self) -> None:
        self._plans: dict[tuple, _Plan] = {}

    def generate(self, requests: Sequence[KernelRequest]) -> list[torch.Tensor]:
        """Each request's generated tensor in its weight layout (Eqs. 6, 8), before any base kernel (Eq. 7)."""
        results: list[torch.Tensor | None] = [None] * len(requests)
        by_place: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            by_place.setdefault((request.theta.device, request.theta.dtype), []).append(index)
        for (device, dtype), indices in by_place.items():
            chosen = [requests[i] for i in indices]
            plan = self._plan(chosen, device, dtype)
            for local, tensor in enumerate(_run_plan(plan, chosen)):
                results[indices[local]] = tensor
        return results  # type: ignore[return-value]

    def _plan(self, requests: Sequence[KernelRequest], device: torch.device, dtype: torch.dtype) -> _Plan:
        key = (str(device), dtype, tuple((tuple(r.theta.shape), r.layout, r.post.readout, r.backend,
                                          r.post.coefficient_count()) for r in requests))
        plan = self._plans.get(key)
        if plan is None:
            # Index tables must not be inference tensors: the first call may come from nnU-Net's predictor.
            with torch.inference_mode(False), torch.no_grad():
                plan = self._plans[key] = _build_plan(requests, device, dtype)
        return plan


# -- building the index tables -----------------------------------------------------------------------------------

def _bits_of(index: torch.Tensor, count: int) -> torch.Tensor:
    return torch.stack([(index >> k) & 1 for k in range(count)])


def _build_plan(requests: Sequence[KernelRequest], device: torch.device, dtype: torch.dtype) -> _Plan:
    plan = _Plan()
    routes = [_request_route(r) for r in requests]
    plan.one_block = [i for i, route in enumerate(routes) if route == "one_block"]
    plan.single = [i for i, route in enumerate(routes) if route == "single"]
    simulated = [i for i, route in enumerate(routes) if route == "simulated"]
    affine = [i for i in plan.one_block]
    affine += [i for i in simulated if requests[i].post.coefficient_count() is not None]
    plan.affine_members = affine
    layer_row = {request_index: row for row, request_index in enumerate(affine)}

    # The coefficient table: row per affine layer, [w_0 .. w_{N-1}, b] padded with a zero beyond the layer's n.
    n_max = max([requests[i].layout.num_qubits for i in affine], default=1)
    plan.max_qubits = n_max
    position, starts = 0, {}
    for i in affine:
        starts[i] = position
        position += requests[i].layout.num_qubits + 2
    plan.coefficient_length = position
    dummy = position  # index of the zero appended to the coefficient vector
    table = torch.full((len(affine), n_max + 1), dummy, dtype=torch.long)
    for row, i in enumerate(affine):
        n = requests[i].layout.num_qubits
        table[row, :n] = torch.arange(starts[i] + 1, starts[i] + 1 + n)
        table[row, n_max] = starts[i] + n + 1
    plan.coefficient_index = table.to(device)
    basis = torch.arange(1 << n_max)
    plan.bits_and_one = torch.cat([_bits_of(basis, n_max), torch.ones(1, 1 << n_max, dtype=torch.long)]).to(
        device=device, dtype=dtype)

    # Simulated groups: one simulate_vqcs call each.
    keyed: dict[tuple, list[int]] = {}
    for i in simulated:
        r = requests[i]
        keyed.setdefault((r.layout.num_qubits, r.theta.shape[1], r.post.readout, r.layout.other_channels), []).append(i)
    for (_, _, readout, outputs), members in keyed.items():
        sizes = [requests[i].layout.num_vqcs for i in members]
        row_layer = scale_position = None
        if members[0] in layer_row:
            row_layer = torch.cat([torch.full((s,), layer_row[i]) for s, i in zip(sizes, members)]).to(device)
            scale_position = torch.cat([torch.full((s,), starts[i]) for s, i in zip(sizes, members)]).to(device)
        plan.simulated.append(_SimulatedGroup(members, outputs, readout, row_layer, scale_position, sizes))
    _build_one_block(plan, requests, layer_row, starts, device, dtype)
    return plan


def _build_one_block(plan: _Plan, requests: Sequence[KernelRequest], layer_row: dict[int, int], starts: dict[int, int],
                     device: torch.device, dtype: torch.dtype) -> None:
    if not plan.one_block:
        return
    layouts = {i: requests[i].layout for i in plan.one_block}
    grouped: dict[tuple[int, int], list[int]] = {}
    flat: list[int] = []
    for i in plan.one_block:
        layout = layouts[i]
        if math.prod(layout.weight_shape) > FLAT_LAYER_LIMIT:
            grouped.setdefault((layout.num_qubits, layout.other_channels), []).append(i)
        else:
            flat.append(i)
    order = [i for members in grouped.values() for i in members] + flat
    slots = max((layouts[i].num_qubits + 1) // 2 for i in order)
    plan.slots = slots
    width = 1 << slots

    # Rows of the half-register table in `order`; qubits (row, q) numbered in the same order.
    theta_start, position = {}, 0
    for i in plan.one_block:
        theta_start[i] = position
        position += requests[i].theta.numel()
    row_start, qubit_start, rows, qubits = {}, {}, 0, 0
    for i in order:
        row_start[i], qubit_start[i] = rows, qubits
        rows += layouts[i].num_vqcs
        qubits += layouts[i].num_vqcs * layouts[i].num_qubits
    plan.rows = rows
    ry_positions, rx_positions = [], []
    slot_index = torch.full((rows, 2, slots), qubits, dtype=torch.long)  # `qubits` points at an appended zero
    scale_position = torch.empty(rows, dtype=torch.long)
    scale_factor = torch.empty(rows, dtype=torch.float64)
    for i in order:
        layout = layouts[i]
        n, vqcs = layout.num_qubits, layout.num_vqcs
        high = (n + 1) // 2
        v = torch.arange(vqcs).unsqueeze(1)
        q = torch.arange(n).unsqueeze(0)
        # theta [V, 1, 2, n] flattened: RY angle of (v, q) at v*2n + q, RX angle at v*2n + n + q.
        ry_positions.append((theta_start[i] + v * 2 * n + q).flatten())
        rx_positions.append((theta_start[i] + v * 2 * n + n + q).flatten())
        qubit_ids = qubit_start[i] + v * n + q  # [V, n]
        rows_here = slice(row_start[i], row_start[i] + vqcs)
        slot_index[rows_here, 0, slots - high:] = qubit_ids[:, :high]
        if n > high:
            slot_index[rows_here, 1, slots - (n - high):] = qubit_ids[:, high:]
        scale_position[rows_here] = starts[i]
        scale_factor[rows_here] = 2.0 ** -n
    angle_order = torch.cat(ry_positions + rx_positions)
    plan.angle_order = angle_order.to(device)
    plan.angle_inverse = torch.empty_like(angle_order).scatter_(
        0, angle_order, torch.arange(angle_order.numel())).to(device)
    flat_slots = slot_index.flatten()
    real = flat_slots < qubits
    slot_inverse = torch.empty(qubits, dtype=torch.long)
    slot_inverse[flat_slots[real]] = torch.arange(flat_slots.numel())[real]
    plan.slot_index = flat_slots.to(device)
    plan.slot_inverse = slot_inverse.to(device)
    plan.scale_position = scale_position.to(device)
    plan.scale_factor = scale_factor.to(device=device, dtype=dtype)
    plan.signs = torch.tensor([-1.0, 1.0], dtype=dtype, device=device)
    plan.ones = torch.ones((), dtype=dtype, device=device)

    for (n, outputs), members in grouped.items():
        sources = cnot_ring_permutation(n)[:outputs]
        inverse = None
        if outputs == 1 << n:
            inverse = torch.empty_like(sources).scatter_(0, sources, torch.arange(outputs)).to(device)
        sizes = [layouts[i].num_vqcs for i in members]
        member_of_row = torch.cat([torch.full((s,), k) for k, s in enumerate(sizes)])
        membership = F.one_hot(member_of_row, len(members)).T.to(device=device, dtype=dtype)
        layers = torch.tensor([layer_row[i] for i in members], device=device)
        start = row_start[members[0]]
        plan.groups.append(_Group(start, start + sum(sizes), (n + 1) // 2, n // 2, outputs, sources.to(device),
                                  inverse, layers, membership.contiguous(), sizes, members))

    plan.largest_state = max(((1 << (g.high + g.low)) * (g.stop - g.start) for g in plan.groups), default=0)
    high_ids, low_ids, offset_ids = [], [], []
    table_width = 1 << plan.max_qubits
    for i in flat:
        layout = layouts[i]
        n, vqcs, outputs = layout.num_qubits, layout.num_vqcs, layout.other_channels
        low_qubits = n // 2
        v = torch.arange(vqcs).unsqueeze(1).expand(vqcs, outputs)
        out = torch.arange(outputs).unsqueeze(0).expand(vqcs, outputs)
        source = cnot_ring_permutation(n)[out]
        row = row_start[i] + v
        high = (row * 2) * width + (source >> low_qubits)
        low = (row * 2 + 1) * width + (source & ((1 << low_qubits) - 1))
        offset = layer_row[i] * table_width + out
        high_ids.append(layout.from_vqc_rows(high).flatten())
        low_ids.append(layout.from_vqc_rows(low).flatten())
        offset_ids.append(layout.from_vqc_rows(offset).flatten())
    if flat:
        plan.flat_members = flat
        plan.flat_high = torch.cat(high_ids).to(device)
        plan.flat_low = torch.cat(low_ids).to(device)
        plan.flat_offset = torch.cat(offset_ids).to(device)
        plan.flat_sizes = [math.prod(layouts[i].weight_shape) for i in flat]


# -- running a plan ------------------------------------------------------------------------------------------------

def _run_plan(plan: _Plan, requests: Sequence[KernelRequest]) -> list[torch.Tensor]:
    results: list[torch.Tensor | None] = [None] * len(requests)
    offsets = coefficients = None
    if plan.affine_members:
        dtype, device = requests[0].theta.dtype, requests[0].theta.device
        parts = [t for i in plan.affine_members for t in requests[i].post.coefficients(dtype, device)]
        coefficients = torch.cat(parts)
        # Every layer's offsets of Eq. 4 (SST: the constant -pi/4) in one product: [layers, 2^N].
        table = F.pad(coefficients, (0, 1)).index_select(0, plan.coefficient_index.flatten())
        offsets = table.view(len(plan.affine_members), -1) @ plan.bits_and_one
    if plan.one_block:
        angles = torch.cat([requests[i].theta.reshape(-1) for i in plan.one_block])
        halves = _HalfRegisterStage.apply(angles, coefficients, plan)
        members = [i for group in plan.groups for i in group.members] + plan.flat_members
        layouts = {i: requests[i].layout for i in members}
        pieces = _OutputStage.apply(halves, offsets, plan, layouts)
        for index, piece in zip(members, pieces):
            results[index] = piece.view(layouts[index].weight_shape) if index in plan.flat_members else piece
    readouts, affine_groups = [], []
    for group in plan.simulated:
        group_theta = torch.cat([requests[i].theta for i in group.members])
        readout = simulate_vqcs(group_theta, group.outputs, group.readout)
        if group.row_layer is None:  # RCE: the real parts themselves
            _hand_out(results, group, requests[group.members[0]].post(readout), requests)
        else:
            readouts.append(readout)
            affine_groups.append(group)
    if affine_groups:
        for group, values in zip(affine_groups, _AffineRows.apply(coefficients, offsets, affine_groups, *readouts)):
            _hand_out(results, group, values, requests)
    for index in plan.single:
        request = requests[index]
        results[index] = generate_kernel(request.theta, request.layout, request.post, backend=request.backend)
    return results  # type: ignore[return-value]


def _hand_out(results: list, group: _SimulatedGroup, values: torch.Tensor, requests: Sequence[KernelRequest]) -> None:
    for index, piece in zip(group.members, values.split(group.sizes)):
        results[index] = requests[index].layout.vqc_rows_view(piece)


class _AffineRows(torch.autograd.Function):
    """Eq. 4 / Eq. 5 on every simulated group's ``[V_g, C_other]`` probabilities: ``w_p p + offset`` per row's layer
    (one function for all groups, so its gradients reach the coefficient and offset tables in one pass each)."""

    @staticmethod
    def forward(ctx, coefficients, offsets, groups, *readouts):
        outs, scales = [], []
        for group, readout in zip(groups, readouts):
            scale = coefficients.index_select(0, group.scale_position).unsqueeze(1)
            outs.append(torch.addcmul(offsets[:, :group.outputs].index_select(0, group.row_layer), readout, scale))
            scales.append(scale)
        ctx.groups = groups
        ctx.shapes = (coefficients.shape, offsets.shape)
        ctx.save_for_backward(*readouts, *scales)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        count = len(ctx.groups)
        saved = ctx.saved_tensors
        readouts, scales = saved[:count], saved[count:]
        grad_coefficients = readouts[0].new_zeros(ctx.shapes[0])
        grad_offsets = readouts[0].new_zeros(ctx.shapes[1])
        grad_readouts = []
        for group, grad, readout, scale in zip(ctx.groups, grads, readouts, scales):
            if grad is None:
                grad_readouts.append(None)
                continue
            grad_readouts.append(grad * scale)
            grad_coefficients.index_add_(0, group.scale_position, torch.linalg.vecdot(grad, readout))
            grad_offsets[:, :group.outputs].index_add_(0, group.row_layer, grad)
        return grad_coefficients, grad_offsets, None, *grad_readouts


class _HalfRegisterStage(torch.autograd.Function):
    """Angles -> the high- and low-half probability products of every one-block VQC, ``[rows, 2, 2^H]``.

    Row r, half 0 holds ``w_p 2^-n X_r`` (X the product over the high qubits, scaled for the post-processing),
    half 1 holds ``Y_r`` (the low qubits). Per qubit the two factors are ``1 - z`` and ``1 + z``, z = sin(a) cos(b)
    (twice the probabilities, hence 2^-n). Hand-written backward: a fixed number of operations for any network.
    """

    @staticmethod
    def forward(ctx, angles: torch.Tensor, coefficients: torch.Tensor, plan: _Plan) -> torch.Tensor:
        pairs = angles.index_select(0, plan.angle_order).view(2, -1)  # RY angles a, RX angles b
        sines, cosines = torch.sin(pairs), torch.cos(pairs)
        z = sines[0] * cosines[1]
        # dz/da = cos a cos b and dz/db = -sin a sin b, kept for the backward.
        slopes = torch.stack((cosines[0] * cosines[1], sines[0] * sines[1]))
        slot_z = F.pad(z, (0, 1)).index_select(0, plan.slot_index).view(plan.rows, 2, plan.slots)
        factors = torch.addcmul(plan.ones, slot_z.unsqueeze(-1), plan.signs)  # [rows, 2, H, 2]
        products = [factors[:, :, 0]]
        for k in range(1, plan.slots):
            products.append((products[-1].unsqueeze(-1) * factors[:, :, k].unsqueeze(-2)).flatten(-2))
        scale = coefficients.index_select(0, plan.scale_position) * plan.scale_factor
        scales = torch.stack((scale, torch.ones_like(scale)), 1).unsqueeze(-1)
        ctx.plan = plan
        ctx.coefficient_count = coefficients.numel()
        ctx.save_for_backward(slopes, factors, scales, *products)
        return products[-1] * scales

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        plan: _Plan = ctx.plan
        slopes, factors, scales, *products = ctx.saved_tensors
        grad_scale = torch.linalg.vecdot(grad[:, 0], products[-1][:, 0])
        grad_coefficients = grad.new_zeros(ctx.coefficient_count).index_add_(
            0, plan.scale_position, grad_scale * plan.scale_factor)
        running = grad * scales
        factor_grads = []
        rows = plan.rows
        for k in range(plan.slots - 1, 0, -1):
            pairs = running.view(rows, 2, 1 << k, 2)
            factor_grads.append((products[k - 1].unsqueeze(-2) @ pairs).squeeze(-2))
            running = (pairs @ factors[:, :, k].unsqueeze(-1)).squeeze(-1)
        factor_grads.append(running)
        factor_grads = torch.stack(factor_grads[::-1], dim=2)  # [rows, 2, H, 2]
        grad_z = (factor_grads[..., 1] - factor_grads[..., 0]).flatten().index_select(0, plan.slot_inverse)
        grad_pairs = grad_z * slopes
        grad_pairs[1].neg_()
        grad_angles = grad_pairs.flatten().index_select(0, plan.angle_inverse)
        return grad_angles, grad_coefficients, None


def _group_factors(halves: torch.Tensor, group: _Group) -> tuple[torch.Tensor, torch.Tensor]:
    """The group's high and low half products as contiguous ``[2^h, V_g]`` and ``[2^l, V_g]`` (small copies that
    keep the E-sized products reading unit-stride inputs)."""
    high = halves[group.start:group.stop, 0, :1 << group.high].T.contiguous()
    low = halves[group.start:group.stop, 1, :1 << group.low].T.contiguous()
    return high, low


class _OutputStage(torch.autograd.Function):
    """Half-register products and offsets -> every one-block layer's outputs after the ring (Eq. 1) with its
    post-processing (Eqs. 4-5): per group ``[V_g, C_other]`` rows, then each small layer in its weight layout."""

    @staticmethod
    def forward(ctx, halves: torch.Tensor, offsets: torch.Tensor, plan: _Plan, layouts: dict[int, KernelLayout]):
        pieces = []
        # One scratch buffer for every group's state before the ring: on the CPU a fresh large tensor per group
        # costs more (page faults) than the arithmetic on it.
        scratch = halves.new_empty(plan.largest_state) if plan.groups else None
        factors = []
        for group in plan.groups:
            # Outputs-major [C_other, V_g] as the weights of most layers lie ([C_out, C_in, k...] with targets C_in).
            high, low = _group_factors(halves, group)
            factors += [high, low]
            columns = group.stop - group.start
            state = scratch[:(1 << (group.high + group.low)) * columns].view(1 << group.high, 1 << group.low, columns)
            torch.mul(high.unsqueeze(1), low.unsqueeze(0), out=state)
            out = state.view(-1, columns).index_select(0, group.sources)
            # Each layer's offsets (Eq. 4), broadcast over its own VQCs: one product with the membership matrix.
            group_offsets = offsets.index_select(0, group.layers)[:, :group.outputs]
            out.addmm_(group_offsets.T, group.membership)
            # Handed out as views in each layer's weight layout: the layers' gradients then arrive in that layout.
            pieces.extend(layouts[index].output_rows_view(piece)
                          for piece, index in zip(out.split(group.sizes, dim=1), group.members))
        saved = []
        if plan.flat_members:
            flat = halves.view(-1)
            high, low = flat.index_select(0, plan.flat_high), flat.index_select(0, plan.flat_low)
            out = torch.addcmul(offsets.view(-1).index_select(0, plan.flat_offset), high, low)
            pieces.extend(out.split(plan.flat_sizes))
            saved = [high, low]
        ctx.plan = plan
        ctx.layouts = layouts
        ctx.flat_saved = len(saved)
        ctx.save_for_backward(halves, *saved, *factors)
        ctx.offsets_shape = offsets.shape
        return tuple(pieces)

    @staticmethod
    def backward(ctx, *grads):
        plan: _Plan = ctx.plan
        halves, *saved = ctx.saved_tensors
        saved, factors = saved[:ctx.flat_saved], saved[ctx.flat_saved:]
        grad_halves = torch.zeros_like(halves)
        grad_offsets = halves.new_zeros(ctx.offsets_shape)
        position = 0
        if plan.groups:  # two scratch buffers serve every group (see forward)
            scratch_a, scratch_b = halves.new_empty(plan.largest_state), halves.new_empty(plan.largest_state)
        for number, group in enumerate(plan.groups):
            count = len(group.sizes)
            member_grads = grads[position:position + count]
            position += count
            columns = group.stop - group.start
            size = (1 << (group.high + group.low)) * columns
            first = ctx.layouts[group.members[0]]
            if count == 1 and first.target_axis == 1 and member_grads[0] is not None:
                grad = member_grads[0].reshape(group.outputs, columns)  # the weight is [C_other, V]: a view
            else:
                # Each member's gradient straight into its columns (transposed where the targets are C_out).
                grad = scratch_a[:group.outputs * columns].view(group.outputs, columns)
                start = 0
                for g, width, index in zip(member_grads, group.sizes, group.members):
                    layout = ctx.layouts[index]
                    target = grad[:, start:start + width].view(group.outputs, layout.target_channels,
                                                               *layout.kernel_size)
                    start += width
                    if g is None:
                        target.zero_()
                    else:
                        target.copy_(g if layout.target_axis == 1 else g.transpose(0, 1))
            grad_state = scratch_b[:size].view(-1, columns)
            if group.inverse is not None:
                torch.index_select(grad, 0, group.inverse, out=grad_state)
            else:
                grad_state.zero_().index_copy_(0, group.sources, grad)
            grad_offsets[:, :group.outputs].index_add_(0, group.layers, group.membership @ grad.T)
            grad_state = grad_state.view(1 << group.high, 1 << group.low, columns)
            high, low = factors[2 * number], factors[2 * number + 1]
            product = scratch_a[:size].view_as(grad_state)  # grad is no longer needed
            torch.mul(grad_state, low.unsqueeze(0), out=product)
            torch.sum(product, 1, out=grad_halves[group.start:group.stop, 0, :1 << group.high].T)
            torch.sum(grad_state.mul_(high.unsqueeze(1)), 0, out=grad_halves[group.start:group.stop, 1, :1 << group.low].T)
        if plan.flat_members:
            high, low = saved
            parts = [g.reshape(-1) if g is not None else halves.new_zeros(s)
                     for g, s in zip(grads[position:], plan.flat_sizes)]
            grad = parts[0] if len(parts) == 1 else torch.cat(parts)
            flat = grad_halves.view(-1)
            flat.index_add_(0, plan.flat_high, grad * low)
            flat.index_add_(0, plan.flat_low, grad * high)
            grad_offsets.view(-1).index_add_(0, plan.flat_offset, grad)
        return grad_halves, grad_offsets, None, None
