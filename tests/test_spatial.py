"""The spatial transformer: exact placements at aligned scales, round trips, boxes."""

import pytest
import torch

from airscene.spatial import read_glimpse, write_glimpse, z_where_to_box


def blob(size: int) -> torch.Tensor:
    """A smooth bump centred off-centre, so flips and shifts would show."""
    coords = torch.arange(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    return torch.exp(-((xs - size * 0.4) ** 2 + (ys - size * 0.55) ** 2) / (2 * (size / 6) ** 2))


def test_write_places_glimpse_at_known_pixels():
    # Glimpse 10 px, canvas 20 px, s = 0.5: one glimpse pixel per canvas pixel. Centre shifted
    # by x = +0.2 (2 px right) and y = -0.3 (3 px up) in normalised units (1 unit = 10 px).
    glimpse = blob(10)
    z_where = torch.tensor([[0.5, 0.2, -0.3]])
    canvas = write_glimpse(glimpse[None], z_where, 20)[0]
    expected = torch.zeros(20, 20)
    expected[5 - 3 : 15 - 3, 5 + 2 : 15 + 2] = glimpse
    torch.testing.assert_close(canvas, expected, atol=1e-6, rtol=0)


def test_single_pixel_moves_to_known_place():
    glimpse = torch.zeros(4, 4)
    glimpse[1, 2] = 1.0
    # s = 0.2 on a 20 px canvas: 4 px window; centre at x = -0.5 (pixel 5), y = 0.5 (pixel 15).
    canvas = write_glimpse(glimpse[None], torch.tensor([[0.2, -0.5, 0.5]]), 20)[0]
    row, col = divmod(int(canvas.argmax()), 20)
    assert (row, col) == (15 - 2 + 1, 5 - 2 + 2)
    assert float(canvas.max()) == 1.0 and float(canvas.sum()) == 1.0


def test_write_then_read_recovers_glimpse_exactly_when_aligned():
    glimpse = blob(10)
    z_where = torch.tensor([[0.5, -0.4, 0.1]])
    canvas = write_glimpse(glimpse[None], z_where, 20)
    recovered = read_glimpse(canvas, z_where, 10)[0]
    torch.testing.assert_close(recovered, glimpse, atol=1e-6, rtol=0)


def test_write_then_read_round_trip_at_digit_scale():
    # A 28 px glimpse on a 50 px canvas (s = 0.56), off the pixel grid: bilinear resampling
    # twice blurs a little, but a smooth glimpse comes back closely.
    glimpse = blob(28)
    z_where = torch.tensor([[0.56, 0.137, -0.211]])
    recovered = read_glimpse(write_glimpse(glimpse[None], z_where, 50), z_where, 28)[0]
    inner = (slice(2, -2), slice(2, -2))  # the outermost pixels see the blank canvas around
    assert float((recovered[inner] - glimpse[inner]).abs().max()) < 0.03


def test_read_is_inverse_of_write_for_batches():
    torch.manual_seed(0)
    glimpses = torch.rand(5, 10, 10)
    shifts = torch.randint(-3, 4, (5, 2)).float() / 10  # whole-pixel shifts keep it exact
    z_where = torch.cat([torch.full((5, 1), 0.5), shifts], dim=1)
    recovered = read_glimpse(write_glimpse(glimpses, z_where, 20), z_where, 10)
    torch.testing.assert_close(recovered, glimpses, atol=1e-6, rtol=0)


def test_box_of_z_where():
    box = z_where_to_box(torch.tensor([[0.5, 0.2, -0.3], [0.56, 0.0, 0.0]]), 20)
    torch.testing.assert_close(box[0], torch.tensor([7.0, 2.0, 17.0, 12.0]))
    torch.testing.assert_close(box[1], torch.tensor([4.4, 4.4, 15.6, 15.6]))


def test_gradient_flows_to_z_where():
    glimpse = blob(10)
    z_where = torch.tensor([[0.45, 0.13, -0.07]], requires_grad=True)
    target = write_glimpse(glimpse[None], torch.tensor([[0.5, 0.0, 0.0]]), 20)
    loss = ((write_glimpse(glimpse[None], z_where, 20) - target) ** 2).sum()
    loss.backward()
    assert z_where.grad is not None and torch.all(z_where.grad.abs() > 0)
    # Moving towards the target lowers the loss: the gradient points away from it.
    assert z_where.grad[0, 1] > 0 and z_where.grad[0, 2] < 0


def test_a_rectangular_window_places_the_glimpse_at_known_pixels():
    """z_where (s, x, y, t): width s and height t of the canvas. A 10 px glimpse in a window
    5 px wide and 10 px tall on a 20 px canvas: rows one to one, every other column (the
    window's centre at x = 12.25 px puts each canvas pixel on a glimpse pixel's centre)."""
    glimpse = torch.zeros(10, 10)
    glimpse[:, 5] = 1.0  # a vertical bar, glimpse column 5
    glimpse[7, :] = 1.0  # a horizontal one, row 7
    z_where = torch.tensor([[0.25, 0.225, -0.3, 0.5]])  # centre 2.25 px right, 3 px up
    canvas = write_glimpse(glimpse[None], z_where, 20)[0]
    rows = slice(5 - 3, 15 - 3)
    # Canvas columns 10..14 sample glimpse columns 1, 3, 5, 7, 9: the bar lands on column 12.
    torch.testing.assert_close(canvas[rows, 12], torch.ones(10), atol=1e-6, rtol=0)
    assert abs(float(canvas[rows, 11].sum()) - 1.0) < 1e-5  # where the horizontal bar crosses
    torch.testing.assert_close(canvas[rows.start + 7, 10:15], torch.ones(5), atol=1e-6, rtol=0)
    outside = canvas.clone()
    outside[rows, 9:16] = 0.0
    assert float(outside.abs().max()) < 1e-5
    # Read back at the same window, the bar's glimpse column is whole again.
    recovered = read_glimpse(canvas[None], z_where, 10)[0]
    torch.testing.assert_close(recovered[:, 5], torch.ones(10), atol=1e-6, rtol=0)


def test_a_rectangular_window_is_the_square_one_when_width_equals_height():
    glimpse = blob(10)[None]
    square = torch.tensor([[0.37, 0.13, -0.21]])
    rectangle = torch.tensor([[0.37, 0.13, -0.21, 0.37]])
    assert torch.equal(write_glimpse(glimpse, square, 20), write_glimpse(glimpse, rectangle, 20))
    canvas = blob(20)[None]
    assert torch.equal(read_glimpse(canvas, square, 10), read_glimpse(canvas, rectangle, 10))
    assert torch.equal(z_where_to_box(square, 20), z_where_to_box(rectangle, 20))
    box = z_where_to_box(torch.tensor([[0.25, 0.2, -0.3, 0.5]]), 20)
    torch.testing.assert_close(box[0], torch.tensor([9.5, 2.0, 14.5, 12.0]))


def test_a_window_is_drawn_the_same_size_on_a_canvas_of_any_size():
    """The write transform's floor on |s| is in pixels: a 10 px window (and a 2 px one, held at
    the floor) is drawn identically on a 48 px canvas and on a 512 px one, whose fraction of
    the canvas lies far below a twentieth."""
    glimpse = blob(10)[None]
    for width in (10.0, 2.0):
        drawn = [
            write_glimpse(glimpse, torch.tensor([[width / side, 0.0, 0.0]]), side)[0]
            for side in (48, 512)
        ]
        small, large = drawn[0][16:32, 16:32], drawn[1][248:264, 248:264]
        torch.testing.assert_close(small, large, atol=1e-5, rtol=0)
        assert float(drawn[1].sum()) == pytest.approx(float(drawn[0].sum()), rel=1e-4)
