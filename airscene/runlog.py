"""What a training run reports as it goes: the metrics CSV, TensorBoard and the progress bar.

One small object, so the training loop reads as the algorithm. Under data-parallel training only
rank 0 reports; the other ranks hold a ``RunLog`` that writes nothing.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import torch

METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"

METRIC_FIELDS = (
    "step",
    "train_seconds",
    "loss",
    "elbo",
    "count_accuracy",
    "z_pres_prior",
    "steps_per_second",
    "eval_count_accuracy",
    "eval_elbo",
    "eval_mean_iou",
    "skipped_steps",
    "eval_shape_accuracy",  # 3D scenes only: their shape, position and rotation metrics
    "eval_position_error",
    "eval_rotation_error_deg",
    "eval_residual_limit",  # what `airscene infer` flags above (airscene.evaluate.residual)
    "eval_foreground_ari",  # masked objects only: their inferred masks against the true ones
)


def read_metric_rows(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """Rows of a metrics CSV up to ``up_to_step`` (later rows belong to the lost part of a run)."""
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        rows = [
            row
            for row in csv.DictReader(file)
            if row.get("step") and int(row["step"]) <= up_to_step
        ]
    return [
        {k: (float(v) if k != "step" else int(v)) for k, v in row.items() if v not in ("", None)}
        for row in rows
    ]


class RunLog:
    """``run_dir/metrics.csv`` (rewritten from ``history`` on resume, then appended to),
    TensorBoard scalars and images under ``run_dir/tensorboard``, and a progress bar on stderr.
    With ``enabled`` False (a rank other than 0) every method does nothing."""

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        history: list[dict[str, Any]],
        progress: bool,
        enabled: bool = True,
        initial_step: int = 0,
    ) -> None:
        self.enabled = enabled
        self.history = list(history)
        self.last: dict[str, Any] = self.history[-1] if self.history else {}
        self._file = self._csv = self._writer = None
        self._bar = _progress(total_steps, progress and enabled, initial_step)
        if not enabled:
            return
        self._writer = _tensorboard(run_dir / TENSORBOARD_DIR)
        self._file = open(run_dir / METRICS_FILE, "w", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=METRIC_FIELDS)
        self._csv.writeheader()
        self._csv.writerows(self.history)
        self._file.flush()

    def write(self, row: dict[str, Any]) -> None:
        """One row of metrics: to the CSV (flushed), TensorBoard and the bar's summary."""
        self.history.append(row)
        self.last = row
        if not self.enabled:
            return
        self._csv.writerow(row)
        self._file.flush()
        step = row["step"]
        if self._writer is not None:
            for key, value in row.items():
                if key != "step":
                    self._writer.add_scalar(key, value, step)
        postfix = {
            "loss": f"{row['loss']:.1f}",
            "acc": f"{row['count_accuracy']:.3f}",
            "sps": f"{row['steps_per_second']:.1f}",
        }
        if "eval_count_accuracy" in row:
            postfix["eval"] = f"{row['eval_count_accuracy']:.3f}"
        self._bar.set_postfix(postfix)

    @property
    def wants_images(self) -> bool:
        """Whether ``image`` would write anything (so callers can skip making the image)."""
        return self.enabled and self._writer is not None

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A (C, H, W) image in [0, 1] to TensorBoard (C: 1 grey, 3 colour)."""
        if self.wants_images:
            self._writer.add_image(tag, image, step)

    def advance(self) -> None:
        """One more step done (the progress bar)."""
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _progress(total: int, enabled: bool, initial: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        dynamic_ncols=True,
        desc="train",
        file=sys.stderr,
    )


def _tensorboard(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a broken install must not stop training
        return None
    return SummaryWriter(log_dir=str(directory))
