"""The 3D experiment's comparison: a CNN trained with the scenes' ground truth to regress count,
shape and pose from pixels (the paper's supervised baseline), scored by the same metrics as AIR.

One forward pass predicts the count (a categorical over 0..N) and N object slots, each a shape,
a position on the floor and, per shape, the turn (``turn = order * rotation``, the rotation in
units of the shape's symmetry, as AIR's objects infer it; a direction (cos, sin) on the circle),
so the baseline gets the same parametrisation of rotation as AIR, not a raw angle that a
symmetric shape makes multi-modal; or, to measure what that costs, the raw angle
(``rotation_target`` angle: a cube at 10 degrees must be told from one at 100, which look alike). The slots have no fixed order: each scene's loss is that of
the assignment of true objects to slots that costs least (all N! of them are tried; N = 3).
At test time the first ``count`` slots, by the slot's presence logit, are the objects.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from airscene.data.scenes3d import Scenes3D
from airscene.evaluate3d import Inferred3D
from airscene.render3d import SHAPES, SceneSpace


def _symmetry_order(space: SceneSpace, rotation_target: str = "turn") -> torch.Tensor:
    """Per shape, what the rotation is multiplied by to make the regression target: the
    symmetry order for ``turn``, 1 for ``angle`` (the rotation itself)."""
    if rotation_target == "angle":
        return torch.ones(len(SHAPES))
    return torch.tensor(space.symmetry_order, dtype=torch.float32)


class SupervisedSceneCNN(nn.Module):
    """64x64 grey scenes -> count logits (B, N + 1) and per slot (B, N, ...): presence logit,
    shape logits, position (x, y) and a turn direction per shape."""

    def __init__(
        self, max_objects: int = 3, width: int = 32, rotation_target: str = "turn"
    ) -> None:
        super().__init__()
        if rotation_target not in ("turn", "angle"):
            raise ValueError(f"rotation_target must be turn or angle, got {rotation_target!r}")
        self.max_objects = max_objects
        self.rotation_target = rotation_target  # what its rotation outputs mean
        shapes = len(SHAPES)
        self.per_slot = 1 + shapes + 2 + 2 * shapes
        layers: list[nn.Module] = []
        channels = 1
        for out in (width, 2 * width, 2 * width, 4 * width):  # 64 -> 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(channels * 16, 512),
            nn.ReLU(),
            nn.Linear(512, max_objects + 1 + max_objects * self.per_slot),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(self.features(x.unsqueeze(1)))
        n, shapes = self.max_objects, len(SHAPES)
        slots = out[:, n + 1 :].view(len(x), n, self.per_slot)
        return {
            "count_logits": out[:, : n + 1],
            "presence_logit": slots[..., 0],
            "shape_logits": slots[..., 1 : 1 + shapes],
            "position": slots[..., 1 + shapes : 3 + shapes],
            "turn": F.normalize(slots[..., 3 + shapes :].reshape(len(x), n, shapes, 2), dim=-1),
        }


def _targets(scenes: Scenes3D, index: np.ndarray, order: torch.Tensor) -> dict[str, torch.Tensor]:
    shapes = torch.from_numpy(scenes.shapes[index])  # (B, N), -1 where none
    rotation = torch.deg2rad(torch.from_numpy(scenes.rotations_deg[index]).float())
    turn = rotation * order[shapes.clamp_min(0)]
    return {
        "count": torch.from_numpy(scenes.counts[index]),
        "shape": shapes,
        "position": torch.from_numpy(scenes.positions[index]).float(),
        "turn": torch.stack([turn.cos(), turn.sin()], dim=-1),  # (B, N, 2)
    }


def supervised_loss(prediction: dict[str, torch.Tensor], target: dict[str, torch.Tensor]):
    """Count cross-entropy plus, per scene, the least over assignments of true objects to slots
    of (shape cross-entropy + 10 x squared position error + turn's 1 - cos, for shapes with a
    visible rotation) and each slot's presence cross-entropy."""
    n = prediction["position"].shape[1]
    exists = target["shape"] >= 0  # (B, N) true objects (the first ``count`` entries)
    true_shape = target["shape"].clamp_min(0)
    best = None
    for permutation in itertools.permutations(range(n)):
        slot = torch.tensor(permutation)  # true object j goes to slot slot[j]
        logits = prediction["shape_logits"][:, slot]  # (B, N, S)
        shape_loss = F.cross_entropy(logits.flatten(0, 1), true_shape.flatten(), reduction="none")
        position_loss = (prediction["position"][:, slot] - target["position"]).square().sum(-1)
        turn = prediction["turn"][:, slot]  # (B, N, S, 2)
        turn = turn.gather(2, true_shape[..., None, None].expand(-1, -1, 1, 2)).squeeze(2)
        turn_loss = 1 - (turn * target["turn"]).sum(-1)
        turn_loss = turn_loss * (true_shape > 0)  # the sphere has no visible rotation
        per_object = shape_loss.view_as(position_loss) + 10 * position_loss + turn_loss
        present = torch.zeros_like(prediction["presence_logit"])
        present[:, slot] = exists.float()
        presence_loss = F.binary_cross_entropy_with_logits(
            prediction["presence_logit"], present, reduction="none"
        ).sum(-1)
        total = (per_object * exists).sum(-1) + presence_loss  # (B,)
        best = total if best is None else torch.minimum(best, total)
    count_loss = F.cross_entropy(prediction["count_logits"], target["count"])
    return count_loss + best.mean()


def train_supervised(
    scenes: Scenes3D,
    steps: int,
    seed: int = 0,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    space: SceneSpace | None = None,
    rotation_target: str = "turn",
) -> SupervisedSceneCNN:
    """Fit a ``SupervisedSceneCNN`` to ``scenes`` and their ground truth by Adam. The rotation
    is regressed as the turn (``rotation_target`` turn, as AIR infers it) or as the raw angle
    (angle: what a regression that ignores the shapes' symmetry learns)."""
    torch.manual_seed(seed)
    model = SupervisedSceneCNN(scenes.shapes.shape[1], rotation_target=rotation_target)
    order = _symmetry_order(space or SceneSpace(), rotation_target)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    rows = np.random.default_rng(seed)
    images = torch.from_numpy(scenes.images)
    for step in range(steps):
        for group in optimiser.param_groups:  # the last fifth at a tenth of the rate
            group["lr"] = learning_rate * (0.1 if step >= 0.8 * steps else 1.0)
        index = rows.integers(0, len(scenes), batch_size)
        loss = supervised_loss(model(images[index].float() / 255), _targets(scenes, index, order))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return model.eval()


@torch.no_grad()
def infer_supervised(
    model: SupervisedSceneCNN, images: np.ndarray, space: SceneSpace | None = None
) -> Inferred3D:
    """The CNN's answer on ``images`` (n, 64, 64), in the form AIR's evaluation scores."""
    order = _symmetry_order(space or SceneSpace(), model.rotation_target)
    n = model.max_objects
    parts = []
    for start in range(0, len(images), 500):
        x = torch.from_numpy(images[start : start + 500]).float() / 255
        out = model(x)
        count = out["count_logits"].argmax(-1)  # (B,)
        rank = out["presence_logit"].argsort(-1, descending=True).argsort(-1)  # slot's rank
        kept = rank < count.unsqueeze(1)
        shape = out["shape_logits"].argmax(-1)
        turn = out["turn"].gather(2, shape[..., None, None].expand(-1, -1, 1, 2)).squeeze(2)
        rotation = torch.atan2(turn[..., 1], turn[..., 0]) / order[shape]
        parts.append(
            {
                "counts": count,
                "shapes": torch.where(kept, shape, -1),
                "positions": out["position"],
                "rotations_deg": torch.rad2deg(rotation).remainder(360.0),
                "presence": torch.sigmoid(out["presence_logit"]),
                "elbo": torch.full((len(x),), math.nan),
            }
        )
    if not parts:
        return Inferred3D(
            np.zeros(0, np.int64), np.zeros((0, n), np.int64), np.zeros((0, n, 2)),
            np.zeros((0, n)), np.zeros((0, n)), np.zeros(0),
        )  # fmt: skip
    return Inferred3D(**{name: torch.cat([p[name] for p in parts]).numpy() for name in parts[0]})
