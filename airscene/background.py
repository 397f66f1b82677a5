"""What lies under the objects: a background component of p(x | z).

The paper's p(x | z) draws the objects on a black canvas, so anything else in an image (noise,
grid lines, a texture) must be explained by objects, and AIR counts it as objects: SuPAIR
(Stelzner et al. 2019) measured AIR's count accuracy at about 0 on Multi-MNIST with noise or
over grid lines. Here, as in SPACE (Lin et al. 2020) and GENESIS (Engelcke et al. 2020), the
scene has a latent z_bg ~ N(0, I) of its own, decoded to a background image, and the objects
are drawn over it: where their ink is (alpha, the objects' canvas clipped to [0, 1]) they cover
it.

What keeps the background from explaining the objects away is its decoder's form, not only its
size: z_bg weights a few learned basis images, added in logit space (a linear decoder under a
sigmoid). A mix of fixed images can take any level, gradient, texture or periodic pattern at
any phase (grid lines at phase p are a mix of a few sines and cosines), but it cannot move a
blob to wherever an object lies. A small non-linear decoder from the same four dimensions did
exactly that: it painted every digit as a blurred blob and AIR found none (measured:
results/clutter/findings.md).

q(z_bg | x) is a small convolutional encoder over the whole image, inferred before the objects;
the objects' network then reads the image less its background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from airscene.config import ModelConfig
from airscene.densities import normal_log_prob, standard_normal_log_prob
from airscene.rows import Generators, standard_normal


@dataclass
class BackgroundDraw:
    """One draw of q(z_bg | x) and what it decodes to."""

    z_bg: torch.Tensor  # (B, D)
    image: torch.Tensor  # (B, H, W) the background's mean image in [0, 1]; (B, C, H, W) in colour
    log_weight: torch.Tensor  # (B,) log p(z_bg) - log q(z_bg | x)


class LearnedBackground(nn.Module):
    """z_bg (``background_dim`` dimensions) with its encoder and decoder (see the module)."""

    def __init__(self, config: ModelConfig, dim: int | None = None) -> None:
        super().__init__()
        self.size, self.dim, self.channels = (
            config.canvas_size,
            config.background_dim if dim is None else dim,
            config.channels,
        )
        self.encoder = nn.Sequential(
            nn.Conv2d(self.channels, 16, 4, 2, 1),
            nn.CELU(),
            nn.Conv2d(16, 32, 4, 2, 1),
            nn.CELU(),
            nn.Conv2d(32, 32, 4, 2, 1),
            nn.CELU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(32 * 16, 2 * self.dim),
        )
        # The basis images and their mean, every channel of each.
        self.decoder = nn.Linear(self.dim, config.image_size)

    def decode(self, z_bg: torch.Tensor) -> torch.Tensor:
        """The background image of ``z_bg`` (B, D): (B, H, W), or (B, C, H, W) in colour."""
        shape = (
            (self.size, self.size) if self.channels == 1 else (self.channels, self.size, self.size)
        )
        return torch.sigmoid(self.decoder(z_bg)).view(-1, *shape)

    def forward(
        self, x: torch.Tensor, generator: Generators = None, sample: bool = True
    ) -> BackgroundDraw:
        """q(z_bg | x) for images ``x`` (B, H, W) or (B, C, H, W): a draw with ``generator``'s
        noise, or its mean without ``sample``."""
        loc, scale = self.encoder(x.unsqueeze(1) if x.dim() == 3 else x).chunk(2, dim=-1)
        scale = nn.functional.softplus(scale) + 1e-4
        z_bg = loc
        if sample:
            z_bg = loc + scale * standard_normal(loc.shape, loc, generator)
        log_weight = (standard_normal_log_prob(z_bg) - normal_log_prob(z_bg, loc, scale)).sum(-1)
        return BackgroundDraw(z_bg=z_bg, image=self.decode(z_bg), log_weight=log_weight)

    def sample(self, n: int, like: torch.Tensor, generator: torch.Generator | None = None):
        """``n`` backgrounds (n, H, W) from the prior."""
        return self.decode(standard_normal((n, self.dim), like, generator))


class SmoothBackground(LearnedBackground):
    """A coarse grid of colours (``background_grid`` a side, every channel), squashed into
    [0, 1] and bilinearly upsampled to the canvas (corners on the corners). z_bg ~ N(0, I) holds
    the image's mean colour (C logits) and each grid colour's departure from it, scaled by
    ``background_detail``: a prior that lets the grid follow a smooth field but makes it dear
    for one cell to take an object's colour.

    Such a field holds any level, any linear gradient (bilinear interpolation keeps them
    exactly) and any smooth colour field at the grid's scale, but nothing sharp. The coloured
    sprites' backgrounds are of this kind. The linear basis of ``LearnedBackground`` learned
    their levels but after 1,000 steps still left their colours to the objects, so every step
    found one; the grid with independent N(0, 1) colours painted small objects as blurred
    blobs and objects were missed (results/clutter/findings.md).

    With ``background_smoothness`` > 0 the departures are correlated over that many pixels
    (``grid_correlation``): a finer grid can then hold broad patches of colour that a 4x4 grid
    cannot, while a blob of an object's size stays dear."""

    def __init__(self, config: ModelConfig) -> None:
        grid, channels = config.background_grid, config.channels
        super().__init__(config, dim=channels + channels * grid**2)
        self.grid, self.detail = grid, config.background_detail
        # How much of the detail training lets in (``TrainConfig.background_detail_steps``);
        # all of it once trained, and wherever a model is loaded.
        self.detail_fraction = 1.0
        del self.decoder  # no learned decoder: the grid is the image
        self.correlated = config.background_smoothness > 0
        if self.correlated:
            # Fixed by the config, so not saved with the weights.
            factor = grid_correlation(grid, self.size, config.background_smoothness)
            self.register_buffer("correlation", factor, persistent=False)

    def decode(self, z_bg: torch.Tensor) -> torch.Tensor:
        mean = z_bg[:, : self.channels, None, None]
        detail = z_bg[:, self.channels :]
        if self.correlated:
            detail = detail.view(-1, self.channels, self.grid**2) @ self.correlation.T
        detail = detail.reshape(-1, self.channels, self.grid, self.grid)
        colours = torch.sigmoid(mean + self.detail * self.detail_fraction * detail)
        image = nn.functional.interpolate(
            colours, size=(self.size, self.size), mode="bilinear", align_corners=True
        )
        return image.squeeze(1) if self.channels == 1 else image


def grid_correlation(grid: int, canvas: int, length: float) -> torch.Tensor:
    """A lower-triangular factor L (grid², grid²) of the squared-exponential correlation, with
    length scale ``length`` pixels, between the points of a ``grid``-sided grid whose corners lie
    on the canvas's corners: departures L @ z with z ~ N(0, I) are a smooth field whose every
    point still has unit variance. A field that varies over a few grid points is a few
    directions of z and costs little KL; one that rises and falls within ``length`` needs many
    and costs much."""
    points = torch.linspace(0, canvas - 1, grid, dtype=torch.float64)
    y, x = torch.meshgrid(points, points, indexing="ij")
    where = torch.stack([y.flatten(), x.flatten()], dim=1)
    squared = ((where[:, None] - where[None]) ** 2).sum(-1)
    # The jitter keeps the factorisation stable where neighbouring points correlate ~1.
    kernel = torch.exp(-squared / (2 * length**2)) + 1e-4 * torch.eye(grid**2, dtype=torch.float64)
    return torch.linalg.cholesky(kernel).float()


def over(objects: torch.Tensor, coverage: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The objects' image (premultiplied: their colour times their coverage) drawn over
    ``background``, which shows through by one minus the objects' ``coverage`` in [0, 1]
    (``ObjectModel.coverage``: for grey objects their ink clipped to [0, 1]).

    Grey objects' ink is left unclipped among themselves, as on the paper's black canvas: a
    faint ghost under a redrawn digit then overpaints it and costs likelihood. Clipping the ink
    too (a capped composite) let DAIR keep such ghosts for free over the background (one seed of
    three in results/clutter/findings.md)."""
    return objects + (1 - coverage) * background


def build_background(config: ModelConfig) -> LearnedBackground | None:
    """The background ``config.background`` names, or None for the paper's black canvas."""
    kinds = {"learned": LearnedBackground, "smooth": SmoothBackground}
    return kinds[config.background](config) if config.background in kinds else None
