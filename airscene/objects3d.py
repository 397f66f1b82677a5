"""Objects drawn by the fixed 3D renderer (``airscene.render3d``): AIR inverting a graphics model.

Nothing of p(x | z) is learnt here: the renderer is the decoder. Per object (after the core's
z_pres):

  * ``position`` (x, y) on the floor ~ Normal(0, position_prior_scale), q Normal: its loc and
    scale come from the core's predictor, as the 2D objects' z_where does, reparameterised
    through the renderer;
  * the network then *attends*: it reads a glimpse of the image where the drawn position
    appears (the object's centre projected by the camera) and encodes it;
  * ``shape`` ~ Uniform(SHAPES), q categorical with the glimpse's logits: a discrete latent,
    learnt by the exact expectation over the three shapes, each re-rendered in the object's place
    (``discrete_choices``, ``shape_gradient`` enumerate), or by the likelihood-ratio gradient
    and NVIL baseline of z_pres (``ObjectStep.log_q_discrete``, ``shape_gradient``
    likelihood-ratio);
  * ``turn``: the rotation about the vertical axis in units of the shape's symmetry,
    turn = order * rotation, where order is how many turns of the shape look alike (cube 4,
    cylinder 2; the sphere, which no turn changes, 1). The image is a single-valued function of
    the turn on the circle, whereas the rotation itself is multi-modal (a cube at 10 degrees is
    a cube at 100 degrees), so the turn is what the network can predict. The glimpse encoder
    emits it as a direction (cos, sin) per shape, so no image lies on a seam where the predicted
    angle must jump from +pi to -pi; the prior on the turn is uniform on the circle and q is a
    Normal around the direction's angle (narrow: read as a density on the circle).

Objects occlude: the canvas keeps every painted object's coverage, depth and shade per pixel,
in slots, and its image is the renderer's soft nearest-surface composite. Each object is rendered
only in its window (``Renderer.objects_in_windows``). The objects of a scene never intersect:
``scene_log_prior`` penalises a present object sitting on an earlier one.

Pose gradients come from autograd through the renderer, or, as in the paper (whose renderer was
not differentiable), from central finite differences of the renderer (``pose_gradient``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from airscene.config import ModelConfig, RenderedConfig
from airscene.densities import categorical_log_prob, normal_log_prob
from airscene.networks import mlp
from airscene.objects import DiscreteChoices, ObjectModel, ObjectStep
from airscene.render3d import SHAPES, WINDOW, Renderer, SceneSpace
from airscene.rows import standard_normal, truncated_normal, uniform
from airscene.spatial import read_glimpse

# World units by which an inferred position may overshoot the floor's edge before it counts as
# off the floor: objects at the edge are placed a little beyond it, as every position carries
# some error (how many clean scenes are flagged: benchmarks/calibrate_warnings.py).
OFF_FLOOR_MARGIN = 0.15


class _FiniteDifferencePose(torch.autograd.Function):
    """The renderer's per-object outputs with pose gradients by central finite differences
    (the paper's estimator): the backward pass renders each object again at +-step in x, y and
    rotation, instead of differentiating the renderer."""

    @staticmethod
    def forward(ctx, renderer, shape, position, rotation, step):
        with torch.no_grad():
            out = torch.stack(renderer.objects_in_windows(shape, position, rotation), dim=2)
        ctx.renderer, ctx.step = renderer, step
        ctx.save_for_backward(shape, position, rotation)
        return out

    @staticmethod
    def backward(ctx, grad):
        shape, position, rotation = ctx.saved_tensors
        renderer, h = ctx.renderer, ctx.step
        m = shape.shape[0]
        # Six displaced copies of every object, rendered in one batch: +-h in x, y and rotation.
        offsets = position.new_tensor(
            [[h, 0, 0], [-h, 0, 0], [0, h, 0], [0, -h, 0], [0, 0, h], [0, 0, -h]]
        )  # (6, 3)
        pose = torch.cat([position, rotation.unsqueeze(-1)], dim=-1)  # (M, 1, 3)
        moved = (pose.unsqueeze(0) + offsets[:, None, None, :]).reshape(6 * m, 1, 3)
        with torch.no_grad():
            out = torch.stack(
                renderer.objects_in_windows(shape.repeat(6, 1), moved[..., :2], moved[..., 2]),
                dim=2,
            ).view(3, 2, m, 1, 3, -1)
        jacobian = (out[:, 0] - out[:, 1]) / (2 * h)  # (3 pose, M, 1, 3 outputs, P)
        per_pose = (jacobian * grad.unsqueeze(0)).sum(dim=(-1, -2))  # (3, M, 1)
        return None, None, per_pose[:2].permute(1, 2, 0), per_pose[2], None


class RenderedObjects(ObjectModel):
    """The 3D renderer's objects: position, shape and turn per object (see the module)."""

    default_data = "scenes3d"

    def __init__(self, config: RenderedConfig, canvas_size: int, max_objects: int) -> None:
        super().__init__()
        space = SceneSpace()
        if canvas_size != space.image_size:
            raise ValueError(
                f"the 3D renderer draws {space.image_size}px images, the model's canvas is "
                f"{canvas_size}px"
            )
        self.config, self.canvas_size, self.space = config, canvas_size, space
        self.max_objects = max_objects  # canvas slots: one per inference step
        self.feedback_dim = len(SHAPES) + 2 + 2  # one-hot shape, position, turn's direction
        self.glimpse_scale = config.glimpse_window / canvas_size
        pixels = config.glimpse_size**2
        shapes = len(SHAPES)
        # Shape logits, a turn direction and a raw turn scale per shape.
        self.encoder = mlp([pixels, config.encoder_hidden, config.encoder_hidden, 4 * shapes])
        self.register_buffer(
            "order", torch.tensor(space.symmetry_order, dtype=torch.float32), persistent=False
        )
        self._renderers: dict[torch.device, Renderer] = {}

    @classmethod
    def from_config(cls, config: ModelConfig) -> RenderedObjects:
        return cls(config.objects, config.canvas_size, config.max_steps)

    def renderer(self, device: torch.device) -> Renderer:
        """The (parameter-free) renderer, its camera's tensors on ``device``."""
        if device not in self._renderers:
            self._renderers[device] = Renderer(self.space, device)
        return self._renderers[device]

    def initial_params(self) -> torch.Tensor:
        """Position loc (2) and its scale before the bound (2): objects start at the floor's
        centre with a small spread."""
        return torch.tensor([0.0, 0.0, -2.0, -2.0])

    # -- inference ------------------------------------------------------------------------------

    def infer(self, seen, params, noise):
        config = self.config
        loc = params[:, :2]
        scale = config.position_max_scale * torch.sigmoid(params[:, 2:4]) + 1e-4
        position = loc if noise is None else loc + scale * noise.normal(2)
        glimpse = read_glimpse(seen, self.glimpse_where(position), config.glimpse_size)
        logits, direction, turn_raw = self._encode(glimpse)
        shape = logits.argmax(-1) if noise is None else noise.categorical(logits)
        rows = torch.arange(len(shape), device=shape.device)
        turn_locs = torch.atan2(direction[..., 1], direction[..., 0])  # (K, S) per shape
        turn_loc, turn_raw = turn_locs[rows, shape], turn_raw[rows, shape]  # the drawn shape's
        turn_scale = config.turn_max_scale * torch.sigmoid(turn_raw) + 1e-4
        turn = turn_loc if noise is None else turn_loc + turn_scale * noise.normal(1).squeeze(1)
        prior_scale = position.new_tensor(config.position_prior_scale)
        log_p = (
            normal_log_prob(position, position.new_zeros(()), prior_scale).sum(-1)
            - math.log(len(SHAPES))
            - math.log(2 * math.pi)
        )
        return ObjectStep(
            values={
                "position": position,
                "position_loc": loc,
                "position_scale": scale,
                "shape": shape.to(params.dtype),
                "shape_logits": logits,
                "turn": turn,
                "turn_loc": turn_loc,
                "turn_locs": turn_locs,
                "turn_scale": turn_scale,
            },
            log_q=normal_log_prob(position, loc, scale).sum(-1)
            + normal_log_prob(turn, turn_loc, turn_scale),
            log_p=log_p,
            log_q_discrete=categorical_log_prob(shape, logits),
        )

    def glimpse_where(self, position: torch.Tensor) -> torch.Tensor:
        """The glimpse window (K, 3) = (scale, x, y) centred where an object at ``position``
        (K, 2), resting at the floor's middle height, appears in the image."""
        where = self.renderer(position.device).appears_at(position)
        return torch.cat([torch.full_like(where[:, :1], self.glimpse_scale), where], dim=-1)

    def _encode(self, glimpse: torch.Tensor):
        """Glimpses (K, G, G) -> shape logits (K, S), per shape a unit turn direction (K, S, 2)
        and the turn's scale before its bound (K, S)."""
        shapes = len(SHAPES)
        out = self.encoder(glimpse.flatten(1))
        logits = out[:, :shapes]
        direction = F.normalize(out[:, shapes : 3 * shapes].view(-1, shapes, 2) + 1e-6, dim=-1)
        return logits, direction, out[:, 3 * shapes :]

    def feedback(self, values):
        one_hot = F.one_hot(values["shape"].long(), len(SHAPES)).to(values["position"].dtype)
        turn = values["turn"].unsqueeze(-1)
        return torch.cat([one_hot, values["position"], turn.cos(), turn.sin()], dim=-1)

    def sample_prior(self, n, like, generator, within_canvas=False):
        scale, extent = self.config.position_prior_scale, self.space.floor_extent
        position = scale * standard_normal((n, 2), like, generator)
        if within_canvas:  # every object on the floor, which the camera sees whole
            bound = like.new_full((n, 2), extent / scale)
            position = scale * truncated_normal(-bound, bound, generator)
        return {
            "position": position.clamp(-extent, extent),  # the renderer's floor
            "shape": (uniform((n,), like, generator) * len(SHAPES)).floor().clamp_max(2),
            "turn": uniform((n,), like, generator) * (2 * math.pi),
        }

    # -- the scene's image ------------------------------------------------------------------------

    def rotation(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The rotation about the vertical axis (radians) of objects ``values``: turn / order."""
        return values["turn"] / self.order[values["shape"].long()]

    def rotation_deg(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The rotation of objects ``values`` in degrees, in [0, 360)."""
        return torch.rad2deg(self.rotation(values)).remainder(360.0)

    def render_objects(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each object's coverage, depth and shade, (M, 3, P), pose gradients as configured."""
        shape = values["shape"].long().unsqueeze(1)  # (M, 1)
        position = values["position"].unsqueeze(1)  # (M, 1, 2)
        rotation = self.rotation(values).unsqueeze(1)  # (M, 1)
        renderer = self.renderer(position.device)
        if self.config.pose_gradient == "finite-difference":
            out = _FiniteDifferencePose.apply(
                renderer, shape, position, rotation, self.config.finite_difference_step
            )
        else:
            out = torch.stack(renderer.objects_in_windows(shape, position, rotation), dim=2)
        return out.squeeze(1)

    def draw(self, values):
        parts = self.render_objects(values).unsqueeze(1)  # (M, 1, 3, P)
        renderer = self.renderer(parts.device)
        return renderer.composite(parts[:, :, 0], parts[:, :, 1], parts[:, :, 2])

    def blank_canvas(self, x):
        # Per image and slot: coverage, depth, shade (per pixel) and whether the slot is taken.
        return x.new_zeros(x.shape[0], self.max_objects, 4, self.canvas_size**2)

    def paint(self, canvas, image, values):
        if image.numel() == 0:
            return canvas
        parts = self.render_objects(values)  # (M, 3, P)
        taken = canvas[:, :, 3, 0].sum(1).long()  # (B,) slots already holding an object
        same = image.unsqueeze(0) == image.unsqueeze(1)  # (M, M)
        earlier = torch.tril(same, diagonal=-1).sum(1)  # this call's objects before, same image
        slot = taken[image] + earlier
        filled = torch.cat([parts, torch.ones_like(parts[:, :1])], dim=1)  # (M, 4, P)
        return canvas.index_put((image, slot), filled)

    def canvas_image(self, canvas):
        renderer = self.renderer(canvas.device)
        return renderer.composite(canvas[:, :, 0], canvas[:, :, 1], canvas[:, :, 2])

    # -- what the objective needs beyond the per-object densities ---------------------------

    def scene_log_prior(self, objects, z_pres):
        """The scenes' objects never intersect: each present object loses
        ``apart_prior_strength * (1 - d / d_min)^2`` nats for every earlier present object whose
        centre is d < d_min away (d_min: ``SceneSpace.min_centre_distance``). Without it an
        extra object can hide inside or behind a real one at no cost to the likelihood. The
        term is unnormalised (a soft constraint), so the ELBO shifts by a constant."""
        strength = self.config.apart_prior_strength
        if strength == 0:
            return None
        position = objects["position"]  # (B, N, 2)
        gap = position.unsqueeze(2) - position.unsqueeze(1)  # [b, i, j] = p_i - p_j
        distance = (gap.square().sum(-1) + 1e-12).sqrt()  # finite gradient at d = 0
        overlap = (1 - distance / self.space.min_centre_distance).clamp_min(0.0).square()
        steps = z_pres.shape[1]
        earlier = torch.ones(steps, steps, device=z_pres.device).tril(-1)  # [i, j]: j before i
        pairs = z_pres.unsqueeze(2) * z_pres.unsqueeze(1) * earlier
        return -strength * (overlap * pairs).sum(2)

    def discrete_choices(self, canvas, objects, image, step):
        """Each present object re-rendered as every shape, at its drawn position and at the
        turn q's mean gives for that shape, into the scene as drawn (``shape_gradient``
        enumerate), in the window around it where the shapes can differ."""
        if self.config.shape_gradient != "enumerate":
            return None
        shapes, m, device = len(SHAPES), len(image), canvas.device
        renderer = self.renderer(device)
        with torch.no_grad():
            position = objects["position"][image, step]  # (M, 2)
            window = renderer.window(position)  # (M, Q)
            shape = torch.arange(shapes, device=device).expand(m, shapes)
            rotation = objects["turn_locs"][image, step] / self.order  # (M, S)
            alone = renderer.objects(
                shape,
                position.unsqueeze(1).expand(m, shapes, 2),
                rotation,
                window.unsqueeze(1).expand(m, shapes, -1),
            )
            alone = torch.stack(alone, dim=2)  # (M, S, 3, Q)
            slots = canvas[image, :, :3]  # (M, K, 3, P)
            slots = slots.gather(3, window[:, None, None, :].expand(*slots.shape[:3], -1))
            slots = slots.unsqueeze(1).repeat(1, shapes, 1, 1, 1)  # (M, S, K, 3, Q)
            rows = torch.arange(m, device=device).unsqueeze(1)
            slots[rows, torch.arange(shapes, device=device), step.unsqueeze(1)] = alone
            slots = slots.flatten(0, 1)
            images = renderer.composite_pixels(slots[:, :, 0], slots[:, :, 1], slots[:, :, 2])
        logits = objects["shape_logits"][image, step]
        side = WINDOW
        return DiscreteChoices(
            images=images.view(m, shapes, side, side),
            window=window,
            logits=logits,
            log_prior=logits.new_full((m, shapes), -math.log(shapes)),
        )

    # -- what the verbs, figures and evaluations read ------------------------------------------

    def drawn_boxes(self, objects, present=None, threshold: float = 0.05):
        """Where each object, drawn alone, differs from the bare floor by more than
        ``threshold``; an object that changes no pixel gets [0, 0, 0, 0]."""
        first = next(iter(objects.values()))
        floor = self.renderer(first.device).floor_shade
        return self.tight_boxes_of_drawings(
            objects,
            lambda drawn: (drawn.cpu() - floor).abs() > threshold,
            torch.zeros(*first.shape[:2], 4),
            present,
        )

    @torch.no_grad()
    def describe(self, inference, to_image):
        boxes = self.drawn_boxes(inference.objects, inference.z_pres > 0).numpy()
        found = {
            "z_pres": inference.z_pres,
            "presence": inference.z_pres_prob,
            "shape": inference.objects["shape"].long(),
            "position": inference.objects["position"],
            "rotation": self.rotation_deg(inference.objects),
        }
        found = {k: v.cpu().numpy() for k, v in found.items()}
        symmetry = [self.space.symmetry_deg[shape] for shape in SHAPES]
        described = []
        for row, mapping in enumerate(to_image):
            box = mapping(boxes[row])
            described.append(
                [
                    RenderedObject(
                        step=t,
                        shape=SHAPES[int(found["shape"][row, t])],
                        position=[round(float(v), 5) for v in found["position"][row, t]],
                        rotation_deg=_modulo_symmetry(
                            float(found["rotation"][row, t]),
                            symmetry[int(found["shape"][row, t])],
                        ),
                        presence=round(float(found["presence"][row, t]), 6),
                        box=[round(float(v), 2) for v in box[t]],
                    )
                    for t in range(found["z_pres"].shape[1])
                    if found["z_pres"][row, t] > 0
                ]
            )
        return described

    def doubts(self, inference):
        """An object off the floor, where no scene puts one (``render3d`` refuses it), by more
        than ``OFF_FLOOR_MARGIN``."""
        extent = self.space.floor_extent
        beyond = inference.objects["position"].abs() > extent + OFF_FLOOR_MARGIN
        off = beyond.any(-1) & (inference.z_pres > 0)
        return [
            f"{int(n)} object(s) placed off the floor ([-{extent:g}, {extent:g}] on each axis)"
            if n
            else None
            for n in off.sum(1).tolist()
        ]

    def evaluate(self, model, scenes, generator=None, iw_samples=0, progress=False):
        """Count, shape, position and rotation against the scenes' descriptions
        (``airscene.evaluate3d``; no log p(x): ``iw_samples`` is not used)."""
        from airscene.evaluate3d import evaluate_scenes3d  # it builds on the model

        return evaluate_scenes3d(model, scenes, generator=generator, progress=progress)


@dataclass
class RenderedObject:
    """One object found in an image by a 3D model, in inference order (a record of
    ``airscene infer``)."""

    step: int  # 0-based inference step that found it
    shape: str  # one of airscene.render3d.SHAPES
    position: list[float]  # x, y of its centre on the floor (world units)
    rotation_deg: float | None  # about the vertical axis, modulo the shape's symmetry (cube
    # [0, 90), cylinder [0, 180)); None for the sphere, which every rotation leaves alike
    presence: float  # q(z_pres = 1) at this step
    box: list[float]  # x0, y0, x1, y1 (end exclusive) of where it draws, in input pixels


def _modulo_symmetry(rotation_deg: float, symmetry_deg: float) -> float | None:
    """A rotation as the scene space defines it: modulo the shape's symmetry angle, rounded to
    a thousandth of a degree; None where every rotation looks alike (symmetry 0)."""
    if symmetry_deg == 0:
        return None
    return round(rotation_deg % symmetry_deg, 3) % symmetry_deg
