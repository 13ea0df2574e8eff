"""Rows of the paper's Table 1 for trained nnU-Net model folders: trainer, strategy, IoU/DSC, trainable parameters.

- trainer and strategy: from `fold_X/qpg_settings.json`, which the QPG trainers write beside the checkpoints
  (mode replace/adapter/lora and post-processing rce/lpp/sst; "classical" when nothing was swapped), else from
  the model folder name;
- train IoU / DSC: nnU-Net's own cross-validation of the folds (`fold_X/validation/summary.json`), recomputed
  per validation image from its TP/FP/FN counts with our empty-mask convention (`metrics.scores_from_counts`),
  mean and standard deviation over images (Eqs. 10-11);
- test IoU / DSC: an `nnunet-qpg evaluate` JSON given for the model;
- trainable parameters: `trainable_parameters` of qpg_settings.json (after freezing and swapping).

Every file is checked as it is read: a folder that is not a trained model folder, a qpg_settings.json or
summary.json that is not valid JSON of the expected shape, and a --test file that is not an evaluate JSON each
raise :class:`ReportError` naming the file and the fix, instead of a row of dashes or a traceback.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunet_qpg.metrics import mean_and_std, scores_from_counts

MODEL_FOLDER_HINT = ("a trained model folder is $nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION and "
                     "holds fold_X/ folders with checkpoint_final.pth (or checkpoint_latest.pth / checkpoint_best.pth),"
                     " validation/summary.json and, for the nnunet-qpg trainers, qpg_settings.json")


class ReportError(Exception):
    """A model folder or a file in it (or a --test file) that cannot be reported; the message names it."""


def _read_json(path: Path, what: str, fix: str) -> Any:
    """JSON content of ``path``; NaN / Infinity (which older files may hold) become None."""
    try:
        return json.loads(path.read_text(), parse_constant=lambda _: None)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
        raise ReportError(f"{path} cannot be read as {what} ({reason}); {fix}") from None


def model_folder_problem(model_folder: Path) -> str | None:
    """Why ``model_folder`` is not a trained nnU-Net model folder, or None."""
    if not model_folder.exists():
        return "does not exist"
    if not model_folder.is_dir():
        return "is a file, not a model folder"
    folds = [fold for fold in sorted(model_folder.glob("fold_*")) if fold.is_dir()]
    if not folds:
        return "holds no fold_X/ folder"
    if not any(any(fold.glob("checkpoint_*.pth")) or (fold / "validation" / "summary.json").is_file()
               or (fold / "qpg_settings.json").is_file() for fold in folds):
        return "holds fold_X/ folders without checkpoints, validation results or qpg_settings.json"
    return None


def check_model_folder(model_folder: Path) -> None:
    """Raise ReportError unless ``model_folder`` holds what a row is made from."""
    problem = model_folder_problem(model_folder)
    if problem:
        raise ReportError(f"{model_folder} {problem}; {MODEL_FOLDER_HINT}")


@dataclass
class ModelRow:
    name: str
    trainer: str
    strategy: str
    trainable_parameters: int | None
    train: dict | None  # {"iou_mean", "iou_std", "dsc_mean", "dsc_std", "images"}
    test: dict | None


_SETTINGS_FIX = ("it is written by the nnunet-qpg trainers when training starts; resume the fold with "
                 "`nnUNetv2_train ... --c` to write it again, or restore it from a backup")


def _settings(model_folder: Path) -> dict | None:
    for path in sorted(model_folder.glob("fold_*/qpg_settings.json")):
        settings = _read_json(path, "the trainer's qpg_settings.json", _SETTINGS_FIX)
        if not isinstance(settings, dict) or not isinstance(settings.get("trainer"), str):
            raise ReportError(f"{path} is not a qpg_settings.json written by an nnunet-qpg trainer (no trainer "
                              f"name); {_SETTINGS_FIX}")
        for key in ("qpg", "trainable_parameters"):
            if key in settings and settings[key] is not None and not isinstance(
                    settings[key], dict if key == "qpg" else int):
                raise ReportError(f"{path}: {key!r} is {settings[key]!r}, not what the trainers write; {_SETTINGS_FIX}")
        return settings
    return None


_SUMMARY_KEYS = ("iou_mean", "iou_std", "dsc_mean", "dsc_std")


def read_test_summary(path: Path) -> dict:
    """The ``summary`` of an `nnunet-qpg evaluate` JSON (ReportError naming the file if it is not one)."""
    fix = "give the JSON that `nnunet-qpg evaluate PREDICTIONS GROUND_TRUTH -o FILE` wrote for this model"
    content = _read_json(path, "an `nnunet-qpg evaluate` JSON", fix)
    summary = content.get("summary") if isinstance(content, dict) else None
    if not isinstance(summary, dict):
        raise ReportError(f"{path} is not an `nnunet-qpg evaluate` JSON (no 'summary' object); {fix}")
    for key in _SUMMARY_KEYS:
        value = summary.get(key)
        if key not in summary or not (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                                        and math.isfinite(value))):
            raise ReportError(f"{path} is not an `nnunet-qpg evaluate` JSON ('summary' has no number {key!r}); {fix}")
    if not isinstance(summary.get("images"), int):
        raise ReportError(f"{path} is not an `nnunet-qpg evaluate` JSON ('summary' has no image count); {fix}")
    return summary


def strategy_of(settings: dict | None) -> str:
    data_path = [_data_path_strategy(block) for block in (settings or {}).get("data_path") or []]
    if not settings or not settings.get("qpg"):
        return " + ".join(data_path) if data_path else "classical"
    return " + ".join([_qpg_strategy(settings["qpg"]), *data_path])


def _data_path_strategy(block: dict) -> str:
    """``data-path 5x5q amplitude``: circuits x qubits and embedding of a data-path block (SPEC section 8)."""
    config = block.get("settings", {})
    return f"data-path {config.get('circuits', '?')}x{config.get('qubits', '?')}q {config.get('embedding', '?')}"


def _qpg_strategy(qpg: dict) -> str:
    mode = qpg.get("mode", "?")
    if mode == "lora":  # the QPGConfig field is "rank"; files written before QPGConfig say "r"
        rank = qpg.get("settings", {}).get("rank", qpg.get("settings", {}).get("r", "?"))
        return f"ConvLoRA r={rank}"
    post = str(qpg.get("settings", {}).get("post", "?")).upper()
    name = {"replace": "QPGConv", "adapter": "QPGAConv"}.get(mode, mode)
    return f"{name} {post}, {len(qpg.get('layers', []))} layer(s)"


def cross_validation_scores(model_folder: Path, label: str = "1") -> dict | None:
    """Per-image IoU/DSC over every fold's validation images (nnU-Net's summary.json counts), or None."""
    ious, dscs = [], []
    fix = "nnUNetv2_train writes it when a fold's validation ends; run `nnUNetv2_train ... --val` to write it again"
    for summary in sorted(model_folder.glob("fold_*/validation/summary.json")):
        content = _read_json(summary, "nnU-Net's validation summary.json", fix)
        try:
            for case in content.get("metric_per_case", []):
                counts = case["metrics"].get(label) or case["metrics"].get(int(label) if label.isdigit() else label)
                if counts is None:
                    continue
                scores = scores_from_counts(float(counts["TP"]), float(counts["FP"]), float(counts["FN"]))
                ious.append(scores.iou)
                dscs.append(scores.dsc)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ReportError(f"{summary} is not nnU-Net's validation summary.json (per-case TP/FP/FN counts "
                              f"missing); {fix}") from None
    if not ious:
        return None
    iou_mean, iou_std = mean_and_std(ious)
    dsc_mean, dsc_std = mean_and_std(dscs)
    return {"iou_mean": iou_mean, "iou_std": iou_std, "dsc_mean": dsc_mean, "dsc_std": dsc_std, "images": len(ious)}


def model_row(model_folder: Path, test_metrics: Path | None = None, name: str | None = None) -> ModelRow:
    """One Table 1 row; ReportError (naming the file) for a folder or file that is not what it should be."""
    check_model_folder(model_folder)
    settings = _settings(model_folder)
    trainer = settings["trainer"] if settings else model_folder.name.split("__")[0]
    test = read_test_summary(test_metrics) if test_metrics else None
    return ModelRow(
        name=name or trainer,
        trainer=trainer,
        strategy=strategy_of(settings),
        trainable_parameters=settings.get("trainable_parameters") if settings else None,
        train=cross_validation_scores(model_folder),
        test=test,
    )


def _score(scores: dict | None, metric: str) -> str:
    if not scores or scores.get(f"{metric}_mean") is None:
        return "-"
    return f"{scores[f'{metric}_mean']:.3f} ± {scores[f'{metric}_std']:.3f}"


def table_rows(rows: list[ModelRow]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "strategy", "train IoU", "train DSC", "test IoU", "test DSC", "trainable params"]
    body = [[row.name, row.strategy, _score(row.train, "iou"), _score(row.train, "dsc"), _score(row.test, "iou"),
             _score(row.test, "dsc"), "-" if row.trainable_parameters is None else f"{row.trainable_parameters:,}"]
            for row in rows]
    return header, body
