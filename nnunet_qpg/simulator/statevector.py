"""Batched exact state-vector simulation of the paper's variational circuit (Eq. 1, SPEC section 1).

The fast twin of :mod:`nnunet_qpg.simulator.reference`. All VQCs of a call are simulated together; nothing loops
over VQCs or over basis states. One block (K = 1) has its own path (:func:`_one_block_readout`: the state before
the ring is a product state, so only the requested outputs are formed). K >= 2 blocks run the path below, a custom
autograd function with a hand-written backward whose forward + backward costs a fixed number of tensor ops
(about 13 per block; on a GPU each op is one kernel launch, whatever its size).

Forward (K >= 2)
----------------
* The register is split into G <= 3 groups of qubits (:func:`_group_qubits`), W, Y, Z. Every block's rotation
  layer U_0 (x) ... (x) U_{n-1} is applied as one small Kronecker matrix per group, M_g = (x)_{q in g} U_q, by a
  batched matmul over the VQCs. Each matmul contracts the state's first axis and writes its output axis last
  (``out = x^T M^T``), so the axes cycle (W, Y, Z) -> (Y, Z, W) -> (Z, W, Y) -> (W, Y, Z): every group is in turn
  the first axis, with no transposing copy.
* All Kronecker matrices of all blocks come from three small ops and a doubling over qubit slots: one matmul
  turns the angles into phases, one ``sin`` gives every cos/sin of the half angles (and the weights the backward
  needs), one batched matmul gives every U_q entry in a slot layout, and ``ceil(log2 g)`` broadcast products form
  the Kronecker products. Groups smaller than the largest are padded with dummy slots diag(1, 0), so a group's
  matrix is the top-left block of its padded one.
* Block 0 acts on H|0...0>, a product state v_W (x) v_Y (x) v_Z. Its slots hold U_q|+> as row 0 (zeros in
  row 1), so row 0 of its Kronecker products is each group's vector, with no extra op.
* The CNOT ring is split in two pieces R1 = CNOT(0,1) ... CNOT(j, j+1) and R2 = the rest. The groups are chosen
  so that R1 never touches Z (the last axis after a block) and R2 never touches W, and since R2 commutes with
  M_W, each block runs R1, M_W, R2, M_Y, M_Z. Each piece then permutes whole contiguous chunks of the state
  (the axis it leaves alone): a row gather, about as fast as a copy, where a gather of single amplitudes is
  several times slower on the CPU.
* After the last block, one gather applies the last ring, returns to the natural basis order (qubit 0 most
  significant) and keeps only the ``num_outputs`` amplitudes that are read; the readout is taken there.

Backward
--------
The cotangent mu = conj(dL/dpsi) runs back through the same ops (mu_in = M^T mu_out, gathers by the inverse
permutations). The angle gradients come from one matrix per group and block, P = sum_rest mu_out^T x_out, at
the point right after the group's matmul: with dU/db = (-i/2) X U and dU/da = (-i/2)(cos b Y + sin b Z) U
(RY(a) before RX(b)), dL/db_q = Im(sum_r P[r, r^q]) / 2 and dL/da_q = -cos(b_q) Re(sum_r (1-2r_q) P[r, r^q]) / 2
+ sin(b_q) Im(sum_r (1-2r_q) P[r, r]) / 2. Smaller groups read P through a wider view of the state (d_max columns
instead of d), so every P has the same shape and one batched matmul with a constant table plus one multiply-sum
with the cos/sin weights gives every angle's gradient. Block 0's P come from its product state (two passes over
the state). Nothing is differentiated by autograd inside; the forward saves the matmul outputs (one state per
group and block) and block 0's state, no other intermediate.

On the CPU, large buffers come from a small workspace kept between calls (:class:`_Workspace`), since a fresh
allocation above glibc's mmap threshold (32 MiB) is page-faulted in on every call, which on a virtual machine
costs more than the simulation step that writes it.

Basis convention (TorchQuantum's): index i = sum_q b_q 2^(n-1-q), qubit 0 is the most significant bit.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import torch

from nnunet_qpg.simulator.ring import RingTables, apply_ring

__all__ = [
    "READOUTS",
    "complex_dtype_for",
    "kron_vectors",
    "readout_from_amplitudes",
    "rotation_matrices",
    "simulate_vqcs",
]


def complex_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """complex64 for float32 (and lower) angles, complex128 for float64."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def rotation_matrices(ry: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
    """U = RX(rx) @ RY(ry) for every angle pair, as a complex tensor of shape ``[..., 2, 2]``.

    RY(a) = [[c, -s], [s, c]] and RX(b) = [[c', -i s'], [-i s', c']] with half angles (SPEC section 1).
    """
    ca, sa = torch.cos(ry / 2), torch.sin(ry / 2)
    cb, sb = torch.cos(rx / 2), torch.sin(rx / 2)
    real = torch.stack([cb * ca, -cb * sa, cb * sa, cb * ca], dim=-1)
    imag = torch.stack([-sb * sa, -sb * ca, -sb * ca, sb * sa], dim=-1)
    return torch.complex(real, imag).unflatten(-1, (2, 2))


def kron_vectors(vectors: torch.Tensor) -> torch.Tensor:
    """[..., n, 2] -> [..., 2^n]: v_0 (x) v_1 (x) ... (x) v_{n-1}, qubit 0 most significant."""
    state = vectors[..., 0, :]
    for q in range(1, vectors.shape[-2]):
        state = (state.unsqueeze(-1) * vectors[..., q, :].unsqueeze(-2)).flatten(-2)
    return state


READOUTS = ("amplitudes", "real", "probabilities")


def readout_from_amplitudes(amplitudes: torch.Tensor, readout: str) -> torch.Tensor:
    """What post-processing reads of a final state: the amplitudes, Re(psi_i), or p_i = |psi_i|^2."""
    if readout == "amplitudes":
        return amplitudes
    # view_as_real keeps the backward a view (Tensor.real / .imag would allocate and zero-fill complex grads).
    pairs = torch.view_as_real(amplitudes)
    if readout == "real":
        return pairs[..., 0]
    if readout == "probabilities":
        return pairs.square().sum(-1)
    raise ValueError(f"unknown readout {readout!r}; accepted: {', '.join(READOUTS)}")


def simulate_vqcs(theta: torch.Tensor, num_outputs: int | None = None, readout: str = "amplitudes") -> torch.Tensor:
    """Final states of a batch of VQCs (Eq. 1), or the part of them post-processing reads.

    Args:
        theta: angles ``[num_vqcs, K, 2, n]``; ``theta[:, k, 0]`` are block k's RY angles and
            ``theta[:, k, 1]`` its RX angles. float32 gives complex64 states, float64 complex128 (float16 and
            bfloat16 are promoted to float32).
        num_outputs: if given, only the first ``num_outputs`` basis states are returned (cheaper).
        readout: ``"amplitudes"`` (complex psi_i), ``"real"`` (Re psi_i, for RCE) or ``"probabilities"``
            (|psi_i|^2, for LPP and SST).

    Returns:
        ``[num_vqcs, num_outputs or 2^n]``, differentiable with respect to ``theta``.
    """
    if theta.dim() != 4 or theta.shape[2] != 2:
        raise ValueError(f"theta must have shape [num_vqcs, blocks, 2, num_qubits], got {tuple(theta.shape)}")
    num_blocks, n = theta.shape[1], theta.shape[3]
    if num_outputs is not None and not 1 <= num_outputs <= (1 << n):
        raise ValueError(f"num_outputs must be in [1, 2^{n}], got {num_outputs}")
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; accepted: {', '.join(READOUTS)}")
    if not theta.is_floating_point():
        raise TypeError(f"theta must be a real floating tensor, got {theta.dtype}")
    if theta.dtype in (torch.float16, torch.bfloat16):
        theta = theta.float()
    if num_blocks == 1:
        gates = rotation_matrices(theta[:, 0, 0], theta[:, 0, 1])  # [B, n, 2, 2]
        # Block 0 on H|0>: each qubit is U_q |+>, i.e. (column 0 + column 1) / sqrt(2) of U_q.
        first = gates.sum(dim=-1) * (1.0 / math.sqrt(2.0))  # [B, n, 2]
        return _one_block_readout(first, (n + 1) // 2, num_outputs, readout)
    m = (1 << n) if num_outputs is None else num_outputs
    if theta.shape[0] == 0:
        dtype = complex_dtype_for(theta.dtype) if readout == "amplitudes" else theta.dtype
        return theta.new_zeros((0, m), dtype=dtype) + 0 * theta.sum()
    plan = _plan(n, theta.device, theta.dtype)
    # Exact state vectors: never in reduced precision, even inside an autocast region.
    with torch.autocast(theta.device.type, enabled=False):
        if torch.is_grad_enabled() and theta.requires_grad:
            return _MultiBlock.apply(theta, plan, m, readout)
        with torch.no_grad():
            return _forward(theta.detach(), plan, m, readout, save=False)[0]


def _one_block_readout(first: torch.Tensor, high_qubits: int, num_outputs: int | None, readout: str) -> torch.Tensor:
    """One block: only the requested outputs after the ring, from the two half-register product states.

    psi[src] = high[src >> l] * low[src & (2^l - 1)], so each output is a product of two entries gathered from
    vectors of 2^(n/2) entries. Probabilities of a product state are the product of the qubits' probabilities, so
    that readout stays real throughout and never forms the 2^n amplitudes. The real part is formed for all 2^n
    states by one small matmul and then permuted, which on the CPU beats gathering two complex factors.
    """
    n = first.shape[1]
    m = (1 << n) if num_outputs is None else num_outputs
    high_index, low_index = RingTables.split_sources(n, m, first.device)
    halves = [first[:, :high_qubits], first[:, high_qubits:]] if n > high_qubits else [first]
    if readout == "probabilities":
        parts = [kron_vectors(torch.view_as_real(h).square().sum(-1)) for h in halves]
        if len(parts) == 1:
            return parts[0].index_select(-1, high_index)
        # Gathers as matmuls (see one_hot_sources): their backward is a matmul, not a scatter-add.
        gather_high, gather_low = RingTables.one_hot_sources(n, m, first.device, parts[0].dtype)
        return (parts[0] @ gather_high.T) * (parts[1] @ gather_low.T)
    parts = [kron_vectors(h) for h in halves]
    if readout == "amplitudes" or len(parts) == 1:
        out = parts[0].index_select(-1, high_index)
        out = out if len(parts) == 1 else out * parts[1].index_select(-1, low_index)
        return readout_from_amplitudes(out, readout)
    # Re(high (x) low) = high_re (x) low_re - high_im (x) low_im: one batched matmul with an inner size of 2
    # forms all 2^n real parts, then the ring's permutation gathers the outputs (its backward is a gather too).
    high = torch.view_as_real(parts[0])  # [B, 2^h, 2]
    low = torch.view_as_real(parts[1])
    real_parts = torch.bmm(high, torch.stack([low[..., 0], -low[..., 1]], dim=1)).flatten(-2)  # [B, 2^n]
    return apply_ring(real_parts, n, m)


# ----------------------------------------------------------------------------------------------------------------
# K >= 2 blocks: plan (tables built once per (n, device, dtype)), workspace, forward, backward.
# ----------------------------------------------------------------------------------------------------------------


def _group_qubits(n: int) -> tuple[int, list[list[int]]]:
    """(j, groups): R1 = CNOT(q, q+1) for q = 0..j, R2 = the rest of the ring; groups in layout order (W, Y, Z),
    each in its internal bit order (first = most significant).

    W = {1..j} is untouched by R2, Z (when present) lies in {j+2..n-1} and is untouched by R1, Y = {0, j+1, ...}
    takes the rest. W is the largest group (block 0's first-axis contraction then needs no padding). One group up
    to 4 qubits, two up to 6, three above: small groups keep the Kronecker matrices and the per-group gradient
    matrices small (both grow as 4^size), while each extra group costs three more batched matmuls per block.
    """
    if n <= 4:
        return n - 1, [list(range(n))]
    if n <= 6:
        w = (n + 1) // 2
        return w, [list(range(1, w + 1)), [0] + list(range(w + 1, n))]
    w = -(-n // 3)
    y = max(2, (n - w) // 2)
    return w, [list(range(1, w + 1)), [0] + list(range(w + 1, w + y)), list(range(w + y, n))]


def _cnot_sources(n: int, controls) -> torch.Tensor:
    """Natural-index source map of CNOT(q, q+1 mod n) applied for q in ``controls`` (in that order):
    ``after[i] = before[src[i]]``."""
    index = torch.arange(1 << n)
    for q in reversed(list(controls)):
        if n == 1:
            break
        control_bit, target_bit = 1 << (n - 1 - q), 1 << (n - 1 - ((q + 1) % n))
        index = torch.where((index & control_bit) != 0, index ^ target_bit, index)
    return index


def _layout_to_natural(n: int, layout: list[int]) -> torch.Tensor:
    """Natural basis index of every layout index (layout = qubits in memory order, first most significant)."""
    y = torch.arange(1 << n)
    natural = torch.zeros_like(y)
    for position, qubit in enumerate(layout):
        natural |= ((y >> (n - 1 - position)) & 1) << (n - 1 - qubit)
    return natural


@dataclass
class _Gather:
    """A permutation of basis states in a fixed layout, as a gather of contiguous chunks of ``chunk`` amplitudes:
    ``out.view(B, -1, chunk) = x.view(B, -1, chunk)[:, table]``; ``inverse`` undoes it."""

    table: torch.Tensor
    inverse: torch.Tensor
    chunk: int


def _chunked(full: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The largest chunk c (power of 2) such that the permutation ``full`` moves whole aligned chunks of c."""
    size = full.numel()
    c = size
    while c > 1:
        blocks = full.view(-1, c)
        aligned = bool((blocks[:, 0] % c == 0).all())
        if aligned and torch.equal(blocks - blocks[:, :1], torch.arange(c).expand_as(blocks)):
            return (blocks[:, 0] // c).clone(), c
        c //= 2
    return full.clone(), 1


def _make_gather(full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    table, chunk = _chunked(full)
    inverse = torch.empty_like(table)
    inverse[table] = torch.arange(table.numel())
    return table, inverse, chunk


@dataclass
class _Plan:
    n: int
    groups: list[list[int]]
    sizes: list[int]  # d_g = 2^|g|
    d_max: int
    slots: int  # qubit slots per group (the largest group's qubit count)
    steps: list[tuple]  # one block after block 0: ("gather", _Gather) / ("bmm", group)
    phase_weight: torch.Tensor  # [2n, 10n]
    phase_bias: torch.Tensor  # [10n]
    slot_weight: torch.Tensor  # [2, 4n, G * slots * 8]: block 0's map, the other blocks' map
    slot_bias: torch.Tensor  # [2, 1, G * slots * 8]
    extraction: torch.Tensor  # [G, 2 d_max^2, 3n]
    natural_of_layout: torch.Tensor  # [2^n] natural index of each layout index of the final state
    ring_sources: torch.Tensor  # [2^n] natural-index sources of the full ring
    finals: dict = field(default_factory=dict)  # (m, readout) -> (table, inverse, coefficients)

    def slot_maps(self, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """([K, 4n, S], [K, 1, S]): block 0's map then K - 1 copies of the others' (batched matmul operands)."""
        key = ("slots", blocks)
        if key not in self.finals:
            with torch.inference_mode(False):
                index = torch.tensor([0] + [1] * (blocks - 1), device=self.slot_weight.device)
                self.finals[key] = (self.slot_weight[index].contiguous(), self.slot_bias[index].contiguous())
        return self.finals[key]

    def final(self, m: int, readout: str):
        """Last gather (ring + natural order + first m outputs) and the backward's mask/sign coefficients."""
        key = (m, readout)
        if key not in self.finals:
            with torch.inference_mode(False):
                device = self.phase_weight.device
                layout_of_natural = torch.empty_like(self.natural_of_layout)
                layout_of_natural[self.natural_of_layout] = torch.arange(1 << self.n)
                full = layout_of_natural[self.ring_sources]  # out[x] = t_layout[full[x]]
                table = full[:m].to(device)
                inverse_full = torch.empty_like(full)
                inverse_full[full] = torch.arange(1 << self.n)
                mask = (inverse_full < m).to(self.phase_weight.dtype)
                inverse = torch.where(inverse_full < m, inverse_full, 0).to(device)
                sign = {"probabilities": (2.0, -2.0), "real": (1.0, 0.0), "amplitudes": (1.0, -1.0)}[readout]
                coefficients = (mask[:, None] * torch.tensor(sign, dtype=mask.dtype)).to(device)
                self.finals[key] = (table, inverse, coefficients)
        return self.finals[key]


_PLANS: dict[tuple, _Plan] = {}
_PLANS_LOCK = threading.Lock()


def _plan(n: int, device: torch.device, dtype: torch.dtype) -> _Plan:
    key = (n, str(device), dtype)
    plan = _PLANS.get(key)
    if plan is None:
        with _PLANS_LOCK, torch.inference_mode(False):
            plan = _PLANS.get(key) or _build_plan(n, device, dtype)
            _PLANS[key] = plan
    return plan


def _build_plan(n: int, device: torch.device, dtype: torch.dtype) -> _Plan:
    j, groups = _group_qubits(n)
    count = len(groups)
    sizes = [1 << len(g) for g in groups]
    slots = max(len(g) for g in groups)
    d_max = 1 << slots
    assert sizes[0] == d_max
    layouts = [sum(groups[i:] + groups[:i], []) for i in range(count)]
    natural = [_layout_to_natural(n, layout) for layout in layouts]
    layout_of = []
    for nat in natural:
        inverse = torch.empty_like(nat)
        inverse[nat] = torch.arange(1 << n)
        layout_of.append(inverse)

    def gather(sources: torch.Tensor, layout: int) -> _Gather:
        return _Gather(*_make_gather(layout_of[layout][sources[natural[layout]]]))

    if count == 1:
        steps = [("gather", gather(_cnot_sources(n, range(n)), 0)), ("bmm", 0)]
    else:
        steps = [("gather", gather(_cnot_sources(n, range(j + 1)), 0)), ("bmm", 0),
                 ("gather", gather(_cnot_sources(n, range(j + 1, n)), 1)), ("bmm", 1)]
        steps += [("bmm", 2)] if count == 3 else []
    for _, item in steps:
        if isinstance(item, _Gather):
            item.table, item.inverse = item.table.to(device), item.inverse.to(device)

    # Phases: per qubit [b/2 - a/2 + pi/2, b/2 + a/2 + pi/2, b/2 - a/2, b/2 + a/2] (sin -> C-, C+, S-, S+), then the
    # backward's weights per (t in (a, b), j in 0..2, qubit): a: (0, cos b, sin b); b: (1, 0, 0).
    half_pi = math.pi / 2
    phase_weight = torch.zeros(2 * n, 10 * n, dtype=torch.float64)
    phase_bias = torch.zeros(10 * n, dtype=torch.float64)
    for q in range(n):
        a, b = q, n + q
        for c, (ca, cb, bias) in enumerate([(-0.5, 0.5, half_pi), (0.5, 0.5, half_pi), (-0.5, 0.5, 0.0),
                                            (0.5, 0.5, 0.0)]):
            phase_weight[a, 4 * q + c], phase_weight[b, 4 * q + c], phase_bias[4 * q + c] = ca, cb, bias
        base = 4 * n
        phase_weight[b, base + 1 * n + q], phase_bias[base + 1 * n + q] = 1.0, half_pi  # a: cos b
        phase_weight[b, base + 2 * n + q] = 1.0  # a: sin b
        phase_bias[base + 3 * n + q] = half_pi  # b: 1
    # Slots [G, slots, 2, 2, (re, im)] of U = RX(b) RY(a) from s = (C-, C+, S-, S+):
    # cb ca = (C- + C+)/2, sb sa = (C- - C+)/2, cb sa = (S+ - S-)/2, sb ca = (S+ + S-)/2.
    u_entries = {  # (row, col, re/im) -> coefficients of (C-, C+, S-, S+)
        (0, 0, 0): (0.5, 0.5, 0, 0), (0, 0, 1): (-0.5, 0.5, 0, 0),
        (0, 1, 0): (0, 0, 0.5, -0.5), (0, 1, 1): (0, 0, -0.5, -0.5),
        (1, 0, 0): (0, 0, -0.5, 0.5), (1, 0, 1): (0, 0, -0.5, -0.5),
        (1, 1, 0): (0.5, 0.5, 0, 0), (1, 1, 1): (0.5, -0.5, 0, 0),
    }
    # Two slot maps: blocks >= 1 get U; block 0 gets U|+> = (column 0 + column 1) / sqrt 2 as its row 0 (zeros in
    # row 1), so row 0 of the Kronecker product is the group's part of block 0's product state (contiguous).
    slot_weight = torch.zeros(2, 4 * n, count * slots * 8, dtype=torch.float64)
    slot_bias = torch.zeros(2, 1, count * slots * 8, dtype=torch.float64)
    for g, qubits in enumerate(groups):
        pad = slots - len(qubits)
        for t in range(slots):
            base = (g * slots + t) * 8
            if t < pad:  # dummy slot diag(1, 0): the group's matrix is the top-left block, its vector the top
                slot_bias[:, 0, base] = 1.0
                continue
            q = qubits[t - pad]
            for (row, col, part), coefficients in u_entries.items():
                for c, value in enumerate(coefficients):
                    slot_weight[1, 4 * q + c, base + (row * 2 + col) * 2 + part] = value
                    slot_weight[0, 4 * q + c, base + (0 * 2 + row) * 2 + part] += value / math.sqrt(2.0)
    # Extraction: P' [d_max, d_max] (pseudo-padded: P[r, s] = sum_h P'[(h, r), (h, s)]) -> per qubit
    # (Im S1 / 2, -Re S2 / 2, Im S3 / 2) at columns j * n + q.
    columns = -(-3 * n // 16) * 16  # padded: sgemm is markedly faster on a multiple of 16 columns
    extraction = torch.zeros(count, 2 * d_max * d_max, columns, dtype=torch.float64)
    for g, qubits in enumerate(groups):
        width = len(qubits)
        d = 1 << width
        for h in range(d_max // d):
            for r in range(d):
                for t, q in enumerate(qubits):
                    bit = 1 << (width - 1 - t)
                    sign = 1.0 - 2.0 * ((r >> (width - 1 - t)) & 1)
                    row, flip, diag = h * d + r, h * d + (r ^ bit), h * d + r
                    extraction[g, 2 * (row * d_max + flip) + 1, q] += 0.5
                    extraction[g, 2 * (row * d_max + flip) + 0, n + q] += -0.5 * sign
                    extraction[g, 2 * (row * d_max + diag) + 1, 2 * n + q] += 0.5 * sign
    return _Plan(
        n=n, groups=groups, sizes=sizes, d_max=d_max, slots=slots, steps=steps,
        phase_weight=phase_weight.to(device, dtype), phase_bias=phase_bias.to(device, dtype),
        slot_weight=slot_weight.to(device, dtype), slot_bias=slot_bias.to(device, dtype),
        extraction=extraction.to(device, dtype),
        natural_of_layout=natural[0], ring_sources=_cnot_sources(n, range(n)))


class _Workspace:
    """Large CPU buffers kept between calls.

    glibc serves every allocation above 32 MiB (its largest mmap threshold) with a fresh mmap, so each such buffer
    is page-faulted in again on every call; on a virtual machine that costs more than the simulation step that
    fills it (measured: about 45 ms for a 38 MB buffer, against 4 ms to copy into it). Buffers of at least
    :attr:`min_bytes` are therefore taken from free lists here and come back when the lease returned with them is
    garbage (the autograd context that keeps them for the backward, or the call's locals). At most
    :attr:`max_bytes` are kept free; :meth:`clear` drops them. Not used on a GPU, whose caching allocator does
    the same.
    """

    enabled = True
    min_bytes = 32 << 20
    max_bytes = 2 << 30
    _free: dict[tuple, list[torch.Tensor]] = {}
    _free_bytes = 0
    _lock = threading.Lock()

    class Lease:
        __slots__ = ("key", "tensor")

        def __init__(self, key, tensor):
            self.key, self.tensor = key, tensor

        def __del__(self):
            try:
                _Workspace._give(self.key, self.tensor)
            except Exception:  # interpreter shutdown
                pass

    @classmethod
    def take(cls, numel: int, dtype: torch.dtype, device: torch.device):
        """(tensor [numel], lease or None)."""
        nbytes = numel * _ELEMENT_SIZE[dtype]
        if not (cls.enabled and device.type == "cpu" and nbytes >= cls.min_bytes):
            return torch.empty(numel, dtype=dtype, device=device), None
        key = (numel, dtype, str(device))
        with cls._lock:
            free = cls._free.get(key)
            tensor = free.pop() if free else None
            if tensor is not None:
                cls._free_bytes -= nbytes
        if tensor is None:
            with torch.inference_mode(False):
                tensor = torch.empty(numel, dtype=dtype, device=device)
        return tensor, cls.Lease(key, tensor)

    @classmethod
    def _give(cls, key, tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        with cls._lock:
            if cls._free_bytes + nbytes <= cls.max_bytes:
                cls._free.setdefault(key, []).append(tensor)
                cls._free_bytes += nbytes

    @classmethod
    def clear(cls) -> None:
        with cls._lock:
            cls._free.clear()
            cls._free_bytes = 0


_ELEMENT_SIZE = {torch.complex64: 8, torch.complex128: 16, torch.float32: 4, torch.float64: 8}


class _Buffers:
    """The buffers of one call, with their leases."""

    def __init__(self, device: torch.device):
        self.device = device
        self.leases = []

    def new(self, shape, dtype: torch.dtype) -> torch.Tensor:
        tensor, lease = _Workspace.take(math.prod(shape), dtype, self.device)
        if lease is not None:
            self.leases.append(lease)
        return tensor.view(shape)


def _kron_pairs(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """[..., p, p] (x) [..., q, q] -> [..., pq, pq] (broadcast over the leading axes)."""
    p, q = a.shape[-1], b.shape[-1]
    product = torch.mul(a[..., :, None, :, None], b[..., None, :, None, :],
                        out=None if out is None else out.view(*out.shape[:-2], p, q, p, q))
    return product.flatten(-4, -3).flatten(-2, -1)


def _kron_slots(slots: torch.Tensor, buffers: _Buffers) -> torch.Tensor:
    """[R, G, s, 2, 2] -> [R, G, 2^s, 2^s]: the Kronecker product over the slot axis, log-depth."""
    # An odd slot count peels off the first slot and multiplies it in last, on the left: the largest product then
    # runs its innermost loop over the wider right factor (broadcast products are slow on short inner loops).
    stack, rest = slots, []
    final_shape = (*slots.shape[:2], 1 << slots.shape[2], 1 << slots.shape[2])
    while stack.shape[2] > 1:
        if stack.shape[2] % 2:
            rest.insert(0, stack[:, :, 0])
            stack = stack[:, :, 1:]
        last = stack.shape[2] == 2 and not rest
        out = buffers.new(final_shape, slots.dtype).unsqueeze(2) if last else None
        stack = _kron_pairs(stack[:, :, 0::2], stack[:, :, 1::2], out)
    result = stack[:, :, 0]
    for i, factor in enumerate(rest):
        out = buffers.new(final_shape, slots.dtype) if i == len(rest) - 1 else None
        result = _kron_pairs(factor, result, out)
    return result


def _apply_gather(x: torch.Tensor, table: torch.Tensor, chunk: int, out: torch.Tensor) -> torch.Tensor:
    """out = x[:, permuted] (x and out ``[B, N]``), as a gather of contiguous chunks."""
    batch = x.shape[0]
    if chunk == 1:
        return torch.gather(x, 1, table.expand(batch, -1), out=out)
    torch.index_select(x.view(batch, -1, chunk), 1, table, out=out.view(batch, -1, chunk))
    return out


def _forward(theta: torch.Tensor, plan: _Plan, m: int, readout: str, save: bool):
    """The K >= 2 simulation; returns (output, saved) where saved holds what the backward reads (if ``save``)."""
    batch, blocks, _, n = theta.shape
    rows = batch * blocks
    dim = 1 << n
    count, d_max = len(plan.groups), plan.d_max
    cdtype = complex_dtype_for(theta.dtype)
    buffers = _Buffers(theta.device)

    # Angles -> every cos/sin -> U entries in slots -> Kronecker matrices of every group and block, in (block, VQC)
    # order (block 0's hold its product state's vectors in row 0).
    trig = torch.addmm(plan.phase_bias, theta.reshape(rows, 2 * n), plan.phase_weight).sin_()  # [B K, 10n]
    slot_weight, slot_bias = plan.slot_maps(blocks)
    slots = torch.baddbmm(slot_bias, trig.view(batch, blocks, 10 * n)[..., :4 * n].transpose(0, 1), slot_weight)
    slots = torch.view_as_complex(slots.view(rows, count, plan.slots, 2, 2, 2))
    mats = _kron_slots(slots, buffers).view(blocks, batch, count, d_max, d_max)

    # Block 0: the product state v_W (x) v_Y (x) v_Z, in layout (W, Y, Z).
    parts = [mats[0, :, g, 0, :plan.sizes[g]] for g in range(count)]  # [B, d_g], rows of a strided batch
    head = None
    if count == 1:
        psi0 = buffers.new((batch, dim), cdtype)
        psi0.copy_(parts[0])
    else:
        psi0 = buffers.new((batch, dim), cdtype)
    if count == 2:
        torch.mul(parts[0][:, :, None], parts[1][:, None, :], out=psi0.view(batch, plan.sizes[0], plan.sizes[1]))
    elif count == 3:
        head = parts[0][:, :, None] * parts[1][:, None, :]  # [B, dW, dY]
        torch.mul(head.view(batch, -1, 1), parts[2][:, None, :], out=psi0.view(batch, -1, plan.sizes[2]))

    # Saved for the backward: each block's matmul outputs, except the first group's (W) when there are several
    # groups: W's gradient matrix is read at the block's output instead (W is its first axis there, and M_Y, M_Z
    # and R2 leave W's qubits alone). ``spare`` takes the gathers' outputs, ``scratch`` W's outputs (and the
    # cotangent in the backward).
    spare = buffers.new((batch, dim), cdtype)
    scratch = buffers.new((batch, dim), cdtype) if save and count > 1 else None
    state, outputs = psi0, []
    base, block_stride = mats.storage_offset(), batch * count * d_max * d_max
    for k in range(1, blocks):
        for kind, item in plan.steps:
            if kind == "gather":
                target = spare if save else (spare if state is not spare else psi0)
                _apply_gather(state, item.table, item.chunk, target)
            else:  # out [B, r, d] = x^T M^T with x [B, d, r]: the group's axis goes from first to last
                d = plan.sizes[item]
                r = dim // d
                if not save:
                    target = spare if state is not spare else psi0
                elif item == 0 and count > 1:
                    target = scratch
                else:
                    target = buffers.new((batch, dim), cdtype)
                    outputs.append(target)
                matrix_t = mats.as_strided((batch, d, d), (count * d_max * d_max, 1, d_max),
                                           base + k * block_stride + item * d_max * d_max)
                torch.bmm(state.as_strided((batch, r, d), (dim, 1, r)), matrix_t, out=target.view(batch, r, d))
            state = target
    table, _, _ = plan.final(m, readout)
    pairs = torch.view_as_real(state)
    if readout == "real":
        out = torch.gather(pairs[..., 0], 1, table.expand(batch, -1))
    elif readout == "amplitudes":
        out = torch.gather(state, 1, table.expand(batch, -1))
    else:  # |psi|^2 = re^2 + im^2 (two elementwise ops; a sum over the pair axis is several times slower on the CPU)
        # Both temporaries go to work buffers that no longer hold anything (this is the forward's memory peak).
        free = [b for b in (spare, scratch if save else psi0) if b is not None and b is not state]
        squares = torch.mul(pairs[..., 0], pairs[..., 0],
                            out=torch.view_as_real(free[0])[..., 0] if free else None)
        total = torch.addcmul(squares, pairs[..., 1], pairs[..., 1],
                              out=torch.view_as_real(free[1])[..., 0] if len(free) > 1 else None)
        out = torch.gather(total, 1, table.expand(batch, -1))
    saved = None
    if save:
        saved = dict(buffers=buffers, mats=mats, trig=trig, psi0=psi0, parts=parts, head=head, outputs=outputs,
                     spare=spare, scratch=scratch)
    return out, saved


def _backward(grad: torch.Tensor, theta_shape, plan: _Plan, m: int, readout: str, saved: dict) -> torch.Tensor:
    batch, blocks, _, n = theta_shape
    dim = 1 << n
    count, d_max = len(plan.groups), plan.d_max
    mats, outputs, psi0 = saved["mats"], saved["outputs"], saved["psi0"]
    cdtype = psi0.dtype
    buffers = _Buffers(psi0.device)
    _, inverse, coefficients = plan.final(m, readout)

    # mu = conj(dL/dpsi) at the last state, in its layout. The output gradient is first spread over the state's
    # layout inside the second work buffer (free until the first matmul of the backward).
    mu = saved["spare"]
    mu_pairs = torch.view_as_real(mu)
    other = saved["scratch"] if saved["scratch"] is not None else buffers.new((batch, dim), cdtype)
    if grad.is_complex():
        spread = torch.gather(torch.view_as_real(grad), 1, inverse.expand(batch, -1)[..., None].expand(-1, -1, 2),
                              out=torch.view_as_real(other))
        torch.mul(spread, coefficients, out=mu_pairs)
    else:
        spread = torch.gather(grad, 1, inverse.expand(batch, -1), out=torch.view_as_real(other)[..., 0])
        if readout == "probabilities":  # mu = 2 g conj(psi); psi first: its pairs are contiguous (a faster loop)
            torch.mul(torch.view_as_real(outputs[-1]), spread[..., None], out=mu_pairs).mul_(coefficients)
        else:
            torch.mul(spread[..., None], coefficients, out=mu_pairs)
    products = buffers.new((count, blocks, batch, d_max, d_max), cdtype)

    index = len(outputs)
    base, block_stride = mats.storage_offset(), batch * count * d_max * d_max
    flat_products = products.view(count * blocks, batch, d_max, d_max)
    wide = dim // d_max
    first = plan.sizes[0]
    for k in range(blocks - 1, 0, -1):
        if count > 1:  # W's P at the block's output, where W is the first axis (d_W = d_max)
            torch.bmm(mu.view(batch, first, dim // first), outputs[index - 1].view(batch, first, dim // first).mT,
                      out=flat_products[k])
        for kind, item in reversed(plan.steps):
            if kind == "gather":
                _apply_gather(mu, item.inverse, item.chunk, other)
            else:
                d = plan.sizes[item]
                r = dim // d
                if item > 0 or count == 1:
                    index -= 1
                    # P' = mu^T x over the rest of the state, read d_max columns wide (see the module docstring).
                    torch.bmm(mu.as_strided((batch, d_max, wide), (dim, 1, d_max)),
                              outputs[index].view(batch, wide, d_max), out=flat_products[item * blocks + k])
                # mu_in [B, d, r] = M^T mu_out^T with mu_out [B, r, d].
                matrix_t = mats.as_strided((batch, d, d), (count * d_max * d_max, 1, d_max),
                                           base + k * block_stride + item * d_max * d_max)
                torch.bmm(matrix_t, mu.as_strided((batch, d, r), (dim, 1, d)), out=other.view(batch, d, r))
            mu, other = other, mu

    # Block 0 at its product state (layout (W, Y, Z)).
    if count == 1:
        torch.bmm(mu.view(batch, dim, 1), psi0.view(batch, 1, dim), out=products[0, 0])
    else:
        last = count - 1
        torch.bmm(mu.view(batch, dim // d_max, d_max).mT, psi0.view(batch, dim // d_max, d_max),
                  out=products[last, 0])
        first = plan.sizes[0]
        if count == 2:
            torch.bmm(mu.view(batch, first, dim // first), psi0.view(batch, first, dim // first).mT,
                      out=products[0, 0])
        else:  # psi0 = head (x) v_Z: mu contracted with v_Z, then two small products with head
            head, tail = saved["head"], saved["parts"][2]
            reduced = torch.bmm(mu.view(batch, dim // plan.sizes[2], plan.sizes[2]), tail[:, :, None])
            width = head.shape[1] * head.shape[2]
            torch.bmm(reduced.view(batch, first, -1), head.view(batch, first, -1).mT, out=products[0, 0])
            torch.bmm(reduced.view(batch, width // d_max, d_max).mT, head.view(batch, width // d_max, d_max),
                      out=products[1, 0])

    # Every angle's gradient: S = P' . table, then the cos/sin weights.
    real = torch.view_as_real(products).view(count, blocks * batch, 2 * d_max * d_max)
    # Each column belongs to one group's qubit, so the sum over groups only gathers them.
    scores = torch.bmm(real, plan.extraction).sum(0)[:, :3 * n]  # [K B, 3n]
    weights = saved["trig"].view(batch, blocks, 10 * n)[..., 4 * n:].unflatten(-1, (2, 3, n)).transpose(0, 1)
    grad_theta = torch.empty(theta_shape, dtype=scores.dtype, device=scores.device)
    torch.sum(scores.view(blocks, batch, 1, 3, n) * weights, dim=3, out=grad_theta.permute(1, 0, 2, 3))
    return grad_theta


class _MultiBlock(torch.autograd.Function):
    """K >= 2 blocks with the hand-written backward of :func:`_backward` (first derivatives only)."""

    @staticmethod
    def forward(ctx, theta, plan, m, readout):
        out, saved = _forward(theta, plan, m, readout, save=True)
        ctx.plan, ctx.m, ctx.readout, ctx.saved, ctx.theta_shape = plan, m, readout, saved, theta.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grad_theta = _backward(grad.resolve_conj().contiguous(), ctx.theta_shape, ctx.plan, ctx.m, ctx.readout, ctx.saved)
        return grad_theta, None, None, None
