"""Evaluation of a model on 3D scenes: count, shape, position and rotation against ground truth.

Inferred objects are matched to the true ones of their image by position on the floor (the
one-to-one matching of least total distance, Hungarian). Then, over the scenes:

  * count accuracy: the inferred count equals the true count;
  * shape accuracy: over all true objects, the matched inferred object has the same shape (a
    true object left unmatched counts as wrong);
  * position error: over matched pairs, the distance of the centres as a fraction of the floor's
    width (median and mean);
  * rotation error: over matched pairs of the same shape whose rotation is visible (not the
    sphere), the smallest difference of the rotations modulo the shape's symmetry angle, in
    degrees (median and mean; a cube's error is at most 45 degrees, a cylinder's 90).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from airscene.data.scenes3d import Scenes3D
from airscene.data.training import images_to_tensor
from airscene.errors import AirsceneError
from airscene.evaluate import (
    CountReport,
    batches,
    confusion_matrix,
    residual,
    residual_limit,
)
from airscene.model import AIR
from airscene.render3d import SHAPES, SceneSpace


@dataclass
class Evaluation3D(CountReport):
    """Metrics of a model on 3D scenes (see the module)."""

    scenes: int
    count_accuracy: float
    confusion: list[list[int]]  # [true count][inferred count] -> images
    accuracy_by_count: dict[int, float]
    shape_accuracy: float  # over true objects
    shape_accuracy_by_shape: dict[str, float]  # true shape -> shape accuracy
    position_error_median: float  # fraction of the floor's width, over matched objects
    position_error_mean: float
    rotation_error_median_deg: float  # modulo symmetry; cube and cylinder, shape right
    rotation_error_mean_deg: float
    rotation_error_median_deg_by_shape: dict[str, float]
    matched_objects: int
    elbo: float
    residual_limit: float  # the RESIDUAL_QUANTILE of the images' residual (``residual``)

    def summary(self) -> str:
        """The report in words, for a person (``airscene eval``; ``--json`` gives ``to_dict``)."""
        lines = self.count_lines()
        by_shape = ", ".join(f"{k} {100 * v:.1f}%" for k, v in self.shape_accuracy_by_shape.items())
        lines.append(
            f"shape accuracy {100 * self.shape_accuracy:.1f}% of true objects ({by_shape})"
        )
        lines.append(
            f"position error: median {100 * self.position_error_median:.1f}%, mean "
            f"{100 * self.position_error_mean:.1f}% of the floor's width "
            f"({self.matched_objects:,} matched objects)"
        )
        lines.append(
            f"rotation error: median {self.rotation_error_median_deg:.1f} deg, mean "
            f"{self.rotation_error_mean_deg:.1f} deg (modulo symmetry; cubes and cylinders "
            "whose shape is right)"
        )
        lines.append(f"ELBO {self.elbo:.1f} nats per image")
        return "\n".join(lines)

    def headline(self) -> dict[str, float]:
        """What training logs of it (medians of the errors)."""
        return {
            "eval_count_accuracy": self.count_accuracy,
            "eval_elbo": self.elbo,
            "eval_shape_accuracy": self.shape_accuracy,
            "eval_position_error": self.position_error_median,
            "eval_rotation_error_deg": self.rotation_error_median_deg,
            "eval_residual_limit": self.residual_limit,
        }


@dataclass
class Inferred3D:
    """What a model inferred on 3D scenes, per image and step (absent steps: shape -1)."""

    counts: np.ndarray  # (n,)
    shapes: np.ndarray  # (n, N) int, -1 where no object
    positions: np.ndarray  # (n, N, 2)
    rotations_deg: np.ndarray  # (n, N) in [0, 360)
    presence: np.ndarray  # (n, N) q(z_pres = 1) of each decided step
    elbo: np.ndarray  # (n,) single-sample ELBO
    residual: np.ndarray | None = None  # (n,) what the reconstruction leaves unexplained
    # (``airscene.evaluate.residual``); None for an answer that draws no reconstruction


@torch.no_grad()
def infer_scenes3d(
    model: AIR,
    images: np.ndarray,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
    with_elbo: bool = True,
    progress: bool = False,
) -> Inferred3D:
    """The model's deterministic answer (every step's mode) on ``images`` (n, 64, 64)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {}
    for start in batches(len(images), batch_size, progress):
        x = images_to_tensor(images[start : start + batch_size], device)
        mode = model(x, sample=False)
        found = {
            "counts": mode.count,
            "shapes": torch.where(mode.z_pres > 0, mode.objects["shape"].long(), -1),
            "positions": mode.objects["position"],
            "rotations_deg": model.objects.rotation_deg(mode.objects),
            "presence": mode.z_pres_prob,
            "residual": residual(x, mode.canvas),
            "elbo": model(x, generator=generator).elbo if with_elbo else x.new_zeros(len(x)),
        }
        for name, value in found.items():
            parts.setdefault(name, []).append(value.cpu().numpy())
    model.train(was_training)
    if not parts:
        n = model.config.max_steps
        return Inferred3D(
            np.zeros(0, np.int64), np.zeros((0, n), np.int64), np.zeros((0, n, 2)),
            np.zeros((0, n)), np.zeros((0, n)), np.zeros(0),
        )  # fmt: skip
    return Inferred3D(**{name: np.concatenate(value) for name, value in parts.items()})


def rotation_error_deg(a: np.ndarray, b: np.ndarray, symmetry_deg: np.ndarray) -> np.ndarray:
    """The smallest difference of rotations ``a`` and ``b`` (degrees) modulo ``symmetry_deg``."""
    difference = np.mod(a - b, symmetry_deg)
    return np.minimum(difference, symmetry_deg - difference)


def match_objects(true_positions: np.ndarray, inferred_positions: np.ndarray):
    """The one-to-one matching of least total distance: (true indices, inferred indices)."""
    from scipy.optimize import linear_sum_assignment

    if len(true_positions) == 0 or len(inferred_positions) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cost = np.linalg.norm(true_positions[:, None] - inferred_positions[None], axis=-1)
    return linear_sum_assignment(cost)


def score_scenes3d(
    scenes: Scenes3D, inferred: Inferred3D, max_steps: int, space: SceneSpace | None = None
) -> Evaluation3D:
    """Compare ``inferred`` with the ground truth of ``scenes`` (see the module)."""
    space = space or SceneSpace()
    floor_width = 2 * space.floor_extent
    shape_right = np.zeros(len(SHAPES))
    shape_total = np.zeros(len(SHAPES))
    position_errors: list[float] = []
    rotation_errors: dict[int, list[float]] = {1: [], 2: []}  # cube, cylinder
    for i in range(len(scenes)):
        true_n = int(scenes.counts[i])
        found = np.nonzero(inferred.shapes[i] >= 0)[0]
        rows, cols = match_objects(scenes.positions[i, :true_n], inferred.positions[i, found])
        np.add.at(shape_total, scenes.shapes[i, :true_n], 1)
        for r, c in zip(rows, cols, strict=True):
            true_shape, step = int(scenes.shapes[i, r]), found[c]
            distance = np.linalg.norm(scenes.positions[i, r] - inferred.positions[i, step])
            position_errors.append(float(distance) / floor_width)
            if inferred.shapes[i, step] != true_shape:
                continue
            shape_right[true_shape] += 1
            symmetry = space.symmetry_deg[SHAPES[true_shape]]
            if symmetry > 0:
                error = rotation_error_deg(
                    np.float64(scenes.rotations_deg[i, r]),
                    np.float64(inferred.rotations_deg[i, step]),
                    np.float64(symmetry),
                )
                rotation_errors[true_shape].append(float(error))
    truth, counts = scenes.counts, inferred.counts
    size = max(int(truth.max(initial=0)), int(counts.max(initial=0)), max_steps) + 1
    every_rotation = rotation_errors[1] + rotation_errors[2]
    return Evaluation3D(
        scenes=len(scenes),
        count_accuracy=float((counts == truth).mean()) if len(truth) else math.nan,
        confusion=confusion_matrix(truth, counts, size).tolist(),
        accuracy_by_count={
            int(k): float((counts[truth == k] == k).mean()) for k in np.unique(truth)
        },
        shape_accuracy=float(shape_right.sum() / max(shape_total.sum(), 1)),
        shape_accuracy_by_shape={
            SHAPES[s]: float(shape_right[s] / shape_total[s])
            for s in range(len(SHAPES))
            if shape_total[s] > 0
        },
        position_error_median=_median(position_errors),
        position_error_mean=_mean(position_errors),
        rotation_error_median_deg=_median(every_rotation),
        rotation_error_mean_deg=_mean(every_rotation),
        rotation_error_median_deg_by_shape={
            SHAPES[s]: _median(errors) for s, errors in rotation_errors.items() if errors
        },
        matched_objects=len(position_errors),
        elbo=float(inferred.elbo.mean()) if len(inferred.elbo) else math.nan,
        residual_limit=(
            residual_limit(inferred.residual) if inferred.residual is not None else math.nan
        ),
    )


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def evaluate_scenes3d(
    model: AIR,
    scenes: Scenes3D,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Evaluation3D:
    """Count, shape, position and rotation metrics of ``model`` on ``scenes``."""
    if not all(hasattr(scenes, name) for name in ("shapes", "positions", "rotations_deg")):
        raise AirsceneError(
            "3D evaluation needs rendered scenes with their descriptions, not images alone"
        )
    inferred = infer_scenes3d(model, scenes.images, batch_size, generator, progress=progress)
    return score_scenes3d(scenes, inferred, model.config.max_steps, model.objects.space)
