"""What the experiments beyond the paper share: a model trained for them or taken from a run
given with ``--reuse``, and its count row on held-out scenes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from airscene.config import RunConfig
from airscene.provenance import git_revision, hardware
from airscene.train import train


def summary_header(experiment: str, quick: bool, seed: int, sizes: Any) -> dict[str, Any]:
    """The head of an experiment's results.json: what ran, where, at which revision and sizes."""
    return {
        "experiment": experiment,
        "quick": quick,
        "seed": seed,
        "git_revision": git_revision(),
        "hardware": hardware(),
        "sizes": dataclasses.asdict(sizes),
    }


@dataclass
class TrainedModel:
    """A model an experiment measures, in eval mode, and where it came from."""

    model: Any
    config: RunConfig
    run: str  # the run directory, checkpoint or shipped model's name
    train_seconds: float | None


def trained_or_reused(
    config: RunConfig,
    run_dir: Path,
    reused: str | Path | None,
    experiment: str,
    progress: bool = True,
) -> TrainedModel:
    """The model of ``reused`` (a run, checkpoint or shipped model's name, with its own config)
    if given; otherwise ``config`` trained into ``run_dir`` for ``airscene experiment
    EXPERIMENT``."""
    from airscene.checkpoint import load_model

    if reused is not None:
        model, checkpoint = load_model(reused)
        seconds = checkpoint.meta.get("trainer", {}).get("train_seconds")
        return TrainedModel(model.eval(), checkpoint.config, str(reused), seconds)
    command = ["airscene", "experiment", experiment]
    result = train(config, run_dir, overwrite=True, progress=progress, command=command)
    return TrainedModel(load_model(run_dir)[0].eval(), config, str(run_dir), result.train_seconds)


def count_row(model: Any, scenes: Any, seed: int = 0) -> dict[str, float]:
    """Count accuracy, mean absolute count error, mean count found, AP@0.5 and mean IoU of
    ``model`` on held-out ``scenes``, and the inferred masks' foreground ARI where the object
    model measures it."""
    result = model.objects.evaluate(model, scenes, generator=torch.Generator().manual_seed(seed))
    confusion = np.asarray(result.confusion)
    truth, found = np.indices(confusion.shape)
    total = confusion.sum()
    row = {
        "count_accuracy": result.count_accuracy,
        "mean_abs_error": float((confusion * abs(found - truth)).sum() / total),
        "mean_found": float((confusion * found).sum() / total),
        "average_precision": result.average_precision,
        "mean_iou": result.mean_iou,
        "scenes": int(total),
    }
    if hasattr(result, "foreground_ari"):
        row["foreground_ari"] = result.foreground_ari
    return row
