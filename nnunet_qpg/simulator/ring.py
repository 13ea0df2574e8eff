"""The CNOT ring of Eq. 1 (SPEC section 1) as one fixed permutation of basis indices.

For q = 0, ..., n-1 in that order, CNOT(control q, target (q+1) mod n) maps basis states to basis states, so the
whole ring is a permutation: ``psi_after = psi_before[..., perm]``. Applied as a gather whose backward is the
gather by the inverse permutation (no scatter-add). The index tables are built once per (n, device).
"""

from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["RingTables", "apply_ring", "cnot_ring_permutation"]


@lru_cache(maxsize=None)
def _cnot_ring_source_indices(num_qubits: int) -> tuple[int, ...]:
    """psi_after[i] = psi_before[src[i]] for one full CNOT ring (q = 0..n-1, control q, target q+1 mod n)."""
    n = num_qubits
    dim = 1 << n
    if n == 1:
        return tuple(range(dim))
    index = torch.arange(dim)
    # The ring is C_{n-1} ... C_1 C_0 (C_0 applied first). Each C is an involution on indices and
    # (C psi)[i] = psi[c(i)], so (C_{n-1}...C_0 psi)[i] = psi[c_0(c_1(...c_{n-1}(i)))]: apply c_{n-1} first.
    for q in reversed(range(n)):
        control_bit = 1 << (n - 1 - q)
        target_bit = 1 << (n - 1 - ((q + 1) % n))
        index = torch.where((index & control_bit) != 0, index ^ target_bit, index)
    return tuple(index.tolist())


def cnot_ring_permutation(num_qubits: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Source indices of the CNOT ring as a long tensor: ``psi_after = psi_before[..., perm]``."""
    return torch.tensor(_cnot_ring_source_indices(num_qubits), dtype=torch.long, device=device)


class _GatherPermutation(torch.autograd.Function):
    """out = x[..., perm[:m]], with the backward a gather by the inverse permutation of the zero-padded grad."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor, m: int) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.m = m
        ctx.dim = x.shape[-1]
        return x.index_select(-1, perm[:m])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        if ctx.m < ctx.dim:
            grad = torch.nn.functional.pad(grad, (0, ctx.dim - ctx.m))
        return grad.index_select(-1, inverse), None, None, None


class RingTables:
    """Per-(n, device) ring permutation tensors, built once.

    Built with inference mode off: the first call may come from nnU-Net's predictor (``torch.inference_mode``),
    and an inference tensor kept here would break every later training step in the process.
    """

    _store: dict[tuple, tuple[torch.Tensor, ...]] = {}

    @classmethod
    def _cached(cls, key: tuple, build) -> tuple[torch.Tensor, ...]:
        if key not in cls._store:
            with torch.inference_mode(False):
                cls._store[key] = build()
        return cls._store[key]

    @classmethod
    def get(cls, num_qubits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(perm, inverse): ``after = before[..., perm]`` and ``before = after[..., inverse]``."""

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            perm = cnot_ring_permutation(num_qubits, device)
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(perm.numel(), device=device)
            return perm, inverse

        return cls._cached(("perm", num_qubits, str(device)), build)  # type: ignore[return-value]

    @classmethod
    def split_sources(cls, num_qubits: int, m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The ring's first ``m`` source indices split into (high-half index, low-half index)."""

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            low_qubits = num_qubits - (num_qubits + 1) // 2
            sources = cnot_ring_permutation(num_qubits, device)[:m]
            return sources >> low_qubits, sources & ((1 << low_qubits) - 1)

        return cls._cached(("split", num_qubits, m, str(device)), build)  # type: ignore[return-value]

    @classmethod
    def one_hot_sources(cls, num_qubits: int, m: int, device: torch.device,
                        dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`split_sources` as 0/1 matrices ``[m, 2^h]`` and ``[m, 2^l]``: ``matrix @ v.T`` gathers ``v``.

        A gather written as a matmul has a matmul as its backward, where ``index_select``'s is a scatter-add
        (several times slower on the CPU for these ``[num_vqcs, m]`` outputs).
        """

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            low_qubits = num_qubits - (num_qubits + 1) // 2
            high_index, low_index = cls.split_sources(num_qubits, m, device)
            return tuple(torch.nn.functional.one_hot(index, size).to(dtype)  # type: ignore[return-value]
                         for index, size in ((high_index, 1 << (num_qubits - low_qubits)), (low_index, 1 << low_qubits)))

        return cls._cached(("one-hot", num_qubits, m, str(device), dtype), build)  # type: ignore[return-value]


def apply_ring(state: torch.Tensor, num_qubits: int, num_outputs: int | None = None) -> torch.Tensor:
    """The CNOT ring of Eq. 1 on states ``[..., 2^n]``; only the first ``num_outputs`` basis states are kept."""
    dim = state.shape[-1]
    m = dim if num_outputs is None else num_outputs
    if num_qubits == 1:
        return state[..., :m]
    perm, inverse = RingTables.get(num_qubits, state.device)
    return _GatherPermutation.apply(state, perm, inverse, m)
