"""The spatial transformer (Jaderberg et al. 2015) that places objects in AIR.

``z_where = (s, x, y)``: the glimpse is a square window whose side is the fraction ``s`` of the
canvas side, centred at ``(x, y)`` in normalised canvas coordinates ([-1, 1], x to the right,
y downwards, as in ``affine_grid``). A window may also be a rectangle, ``z_where = (s, x, y,
t)``: ``s`` its width's fraction of the canvas, ``t`` its height's (SPAIR's windows; the grid
scheme's with ``grid_aspect_spread``). Reading and writing are the two inverse affine maps:

    read  (canvas -> glimpse): glimpse point g samples the canvas at   s * g + (x, y)
    write (glimpse -> canvas): canvas point p samples the glimpse at  (p - (x, y)) / s

(``s`` per axis: ``(s, t)`` for a rectangle).

Both use ``align_corners=False``, so [-1, 1] spans the outer pixel edges and ``s`` is exactly
the ratio of window side to canvas side, whatever the two resolutions.

The maps have no rotation, so their sampling grids are built directly as ``scale * centre +
shift``, without ``affine_grid``'s batched matrix products; ``tests/reference.py`` builds the
same grids with ``affine_grid`` from the maps' 2x3 matrices, and the tests compare the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# |s| is kept away from zero inside the write transform only, where 1/s appears; the density
# of z_where is untouched. The floor is in pixels (a twentieth of the paper's 50 px canvas, far
# below any object), so that a window is drawn the same size on a cell's patch and on an image
# of any size: a floor in fractions of the canvas widened a 10 px window on a 512 px image.
MIN_WINDOW_PX = 2.5


def safe_scale(scale: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """``scale`` (a fraction of a canvas of ``canvas_size`` px) with |scale| at least
    MIN_WINDOW_PX pixels, its sign kept."""
    sign = torch.where(scale < 0, -1.0, 1.0).to(scale.dtype)
    return sign * scale.abs().clamp_min(MIN_WINDOW_PX / canvas_size)


def _pixel_centres(size: int, like: torch.Tensor) -> torch.Tensor:
    """Normalised coordinates of the centres of ``size`` pixels (align_corners=False), (size,),
    computed as ``affine_grid`` does, so that both grids agree to the last bit where they can."""
    return torch.linspace(-1, 1, size, device=like.device, dtype=like.dtype) * ((size - 1) / size)


def _axis_aligned_grid(grid_x: torch.Tensor, grid_y: torch.Tensor) -> torch.Tensor:
    """The sampling grid (M, S, S, 2) whose column j samples at ``grid_x[:, j]`` and row i at
    ``grid_y[:, i]`` (each (M, S)): what ``affine_grid`` returns for a theta with no rotation or
    shear, built without its batched (S*S, 3) x (3, 2) matrix product per object."""
    m, size = grid_x.shape
    gx = grid_x[:, None, :].expand(m, size, size)
    gy = grid_y[:, :, None].expand(m, size, size)
    return torch.stack([gx, gy], dim=-1)


def window_scales(z_where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's width and height as fractions of the canvas side, each (..., 1), from
    ``z_where`` (..., 3) (a square: both ``s``) or (..., 4) (a rectangle: ``s`` and ``t``)."""
    width = z_where[..., 0:1]
    return width, z_where[..., 3:4] if z_where.shape[-1] == 4 else width


def read_grid(z_where: torch.Tensor, glimpse_size: int) -> torch.Tensor:
    """Where each glimpse pixel samples the canvas, (M, G, G, 2)."""
    (s, t), x, y = window_scales(z_where), z_where[:, 1:2], z_where[:, 2:3]  # each (M, 1)
    centres = _pixel_centres(glimpse_size, z_where)
    return _axis_aligned_grid(s * centres + x, t * centres + y)  # g -> s * g + (x, y)


def write_grid(z_where: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """Where each canvas pixel samples the glimpse, (M, H, H, 2)."""
    (s, t), x, y = window_scales(z_where), z_where[:, 1:2], z_where[:, 2:3]  # each (M, 1)
    inv_x = 1.0 / safe_scale(s, canvas_size)
    # A square's one scale inverted once: the same gradient, summed in the same order, as
    # before rectangles (training stays bit-equal).
    inv_y = inv_x if t is s else 1.0 / safe_scale(t, canvas_size)
    centres = _pixel_centres(canvas_size, z_where)
    # (p - (x, y)) / s
    return _axis_aligned_grid(inv_x * centres - x * inv_x, inv_y * centres - y * inv_y)


def read_glimpse(image: torch.Tensor, z_where: torch.Tensor, glimpse_size: int) -> torch.Tensor:
    """Cut the window ``z_where`` (M, 3) (or (M, 4)) out of ``image`` (M, H, W) as a (M, G, G)
    glimpse; an image with channels (M, C, H, W) gives (M, C, G, G)."""
    grid = read_grid(z_where, glimpse_size)
    if image.dim() == 4:
        return F.grid_sample(image, grid, align_corners=False)
    return F.grid_sample(image.unsqueeze(1), grid, align_corners=False).squeeze(1)


def write_glimpse(glimpse: torch.Tensor, z_where: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """Place ``glimpse`` (M, G, G) on a blank (M, H, H) canvas in the window ``z_where`` (M, 3);
    a glimpse with channels (M, C, G, G) gives (M, C, H, H)."""
    grid = write_grid(z_where, canvas_size)
    if glimpse.dim() == 4:
        return F.grid_sample(glimpse, grid, align_corners=False)
    return F.grid_sample(glimpse.unsqueeze(1), grid, align_corners=False).squeeze(1)


def z_where_to_box(z_where: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """The window of ``z_where`` (..., 3) (or (..., 4)) as a pixel box ``x0, y0, x1, y1``
    (..., 4), edges as in the ground truth (pixel i spans [i, i + 1])."""
    s, t = (scale.squeeze(-1).abs() for scale in window_scales(z_where))
    x, y = z_where[..., 1], z_where[..., 2]
    half = canvas_size / 2.0
    return torch.stack(
        [(x - s + 1) * half, (y - t + 1) * half, (x + s + 1) * half, (y + t + 1) * half], -1
    )


def tight_boxes(ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tight pixel box x0, y0, x1, y1 (end exclusive) of the True pixels of each mask
    ``ink`` (B, H, W), (B, 4) int64, and whether the mask has any, (B,)."""
    rows, cols = ink.any(dim=2), ink.any(dim=1)  # (B, H), (B, W)
    index_y = torch.arange(ink.shape[1], device=ink.device)
    index_x = torch.arange(ink.shape[2], device=ink.device)
    box = torch.stack(
        [
            torch.where(cols, index_x, ink.shape[2]).amin(1),
            torch.where(rows, index_y, ink.shape[1]).amin(1),
            torch.where(cols, index_x + 1, 0).amax(1),
            torch.where(rows, index_y + 1, 0).amax(1),
        ],
        dim=1,
    )
    return box, rows.any(dim=1)
