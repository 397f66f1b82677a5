"""Evaluation of 2D objects: count accuracy and its confusion matrix, box IoU, ELBO and log p(x)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from airscene.data.family import GroundTruth
from airscene.data.training import images_to_tensor
from airscene.model import AIR
from airscene.objective import importance_weighted_log_px


class CountReport:
    """What every kind's evaluation has: the count accuracy, by true count and as a confusion
    matrix, and the report as JSON-ready data."""

    scenes: int
    count_accuracy: float
    confusion: list[list[int]]
    accuracy_by_count: dict[int, float]

    def to_dict(self) -> dict:
        return json_ready(self)

    def count_lines(self) -> list[str]:
        """The count accuracy and the confusion matrix in words."""
        lines = count_summary(self.scenes, self.count_accuracy, self.accuracy_by_count)
        return lines + confusion_table(self.confusion)


@dataclass
class Evaluation(CountReport):
    """Metrics of a model on a set of scenes."""

    scenes: int
    count_accuracy: float  # fraction of images whose inferred count equals the true count
    confusion: list[list[int]]  # [true count][inferred count] -> images
    accuracy_by_count: dict[int, float]  # true count -> accuracy on those images
    mean_iou: (
        float  # over true objects: IoU of the ink box with the matched inferred ink box (0 if none)
    )
    mean_window_iou: float  # the same with the inferred glimpse windows instead of their ink
    average_precision: float  # AP at IoU 0.5 of the drawn boxes ranked by q(z_pres = 1)
    elbo: float  # mean single-sample ELBO per image (nats)
    log_px: float | None  # mean importance-weighted log p(x) per image (nats), if computed
    iw_samples: int
    residual_limit: float  # the RESIDUAL_QUANTILE of the images' residual (``residual``)

    def summary(self) -> str:
        """The report in words, for a person (``airscene eval``; ``--json`` gives ``to_dict``)."""
        lines = self.count_lines()
        if not math.isnan(self.mean_iou):
            lines.append(
                f"box IoU {self.mean_iou:.3f} (what each object draws), "
                f"{self.mean_window_iou:.3f} (its attention window), over the true objects; "
                f"AP@0.5 {self.average_precision:.3f}"
            )
        evidence = f"ELBO {self.elbo:.1f} nats per image"
        if self.log_px is not None:
            evidence += f"; log p(x) {self.log_px:.1f} ({self.iw_samples} importance samples)"
        return "\n".join([*lines, evidence])

    def headline(self) -> dict[str, float]:
        """What training logs of it."""
        return {
            "eval_count_accuracy": self.count_accuracy,
            "eval_elbo": self.elbo,
            "eval_mean_iou": self.mean_iou,
            "eval_residual_limit": self.residual_limit,
        }


def json_ready(metrics) -> dict:
    """A metrics dataclass as a JSON-ready dict: what could not be measured (NaN) becomes None."""
    return {
        k: (None if isinstance(v, float) and math.isnan(v) else v)
        for k, v in asdict(metrics).items()
    }


# How much of held-out data a model's warnings may flag: the limit of ``residual`` above which
# ``airscene infer`` says an image is explained poorly is this quantile of held-out scenes'.
RESIDUAL_QUANTILE = 0.995
# Ten pixels' worth of full intensity: what ``residual`` divides a blank image's error by.
BLANK_INTENSITY = 10.0


def residual(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """How much of each image (B, H, W) its reconstruction gets wrong, (B,): the summed absolute
    difference of the two as a fraction of the image's summed intensity (0: all of it
    explained; 1: as much wrong as there is). Relative, so that small objects left out count as
    much as large ones; ``BLANK_INTENSITY`` more in the denominator keeps a blank image at 0."""
    wrong = (x - reconstruction.clamp(0, 1)).abs().flatten(1).sum(1)
    return wrong / (x.flatten(1).sum(1) + BLANK_INTENSITY)


def residual_limit(residuals: np.ndarray) -> float:
    """The ``RESIDUAL_QUANTILE`` of held-out images' residuals (NaN for none)."""
    return float(np.quantile(residuals, RESIDUAL_QUANTILE)) if len(residuals) else math.nan


def count_summary(scenes: int, accuracy: float, by_count: dict[int, float]) -> list[str]:
    """The count accuracy in words: overall and by true count."""
    if math.isnan(accuracy):
        return [f"{scenes:,} images without true counts: no count accuracy"]
    parts = ", ".join(f"{k}: {100 * v:.1f}%" for k, v in sorted(by_count.items()))
    return [f"count accuracy {100 * accuracy:.2f}% on {scenes:,} scenes (by true count: {parts})"]


def confusion_table(confusion: list[list[int]]) -> list[str]:
    """The confusion matrix as text, its rows and columns labelled by count."""
    if not confusion:
        return []
    width = max(5, *(len(str(v)) + 1 for row in confusion for v in row))
    header = "true \\ found" + "".join(f"{k:>{width}}" for k in range(len(confusion)))
    rows = [f"{k:>12}" + "".join(f"{v:>{width}}" for v in row) for k, row in enumerate(confusion)]
    return ["confusion (rows: true count, columns: count found)", header, *rows]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (M, 4) with every box in ``b`` (K, 4), boxes x0, y0, x1, y1."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def matched_iou(true_boxes: list[np.ndarray], inferred_boxes: list[np.ndarray]) -> float:
    """Mean over all true objects of the IoU with their inferred box under the optimal
    one-to-one matching (Hungarian, per image); a true object left unmatched scores 0."""
    from scipy.optimize import linear_sum_assignment

    total, objects = 0.0, 0
    for truth, inferred in zip(true_boxes, inferred_boxes, strict=True):
        objects += len(truth)
        if len(truth) == 0 or len(inferred) == 0:
            continue
        iou = box_iou(truth.astype(np.float64), inferred.astype(np.float64))
        rows, cols = linear_sum_assignment(-iou)
        total += float(iou[rows, cols].sum())
    return total / max(objects, 1)


def batches(total: int, size: int, progress: bool = False):
    """The start of every batch of ``size`` among ``total`` items, with a progress bar on
    stderr if asked for."""
    from tqdm.auto import tqdm

    with tqdm(total=total, disable=not progress, desc="eval", unit="scene") as bar:
        for start in range(0, total, size):
            yield start
            bar.update(min(size, total - start))


def average_precision(
    true_boxes: list[np.ndarray],
    found_boxes: list[np.ndarray],
    scores: list[np.ndarray],
    threshold: float = 0.5,
) -> float:
    """Average precision of detections at IoU ``threshold`` (PASCAL VOC, every point): the
    detections of all images ranked by ``scores``, each a hit if it overlaps a true object of
    its image not already taken by a higher-ranked detection by at least ``threshold``; the
    area under the precision-recall curve with precision made non-increasing."""
    total = sum(len(t) for t in true_boxes)
    ranked = []  # (score, image, detection)
    for image, score in enumerate(scores):
        ranked += [(float(s), image, k) for k, s in enumerate(score)]
    ranked.sort(key=lambda item: -item[0])
    taken = [np.zeros(len(t), dtype=bool) for t in true_boxes]
    hits = np.zeros(len(ranked))
    for rank, (_, image, k) in enumerate(ranked):
        truth = true_boxes[image]
        if len(truth) == 0:
            continue
        iou = box_iou(found_boxes[image][k : k + 1].astype(np.float64), truth.astype(np.float64))[0]
        iou[taken[image]] = -1.0
        best = int(iou.argmax())
        if iou[best] >= threshold:
            taken[image][best] = True
            hits[rank] = 1.0
    if total == 0:
        return math.nan
    recall = np.concatenate([[0.0], np.cumsum(hits) / total])
    precision = np.concatenate([[1.0], np.cumsum(hits) / np.arange(1, len(hits) + 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * precision[1:]))


def confusion_matrix(true_counts: np.ndarray, inferred_counts: np.ndarray, size: int) -> np.ndarray:
    """(size, size) matrix: [true count, inferred count] -> number of images."""
    matrix = np.zeros((size, size), dtype=np.int64)
    np.add.at(matrix, (np.clip(true_counts, 0, size - 1), np.clip(inferred_counts, 0, size - 1)), 1)
    return matrix


@torch.no_grad()
def evaluate(
    model: AIR,
    scenes: GroundTruth,
    batch_size: int = 1000,
    iw_samples: int = 0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    each_batch: Callable[[int, torch.Tensor, Any], None] | None = None,
) -> Evaluation:
    """Count accuracy, confusion, box IoU and ELBO of ``model`` on ``scenes``; with
    ``iw_samples`` > 0 also the importance-weighted log p(x) with that many samples.
    ``each_batch(start, x, mode)``, if given, also sees each batch's images and their
    deterministic inference (an object model's own metrics, read from the same pass)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counts, windows, inks, elbos, log_px, residuals = [], [], [], [], [], []
    presence = []
    for start in batches(len(scenes), batch_size, progress):
        x = images_to_tensor(scenes.images[start : start + batch_size], device)
        mode = model(x, sample=False)  # the deterministic answer: count and boxes
        if each_batch is not None:
            each_batch(start, x, mode)
        counts.append(mode.count.cpu().numpy())
        residuals.append(residual(x, mode.canvas).cpu().numpy())
        window = model.objects.at_canvas(x.shape[-1]).windows(mode.objects).cpu().numpy()
        present = mode.z_pres > 0
        ink = model.objects.at_canvas(x.shape[-1]).drawn_boxes(mode.objects, present)
        ink = ink.cpu().numpy()
        present = present.cpu().numpy()
        windows.extend(window[i][present[i]] for i in range(len(x)))
        inks.extend(ink[i][present[i]] for i in range(len(x)))
        probs = mode.z_pres_prob.cpu().numpy()
        presence.extend(probs[i][present[i]] for i in range(len(x)))
        elbos.append(model(x, generator=generator).elbo.cpu().numpy())
        if iw_samples > 0:
            log_px.append(importance_weighted_log_px(model, x, iw_samples, generator).cpu().numpy())
    model.train(was_training)

    inferred = np.concatenate(counts)
    truth = scenes.counts
    known = bool(len(truth)) and bool((truth >= 0).all())  # own images may come without counts
    size = int(max(truth.max(initial=0), inferred.max(initial=0), model.config.max_steps)) + 1
    confusion = (
        confusion_matrix(truth, inferred, size) if known else np.zeros((0, 0), dtype=np.int64)
    )
    by_count = (
        {int(k): float((inferred[truth == k] == k).mean()) for k in np.unique(truth)}
        if known
        else {}
    )
    has_boxes = known and scenes.boxes.shape[1] > 0
    true_boxes = (
        [scenes.boxes[i, : scenes.counts[i]] for i in range(len(scenes))] if has_boxes else []
    )
    return Evaluation(
        scenes=len(scenes),
        count_accuracy=float((inferred == truth).mean()) if known else math.nan,
        confusion=confusion.tolist(),
        accuracy_by_count=by_count,
        mean_iou=matched_iou(true_boxes, inks) if has_boxes else math.nan,
        mean_window_iou=matched_iou(true_boxes, windows) if has_boxes else math.nan,
        average_precision=(
            average_precision(true_boxes, inks, presence) if has_boxes else math.nan
        ),
        elbo=float(np.concatenate(elbos).mean()),
        log_px=float(np.concatenate(log_px).mean()) if log_px else None,
        iw_samples=iw_samples,
        residual_limit=residual_limit(np.concatenate(residuals)),
    )
