"""The spatial transformer (Jaderberg et al. 2015) that places objects in AIR.

``z_where = (s, x, y)``: the glimpse is a square window whose side is the fraction ``s`` of the
canvas side, centred at ``(x, y)`` in normalised canvas coordinates ([-1, 1], x to the right,
y downwards, as in ``affine_grid``). Reading and writing are the two inverse affine maps:

    read  (canvas -> glimpse): glimpse point g samples the canvas at   s * g + (x, y)
    write (glimpse -> canvas): canvas point p samples the glimpse at  (p - (x, y)) / s

Both use ``align_corners=False``, so [-1, 1] spans the outer pixel edges and ``s`` is exactly
the ratio of window side to canvas side, whatever the two resolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# |s| is kept away from zero inside the write transform only, where 1/s appears; the density
# of z_where is untouched. A window a twentieth of the canvas is far below any object.
MIN_ABS_SCALE = 0.05


def _safe_scale(scale: torch.Tensor) -> torch.Tensor:
    sign = torch.where(scale < 0, -1.0, 1.0).to(scale.dtype)
    return sign * scale.abs().clamp_min(MIN_ABS_SCALE)


def read_theta(z_where: torch.Tensor) -> torch.Tensor:
    """Affine maps (M, 2, 3) from glimpse to canvas coordinates for ``z_where`` (M, 3)."""
    s, x, y = z_where.unbind(-1)
    zero = torch.zeros_like(s)
    return torch.stack([s, zero, x, zero, s, y], dim=-1).view(-1, 2, 3)


def write_theta(z_where: torch.Tensor) -> torch.Tensor:
    """Affine maps (M, 2, 3) from canvas to glimpse coordinates: the inverse of ``read_theta``."""
    s, x, y = z_where.unbind(-1)
    inv = 1.0 / _safe_scale(s)
    zero = torch.zeros_like(s)
    return torch.stack([inv, zero, -x * inv, zero, inv, -y * inv], dim=-1).view(-1, 2, 3)


def read_glimpse(image: torch.Tensor, z_where: torch.Tensor, glimpse_size: int) -> torch.Tensor:
    """Cut the window ``z_where`` (M, 3) out of ``image`` (M, H, W) as a (M, G, G) glimpse."""
    m = image.shape[0]
    grid = F.affine_grid(
        read_theta(z_where), [m, 1, glimpse_size, glimpse_size], align_corners=False
    )
    return F.grid_sample(image.unsqueeze(1), grid, align_corners=False).squeeze(1)


def write_glimpse(glimpse: torch.Tensor, z_where: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """Place ``glimpse`` (M, G, G) on a blank (M, H, H) canvas in the window ``z_where`` (M, 3)."""
    m = glimpse.shape[0]
    grid = F.affine_grid(
        write_theta(z_where), [m, 1, canvas_size, canvas_size], align_corners=False
    )
    return F.grid_sample(glimpse.unsqueeze(1), grid, align_corners=False).squeeze(1)


def z_where_to_box(z_where: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """The window of ``z_where`` (..., 3) as a pixel box ``x0, y0, x1, y1`` (..., 4), edges as
    in the ground truth (pixel i spans [i, i + 1])."""
    s, x, y = z_where.unbind(-1)
    half = canvas_size / 2.0
    s = s.abs()
    return torch.stack(
        [(x - s + 1) * half, (y - s + 1) * half, (x + s + 1) * half, (y + s + 1) * half], -1
    )
