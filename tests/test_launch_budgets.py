"""The issue's budgets of kernel-launching ops QPG adds to one nnU-Net training step (benchmarks/bench_launches.py).

Counting is deterministic (profiler leaf operator events of one forward + backward, views / metadata /
allocations left out; see bench_launches' docstring), so the budgets are asserted exactly, on the full-size 2D
PlainConvUNet (7 stages, input 2 x 1 x 128 x 128) and the 3d_fullres ResidualEncoderUNet
(benchmarks/data/plans_3d_fullres_resenc.json, input 1 x 1 x 16 x 64 x 64). Nothing here times anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_launches  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Tiny(nn.Module):
    def __init__(self, extra=None):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.InstanceNorm2d(4, affine=True)
        self.extra = extra

    def forward(self, x):
        y = self.norm(self.conv(x))
        if self.extra is not None:
            y = self.extra(y)
        return nn.functional.leaky_relu(y)


def _tiny_counts(extra=None):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    weight = torch.randn(2, 4, 8, 8)
    return bench_launches.step_op_counts(_Tiny(extra), x, lambda out: (out * weight).sum())


def test_counter_counts_real_ops_and_not_views() -> None:
    plain = _tiny_counts()
    assert sum(plain.values()) > 0
    # sin: forward aten::sin; backward grad * cos(x): aten::cos + aten::mul.
    with_sin = _tiny_counts(torch.sin)
    added = with_sin.copy()
    added.subtract(plain)
    assert {name: n for name, n in added.items() if n} == {"aten::sin": 1, "aten::cos": 1, "aten::mul": 1}
    assert sum(with_sin.values()) - sum(plain.values()) == 3

    def views(y):  # views and view-like ops that copy nothing, forward and backward
        return (y.view(-1).view(y.shape).transpose(-1, -2).transpose(-1, -2).unsqueeze(0).squeeze(0)[:, :]
                .expand_as(y).contiguous().reshape(y.shape))

    assert _tiny_counts(views) == plain


def test_free_op_rule() -> None:
    for name in ("aten::view", "aten::reshape", "aten::_unsafe_view", "aten::as_strided", "aten::t",
                 "aten::transpose", "aten::permute", "aten::expand", "aten::slice", "aten::select", "aten::split",
                 "aten::split_with_sizes", "aten::unbind", "aten::chunk", "aten::unsqueeze", "aten::squeeze",
                 "aten::detach", "detach", "aten::alias", "aten::view_as_real", "aten::empty", "aten::empty_like",
                 "aten::empty_strided", "aten::resize_", "aten::as_strided_", "aten::lift_fresh",
                 "aten::result_type", "aten::_nnpack_available"):
        assert bench_launches.is_free_op(name), name
    for name in ("aten::add", "aten::add_", "aten::copy_", "aten::mm", "aten::fill_", "aten::clone",
                 "aten::_local_scalar_dense", "aten::cat", "aten::index_select"):
        assert not bench_launches.is_free_op(name), name


def test_plain_2d_step_is_counted() -> None:
    plain = bench_launches.plain_ops("2d")
    assert plain > 300  # 7-stage U-Net, 38 convolutions, deep-supervision loss, forward + backward


def _assert_budget(placement: str, dims: str, budget: int) -> None:
    result = bench_launches.added_ops(placement, dims)
    assert result["added"] <= budget, (
        f"{placement} ({dims}) adds {result['added']} ops to a training step ({result['ops']} vs "
        f"{result['reference']}, {result['layers']} layers); the budget is {budget}")


def test_qpg_heads_budget_2d() -> None:
    _assert_budget("heads", "2d", 100)


def test_qpg_decoder_k1_budget_2d() -> None:
    _assert_budget("decoder K=1", "2d", 150)


def test_qpg_decoder_k3_budget_2d() -> None:
    _assert_budget("decoder K=3", "2d", 400)


def test_qpga_vs_convlora_budget_2d() -> None:
    _assert_budget("QPGA minus ConvLoRA", "2d", 150)


def test_qpga_vs_convlora_budget_3d() -> None:
    _assert_budget("QPGA minus ConvLoRA", "3d", 200)
