"""Write a trainer file that places QPG (or QPGA adapters, or ConvLoRA) on the convolutions you name.

The file holds one nnUNetTrainer subclass configured by its qpg_config (a QPGConfig); put its folder in nnUNet_extTrainer
and train with nnU-Net's own command. Targets are glob patterns over the network's module names; list the names
of a planned network with `nnunet-qpg info -d ID -c 2d --list`. Patterns and the command line are written as
string literals only (nnU-Net imports every file of an nnUNet_extTrainer folder, so they must never become code).

examples:
  # the paper's scalability schemes: QPG on the bottleneck and the first decoder stage
  nnunet-qpg new-trainer nnUNetTrainerQPGBottleneck --targets "encoder.stages.4.*" "decoder.stages.0.*" -o my_trainers
  # adapters over a pretrained encoder, SST post-processing, the paper's schedule
  nnunet-qpg new-trainer nnUNetTrainerQPGAEncoder --targets "encoder.*" --mode adapter --post sst --paper-schedule -o my_trainers
  # the heads trained as a noisy device would: 1,000 shots, parameter-shift gradients, 2% readout error
  nnunet-qpg new-trainer nnUNetTrainerQPGDevice --targets "decoder.seg_layers.*" --shots 1000 --gradient parameter-shift --readout-error 0.02 -o my_trainers

  export nnUNet_extTrainer=$(nnunet-qpg trainers-path):$PWD/my_trainers
  nnUNetv2_train 1 2d 0 -tr nnUNetTrainerQPGBottleneck
"""

from __future__ import annotations

import argparse
import ast
import keyword
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from nnunet_qpg.commands.arguments import positive_int
from nnunet_qpg.config import MODES, POSTS, QPGConfig, QPGConfigError

HEADS = "decoder.seg_layers.*"
TRAINER_MODULE = "nnunet_qpg.nnunet_trainer"
# names the generated module imports or nnU-Net itself defines: a class of that name would shadow them
RESERVED_NAMES = ("nnUNetTrainer", "nnUNetTrainerQPGBase", "PaperProtocol", "QPGConfig")
IMPORTED = ("QPGConfig",)  # imported before the base classes
DESCRIPTIONS = {"replace": "QPGConv (Eqs. 6, 8)", "adapter": "QPGAConv adapters (Eqs. 7, 9)", "lora": "ConvLoRA"}


class GeneratedSourceError(RuntimeError):
    """The generated trainer source is not exactly the expected data-only module (a bug; nothing is written)."""


def trainer_settings(mode: str = "replace", post: str = "lpp", blocks: int = 1, rank: int = 8,
                     targets: list[str] | tuple[str, ...] = (), train_only: list[str] | None = None,
                     epochs: int | None = None, iterations_per_epoch: int | None = None,
                     circuits: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the QPGConfig keywords, the schedule class attributes) of a generated trainer, in the order they are
    written; all plain literals. ``circuits`` holds non-default ``shots``, ``gradient``, ``noise`` (a dict of
    NoiseModel fields) and ``entangle``. The config is validated here (QPGConfigError for a bad setting)."""
    config: dict[str, Any] = {"targets": tuple(targets), "mode": mode}
    if mode == "lora":
        config["rank"] = rank
    else:
        config.update(post=post, blocks=blocks)
    config.update(circuits or {})
    if train_only is not None:
        config["train_only"] = tuple(train_only)
    QPGConfig(**config)
    schedule: dict[str, Any] = {}
    if epochs is not None:
        schedule["schedule_epochs"] = epochs
    if iterations_per_epoch is not None:
        # nnU-Net validates 50 batches per 250 training batches; keep that ratio.
        schedule["schedule_iterations_per_epoch"] = iterations_per_epoch
        schedule["schedule_val_iterations_per_epoch"] = max(1, iterations_per_epoch // 5)
    return config, schedule


def _literal(value: Any) -> str:
    """A Python literal for ``value``: ascii() escapes quotes, backslashes, newlines and every non-ASCII
    character, so user text stays inside its string and the file is plain ASCII."""
    if isinstance(value, tuple):
        items = [_literal(item) for item in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(key)}: {_literal(item)}" for key, item in value.items()) + "}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return ascii(value) if not isinstance(value, float) else repr(value)
    raise TypeError(f"not a literal for a trainer file: {type(value).__name__}")


def trainer_source(name: str, targets: list[str], mode: str = "replace", post: str = "lpp", blocks: int = 1,
                   rank: int = 8, train_only: list[str] | None = None, paper_schedule: bool = False,
                   epochs: int | None = None, iterations_per_epoch: int | None = None,
                   command_line: str = "", circuits: dict[str, Any] | None = None) -> str:
    """The Python source of a trainer module defining class ``name``.

    User text (patterns, the command line) appears only as ``ascii()`` string literals in assignments, never in
    docstrings, comments or code; ``name`` must be an ASCII identifier. The source is checked with
    :func:`verify_trainer_source` before it is returned.
    """
    if not valid_class_name(name):
        raise ValueError(f"{name!r} is not an ASCII Python identifier")
    bases = ("PaperProtocol", "nnUNetTrainerQPGBase") if paper_schedule else ("nnUNetTrainerQPGBase",)
    config, schedule = trainer_settings(mode, post, blocks, rank, targets, train_only, epochs, iterations_per_epoch,
                                        circuits)
    arguments = ", ".join(f"{key}={_literal(value)}" for key, value in config.items())
    lines = [
        '"""A trainer written by `nnunet-qpg new-trainer` (CREATED_WITH holds its command line).',
        "",
        "Use it with nnUNet_extTrainer pointing at this folder; nnUNetv2_predict rebuilds the same network from",
        "the trainer name stored in the checkpoint, so keep this file where nnU-Net can find it. The settings are",
        'qpg_config below (a QPGConfig, see nnunet_qpg.config) and the schedule attributes after it."""',
        "",
        f"from {TRAINER_MODULE} import {', '.join(IMPORTED + bases)}",
        "",
        f"CREATED_WITH = {_literal(command_line)}",
        "",
        "",
        f"class {name}({', '.join(bases)}):",
        f'    """{DESCRIPTIONS[mode]} on the convolutions that qpg_config.targets matches."""',
        "",
        f"    qpg_config = QPGConfig({arguments})",
        *(f"    {attribute} = {_literal(value)}" for attribute, value in schedule.items()),
    ]
    source = "\n".join(lines) + "\n"
    verify_trainer_source(source, name, bases, config, schedule, command_line)
    return source


def _literal_value(node: ast.AST, where: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise GeneratedSourceError(f"{where} is not a literal") from None


def verify_trainer_source(source: str, name: str, bases: tuple[str, ...], config: dict[str, Any],
                          schedule: dict[str, Any], command_line: str) -> None:
    """Parse ``source`` and check it holds exactly: a docstring, ``from nnunet_qpg.nnunet_trainer import
    QPGConfig, BASES``, ``CREATED_WITH = <command_line>``, and ``class NAME(BASES)`` whose body is a docstring,
    ``qpg_config = QPGConfig(<literal keywords equal to config>)`` and one literal assignment per schedule
    attribute, each equal to the intended value. Raise GeneratedSourceError otherwise."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise GeneratedSourceError(f"the source does not parse: {error}") from None
    body = tree.body
    if len(body) != 4:
        raise GeneratedSourceError(f"expected 4 top-level statements, found {len(body)}")
    docstring, imports, created, trainer = body

    def is_docstring(node: ast.AST) -> bool:
        return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)

    if not is_docstring(docstring):
        raise GeneratedSourceError("the module does not start with its docstring")
    if not (isinstance(imports, ast.ImportFrom) and imports.module == TRAINER_MODULE and imports.level == 0
            and [(alias.name, alias.asname) for alias in imports.names]
            == [(imported, None) for imported in IMPORTED + bases]):
        raise GeneratedSourceError(f"the second statement is not `from {TRAINER_MODULE} import "
                                   f"{', '.join(IMPORTED + bases)}`")
    if not (isinstance(created, ast.Assign) and [ast.dump(t) for t in created.targets]
            == [ast.dump(ast.Name("CREATED_WITH", ast.Store()))]
            and _literal_value(created.value, "CREATED_WITH") == command_line):
        raise GeneratedSourceError("CREATED_WITH is not the command line as one string literal")
    if not (isinstance(trainer, ast.ClassDef) and trainer.name == name and not trainer.decorator_list
            and not trainer.keywords and [getattr(base, "id", None) for base in trainer.bases] == list(bases)
            and all(isinstance(base, ast.Name) for base in trainer.bases)):
        raise GeneratedSourceError(f"the last statement is not `class {name}({', '.join(bases)})`")
    if not trainer.body or not is_docstring(trainer.body[0]):
        raise GeneratedSourceError("the class does not start with its docstring")
    if len(trainer.body) < 2 or not _is_config_call(trainer.body[1], config):
        raise GeneratedSourceError(f"the class does not set qpg_config = QPGConfig(...) with exactly {config!r}")
    assigned: dict[str, Any] = {}
    for node in trainer.body[2:]:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise GeneratedSourceError(f"line {node.lineno}: the class body holds something other than assignments")
        target = node.targets[0].id
        assigned[target] = _literal_value(node.value, target)
    if assigned != schedule or list(assigned) != list(schedule):
        raise GeneratedSourceError(f"the class attributes {assigned!r} are not the intended {schedule!r}")


def _is_config_call(node: ast.AST, config: dict[str, Any]) -> bool:
    """``qpg_config = QPGConfig(k=<literal>, ...)``: no positional arguments, keywords equal to ``config``."""
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "qpg_config" and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name) and node.value.func.id == "QPGConfig" and not node.value.args
            and all(keyword.arg is not None for keyword in node.value.keywords)):
        return False
    given = {keyword.arg: _literal_value(keyword.value, f"QPGConfig({keyword.arg}=...)")
             for keyword in node.value.keywords}
    return given == config and list(given) == list(config)


def valid_class_name(name: str) -> bool:
    """An ASCII identifier that is not a keyword (non-ASCII identifiers are NFKC-normalised by Python, so the
    class could end up with another name than its file and nnU-Net would not find it)."""
    return name.isascii() and name.isidentifier() and not keyword.iskeyword(name)


def command_line_of(args: argparse.Namespace, targets: list[str], train_only: list[str] | None) -> str:
    """The new-trainer command that writes this file again (recorded in the file as a string literal)."""
    words = ["nnunet-qpg", "new-trainer", args.name, "--targets", *targets, "--mode", args.mode]
    words += ["--rank", str(args.rank)] if args.mode == "lora" else ["--post", args.post, "--blocks", str(args.blocks)]
    if args.train_only is not None:
        words += ["--train-only", *train_only]
    if args.paper_schedule:
        words.append("--paper-schedule")
    if args.epochs is not None:
        words += ["--epochs", str(args.epochs)]
    if args.iterations_per_epoch is not None:
        words += ["--iterations-per-epoch", str(args.iterations_per_epoch)]
    if args.shots is not None:
        words += ["--shots", str(args.shots)]
    if args.gradient != "backprop":
        words += ["--gradient", args.gradient]
    if args.readout_error is not None:
        words += ["--readout-error", repr(args.readout_error)]
    if args.depolarizing is not None:
        words += ["--depolarizing", *map(repr, args.depolarizing)]
    if args.no_entanglement:
        words.append("--no-entanglement")
    return shlex.join([*words, "-o", str(args.output)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="class (and file) name, a Python identifier, e.g. nnUNetTrainerQPGBottleneck")
    parser.add_argument("--targets", nargs="+", required=True, metavar="PATTERN",
                        help="glob patterns over module names, e.g. 'decoder.seg_layers.*' 'encoder.stages.4.*'")
    parser.add_argument("--mode", choices=tuple(MODES), default="replace",
                        help="replace: QPGConv; adapter: QPGAConv over the frozen kernel; lora: ConvLoRA (default: replace)")
    parser.add_argument("--post", choices=tuple(POSTS), default="lpp", help="post-processing, paper Eqs. 3-5 (default: lpp)")
    parser.add_argument("--blocks", type=positive_int, default=1, help="circuit blocks K (default: 1, the paper's)")
    parser.add_argument("--rank", type=positive_int, default=8, help="LoRA rank r for --mode lora (default: 8)")
    parser.add_argument("--train-only", nargs="*", default=None, metavar="PATTERN",
                        help="freeze everything except the QPG/LoRA parameters and these modules. Default: nothing "
                             f"frozen for --mode replace; only the heads ('{HEADS}') trained besides the adapters "
                             "for adapter / lora. Give it with no pattern to train the adapters alone")
    parser.add_argument("--paper-schedule", action="store_true",
                        help="the paper's protocol: Adam lr 1e-3, weight decay 5e-4, constant LR, 20 epochs")
    parser.add_argument("--epochs", type=positive_int, default=None, help="number of epochs (default: nnU-Net's / paper's)")
    parser.add_argument("--iterations-per-epoch", type=positive_int, default=None,
                        help="training iterations per epoch (default: nnU-Net's 250); validation iterations follow "
                             "nnU-Net's 5:1 ratio")
    hardware = parser.add_argument_group("towards hardware (QPG modes, LPP or SST; see the README's 'Towards hardware')")
    hardware.add_argument("--shots", type=positive_int, default=None,
                          help="samples per circuit per training step (default: exact probabilities)")
    hardware.add_argument("--gradient", choices=("backprop", "parameter-shift"), default="backprop",
                          help="angle gradients: autograd (default) or the parameter-shift rule hardware uses")
    hardware.add_argument("--readout-error", type=float, default=None, metavar="P",
                          help="per-qubit readout error, e.g. 0.02")
    hardware.add_argument("--depolarizing", type=float, nargs=2, default=None, metavar=("P1", "P2"),
                          help="depolarizing probability after every one-qubit gate and after every CNOT, e.g. 0.001 0.01")
    hardware.add_argument("--no-entanglement", action="store_true",
                          help="leave the CNOT ring out (the control without entanglement)")
    parser.add_argument("-o", "--output", type=Path, default=Path("."), help="folder to write NAME.py into (default: .)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def _run(args: argparse.Namespace) -> int:
    from nnunet_qpg.safe_io import make_output_folder, write_text_atomically

    name = args.name
    if not valid_class_name(name):
        print(f"new-trainer: {name!r} is not a valid class name; use ASCII letters, digits and _ (not starting "
              f"with a digit, not a Python keyword), e.g. nnUNetTrainerQPGMine", file=sys.stderr)
        return 2
    if name in RESERVED_NAMES:
        print(f"new-trainer: {name} is the name of a class the trainer file builds on; choose another name, "
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
    if (path.exists() or path.is_symlink()) and not args.force:
        print(f"new-trainer: {path} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    circuits: dict[str, Any] = {}
    if args.shots is not None:
        circuits["shots"] = args.shots
    if args.gradient != "backprop":
        circuits["gradient"] = args.gradient
    if args.readout_error is not None or args.depolarizing is not None:
        noise: dict[str, Any] = {}
        if args.readout_error is not None:
            noise["readout_error"] = args.readout_error
        if args.depolarizing is not None:
            noise["one_qubit_depolarizing"], noise["two_qubit_depolarizing"] = args.depolarizing
        circuits["noise"] = noise
    if args.no_entanglement:
        circuits["entangle"] = False
    try:
        source = trainer_source(name, targets, mode=args.mode, post=args.post, blocks=args.blocks, rank=args.rank,
                                train_only=train_only, paper_schedule=args.paper_schedule, epochs=args.epochs,
                                iterations_per_epoch=args.iterations_per_epoch,
                                command_line=command_line_of(args, targets, args.train_only), circuits=circuits)
    except QPGConfigError as error:
        print(f"new-trainer: {error}", file=sys.stderr)
        return 2
    make_output_folder(args.output, "-o")
    write_text_atomically(path, source)
    print(f"wrote {path}\nuse it with:\n  export nnUNet_extTrainer=\"$nnUNet_extTrainer{os.pathsep}"
          f"{path.parent.resolve()}\"\n  nnUNetv2_train DATASET 2d FOLD -tr {name}")
    return 0


def run(args: argparse.Namespace) -> int:
    from nnunet_qpg.safe_io import guarded

    return guarded("new-trainer", lambda: _run(args))
