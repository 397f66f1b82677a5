"""A fixed 3D renderer, usable as p(x | z): 0-3 objects resting on a floor, seen in perspective.

Closed-form ray casting, batched over scenes and objects in plain PyTorch, deterministic and
differentiable with respect to every object's position and rotation:

* world axes: x to the right, y away from the camera along the floor, z up; the floor is z = 0
  and object centres lie in the square [-floor_extent, floor_extent]^2;
* a perspective camera looks down at the floor's centre from ``camera_elevation_deg`` above
  the horizon, so objects show their tops and sides;
* shapes (one albedo for all: identity must come from shape, not brightness): a sphere, a cube
  (90-degree rotational symmetry about the vertical axis) and a cylinder lying on its side (an
  elongated shape, 180-degree symmetry);
* one directional light plus ambient, Lambertian shading; the floor is a darker Lambertian plane;
* each object's coverage of a pixel is a sigmoid of a signed distance of the pixel's ray from
  the object's silhouette (positive inside), about a pixel wide, so the image moves smoothly
  with the pose; occlusion is soft: an object is hidden by every other that covers the pixel
  and is nearer along the ray, by a sigmoid of their depth difference.

Each primitive is intersected in its own frame (the ray rotated by minus the object's rotation):
the sphere and the cylinder's body by the quadratic's discriminant, the cube and the cylinder's
caps by the slab test. The renderer has no parameters: nothing of it is learnt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

SHAPES = ("sphere", "cube", "cylinder")
MAX_OBJECTS = 3  # objects in one scene
# Side in pixels of an object's window (``Renderer.window``): every shape, anywhere on the floor
# and turned any way, lies within 11.2 px of where its centre appears (tests/test_render3d.py),
# so 28 px leaves about 3 px around it, where its coverage is under 1e-5.
WINDOW = 28


@dataclass(frozen=True)
class SceneSpace:
    """The scenes the renderer draws: camera, light, shapes and the floor (all fixed)."""

    image_size: int = 64  # rotation of a cube or a cylinder is visible at this size
    floor_extent: float = 0.8  # object centres lie in [-extent, extent]^2
    camera_distance: float = 4.0
    camera_elevation_deg: float = 45.0
    field_of_view_deg: float = 50.0  # the whole floor and every object on it in view
    light_direction: tuple[float, float, float] = (-0.45, -0.6, 0.75)  # towards the light
    ambient: float = 0.3
    albedo: float = 0.95  # every object's
    floor_albedo: float = 0.25
    sphere_radius: float = 0.3
    cube_half_side: float = 0.24
    cylinder_radius: float = 0.17
    cylinder_half_length: float = 0.42
    edge_pixels: float = 0.25  # silhouette softness: sigmoid scale, in pixels at the floor's centre
    depth_softness: float = 0.02  # world units over which a nearer object takes over a pixel
    symmetry_deg: dict[str, float] = field(
        default_factory=lambda: {"sphere": 0.0, "cube": 90.0, "cylinder": 180.0}
    )  # rotations about the vertical axis that leave a shape's image unchanged (0: every one)

    @property
    def resting_height(self) -> dict[str, float]:
        """Height of each shape's centre above the floor when it rests on it."""
        return {
            "sphere": self.sphere_radius,
            "cube": self.cube_half_side,
            "cylinder": self.cylinder_radius,
        }

    @property
    def bounding_radius(self) -> dict[str, float]:
        """Radius of each shape's footprint's bounding circle on the floor (any rotation)."""
        return {
            "sphere": self.sphere_radius,
            "cube": self.cube_half_side * math.sqrt(2),
            "cylinder": math.hypot(self.cylinder_half_length, self.cylinder_radius),
        }

    @property
    def symmetry_order(self) -> tuple[int, ...]:
        """Per shape (in SHAPES' order), how many turns of it look alike: 360 degrees over its
        symmetry angle (1 for a shape that every turn leaves alike, the sphere)."""
        return tuple(
            1 if self.symmetry_deg[s] == 0 else round(360 / self.symmetry_deg[s]) for s in SHAPES
        )

    @property
    def min_centre_distance(self) -> float:
        """Two objects whose centres are at least this far apart cannot intersect."""
        return 2 * max(self.bounding_radius.values())

    def describe(self) -> dict:
        """The scene space as JSON-ready data (``airscene render3d --describe``)."""
        return {
            "shapes": list(SHAPES),
            "floor_extent": [[-self.floor_extent, self.floor_extent]] * 2,
            "min_centre_distance": round(self.min_centre_distance, 6),
            "image_size": [self.image_size, self.image_size],
            "symmetry_deg": dict(self.symmetry_deg),
            "symmetry_note": "rotations about the vertical axis that leave the image unchanged; "
            "0 means every rotation does (the sphere)",
            "max_objects": MAX_OBJECTS,
            "axes": "x on the floor to the image's right, y on the floor away from the camera "
            "(up the image), z up; rotation_deg turns an object about z, counterclockwise seen "
            "from above; at 0 the cube's faces and the cylinder's axis lie along x",
            "rotation_deg_default": 0.0,
            "rotation_note": "inferred rotations are given modulo the shape's symmetry (cube "
            "[0, 90), cylinder [0, 180)) and as null for the sphere, which no turn changes",
        }


class Camera:
    """The rays of every pixel: one origin, (H*W, 3) unit directions (row 0 at the top)."""

    def __init__(self, space: SceneSpace, device: torch.device | None = None) -> None:
        elevation = math.radians(space.camera_elevation_deg)
        eye = torch.tensor(
            [
                0.0,
                -space.camera_distance * math.cos(elevation),
                space.camera_distance * math.sin(elevation),
            ],
            dtype=torch.float64,
        )
        forward = -eye / eye.norm()
        right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        right = right / right.norm()
        up = torch.linalg.cross(right, forward)
        size = space.image_size
        half = math.tan(math.radians(space.field_of_view_deg) / 2)
        centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1  # -1 .. 1
        v, u = torch.meshgrid(-centres, centres, indexing="ij")  # v: up is positive
        directions = forward + half * (u.reshape(-1, 1) * right + v.reshape(-1, 1) * up)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        self.eye = eye.float().to(device)
        self.directions = directions.float().to(device)  # (P, 3)
        self.axes = torch.stack([right, up, forward]).float().to(device)  # (3, 3) rows
        self.half_width = half  # tan of half the field of view
        # World length of one pixel at the floor's centre: the scale of a silhouette's softness.
        self.pixel = float(space.camera_distance * 2 * half / size)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """World ``points`` (..., 3) -> where they appear in the image, (..., 2) in the spatial
        transformer's normalised coordinates ([-1, 1] edge to edge, x to the right, y down)."""
        right, up, forward = ((points - self.eye) @ self.axes.T).unbind(-1)
        scale = forward * self.half_width
        return torch.stack([right / scale, -up / scale], dim=-1)


def _turn(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Vectors ``v`` (B, K, P, 3) turned about the vertical axis by each object's angle, given as
    its ``cos`` and ``sin`` (B, K)."""
    x, y, z = v.unbind(-1)
    c, s = cos.unsqueeze(-1), sin.unsqueeze(-1)
    return torch.stack([c * x - s * y, s * x + c * y, z], dim=-1)


def _safe(value: torch.Tensor) -> torch.Tensor:
    """``value`` kept away from zero (a ray parallel to a slab), sign preserved."""
    tiny = 1e-6
    return torch.where(value.abs() < tiny, torch.where(value < 0, -tiny, tiny), value)


def _slab(origin: torch.Tensor, direction: torch.Tensor, half: torch.Tensor | float):
    """Entry and exit distances of rays through the slab |coordinate| <= half (per axis)."""
    inverse = 1.0 / _safe(direction)
    t1, t2 = (-half - origin) * inverse, (half - origin) * inverse
    return torch.minimum(t1, t2), torch.maximum(t1, t2)


class Renderer:
    """Scenes of objects -> grey images (B, H, W) in [0, 1]."""

    def __init__(self, space: SceneSpace | None = None, device: torch.device | None = None) -> None:
        self.space = space or SceneSpace()
        self.camera = Camera(self.space, device)
        light = torch.tensor(self.space.light_direction)
        self.light = (light / light.norm()).to(device)
        space = self.space
        # World length over which a silhouette or an edge between faces blends: about a pixel.
        self.edge_width = space.edge_pixels * self.camera.pixel
        self.floor_shade = space.floor_albedo * (
            space.ambient + (1 - space.ambient) * max(0.0, float(self.light[2]))
        )

    def render(
        self,
        shape: torch.Tensor,
        position: torch.Tensor,
        rotation: torch.Tensor,
        presence: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``shape`` (B, K) indices into SHAPES, ``position`` (B, K, 2) on the floor,
        ``rotation`` (B, K) radians about the vertical axis, ``presence`` (B, K) in [0, 1]
        (default all 1) -> images (B, H, W)."""
        coverage, depth, shade = self.objects(shape, position, rotation)
        if presence is not None:
            coverage = coverage * presence.unsqueeze(-1)
        return self.composite(coverage, depth, shade)

    def objects(
        self,
        shape: torch.Tensor,
        position: torch.Tensor,
        rotation: torch.Tensor,
        pixels: torch.Tensor | None = None,
    ):
        """Per object and pixel: coverage in [0, 1], depth along the ray and shaded intensity,
        each (B, K, P); with ``pixels`` (B, K, Q) (flat indices into the image) only those
        pixels' rays are cast, (B, K, Q) each."""
        space, camera = self.space, self.camera
        heights = torch.tensor([space.resting_height[s] for s in SHAPES], device=position.device)
        centre = torch.cat([position, heights[shape].unsqueeze(-1)], dim=-1)  # (B, K, 3)
        cos, sin = torch.cos(rotation), torch.sin(rotation)

        rays = (
            camera.directions.expand(*shape.shape, -1, -1)
            if pixels is None
            else camera.directions[pixels]
        )  # (B, K, P or Q, 3)
        relative = (camera.eye - centre).unsqueeze(2)  # (B, K, 1, 3)
        # The rays in each object's frame: turned by minus its rotation.
        origin = _turn(relative.expand(-1, -1, rays.shape[2], -1), cos, -sin)
        direction = _turn(rays, cos, -sin)
        # Each object is intersected with its own shape only: the objects of each shape are
        # taken out, cast, and put back in place (index_put keeps the gradient paths).
        flat_shape = shape.reshape(-1)
        origin, direction = origin.flatten(0, 1), direction.flatten(0, 1)  # (B*K, P, 3)
        signed = origin.new_zeros(origin.shape[:2])
        depth = origin.new_zeros(origin.shape[:2])
        normal = origin.new_zeros(origin.shape)
        for index, primitive in enumerate((self._sphere, self._cube, self._cylinder)):
            rows = (flat_shape == index).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            s_, d_, n_ = primitive(origin[rows], direction[rows])
            signed = signed.index_put((rows,), s_)
            depth = depth.index_put((rows,), d_)
            normal = normal.index_put((rows,), n_)
        signed, depth = signed.view(*shape.shape, -1), depth.view(*shape.shape, -1)
        normal = normal.view(*shape.shape, -1, 3)
        normal_world = _turn(normal, cos, sin)  # back to world axes
        lambert = (normal_world * self.light).sum(-1).clamp_min(0.0)
        shade = space.albedo * (space.ambient + (1 - space.ambient) * lambert)
        coverage = torch.sigmoid(signed / self.edge_width)
        return coverage, depth, shade

    def appears_at(self, position: torch.Tensor) -> torch.Tensor:
        """Where an object at ``position`` (..., 2) on the floor appears in the image: its centre
        at the floor's middle object height (a cube's), projected, (..., 2) normalised x, y."""
        height = position.new_full((*position.shape[:-1], 1), self.space.resting_height["cube"])
        return self.camera.project(torch.cat([position, height], dim=-1))

    def window(self, position: torch.Tensor) -> torch.Tensor:
        """Flat pixel indices (..., WINDOW^2) of the square window, kept inside the image, around
        where an object at ``position`` (..., 2) on the floor appears: all of it is inside."""
        size = self.space.image_size
        where = self.appears_at(position.detach())
        corner = ((where + 1) * (size / 2) - WINDOW / 2).round().long().clamp(0, size - WINDOW)
        offsets = torch.arange(WINDOW, device=position.device)
        rows = (corner[..., 1:2] + offsets).unsqueeze(-1)  # (..., WINDOW, 1)
        columns = (corner[..., 0:1] + offsets).unsqueeze(-2)  # (..., 1, WINDOW)
        return (rows * size + columns).flatten(-2)

    def objects_in_windows(
        self, shape: torch.Tensor, position: torch.Tensor, rotation: torch.Tensor
    ):
        """``objects`` with each object's rays cast only in its ``window``: coverage 0 (and depth
        and shade 0) elsewhere, where the exact coverage is under 1e-5. What the model renders
        (a fifth of the rays); the scenes' images are drawn exactly."""
        window = self.window(position)  # (B, K, Q)
        parts = self.objects(shape, position, rotation, window)
        pixels = self.space.image_size**2
        return tuple(
            part.new_zeros(*part.shape[:2], pixels).scatter(2, window, part) for part in parts
        )

    def visibility(self, coverage: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """How much of each pixel each object is seen in, (B, K, P): it covers the pixel and no
        nearer object does (softly: by a sigmoid of the depth difference)."""
        softness = self.space.depth_softness
        nearer = torch.sigmoid(
            (depth.unsqueeze(2) - depth.unsqueeze(1)) / softness
        )  # [b,k,j,p]: j before k
        hides = coverage.unsqueeze(1) * nearer  # (B, K, K, P): how much j hides k
        k = coverage.shape[1]
        eye = torch.eye(k, dtype=torch.bool, device=coverage.device)[None, :, :, None]
        hides = hides.masked_fill(eye, 0.0)
        return coverage * (1 - hides).prod(dim=2)

    def composite(self, coverage: torch.Tensor, depth: torch.Tensor, shade: torch.Tensor):
        """Soft nearest-surface-wins: object k is seen where it covers the pixel and no nearer
        object does; the floor where none covers it. (B, K, P) -> (B, H, W)."""
        size = self.space.image_size
        return self.composite_pixels(coverage, depth, shade).view(-1, size, size)

    def composite_pixels(
        self, coverage: torch.Tensor, depth: torch.Tensor, shade: torch.Tensor
    ) -> torch.Tensor:
        """``composite`` of any set of pixels: (B, K, Q) -> (B, Q)."""
        seen = self.visibility(coverage, depth)
        floor = (1 - coverage).prod(dim=1)  # (B, Q)
        total = seen.sum(1) + floor
        return ((seen * shade).sum(1) + floor * self.floor_shade) / total.clamp_min(1e-6)

    # -- the primitives, in the object's frame (centre at the origin) -------------------------
    # Each returns the signed distance of the ray from the silhouette (> 0: it hits), the depth of
    # the first hit along the ray (where it misses: of the nearest approach) and the normal there.

    def _sphere(self, origin: torch.Tensor, direction: torch.Tensor):
        r = self.space.sphere_radius
        b = (origin * direction).sum(-1)
        disc = b * b - ((origin * origin).sum(-1) - r * r)  # r^2 - (ray's distance to centre)^2
        depth = -b - disc.clamp_min(0.0).add(1e-9).sqrt()
        normal = (origin + depth.unsqueeze(-1) * direction) / r
        return disc / (2 * r), depth, normal

    def _cube(self, origin: torch.Tensor, direction: torch.Tensor):
        near, far = _slab(origin, direction, self.space.cube_half_side)
        entry = near.max(-1).values
        exit_ = far.min(-1).values
        signed = exit_ - entry  # chord through the cube (negative: the ray misses it)
        # The face hit is the axis of the latest entry; within about a pixel of an edge the two
        # faces' normals blend, so the shading, like the silhouette, moves smoothly with the pose.
        weight = torch.softmax(near / self.edge_width, dim=-1)
        normal = torch.nn.functional.normalize(-weight * torch.sign(direction), dim=-1)
        return signed, entry, normal

    def _cylinder(self, origin: torch.Tensor, direction: torch.Tensor):
        space = self.space
        r, half = space.cylinder_radius, space.cylinder_half_length
        oyz, dyz = origin[..., 1:], direction[..., 1:]  # the axis is the local x axis
        a = (dyz * dyz).sum(-1).clamp_min(1e-9)
        b = (oyz * dyz).sum(-1)
        disc = (b * b - a * ((oyz * oyz).sum(-1) - r * r)) / a  # r^2 - (distance to axis)^2
        root = disc.clamp_min(0.0).add(1e-9).sqrt() / a.sqrt()
        body_in, body_out = -b / a - root, -b / a + root
        cap_in, cap_out = _slab(origin[..., 0], direction[..., 0], half)
        entry = torch.maximum(body_in, cap_in)
        exit_ = torch.minimum(body_out, cap_out)
        signed = torch.minimum(disc / (2 * r), exit_ - entry)
        point = origin + entry.unsqueeze(-1) * direction
        # The cap is hit where the ray enters the caps' slab after the body; near the rim the
        # cap's and the body's normals blend (as the cube's faces do).
        on_cap = torch.sigmoid((cap_in - body_in) / self.edge_width).unsqueeze(-1)
        cap_normal = torch.zeros_like(point)
        cap_normal[..., 0] = -torch.sign(direction[..., 0])
        body_normal = torch.cat([torch.zeros_like(point[..., :1]), point[..., 1:] / r], dim=-1)
        normal = on_cap * cap_normal + (1 - on_cap) * body_normal
        return signed, entry, torch.nn.functional.normalize(normal, dim=-1)


class SceneError(ValueError):
    """A scene description the renderer cannot draw (reported as a one-line error)."""


@dataclass(frozen=True)
class SceneObject:
    """One object of a described scene: its shape, centre on the floor and turn about z."""

    shape: str
    position: tuple[float, float]
    rotation_deg: float


def read_scenes(document: object, space: SceneSpace) -> list[list[SceneObject]]:
    """``{"scenes": [{"objects": [{"shape", "position": [x, y], "rotation_deg"}, ...]}, ...]}``
    -> the scenes' objects, checked against ``space`` (``SceneError`` naming what is wrong)."""
    if not isinstance(document, dict) or not isinstance(document.get("scenes"), list):
        raise SceneError('expected a JSON object {"scenes": [{"objects": [...]}, ...]}')
    scenes = []
    for i, scene in enumerate(document["scenes"]):
        where = f"scene {i}"
        if not isinstance(scene, dict) or not isinstance(scene.get("objects"), list):
            raise SceneError(f'{where}: expected {{"objects": [...]}}')
        if len(scene["objects"]) > MAX_OBJECTS:
            raise SceneError(f"{where}: {len(scene['objects'])} objects, at most {MAX_OBJECTS}")
        objects = [
            _read_object(o, f"{where}, object {j}", space) for j, o in enumerate(scene["objects"])
        ]
        _check_apart(objects, where, space)
        scenes.append(objects)
    return scenes


def _read_object(value: object, where: str, space: SceneSpace) -> SceneObject:
    if not isinstance(value, dict):
        raise SceneError(f"{where}: expected an object with shape, position and rotation_deg")
    shape = value.get("shape")
    if shape not in SHAPES:
        raise SceneError(f"{where}: unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    position = value.get("position")
    if (
        not isinstance(position, list)
        or len(position) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in position)
    ):
        raise SceneError(f"{where}: position must be [x, y], got {position!r}")
    extent = space.floor_extent
    if not all(math.isfinite(v) and -extent <= v <= extent for v in position):
        raise SceneError(
            f"{where}: position {position} is off the floor ([-{extent:g}, {extent:g}] on each axis)"
        )
    rotation = value.get("rotation_deg", 0.0)
    if (
        not isinstance(rotation, int | float)
        or isinstance(rotation, bool)
        or not math.isfinite(rotation)
    ):
        raise SceneError(f"{where}: rotation_deg must be a number, got {rotation!r}")
    unknown = sorted(set(value) - {"shape", "position", "rotation_deg", "box"})
    if unknown:
        raise SceneError(f"{where}: unknown field(s) {', '.join(unknown)}")
    return SceneObject(shape, (float(position[0]), float(position[1])), float(rotation))


def _check_apart(objects: list[SceneObject], where: str, space: SceneSpace) -> None:
    """Objects may not intersect: their centres must be ``min_centre_distance`` apart."""
    for i, a in enumerate(objects):
        for j in range(i + 1, len(objects)):
            b = objects[j]
            distance = math.dist(a.position, b.position)
            if distance < space.min_centre_distance:
                raise SceneError(
                    f"{where}: objects {i} and {j} intersect (centres {distance:.3f} apart, "
                    f"at least {space.min_centre_distance:.3f} needed)"
                )


def scene_tensors(scenes: list[list[SceneObject]], device: torch.device | None = None):
    """Described scenes -> ``Renderer.render``'s (shape, position, rotation, presence), padded
    to MAX_OBJECTS objects per scene with absent ones."""
    n, k = len(scenes), MAX_OBJECTS
    shape = torch.zeros(n, k, dtype=torch.long)
    position = torch.zeros(n, k, 2)
    rotation = torch.zeros(n, k)
    presence = torch.zeros(n, k)
    for i, objects in enumerate(scenes):
        for j, o in enumerate(objects):
            shape[i, j] = SHAPES.index(o.shape)
            position[i, j] = torch.tensor(o.position)
            rotation[i, j] = math.radians(o.rotation_deg)
            presence[i, j] = 1.0
    return tuple(t.to(device) for t in (shape, position, rotation, presence))


def render_scenes(
    scenes: list[list[SceneObject]], renderer: Renderer | None = None, batch: int = 64
) -> torch.Tensor:
    """Images (n, H, W) in [0, 1] of described scenes."""
    renderer = renderer or Renderer()
    tensors = scene_tensors(scenes)
    with torch.no_grad():
        parts = [
            renderer.render(*(t[start : start + batch] for t in tensors))
            for start in range(0, len(scenes), batch)
        ]
    size = renderer.space.image_size
    return torch.cat(parts) if parts else torch.zeros(0, size, size)
