"""Write a trainer file that places QPG (or QPGA adapters, or ConvLoRA) on the convolutions you name.

The file holds one nnUNetTrainer subclass configured by class attributes; put its folder in nnUNet_extTrainer
and train with nnU-Net's own command. Targets are glob patterns over the network's module names; list the names
of a planned network with `nnunet-qpg info -d ID -c 2d --list`.

examples:
  # the paper's scalability schemes: QPG on the bottleneck and the first decoder stage
  nnunet-qpg new-trainer nnUNetTrainerQPGBottleneck --targets "encoder.stages.4.*" "decoder.stages.0.*" -o my_trainers
  # adapters over a pretrained encoder, SST post-processing, the paper's schedule
  nnunet-qpg new-trainer nnUNetTrainerQPGAEncoder --targets "encoder.*" --mode adapter --post sst --paper-schedule -o my_trainers

  export nnUNet_extTrainer=$(nnunet-qpg trainers-path):$PWD/my_trainers
  nnUNetv2_train 1 2d 0 -tr nnUNetTrainerQPGBottleneck
"""

from __future__ import annotations

import argparse
import keyword
import shlex
import os
import sys
from pathlib import Path

from nnunet_qpg.safe_io import write_text_atomically

MODES = ("replace", "adapter", "lora")
POSTS = ("rce", "lpp", "sst")
HEADS = "decoder.seg_layers.*"


def trainer_source(name: str, targets: list[str], mode: str = "replace", post: str = "lpp", blocks: int = 1,
                   rank: int = 8, train_only: list[str] | None = None, paper_schedule: bool = False,
                   epochs: int | None = None, iterations_per_epoch: int | None = None,
                   command_line: str = "") -> str:
    """The Python source of a trainer module defining class ``name``."""
    bases = "PaperProtocol, nnUNetTrainerQPGBase" if paper_schedule else "nnUNetTrainerQPGBase"
    what = {"replace": "QPGConv (Eqs. 6, 8)", "adapter": "QPGAConv adapters (Eqs. 7, 9)",
            "lora": f"ConvLoRA (rank {rank})"}[mode]
    lines = [
        f'"""{name}: {what} on {", ".join(targets)}.',
        "",
        "Written by `nnunet-qpg new-trainer`" + (f":\n    {command_line}" if command_line else "."),
        "Use it with nnUNet_extTrainer pointing at this folder; nnUNetv2_predict rebuilds the same network from",
        'the trainer name stored in the checkpoint, so keep this file where nnU-Net can find it."""',
        "",
        f"from nnunet_qpg.nnunet_trainer import {bases}",
        "",
        "",
        f"class {name}({bases}):",
        f'    """{what} on {", ".join(targets)}."""',
        "",
        f"    qpg_targets = {tuple(targets)!r}",
        f"    qpg_mode = {mode!r}",
    ]
    if mode == "lora":
        lines.append(f"    qpg_lora_rank = {rank!r}")
    else:
        lines += [f"    qpg_post = {post!r}", f"    qpg_blocks = {blocks!r}"]
    if train_only is not None:
        lines.append(f"    qpg_train_only = {tuple(train_only)!r}")
    if epochs is not None:
        lines.append(f"    schedule_epochs = {epochs!r}")
    if iterations_per_epoch is not None:
        # nnU-Net validates 50 batches per 250 training batches; keep that ratio.
        lines.append(f"    schedule_iterations_per_epoch = {iterations_per_epoch!r}")
        lines.append(f"    schedule_val_iterations_per_epoch = {max(1, iterations_per_epoch // 5)!r}")
    return "\n".join(lines) + "\n"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="class (and file) name, a Python identifier, e.g. nnUNetTrainerQPGBottleneck")
    parser.add_argument("--targets", nargs="+", required=True, metavar="PATTERN",
                        help="glob patterns over module names, e.g. 'decoder.seg_layers.*' 'encoder.stages.4.*'")
    parser.add_argument("--mode", choices=MODES, default="replace",
                        help="replace: QPGConv; adapter: QPGAConv over the frozen kernel; lora: ConvLoRA (default: replace)")
    parser.add_argument("--post", choices=POSTS, default="lpp", help="post-processing, paper Eqs. 3-5 (default: lpp)")
    parser.add_argument("--blocks", type=_positive, default=1, help="circuit blocks K (default: 1, the paper's)")
    parser.add_argument("--rank", type=_positive, default=8, help="LoRA rank r for --mode lora (default: 8)")
    parser.add_argument("--train-only", nargs="*", default=None, metavar="PATTERN",
                        help="freeze everything except the QPG/LoRA parameters and these modules. Default: nothing "
                             f"frozen for --mode replace; only the heads ('{HEADS}') trained besides the adapters "
                             "for adapter / lora. Give it with no pattern to train the adapters alone")
    parser.add_argument("--paper-schedule", action="store_true",
                        help="the paper's protocol: Adam lr 1e-3, weight decay 5e-4, constant LR, 20 epochs")
    parser.add_argument("--epochs", type=_positive, default=None, help="number of epochs (default: nnU-Net's / paper's)")
    parser.add_argument("--iterations-per-epoch", type=_positive, default=None,
                        help="training iterations per epoch (default: nnU-Net's 250); validation iterations follow "
                             "nnU-Net's 5:1 ratio")
    parser.add_argument("-o", "--output", type=Path, default=Path("."), help="folder to write NAME.py into (default: .)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def run(args: argparse.Namespace) -> int:
    name = args.name
    if not name.isidentifier() or keyword.iskeyword(name):
        print(f"new-trainer: {name!r} is not a valid Python class name; use letters, digits and _, "
              f"e.g. nnUNetTrainerQPGMine", file=sys.stderr)
        return 2
    from nnunet_qpg.commands.trainers_path import trainers_path

    shipped = Path(trainers_path())
    if any(f"class {name}(" in p.read_text() for p in shipped.glob("*.py")):
        print(f"new-trainer: {name} is already a shipped trainer ({shipped}); nnU-Net would find that one. "
              "Choose another name.", file=sys.stderr)
        return 2
    targets = [t.strip() for t in args.targets if t.strip()]
    if not targets:
        print("new-trainer: --targets needs at least one pattern, e.g. 'decoder.seg_layers.*'", file=sys.stderr)
        return 2
    train_only = args.train_only
    if train_only is None and args.mode in ("adapter", "lora"):
        train_only = [HEADS]
    path = args.output / f"{name}.py"
    if path.exists() and not args.force:
        print(f"new-trainer: {path} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    command_line = "nnunet-qpg new-trainer " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["new-trainer"] else ""
    source = trainer_source(name, targets, mode=args.mode, post=args.post, blocks=args.blocks, rank=args.rank,
                            train_only=train_only, paper_schedule=args.paper_schedule, epochs=args.epochs,
                            iterations_per_epoch=args.iterations_per_epoch, command_line=command_line)
    compile(source, str(path), "exec")  # a bug here must never leave a broken trainer file behind
    write_text_atomically(path, source)
    print(f"wrote {path}\nuse it with:\n  export nnUNet_extTrainer=\"$nnUNet_extTrainer{os.pathsep}"
          f"{path.parent.resolve()}\"\n  nnUNetv2_train DATASET 2d FOLD -tr {name}")
    return 0
