"""Rows of the paper's Table 1 for trained nnU-Net model folders: trainer, strategy, IoU/DSC, trainable parameters.

- trainer and strategy: from `fold_X/qpg_settings.json`, which the QPG trainers write beside the checkpoints
  (mode replace/adapter/lora and post-processing rce/lpp/sst; "classical" when nothing was swapped), else from
  the model folder name;
- train IoU / DSC: nnU-Net's own cross-validation of the folds (`fold_X/validation/summary.json`), recomputed
  per validation image from its TP/FP/FN counts with our empty-mask convention (`metrics.scores_from_counts`),
  mean and standard deviation over images (Eqs. 10-11);
- test IoU / DSC: an `nnunet-qpg evaluate` JSON given for the model;
- trainable parameters: `trainable_parameters` of qpg_settings.json (after freezing and swapping).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nnunet_qpg.metrics import mean_and_std, scores_from_counts


@dataclass
class ModelRow:
    name: str
    trainer: str
    strategy: str
    trainable_parameters: int | None
    train: dict | None  # {"iou_mean", "iou_std", "dsc_mean", "dsc_std", "images"}
    test: dict | None


def _settings(model_folder: Path) -> dict | None:
    for path in sorted(model_folder.glob("fold_*/qpg_settings.json")):
        return json.loads(path.read_text())
    return None


def strategy_of(settings: dict | None) -> str:
    if not settings or not settings.get("qpg"):
        return "classical"
    qpg = settings["qpg"]
    mode = qpg.get("mode", "?")
    if mode == "lora":
        return f"ConvLoRA r={qpg.get('settings', {}).get('r', '?')}"
    post = str(qpg.get("settings", {}).get("post", "?")).upper()
    name = {"replace": "QPGConv", "adapter": "QPGAConv"}.get(mode, mode)
    return f"{name} {post}, {len(qpg.get('layers', []))} layer(s)"


def cross_validation_scores(model_folder: Path, label: str = "1") -> dict | None:
    """Per-image IoU/DSC over every fold's validation images (nnU-Net's summary.json counts), or None."""
    ious, dscs = [], []
    for summary in sorted(model_folder.glob("fold_*/validation/summary.json")):
        for case in json.loads(summary.read_text()).get("metric_per_case", []):
            counts = case["metrics"].get(label) or case["metrics"].get(int(label) if label.isdigit() else label)
            if counts is None:
                continue
            scores = scores_from_counts(counts["TP"], counts["FP"], counts["FN"])
            ious.append(scores.iou)
            dscs.append(scores.dsc)
    if not ious:
        return None
    iou_mean, iou_std = mean_and_std(ious)
    dsc_mean, dsc_std = mean_and_std(dscs)
    return {"iou_mean": iou_mean, "iou_std": iou_std, "dsc_mean": dsc_mean, "dsc_std": dsc_std, "images": len(ious)}


def model_row(model_folder: Path, test_metrics: Path | None = None, name: str | None = None) -> ModelRow:
    settings = _settings(model_folder)
    trainer = settings["trainer"] if settings else model_folder.name.split("__")[0]
    test = json.loads(test_metrics.read_text())["summary"] if test_metrics else None
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
