"""The 3D renderer as p(x | z): gradients, geometry, occlusion, shapes, symmetry, batching."""

import math

import pytest
import torch

from airscene.render3d import SHAPES, Renderer, SceneSpace

SPHERE, CUBE, CYLINDER = (SHAPES.index(name) for name in ("sphere", "cube", "cylinder"))


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def one(renderer, shape, x, y, rotation=0.0) -> torch.Tensor:
    """The image (H, W) of one object."""
    return renderer.render(
        torch.tensor([[shape]]), torch.tensor([[[x, y]]]), torch.tensor([[rotation]])
    )[0]


def centre_of_mass(image: torch.Tensor, floor: float) -> tuple[float, float]:
    """(column, row) of the object's ink: what differs from the floor."""
    ink = (image - floor).abs()
    rows, cols = torch.meshgrid(
        torch.arange(image.shape[0], dtype=ink.dtype),
        torch.arange(image.shape[1], dtype=ink.dtype),
        indexing="ij",
    )
    return float((ink * cols).sum() / ink.sum()), float((ink * rows).sum() / ink.sum())


@pytest.mark.parametrize("shape", [SPHERE, CUBE, CYLINDER])
def test_gradients_agree_with_finite_differences(renderer, shape):
    torch.manual_seed(shape)
    position = torch.tensor([[[0.2, -0.1], [-0.5, 0.45]]], dtype=torch.float64)
    rotation = torch.tensor([[0.4, 1.1]], dtype=torch.float64)
    shapes = torch.tensor([[shape, CUBE]])
    weights = torch.rand(1, 64, 64, dtype=torch.float64)
    double = Renderer()
    double.camera.eye = double.camera.eye.double()
    double.camera.directions = double.camera.directions.double()
    double.light = double.light.double()

    def loss(p, r):
        return (double.render(shapes, p, r) * weights).sum()

    p, r = position.clone().requires_grad_(), rotation.clone().requires_grad_()
    loss(p, r).backward()
    step = 1e-6
    for index in [(0, 0, 0), (0, 0, 1), (0, 1, 0)]:
        bumped = position.clone()
        bumped[index] += step
        lowered = position.clone()
        lowered[index] -= step
        numeric = (loss(bumped, rotation) - loss(lowered, rotation)) / (2 * step)
        assert float(p.grad[index]) == pytest.approx(float(numeric), rel=1e-3, abs=1e-4)
    for index in [(0, 0), (0, 1)]:
        bumped, lowered = rotation.clone(), rotation.clone()
        bumped[index] += step
        lowered[index] -= step
        numeric = (loss(position, bumped) - loss(position, lowered)) / (2 * step)
        if shape == SPHERE and index == (0, 0):  # a sphere does not change when it turns
            assert abs(float(r.grad[index])) < 1e-6 and abs(float(numeric)) < 1e-6
        else:
            assert float(r.grad[index]) == pytest.approx(float(numeric), rel=1e-3, abs=1e-4)
            assert abs(float(numeric)) > 1e-3  # a real dependence, not two zeros


@pytest.mark.parametrize("shape", [SPHERE, CUBE, CYLINDER])
def test_an_object_moved_right_appears_further_right(renderer, shape):
    floor = renderer.floor_shade
    columns = [
        centre_of_mass(one(renderer, shape, x, 0.0, 0.3), floor)[0] for x in (-0.6, 0.0, 0.6)
    ]
    assert columns[0] + 5 < columns[1] < columns[2] - 5
    # Further away along the floor: higher in the image.
    near_row = centre_of_mass(one(renderer, shape, 0.0, -0.6), floor)[1]
    far_row = centre_of_mass(one(renderer, shape, 0.0, 0.6), floor)[1]
    assert far_row < near_row - 5


def test_the_nearer_of_two_objects_hides_the_farther(renderer):
    shapes = torch.tensor([[CUBE, SPHERE]])
    near, far = (
        [0.0, -0.3],
        [0.0, 0.35],
    )  # the sphere behind the cube, along the view, not touching it
    both = renderer.render(shapes, torch.tensor([[near, far]]), torch.tensor([[0.0, 0.0]]))[0]
    presence = torch.tensor([[1.0, 0.0]])
    cube_alone = renderer.render(shapes, torch.tensor([[near, far]]), torch.zeros(1, 2), presence)[
        0
    ]
    sphere_alone = renderer.render(
        shapes, torch.tensor([[near, far]]), torch.zeros(1, 2), torch.tensor([[0.0, 1.0]])
    )[0]
    coverage = renderer.objects(shapes, torch.tensor([[near, far]]), torch.zeros(1, 2))[0][0]
    cube_pixels, sphere_pixels = coverage[0] > 0.99, coverage[1] > 0.5  # (P,)
    overlap = (cube_pixels & sphere_pixels).view(64, 64)
    assert overlap.sum() > 5  # they do overlap in the image
    # Where both could be seen, the cube (nearer) is what is seen, in either order of objects.
    assert float((both - cube_alone)[overlap].abs().max()) < 0.01
    assert float((both - sphere_alone)[overlap].abs().mean()) > 0.1  # and not the sphere
    # Away from the cube the sphere is seen as it is alone.
    sphere_only = (sphere_pixels & (coverage[0] < 1e-3)).view(64, 64)
    assert sphere_only.sum() > 30
    assert float((both - sphere_alone)[sphere_only].abs().max()) < 0.01
    swapped = renderer.render(
        torch.tensor([[SPHERE, CUBE]]), torch.tensor([[far, near]]), torch.zeros(1, 2)
    )[0]
    torch.testing.assert_close(swapped, both, atol=1e-5, rtol=0)


def test_each_shape_renders_differently(renderer):
    images = [one(renderer, shape, 0.0, 0.0, 0.3) for shape in (SPHERE, CUBE, CYLINDER)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert float((images[i] - images[j]).abs().sum()) > 20, (SHAPES[i], SHAPES[j])


def test_a_turn_by_the_symmetry_angle_leaves_the_image_unchanged(renderer):
    space = SceneSpace()
    for shape in (CUBE, CYLINDER):
        angle = math.radians(space.symmetry_deg[SHAPES[shape]])
        turned = one(renderer, shape, 0.3, 0.2, 0.5 + angle)
        torch.testing.assert_close(turned, one(renderer, shape, 0.3, 0.2, 0.5), atol=1e-3, rtol=0)
    torch.testing.assert_close(
        one(renderer, SPHERE, 0.3, 0.2, 1.234),
        one(renderer, SPHERE, 0.3, 0.2, 0.0),
        atol=1e-3,
        rtol=0,
    )
    # A quarter turn changes the elongated shape, and a 45-degree turn changes the cube.
    quarter = (
        one(renderer, CYLINDER, 0.3, 0.2, 0.5 + math.pi / 2)
        - one(renderer, CYLINDER, 0.3, 0.2, 0.5)
    ).abs()
    assert float(quarter.sum()) > 20
    eighth = (
        one(renderer, CUBE, 0.3, 0.2, 0.5 + math.pi / 4) - one(renderer, CUBE, 0.3, 0.2, 0.5)
    ).abs()
    assert float(eighth.sum()) > 5


def test_a_scene_alone_equals_the_same_scene_in_a_batch_of_64(renderer):
    generator = torch.Generator().manual_seed(3)
    shapes = torch.randint(0, 3, (64, 3), generator=generator)
    positions = torch.rand(64, 3, 2, generator=generator) * 2 - 1
    rotations = torch.rand(64, 3, generator=generator) * 6.3
    presence = (torch.rand(64, 3, generator=generator) < 0.7).float()
    batch = renderer.render(shapes, positions, rotations, presence)
    for i in (0, 17, 63):
        alone = renderer.render(
            shapes[i : i + 1], positions[i : i + 1], rotations[i : i + 1], presence[i : i + 1]
        )
        torch.testing.assert_close(alone[0], batch[i], atol=1e-6, rtol=0)
    # Deterministic: the same call twice gives the same bits.
    assert torch.equal(batch, renderer.render(shapes, positions, rotations, presence))
    # Absent objects leave the floor alone.
    empty = renderer.render(shapes[:2], positions[:2], rotations[:2], torch.zeros(2, 3))
    torch.testing.assert_close(empty, torch.full_like(empty, renderer.floor_shade))


def test_cli_render3d_writes_scenes_in_order_and_describes_the_space(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from airscene.cli import main

    scenes = {
        "scenes": [
            {"objects": [{"shape": "cube", "position": [0.2, -0.1], "rotation_deg": 30}]},
            {"objects": []},
            {
                "objects": [
                    {"shape": "sphere", "position": [-0.5, 0.4], "rotation_deg": 0},
                    {"shape": "cylinder", "position": [0.5, 0.4], "rotation_deg": 90},
                ]
            },
        ]
    }
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps(scenes))
    assert main(["render3d", str(path), "--out", str(tmp_path / "out")]) == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["00000.png", "00001.png", "00002.png"]
    images = [np.asarray(Image.open(tmp_path / "out" / f)) for f in files]
    assert images[0].shape == (64, 64) and len(np.unique(images[1])) == 1  # an empty floor
    assert (images[0] != images[1]).sum() > 30 and (images[2] != images[1]).sum() > 60

    capsys.readouterr()
    assert main(["render3d", "--describe"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["shapes"] == list(SHAPES) and described["image_size"] == [64, 64]
    assert described["symmetry_deg"] == {"sphere": 0.0, "cube": 90.0, "cylinder": 180.0}
    assert described["min_centre_distance"] > 0 and described["floor_extent"][0][1] > 0


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '{"scenes": [{"objects": [{"shape": "cone", "position": [0, 0]}]}]}',
            "unknown shape 'cone'",
        ),
        ('{"scenes": [{"objects": [{"shape": "cube", "position": [3, 0]}]}]}', "off the floor"),
        (
            '{"scenes": [{"objects": [{"shape": "cube", "position": [0, 0]}, '
            '{"shape": "sphere", "position": [0.2, 0]}]}]}',
            "objects 0 and 1 intersect",
        ),
        ('{"scenes": [{"objects": [', "not valid JSON"),
        (
            '{"scenes": [{"objects": [{"shape": "cube", "position": [0]}]}]}',
            "position must be [x, y]",
        ),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_cli_render3d_bad_descriptions_are_one_line_errors(tmp_path, capsys, text, message):
    from airscene.cli import main

    path = tmp_path / "bad.json"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["render3d", str(path), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1, error
    assert not out.exists()  # nothing written


def test_each_shape_anywhere_on_the_floor_lies_inside_its_window():
    renderer = Renderer()
    spots = [(-0.8, -0.8), (0.8, -0.8), (-0.8, 0.8), (0.8, 0.8), (0.0, 0.0), (0.8, 0.0)]
    for shape in range(len(SHAPES)):
        for x, y in spots:
            for rotation in (0.0, 0.4, 0.8, 1.3):
                coverage, _, _ = renderer.objects(
                    torch.tensor([[shape]]), torch.tensor([[[x, y]]]), torch.tensor([[rotation]])
                )
                inked = set((coverage.view(-1) > 1e-5).nonzero().view(-1).tolist())
                window = set(renderer.window(torch.tensor([[x, y]]))[0].tolist())
                assert inked and inked <= window, (SHAPES[shape], x, y, rotation)


def test_objects_rendered_in_their_windows_are_the_exact_render_and_its_gradients():
    renderer = Renderer()
    generator = torch.Generator().manual_seed(3)
    shape = torch.randint(0, 3, (8, 3), generator=generator)
    position = (torch.rand(8, 3, 2, generator=generator) * 1.6 - 0.8).requires_grad_()
    rotation = (torch.rand(8, 3, generator=generator) * 6.3).requires_grad_()
    exact = renderer.composite(*renderer.objects(shape, position, rotation))
    windowed = renderer.composite(*renderer.objects_in_windows(shape, position, rotation))
    assert (exact - windowed).abs().max() < 1e-4
    target = torch.rand(8, 64, 64, generator=generator)
    grads = [
        torch.autograd.grad((image - target).square().sum(), (position, rotation))
        for image in (exact, windowed)
    ]
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3)
