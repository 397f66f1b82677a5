"""Pieces of the downstream-task experiment (paper sec. 3.1, "representational power").

Two supervised tasks on 2-digit Multi-MNIST: the *sum* of the digits, and whether the digits are
in *ascending order* read left to right. Classifiers read AIR's per-object latents in a
permutation-robust way: objects sorted by their horizontal position.
"""

from __future__ import annotations

import numpy as np
import torch

from airscene.data.scenes import Scenes


def _left_to_right(scenes: Scenes) -> np.ndarray:
    """Digit labels (B, K) of each scene ordered by the left edge of their ink box; -1 pads."""
    x0 = np.where(scenes.labels >= 0, scenes.boxes[..., 0].astype(np.int64), np.iinfo(np.int64).max)
    order = np.argsort(x0, axis=1, kind="stable")
    return np.take_along_axis(scenes.labels.astype(np.int64), order, axis=1)


def sum_labels(scenes: Scenes) -> np.ndarray:
    """The sum of the digits in each scene, (B,) int64 (0 for an empty scene)."""
    return np.where(scenes.labels >= 0, scenes.labels, 0).astype(np.int64).sum(axis=1)


def ascending_labels(scenes: Scenes) -> np.ndarray:
    """1 where the digits read left to right never decrease (ties count as ascending), else 0.

    Scenes with fewer than two digits are trivially ascending.
    """
    ordered = _left_to_right(scenes)
    present = ordered >= 0
    pairs = present[:, 1:] & present[:, :-1]
    rises = np.where(pairs, ordered[:, 1:] >= ordered[:, :-1], True)
    return rises.all(axis=1).astype(np.int64)


def ordered_object_latents(
    z_pres: torch.Tensor, z_where: torch.Tensor, z_what: torch.Tensor
) -> torch.Tensor:
    """Per-object features [present, z_where, z_what] with objects sorted by x (left to right);
    absent objects go last and are all zeros. (B, N, 1 + 3 + D): a classifier on this sees the
    same input whatever order inference found the objects in."""
    present = z_pres > 0
    features = torch.cat([z_pres.unsqueeze(-1), z_where, z_what], dim=-1) * present.unsqueeze(-1)
    x = torch.where(present, z_where[..., 1], torch.full_like(z_where[..., 1], float("inf")))
    order = torch.argsort(x, dim=1, stable=True)
    return torch.gather(features, 1, order.unsqueeze(-1).expand_as(features))
