"""Spatially parallel inference: every cell of a grid proposes at most one object at once.

AIR's recurrent core attends to one object per step, so a scene of n objects costs n steps and
the network must learn to count. The systems after it (SPAIR, Crawford & Pineau 2019; SPACE,
Lin et al. 2020) cut the image into a grid of cells and let a convolutional network propose, for
every cell at once, whether an object is centred there and where and what it is. This module is
that scheme over AIR's own generative model:

  * the object model is AIR's (``GlimpseObjects``): z_what decoded to a glimpse that the spatial
    transformer writes into the window z_where, the objects summed, p(x | z) the same pixel
    likelihood;
  * the prior gives every cell its own z_pres ~ Bernoulli(rho) and the object's latents:
    z_where as a cell-local u ~ N(0, I) (the window's centre within ``cell_reach`` cells of the
    cell's centre, its side the object model's prior size times exp(sigma * u)), z_what ~ N(0, I);
  * q is one convolutional pass (``CellNetwork``) giving, per cell, q(z_pres) and q(u); the
    glimpse read at the drawn window is encoded to q(z_what) by the object model's encoder.

Cells are independent given the image, in q as in p, so nothing is sequential: a step does the
same work for 1 object or 30, and a model reads an image of any size at the scale it was trained
on (the grid grows with the image). What keeps two cells from claiming one digit is the
objective (``airscene.objective.cellwise_objective``): it scores each cell's z_pres exactly,
both values, against the other cells as drawn, so a cell whose object the others already
explain pays for its object's prior and, under the normal likelihood, for drawing the ink twice
(the Bernoulli's mean is clamped at 1, so ink drawn twice costs it little).

An object is drawn into a patch around its cell (it cannot reach farther), so drawing every
cell's object and scoring it costs a patch per cell, not a canvas per cell.

``GridAIR`` draws the paper's grey glimpses, summed. Coloured objects with masks over a
background are the same scheme with another composite and a background: ``MaskedGridAIR``
(``airscene.masked_grid``), built through the hooks marked here as such (``cell_inputs``,
``reconstruction``, ``draw_scenes``, ``segmentation``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from airscene.background import BackgroundDraw
from airscene.config import ConfigError, GlimpseConfig, ModelConfig, RunConfig, TrainConfig
from airscene.densities import bernoulli_log_prob, normal_log_prob, standard_normal_log_prob
from airscene.errors import AirsceneError
from airscene.model import Inference, PriorSample, draw_counts, pixel_log_likelihood
from airscene.objects import GlimpseObjects
from airscene.registry import build_objects
from airscene.rows import standard_normal, uniform
from airscene.spatial import read_glimpse, read_grid


class CellNetwork(nn.Module):
    """Image (B, ``inputs``, H, W), H and W multiples of ``cell_size`` -> per cell (B, 1 + 2d,
    H/c, W/c): the z_pres logit, q(u)'s loc (d) and q(u)'s scale before its bound (d), d =
    ``where_dims``; the first convolution ``first_width`` channels wide, each next one twice.

    Strided convolutions bring the image to one feature vector per cell (a cell of 8 px: three
    halvings; of 6 px: a halving and a third), then two 3x3 convolutions let each cell see its
    neighbours' features: a digit between two cells is visible to both, and each can tell
    whether the other is better placed."""

    def __init__(
        self,
        cell_size: int,
        channels: int,
        where_dims: int = 3,
        inputs: int = 1,
        first_width: int = 16,
    ) -> None:
        super().__init__()
        strides = _strides(cell_size)
        layers: list[nn.Module] = []
        width = [inputs, *[min(channels, first_width * 2**i) for i in range(len(strides))]]
        width[-1] = channels
        for i, stride in enumerate(strides):
            kernel, padding = (4, 1) if stride == 2 else (stride, 0)
            layers += [nn.Conv2d(width[i], width[i + 1], kernel, stride, padding), nn.CELU()]
        for _ in range(2):
            layers += [nn.Conv2d(channels, channels, 3, 1, 1), nn.CELU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1 + 2 * where_dims, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


def grid_schedule(train: TrainConfig, **fields) -> TrainConfig:
    """The grid's training schedule over a family's ``train``: 32 images a step, rho annealed
    from 1/2 over the first 1,000 steps while the objects' KL warms up (without both, every cell
    switches off in the first hundred steps), and ``fields`` as each recipe sets them."""
    return dataclasses.replace(
        train,
        batch_size=32,
        z_pres_prior_start=0.5,
        z_pres_prior_anneal_steps=1_000,
        kl_warmup_steps=1_000,
        **fields,
    )


def _strides(cell_size: int) -> list[int]:
    """The strides whose product is ``cell_size``: halvings, then one odd factor if any."""
    strides, rest = [], cell_size
    while rest % 2 == 0 and rest > 1:
        strides.append(2)
        rest //= 2
    if rest > 1:
        strides.append(rest)
    return strides


@dataclass
class CellProposals:
    """Every cell's object, as q proposes it, before z_pres is drawn; K = cells per image."""

    logits: torch.Tensor  # (B, K) q's z_pres logits
    u: torch.Tensor  # (B, K, d) the cell-local z_where: log side, x, y offsets (, aspect)
    z_where: torch.Tensor  # (B, K, 3 or 4) the window (scale, x, y (, height)) on the padded canvas
    z_what: torch.Tensor  # (B, K, D)
    log_q: torch.Tensor  # (B, K) log q(u, z_what)
    log_p: torch.Tensor  # (B, K) log p(u, z_what)
    log_q_where: torch.Tensor  # (B, K) log q(u), the part of log_q that z_what does not change
    patches: torch.Tensor  # (B, K, P * P) each object drawn alone in its cell's patch (its
    # C + 1 planes, (B, K, (C + 1) * P * P), for masked objects)
    padded: int  # side of the padded canvas the cells tile
    background: torch.Tensor | None = None  # (B, C, H, W) the background drawn under them
    background_log_weight: torch.Tensor | None = None  # (B,) its log p(z_bg) - log q(z_bg | x)


class GridAIR(nn.Module):
    """AIR's generative model with spatially parallel inference: ``model(x)`` on images ``x``
    (B, H, H) of any side returns the same ``Inference`` as the sequential model, with one
    'step' per cell (row-major)."""

    estimator = "cellwise"  # each cell's z_pres summed out (``objective.cellwise_objective``)
    reads_any_size = True  # convolutional: the grid grows with the image
    found_order = "grid cell, row by row"  # cells have no order of finding
    # The window's side may grow to exp(patch_sigmas sigma) of the prior's before a patch clips
    # it; the cell network's first convolution is this wide.
    patch_sigmas = 2.0
    network_width = 16

    def __init__(self, config: ModelConfig, objects: GlimpseObjects | None = None) -> None:
        super().__init__()
        self.config = config
        self.objects = build_objects(config) if objects is None else objects
        if not isinstance(self.objects, GlimpseObjects):
            raise AirsceneError(
                f"inference 'grid' needs the 2D glimpse objects; objects "
                f"{config.objects.kind!r} infer with the sequential loop only"
            )
        own = self.objects.inference_schemes.get("grid")
        if own is not None and type(self) is GridAIR:  # drawn otherwise than summed grey ink
            raise AirsceneError(
                f"objects {config.objects.kind!r} are inferred on the grid by {own}, not GridAIR"
            )
        objects_config = self.objects.config
        self.cell_size, self.reach = config.cell_size, config.cell_reach
        # The window's side in pixels at the prior's mean, and the spread of its log.
        self.side = objects_config.z_where_prior_loc[0] * config.canvas_size
        self.log_side_sd = (
            objects_config.z_where_prior_scale[0] / objects_config.z_where_prior_loc[0]
        )
        # Rectangular windows: u's fourth value narrows the width (never wider than tall, so a
        # window fits the patch a square of its height fits).
        self.aspect_spread = config.grid_aspect_spread
        self.where_dims = 4 if self.aspect_spread > 0 else 3
        half = self.reach * self.cell_size + 0.5 * self.side * math.exp(
            self.patch_sigmas * self.log_side_sd
        )
        self.margin = max(0, math.ceil(half - self.cell_size / 2))
        self.patch = self.cell_size + 2 * self.margin
        self.network = CellNetwork(
            self.cell_size,
            config.grid_channels,
            self.where_dims,
            self.network_inputs(config),
            self.network_width,
        )
        with torch.no_grad():  # start near the prior: few cells on, windows at the cell centres
            self.network.head.weight.mul_(0.1)
            self.network.head.bias.zero_()
            self.network.head.bias[0] = config.grid_presence_bias
            self.network.head.bias[1 + self.where_dims :] = -2.0

    @staticmethod
    def recipe(run: RunConfig) -> RunConfig:
        """A scene family's run (``SceneFamily.preset``) as the grid trains it.

        The window keeps the family's prior size (a digit's ink, as the sequential presets
        fit it) with a tight spread (10% of its side), so that one window cannot hold two
        touching digits, and the decoder draws it in a glimpse of 14 px; cells of 6 px keep two
        digit centres out of one cell at the scattered-digits overlap; rho = 0.01 per cell.
        Early in training, rho is annealed from 1/2 and the objects' KL warmed up, so glimpses
        learn to draw digits before an object must pay for itself (without both, every cell
        switches off in the first hundred steps). Pixels are scored under the Bernoulli
        likelihood for the last sixth of the run only (``normal_likelihood_steps``: the normal
        before it): its dear undrawn ink makes a thin digit beside another worth its own
        object once glimpses draw digits, while from the start it counted no better than the
        normal. What each choice measured: results/many-objects/findings.md."""
        objects = run.model.objects
        if not isinstance(objects, GlimpseConfig):
            raise ConfigError(
                f"inference grid needs 2D glimpse objects (glimpse or masked); objects "
                f"{objects.kind!r} are inferred by the sequential loop only"
            )
        scale = objects.z_where_prior_loc[0]
        objects = dataclasses.replace(
            objects,
            glimpse_size=14,
            z_what_dim=16,
            decoder_output_bias=-4.0,
            z_where_prior_loc=(scale, 0.0, 0.0),
            z_where_prior_scale=(0.1 * scale, 1.0, 1.0),
        )
        model = dataclasses.replace(
            run.model,
            inference="grid",
            cell_size=6,
            z_pres_prior=0.01,
            grid_refine_passes=4,
            likelihood="bernoulli",
            objects=objects,
        )
        train = grid_schedule(
            run.train,
            steps=18_000,
            normal_likelihood_steps=15_000,
            eval_every=2_500,
        )
        return dataclasses.replace(run, model=model, train=train)

    def cells_inside(self, side: int) -> int:
        """Cells per row (and column) whose centre lies inside an image of ``side`` px."""
        return math.ceil(side / self.cell_size - 0.5)

    @property
    def most_objects(self) -> int:
        """The most objects a scene of its canvas can hold: one per cell centred in it."""
        return self.cells_inside(self.config.canvas_size) ** 2

    # -- generative model -------------------------------------------------------------------

    def log_likelihood(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """log p(x | z) summed over pixels, (B,)."""
        return pixel_log_likelihood(self.config, x, mean).flatten(1).sum(1)

    def log_likelihood_beyond(self, x: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        """log p(x | z), (B,), of images ``x`` (B, H, H) seen as windows onto a black plane,
        given ``whole`` (B, H', H'), the mean image with the ring of ``margin`` px (and the
        padding) that objects can reach beyond the image: the image's pixels as usual, plus,
        for the pixels beyond it, log p(black | whole) - log p(black | nothing), which is 0
        where nothing is drawn there and penalises ink drawn beyond the edge. So the ELBO
        equals the sequential model's convention wherever objects stay inside, and the
        per-cell patches of the training objective score exactly its differences."""
        side, margin = x.shape[-1], self.margin
        beyond = whole.shape[-1] - side - margin
        seen = F.pad(x, (margin, beyond, margin, beyond))
        inside = torch.zeros_like(whole)
        inside[:, margin : margin + side, margin : margin + side] = 1.0
        log_p = pixel_log_likelihood(self.config, seen, whole)
        empty = pixel_log_likelihood(self.config, seen, torch.zeros_like(whole))
        return (log_p - (1 - inside) * empty).flatten(1).sum(1)

    def log_likelihood_patches(self, seen: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """log p(x | z) of the pixels of each cell's patch, (B, K), from the image's patches
        ``seen`` and the canvas's ``mean`` patches (B, K, P * P) (the image padded with black:
        differences of these are differences of ``log_likelihood_beyond``)."""
        return pixel_log_likelihood(self.config, seen, self.objects.canvas_image(mean)).sum(-1)

    def enumerate_choices(self, x, inference, log_likelihood=None):
        """The glimpse objects have no discrete latent to enumerate."""
        return None

    # -- inference --------------------------------------------------------------------------

    def padded_side(self, side: int) -> int:
        """The side of the canvas the cells tile for an image of ``side`` pixels."""
        return -(-side // self.cell_size) * self.cell_size

    def propose(
        self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> CellProposals:
        """Every cell's q for images ``x`` (B, H, H): z_pres logits, and an object drawn from q
        with ``generator``'s noise (q's mode without ``sample``)."""
        batch, side = x.shape[0], x.shape[-1]
        if x.shape[-2] != side:
            raise ValueError(f"grid inference reads square images, got {tuple(x.shape[-2:])}")
        padded = self.padded_side(side)
        canvas, read, background = self.cell_inputs(x, padded, generator, sample)
        out = self.network(read)  # (B, 1 + 2d, h, w)
        rows, cols = out.shape[-2:]
        out = out.permute(0, 2, 3, 1).reshape(batch, rows * cols, out.shape[1])
        dims = self.where_dims
        logits, u_loc = out[..., 0], out[..., 1 : 1 + dims]
        u_scale = 0.5 * torch.sigmoid(out[..., 1 + dims :]) + 1e-3
        u = u_loc + u_scale * standard_normal(u_loc.shape, u_loc, generator) if sample else u_loc
        cells = rows * cols
        # The window: size and centre in pixels; its offset from the cell's centre.
        size, offset, centre = self.window(u, cols)
        z_where = self.window_z_where(size, centre, padded)
        glimpse_size = self.objects.config.glimpse_size
        # Every cell's glimpse of an image in one sampling grid (B, K*G, G): no copy of the
        # image per cell.
        where = read_grid(z_where.flatten(0, 1), glimpse_size).view(
            batch, cells * glimpse_size, glimpse_size, 2
        )
        glimpse = F.grid_sample(canvas, where, align_corners=False)  # (B, C, K*G, G)
        glimpse = glimpse.view(batch, -1, cells, glimpse_size * glimpse_size).transpose(1, 2)
        what_loc, what_scale = self.objects.encoder(glimpse.reshape(batch * cells, -1))
        z_what = what_loc
        if sample:
            z_what = what_loc + what_scale * standard_normal(what_loc.shape, what_loc, generator)
        in_patch = self.in_patch(size, offset)
        patches = self.objects.write(z_what, in_patch.flatten(0, 1), self.patch)
        log_q_where = normal_log_prob(u, u_loc, u_scale).sum(-1)
        log_p_where = standard_normal_log_prob(u).sum(-1)
        log_q = log_q_where + normal_log_prob(z_what, what_loc, what_scale).sum(-1).view(
            batch, cells
        )
        log_p = log_p_where + standard_normal_log_prob(z_what).sum(-1).view(batch, cells)
        return CellProposals(
            logits=logits,
            u=u,
            z_where=z_where,
            z_what=z_what.view(batch, cells, -1),
            log_q=log_q,
            log_p=log_p,
            log_q_where=log_q_where,
            patches=patches.view(batch, cells, -1),
            padded=padded,
            background=None if background is None else background.image,
            background_log_weight=None if background is None else background.log_weight,
        )

    def network_inputs(self, config: ModelConfig) -> int:
        """Channels of what the cell network reads (``cell_inputs``): the grey image."""
        return 1

    def cell_inputs(
        self,
        x: torch.Tensor,
        padded: int,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, BackgroundDraw | None]:
        """Images ``x`` (B, H, H) padded to ``padded`` px as glimpses read them (B, 1, padded,
        padded), what the cell network reads (the same), and the background drawn under them
        (none: the paper's black canvas)."""
        canvas = F.pad(x, (0, padded - x.shape[-1], 0, padded - x.shape[-1])).unsqueeze(1)
        return canvas, canvas, None

    def window(
        self, u: torch.Tensor, per_row: int, cell: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each cell's window from its cell-local ``u`` (B, K, d), the K cells row-major,
        ``per_row`` to a row (or the windows ``u`` (n, d) of the cells ``cell`` (n,)): its width
        and height in pixels (B, K, 2), its centre's offset from the cell's centre (B, K, 2) and
        the centre on the padded canvas (B, K, 2), x then y."""
        size, offset = self.size_and_offset(u)
        if cell is None:
            cell = torch.arange(u.shape[-2], device=u.device)
        centre = torch.stack([cell % per_row, cell // per_row], -1).to(u.dtype)
        return size, offset, (centre + 0.5) * self.cell_size + offset

    def size_and_offset(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A window's width and height in pixels (..., 2) and its centre's offset from its
        cell's centre (..., 2) from its cell-local ``u`` (..., d)."""
        height = self.side * torch.exp(self.log_side_sd * u[..., 0])
        width = height
        if self.where_dims == 4:
            width = height * torch.exp(-self.aspect_spread * F.softplus(-u[..., 3]))
        offset = self.reach * self.cell_size * torch.tanh(u[..., 1:3])
        return torch.stack([width, height], -1), offset

    def window_z_where(self, size: torch.Tensor, centre: torch.Tensor, canvas: int) -> torch.Tensor:
        """z_where (..., 3) (square windows; (..., 4) with rectangular ones) of the window of
        width and height ``size`` (..., 2) centred at ``centre`` (..., 2) px on a canvas of
        ``canvas`` px."""
        return self._z_where(size, centre / canvas * 2 - 1, canvas)

    def in_patch(self, size: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """The window z_where (..., 3 or 4) of width and height ``size`` (..., 2) and offset
        ``offset`` (..., 2) from its cell's centre, in its cell's patch (centred there)."""
        return self._z_where(size, offset / (self.patch / 2), self.patch)

    def _z_where(self, size: torch.Tensor, position: torch.Tensor, canvas: int) -> torch.Tensor:
        """z_where of a window of ``size`` (..., 2) px at the normalised ``position`` (..., 2)
        on a canvas of ``canvas`` px: (s, x, y), with the height t fourth for rectangles."""
        z_where = torch.cat([size[..., :1] / canvas, position], -1)
        if self.where_dims == 4:
            z_where = torch.cat([z_where, size[..., 1:] / canvas], -1)
        return z_where

    def shifted(self, u: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
        """The cell-local ``u`` (..., d) of the window ``u`` moved by ``dx, dy`` px (kept just
        inside the reach of its cell); its size kept."""
        reach = self.reach * self.cell_size
        step = u.new_tensor([dx, dy])
        offset = reach * torch.tanh(u[..., 1:3]) + step
        inside = torch.atanh((offset / reach).clamp(-1 + 1e-3, 1 - 1e-3))
        # The axis not moved keeps its u exactly (the clamp would pull a far one in).
        moved = torch.where(step != 0, inside, u[..., 1:3])
        return torch.cat([u[..., :1], moved, u[..., 3:]], -1)

    def paint(
        self, patches: torch.Tensor, z_pres: torch.Tensor, padded: int, ring: bool = False
    ) -> torch.Tensor:
        """The canvas (B, padded, padded): every present cell's patch added in place; with
        ``ring``, with the ``margin`` px around it that patches reach (B, padded + 2m, ...).
        Patches of several planes (masked objects') give (B, planes, padded, padded)."""
        side = padded + 2 * self.margin
        canvas = F.fold(
            (z_pres.unsqueeze(-1) * patches).transpose(1, 2),
            (side, side),
            self.patch,
            stride=self.cell_size,
        )
        if canvas.shape[1] == 1:
            canvas = canvas[:, 0]
        if ring:
            return canvas
        return canvas[..., self.margin : side - self.margin, self.margin : side - self.margin]

    def ring_image(self, x: torch.Tensor, padded: int) -> torch.Tensor:
        """Images ``x`` (B, H, H) laid out as ``paint(..., ring=True)`` lays out the canvas:
        padded to ``padded`` px, with ``margin`` px of black around."""
        pad = padded - x.shape[-1]
        return F.pad(x, (self.margin, pad + self.margin, self.margin, pad + self.margin))

    def cell_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Each cell's patch of ``images`` (B, padded, padded), (B, K, P * P); of images of
        several planes (B, C, padded, padded), (B, K, C * P * P), plane by plane."""
        if images.dim() == 3:
            images = images.unsqueeze(1)
        padded = F.pad(images, (self.margin,) * 4)
        return F.unfold(padded, self.patch, stride=self.cell_size).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
        z_pres_prior: float | None = None,
    ) -> Inference:
        """Inference on ``x`` (B, H, H): with ``sample`` a draw of q (``generator``'s noise),
        without it q's mode (z_pres = 1 where q(z_pres) > 1/2). One entry per cell."""
        if sample and isinstance(generator, list):
            raise ValueError("grid inference draws a minibatch's noise from one generator")
        cells = self.propose(x, generator, sample)
        probs = torch.sigmoid(cells.logits)
        if sample:
            z_pres = (uniform(probs.shape, probs, generator) < probs).to(x.dtype)
        else:
            z_pres = (probs > 0.5).to(x.dtype)
            if self.config.grid_refine_passes:
                cells, z_pres = self.refine(
                    x, cells, z_pres, z_pres_prior, self.config.grid_refine_passes
                )
        return self.inference_of(x, cells, z_pres, z_pres_prior)

    def scene_score(
        self,
        x: torch.Tensor,
        cells: CellProposals,
        z_pres: torch.Tensor,
        z_pres_prior: float | None = None,
    ) -> torch.Tensor:
        """The ELBO of each scene (B,) with its z_pres held as given and its objects as ``cells``
        holds them: log p(x | z) + log p(z_pres) + log p(u, z_what) - log q(u, z_what) of the
        present cells. At q's mode this is the score ``refine`` climbs."""
        painted = self.paint(cells.patches, z_pres, cells.padded, True)
        objects = (z_pres * (cells.log_p - cells.log_q)).sum(-1)
        return self.score_painted(x, painted, z_pres, objects, z_pres_prior)

    def score_painted(
        self,
        x: torch.Tensor,
        painted: torch.Tensor,
        z_pres: torch.Tensor,
        objects: torch.Tensor,
        z_pres_prior: float | None = None,
    ) -> torch.Tensor:
        """``scene_score`` from the canvas ``painted`` (``paint(..., ring=True)`` of the
        present objects) and the present objects' summed log p - log q ``objects`` (B,)."""
        drawn = self.objects.canvas_image(painted)
        prior = self.z_pres_log_prior(z_pres, z_pres_prior)
        return self.log_likelihood_beyond(x, drawn) + prior + objects

    def z_pres_log_prior(self, z_pres: torch.Tensor, z_pres_prior: float | None = None):
        """log p(z_pres) of each scene's cells (B,): Bernoulli(rho) each, rho the model's or
        ``z_pres_prior``."""
        rho = self.config.z_pres_prior if z_pres_prior is None else z_pres_prior
        return torch.where(z_pres > 0, math.log(rho), math.log1p(-rho)).sum(-1)

    def patch_log_likelihoods(
        self, x: torch.Tensor, cells: CellProposals, z_pres: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell (B, K), log p(x | z) of its patch with its object drawn and without it,
        the other cells as ``z_pres`` says (their drawing detached): the two values of its
        z_pres, which differ only there. The first keeps the gradient of the cell's own
        drawing; the second has none."""
        with torch.no_grad():
            pad = cells.padded - x.shape[-1]
            seen = self.cell_patches(F.pad(x, (0, pad, 0, pad)))
            others = self.cell_patches(self.paint(cells.patches, z_pres, cells.padded))
            others = others - z_pres.unsqueeze(-1) * cells.patches
            absent = self.log_likelihood_patches(seen, others)
        return self.log_likelihood_patches(seen, others + cells.patches), absent

    def patch_pixels(self, cell: torch.Tensor, per_row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the patches of cells ``cell`` (n,) lie on a canvas laid out as ``paint(...,
        ring=True)`` lays it out: row indices (n, P, 1) and column indices (n, 1, P)."""
        span = torch.arange(self.patch, device=cell.device)
        ys = ((cell // per_row) * self.cell_size)[:, None, None] + span[None, :, None]
        xs = ((cell % per_row) * self.cell_size)[:, None, None] + span[None, None, :]
        return ys, xs

    def covered(
        self, present: torch.Tensor, centre: torch.Tensor, size: torch.Tensor, per_row: int
    ) -> torch.Tensor:
        """Per cell (B, K), whether its window's centre ``centre`` (B, K, 2) lies inside the
        window (centre, width and height ``size`` (B, K, 2)) of another cell that is
        ``present``. A window lies inside its cell's patch (one taller than ``patch_sigmas``
        spreads is clipped there), so only cells whose patches share pixels are compared."""
        batch = present.shape[0]
        reach = (self.patch - 1) // self.cell_size
        grid = lambda t: t.reshape(batch, per_row, per_row, -1).permute(0, 3, 1, 2)  # noqa: E731
        far = 4.0 * self.patch * per_row  # a centre no window reaches
        others = F.pad(grid(torch.cat([centre, size], -1)), (reach,) * 4, value=far)
        on = F.pad(grid(present.unsqueeze(-1).to(centre.dtype)), (reach,) * 4)
        mine = grid(centre)
        found = torch.zeros(batch, 1, per_row, per_row, dtype=torch.bool, device=centre.device)
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                if dy == 0 and dx == 0:
                    continue
                rows = slice(reach + dy, reach + dy + per_row)
                cols = slice(reach + dx, reach + dx + per_row)
                theirs = others[:, :, rows, cols]
                inside = ((mine - theirs[:, :2]).abs() < theirs[:, 2:] / 2).all(1, keepdim=True)
                found |= inside & (on[:, :, rows, cols] > 0)
        return found.flatten(1)

    def read_again(
        self,
        ring: torch.Tensor,
        painted: torch.Tensor,
        image: torch.Tensor,
        row: torch.Tensor,
        cell: torch.Tensor,
        cells: CellProposals,
        now: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The objects of cells ``cell`` of images ``image`` (each (n,)), present, read again
        at q's mode from their patch of ``ring[image]`` (the image laid out as ``ring_image``)
        less what the others draw there, ``painted[row]`` (``paint(..., ring=True)``, the
        object itself included, as ``now`` holds it: its ``_READ_FIELDS``, by default as
        ``cells`` holds them). Its window is read again too: of the window where it is and
        that window moved by ``_WINDOW_SHIFT`` px along x or y, the one whose object best
        explains what the others leave (the patch's likelihood plus log p - log q of the
        object; q(u)'s mean moves to the chosen window). A window centred between two
        touching digits, drawing both, moves back onto its own once the other's cell draws
        the other. Returns the new values of the ``_READ_FIELDS``, each (n, ...)."""
        per_row = cells.padded // self.cell_size
        size = self.patch
        if now is None:
            now = _fields_at(cells, image, cell)
        ys, xs = self.patch_pixels(cell, per_row)
        seen = ring[image[:, None, None], ys, xs]
        others = painted[row[:, None, None], ys, xs] - now["patches"].view(-1, size, size)
        unexplained = seen - others
        where_now = now["u"]
        step = _WINDOW_SHIFT
        shifts = ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step))
        u = torch.stack([where_now, *[self.shifted(where_now, *d) for d in shifts]], 1)
        n, tried = u.shape[:2]
        size_px, offset = self.size_and_offset(u)
        in_patch = self.in_patch(size_px, offset)
        each = lambda t: t.unsqueeze(1).expand(n, tried, size, size).reshape(-1, size, size)  # noqa: E731
        glimpse = read_glimpse(
            each(unexplained), in_patch.flatten(0, 1), self.objects.config.glimpse_size
        )
        loc, scale = self.objects.encoder(glimpse.flatten(1))
        drawn = self.objects.write(loc, in_patch.flatten(0, 1), size)
        # q(u)'s mean moved to the chosen window, its spread kept.
        log_q_where = now["log_q_where"].unsqueeze(1).expand(n, tried)
        log_p_where = standard_normal_log_prob(u).sum(-1)
        log_q = log_q_where + normal_log_prob(loc, loc, scale).sum(-1).view(n, tried)
        log_p = log_p_where + standard_normal_log_prob(loc).sum(-1).view(n, tried)
        # The patch's log p(x | z) with the others' drawing and this one: exact for any
        # composite and likelihood (the cap applies to the sum, not to the object alone).
        fit = pixel_log_likelihood(
            self.config, each(seen), self.objects.canvas_image(each(others) + drawn)
        )
        best = (fit.flatten(1).sum(1).view(n, tried) + log_p - log_q).argmax(1)
        pick = torch.arange(n, device=u.device), best
        chosen_size, _, centre = self.window(u[pick], per_row, cell)
        return {
            "u": u[pick],
            "z_where": self.window_z_where(chosen_size, centre, cells.padded),
            "z_what": loc.view(n, tried, -1)[pick],
            "patches": drawn.view(n, tried, -1)[pick],
            "log_q": log_q[pick],
            "log_p": log_p[pick],
            "log_q_where": log_q_where[pick],
        }

    def explain_away(
        self,
        ring: torch.Tensor,
        cells: CellProposals,
        z_pres: torch.Tensor,
        which: torch.Tensor,
        rounds: int = 1,
    ) -> CellProposals:
        """``cells`` with each present cell in ``which`` (B, K) read again (``read_again``:
        its z_what and its window), at q's mode, from its patch of the image less what the
        other present cells draw there (``GlimpseObjects.explain_away``, in a cell's patch),
        ``rounds`` times, all at once in each: an object that drew a neighbour's digit as well
        as its own reads its own alone once the neighbour's cell draws that digit. ``ring`` is
        the image as ``paint(..., ring=True)`` lays out the canvas: padded, with the
        ``margin`` px around it."""
        image, cell = (which & (z_pres > 0)).nonzero(as_tuple=True)
        if len(image) == 0:
            return cells
        for _ in range(rounds):
            painted = self.paint(cells.patches, z_pres, cells.padded, ring=True)
            read = self.read_again(ring, painted, image, image, cell, cells)
            cells = _read_into(cells, image, cell, read)
        return cells

    @torch.no_grad()
    def refine(
        self,
        x: torch.Tensor,
        cells: CellProposals,
        z_pres: torch.Tensor,
        z_pres_prior: float | None,
        passes: int,
    ) -> tuple[CellProposals, torch.Tensor]:
        """q's mode improved by a search on the scene's ELBO (``scene_score``): in each of
        ``passes``, each of the ``_REFINE_CANDIDATES`` cells that are off and most likely under
        q is tried on, with its own proposal, and each of as many present cells whose centre
        lies in another present object's window (least likely first) is tried off; with each
        try, the tried cell, if on, and the present objects whose patches share pixels with
        its patch are read again from what the others leave, ``_READ_ROUNDS`` times
        (``read_again``: z_what, and the window moved a pixel where that explains more). A try
        that gains, and gains most in its neighbourhood, is made with its neighbours so read;
        far-apart tries are made in the same pass, and where their combined ELBO is below the
        best single try's, that try alone is made, so the score never falls. A cell switched
        off goes back to its own proposal.

        The switch on undoes the grid's typical miss: a thin digit touching a neighbour, drawn
        by the neighbour's object (its window holds both, often centred between them), its own
        cell off because switching it on alone would draw it twice; read again, the
        neighbour's window moves back onto its own digit. The switch off undoes a digit claimed by two cells.
        Only a covered object may be switched off: under the model's ELBO a lone thin digit's
        object (a "1") often costs more than the ink it explains, and removing any object
        measured worse (results/many-objects/findings.md)."""
        batch, count = z_pres.shape
        tries = min(_REFINE_CANDIDATES, count)
        # Each pass holds a copy of the canvas per try (``2 * tries`` per image), and the
        # patches of the neighbours each try reads again (five windows each; not counted in
        # the bound, as a neighbourhood holds a few objects): refine a few images at a time.
        side = cells.padded + 2 * self.margin
        most = max(1, _REFINE_VALUES // (2 * tries * side * side))
        if batch > most:
            parts = self.refine_in_parts(x, cells, z_pres, z_pres_prior, passes, most)
            return _concatenate([c for c, _ in parts]), torch.cat([z for _, z in parts])
        rows = cells.padded // self.cell_size
        reach = (self.patch - 1) // self.cell_size  # cells this far apart share patch pixels
        ring = self.ring_image(x, cells.padded)
        index = torch.arange(count, device=x.device)
        row, col = index // rows, index % rows
        centred = (row < self.cells_inside(x.shape[-1])) & (col < self.cells_inside(x.shape[-1]))
        proposed = cells  # what a cell switched off goes back to
        for _ in range(passes):
            size, _, centre = self.window(cells.u, rows)
            painted = self.paint(cells.patches, z_pres, cells.padded, ring=True)
            term = cells.log_p - cells.log_q
            objects = (z_pres * term).sum(-1)
            score = self.score_painted(x, painted, z_pres, objects, z_pres_prior)
            present = z_pres > 0
            addable = ~present & centred
            key = torch.where(addable, cells.logits, torch.full_like(cells.logits, -math.inf))
            adds = key.topk(tries, dim=1).indices  # (B, M)
            valid = addable.gather(1, adds)
            # Switched off may be only an object whose centre lies in another's window.
            covered = present & self.covered(present, centre, size, rows)
            key = torch.where(covered, -cells.logits, torch.full_like(cells.logits, -math.inf))
            removes = key.topk(tries, dim=1).indices
            moves = torch.cat([adds, removes], 1)
            valid = torch.cat([valid, covered.gather(1, removes)], 1)
            # Every valid try as its own scene, T rows: the canvas painted once, and each try's
            # changes (its cell, its neighbours read again) placed on a copy of it.
            image, slot = valid.nonzero(as_tuple=True)
            if len(image) == 0:
                break
            move = moves[image, slot]
            trial = torch.arange(len(image), device=x.device)
            on = F.one_hot(move, count).to(torch.bool)  # (T, K)
            near = ((row - (move // rows).unsqueeze(-1)).abs() <= reach) & (
                (col - (move % rows).unsqueeze(-1)).abs() <= reach
            )
            tried_z = torch.where(on, 1 - z_pres[image], z_pres[image])
            sign = tried_z[trial, move] - z_pres[image, move]  # +1 switched on, -1 off
            canvas = painted[image]
            ys, xs = self.patch_pixels(move, rows)
            canvas.index_put_(
                (trial[:, None, None], ys, xs),
                (sign.unsqueeze(-1) * cells.patches[image, move]).view(-1, self.patch, self.patch),
                accumulate=True,
            )
            # The tried cell, if on, and its present neighbours are read again, all at once,
            # ``_READ_ROUNDS`` times, each from what the others leave on the try's canvas.
            pair, neighbour = (near & (tried_z > 0)).nonzero(as_tuple=True)
            owner = image[pair]
            ys, xs = self.patch_pixels(neighbour, rows)
            read = _fields_at(cells, owner, neighbour)
            for _ in range(_READ_ROUNDS):
                drawn = read["patches"]
                read = self.read_again(ring, canvas, owner, pair, neighbour, cells, read)
                canvas.index_put_(
                    (pair[:, None, None], ys, xs),
                    (read["patches"] - drawn).view(-1, self.patch, self.patch),
                    accumulate=True,
                )
            change = read["log_p"] - read["log_q"] - term[owner, neighbour]
            tried_objects = objects[image] + sign * term[image, move]
            tried_objects = tried_objects.index_add(0, pair, change)
            tried_score = self.score_painted(x[image], canvas, tried_z, tried_objects, z_pres_prior)
            gain = torch.full(moves.shape, -math.inf, dtype=x.dtype, device=x.device)
            gain[image, slot] = tried_score - score[image]
            trial_of = torch.zeros(moves.shape, dtype=torch.long, device=x.device)
            trial_of[image, slot] = trial
            if not (gain > 0).any():
                break
            # The moves that gain most within their neighbourhood, all at once ...
            grid_gain = torch.full_like(cells.logits, -math.inf).scatter_reduce(
                1, moves, gain, "amax"
            )
            window = dict(kernel_size=2 * reach + 1, stride=1, padding=reach)
            best_near = F.max_pool2d(grid_gain.view(-1, 1, rows, rows), **window).flatten(1)
            chosen = (grid_gain > 0) & (grid_gain >= best_near)
            # Of tries tied in a neighbourhood, only the last in row-major order.
            order = torch.where(chosen, index.to(x.dtype) + 1, torch.zeros_like(grid_gain))
            last = F.max_pool2d(order.view(-1, 1, rows, rows), **window).flatten(1)
            chosen &= order >= last
            together_z = torch.where(chosen, 1 - z_pres, z_pres)
            moved_near = F.max_pool2d(chosen.to(x.dtype).view(-1, 1, rows, rows), **window).flatten(
                1
            )
            which = (moved_near > 0) & (together_z > 0)
            together = self.explain_away(ring, cells, together_z, which, _READ_ROUNDS)
            together_score = self.scene_score(x, together, together_z, z_pres_prior)
            # ... unless the best single move alone scores higher.
            best_gain, best = gain.max(1)
            single = trial_of.gather(1, best.unsqueeze(1)).squeeze(1)
            use_single = (together_score < score + best_gain) & (best_gain > -math.inf)
            is_single = torch.zeros(len(trial), dtype=torch.bool, device=x.device)
            is_single[single[use_single]] = True
            kept = is_single[pair]
            alone = _read_into(
                cells, owner[kept], neighbour[kept], {k: v[kept] for k, v in read.items()}
            )
            moved = _choose(use_single, alone, together)
            moved_z = torch.where(use_single.unsqueeze(1), tried_z[single], together_z)
            gained = best_gain > 0
            moved = _take(moved, proposed, (moved_z == 0) & present)
            cells = _choose(gained, moved, cells)
            z_pres = torch.where(gained.unsqueeze(1), moved_z, z_pres)
        return cells, z_pres

    def refine_in_parts(
        self,
        x: torch.Tensor,
        cells: CellProposals,
        z_pres: torch.Tensor,
        z_pres_prior: float | None,
        passes: int,
        most: int,
    ) -> list[tuple[CellProposals, torch.Tensor]]:
        """``refine`` of images ``x`` ``most`` at a time: each part's cells and z_pres."""
        return [
            self.refine(
                x[i : i + most],
                _index(cells, slice(i, i + most)),
                z_pres[i : i + most],
                z_pres_prior,
                passes,
            )
            for i in range(0, len(x), most)
        ]

    def inference_of(
        self,
        x: torch.Tensor,
        cells: CellProposals,
        z_pres: torch.Tensor,
        z_pres_prior: float | None = None,
    ) -> Inference:
        """The ``Inference`` of proposals ``cells`` with the cells ``z_pres`` (B, K) present."""
        side = x.shape[-1]
        rho = self.config.z_pres_prior if z_pres_prior is None else z_pres_prior
        log_likelihood, canvas, scene = self.reconstruction(x, cells, z_pres)
        log_rho = x.new_tensor([math.log(rho), math.log1p(-rho)])
        # z_where as a window of the image itself (the padding lies beyond its right and bottom).
        ratio = cells.padded / side
        z_where = torch.cat(
            [
                cells.z_where[..., :1] * ratio,
                (cells.z_where[..., 1:3] + 1) * ratio - 1,
                cells.z_where[..., 3:] * ratio,
            ],
            -1,
        )
        return Inference(
            z_pres=z_pres,
            z_pres_prob=torch.sigmoid(cells.logits),
            objects={"z_where": z_where, "z_what": cells.z_what, "cell_where": cells.u},
            feedback=x.new_zeros(*z_pres.shape, 0),
            log_q_z_pres=bernoulli_log_prob(z_pres, cells.logits),
            log_p_z_pres=torch.where(z_pres > 0, log_rho[0], log_rho[1]),
            log_q_object=z_pres * cells.log_q,
            log_p_object=z_pres * cells.log_p,
            log_q_discrete=None,
            log_likelihood=log_likelihood,
            canvas=canvas,
            scene=scene,
            background_log_weight=cells.background_log_weight,
            background=cells.background,
        )

    def reconstruction(
        self, x: torch.Tensor, cells: CellProposals, z_pres: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p(x | z) (B,) of the cells ``z_pres`` present, their image (B, H, H) and the
        object model's canvas it is the image of (for summed grey objects the image itself)."""
        side, margin = x.shape[-1], self.margin
        whole = self.objects.canvas_image(self.paint(cells.patches, z_pres, cells.padded, True))
        canvas = whole[:, margin : margin + side, margin : margin + side]
        return self.log_likelihood_beyond(x, whole), canvas, canvas

    def segmentation(self, x: torch.Tensor, inference: Inference) -> torch.Tensor | None:
        """Per pixel of images ``x``, which object of ``inference`` is seen there (B, H, W), 0
        the background; None where objects have no masks (``ObjectModel.segmentation``)."""
        objects = self.objects.at_canvas(x.shape[-1])
        return objects.segmentation(inference.objects, inference.z_pres)

    # -- sampling ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        z_pres_prior: float | None = None,
        counts: tuple[int, ...] | None = None,
        count_probs: tuple[float, ...] | None = None,
        within_canvas: bool = False,
    ) -> PriorSample:
        """Scenes from the prior on the model's canvas: each cell's z_pres ~ Bernoulli(rho), or,
        given ``counts``, a count drawn from them and that many cells chosen at random; every
        cell's object from the prior (``within_canvas``: windows moved inside the image)."""
        like = next(self.parameters())
        side = self.config.canvas_size
        padded = self.padded_side(side)
        cells = (padded // self.cell_size) ** 2
        if counts is None:
            rho = self.config.z_pres_prior if z_pres_prior is None else z_pres_prior
            z_pres = (torch.rand(n, cells, generator=generator, device=like.device) < rho).to(
                like.dtype
            )
        else:
            where = "the cells centred in the canvas"
            count = draw_counts(n, counts, count_probs, self.most_objects, where, generator)
            count = count.to(like.device)
            # A random order of the cells centred in the canvas; the first ``count`` are on.
            per_row, inside = padded // self.cell_size, self.cells_inside(side)
            index = torch.arange(cells, device=like.device)
            centred = ((index % per_row) < inside) & ((index // per_row) < inside)
            keys = torch.rand(n, cells, generator=generator, device=like.device)
            keys = torch.where(centred, keys, torch.full_like(keys, 2.0))  # never among the first
            z_pres = (keys.argsort(1).argsort(1) < count.unsqueeze(1)).to(like.dtype)
        u = standard_normal((n, cells, self.where_dims), like, generator)
        z_what = standard_normal((n, cells, self.objects.z_what_dim), like, generator)
        size, _, centre = self.window(u, padded // self.cell_size)
        if within_canvas:
            half = size / 2
            centre = torch.minimum(torch.maximum(centre, half), side - half)
        z_where = self.window_z_where(size, centre, side)
        objects = {"z_where": z_where, "z_what": z_what}
        images = self.draw_scenes(objects, z_pres, generator)
        return PriorSample(images=images, z_pres=z_pres, objects=objects)

    def draw_scenes(
        self,
        objects: dict[str, torch.Tensor],
        z_pres: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The mean images (B, H, H) of scenes of ``objects`` (B, K, ...) on the model's canvas,
        the cells ``z_pres`` present: their ink summed, clipped to [0, 1]."""
        image, cell = z_pres.nonzero(as_tuple=True)
        drawn = self.objects.draw({name: value[image, cell] for name, value in objects.items()})
        side = self.config.canvas_size
        canvas = z_pres.new_zeros(len(z_pres), side, side).index_add(0, image, drawn)
        return canvas.clamp(0, 1)


# Cells tried on, and tried off, per image in each pass of ``GridAIR.refine``.
_REFINE_CANDIDATES = 8
# At most this many values in the copies of the canvas that one pass of ``refine`` holds.
_REFINE_VALUES = 2**24
# The fields of ``CellProposals`` that ``GridAIR.read_again`` reads again, per cell.
_READ_FIELDS = (
    "u",
    "z_where",
    "z_what",
    "patches",
    "log_q",
    "log_p",
    "log_q_where",
)
# How far (px) ``GridAIR.read_again`` tries moving a window, and how many times a search try
# reads the objects around it again.
_WINDOW_SHIFT = 1.0
_READ_ROUNDS = 2


def _fields_at(cells: CellProposals, image: torch.Tensor, cell: torch.Tensor) -> dict:
    """The ``_READ_FIELDS`` of the objects of cells ``cell`` of images ``image`` (each (n,))."""
    return {name: getattr(cells, name)[image, cell] for name in _READ_FIELDS}


def _tensor_fields(cells: CellProposals) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(cells)
        if isinstance(getattr(cells, f.name), torch.Tensor)
    ]


def _index(cells: CellProposals, rows: torch.Tensor) -> CellProposals:
    """The images ``rows`` of ``cells``."""
    return dataclasses.replace(cells, **{n: getattr(cells, n)[rows] for n in _tensor_fields(cells)})


def _concatenate(parts: list[CellProposals]) -> CellProposals:
    """The images of ``parts`` in one ``CellProposals``."""
    names = _tensor_fields(parts[0])
    return dataclasses.replace(
        parts[0], **{n: torch.cat([getattr(p, n) for p in parts]) for n in names}
    )


def _read_into(
    cells: CellProposals, image: torch.Tensor, cell: torch.Tensor, read: dict[str, torch.Tensor]
) -> CellProposals:
    """``cells`` with the objects of cells ``cell`` of images ``image`` read again: ``read``
    (``GridAIR.read_again``) holds their new values of the ``_READ_FIELDS``."""
    values = {n: getattr(cells, n).clone() for n in _READ_FIELDS}
    for name in _READ_FIELDS:
        values[name][image, cell] = read[name]
    return dataclasses.replace(cells, **values)


def _take(cells: CellProposals, other: CellProposals, where: torch.Tensor) -> CellProposals:
    """``cells`` with the objects of ``other`` in the cells ``where`` (B, K)."""

    def pick(name: str) -> torch.Tensor:
        mine, theirs = getattr(cells, name), getattr(other, name)
        mask = where.view(*where.shape, *[1] * (mine.dim() - 2))
        return torch.where(mask, theirs, mine)

    return dataclasses.replace(cells, **{n: pick(n) for n in _READ_FIELDS})


def _choose(use: torch.Tensor, first: CellProposals, second: CellProposals) -> CellProposals:
    """Per image, ``first``'s objects where ``use`` (B,), else ``second``'s."""
    return _take(second, first, use.unsqueeze(1).expand(first.log_q.shape))
