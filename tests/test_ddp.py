"""DistributedDataParallel with QPG layers: 2 processes, gloo, CPU.

The network is wrapped in DDP first and swapped afterwards with ``swap_network``, as nnUNetTrainerQPGBase does
(nnU-Net wraps in ``initialize()``, the swap waits for pretrained weights). Each rank builds its network from a
different seed, so identical parameters at the end also prove that the re-wrapped DDP broadcast rank 0's new
QPG parameters and then kept the ranks in step.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
STEPS = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _small_unet() -> torch.nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(input_channels=1, n_stages=3, features_per_stage=[8, 16, 32], conv_op=torch.nn.Conv2d,
                         kernel_sizes=3, strides=[1, 2, 2], n_conv_per_stage=2, num_classes=2,
                         n_conv_per_stage_decoder=1, conv_bias=True, norm_op=torch.nn.InstanceNorm2d,
                         norm_op_kwargs={"affine": True}, nonlin=torch.nn.LeakyReLU, deep_supervision=True)


def _worker(rank: int, port: int, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nnunet_qpg.nnunet_trainer import swap_network, unwrap_network
    from nnunet_qpg.surgery import apply_qpg

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(100 + rank)  # different initial weights on purpose
        network = DDP(_small_unet())

        def swap(module: torch.nn.Module) -> None:
            apply_qpg(module, ["decoder.seg_layers.*"], mode="replace", post="lpp")
            apply_qpg(module, ["encoder.stages.1.*"], mode="adapter", post="sst")

        network, _ = swap_network(network, swap)
        assert isinstance(network, DDP)
        start = {k: v.detach().clone() for k, v in unwrap_network(network).state_dict().items()}
        optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-2)
        generator = torch.Generator().manual_seed(rank)  # each rank sees different data
        for _ in range(STEPS):
            x = torch.randn(2, 1, 16, 16, generator=generator)
            mask = (x > 0).float()
            # every deep-supervision head takes part in the loss, as in nnU-Net (DDP needs all used)
            loss = sum(torch.nn.functional.cross_entropy(
                out, torch.nn.functional.interpolate(mask, size=out.shape[2:]).long()[:, 0])
                for out in network(x))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        torch.save({"start": start, "end": unwrap_network(network).state_dict()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_trains_qpg_layers_identically_on_two_ranks(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]
    end0, end1 = ranks[0]["end"], ranks[1]["end"]
    assert end0.keys() == end1.keys()
    thetas = [k for k in end0 if k.endswith(".theta")]
    assert any(k.startswith("decoder.seg_layers.") for k in thetas)
    assert any(k.startswith("encoder.stages.1.") for k in thetas)
    for key in end0:
        assert torch.equal(end0[key], end1[key]), f"{key} differs between the ranks"
    for key in thetas + [k for k in end0 if k.endswith(".post.projection.weight")]:
        assert not torch.equal(ranks[0]["start"][key], end0[key]), f"{key} did not train"
    # the adapters' base kernels are frozen
    frozen = "encoder.stages.1.0.convs.0.conv.weight"
    assert torch.equal(ranks[0]["start"][frozen], end0[frozen])
