"""The grid scheme (``airscene.grid``) over coloured objects with masks and a background: SPACE's
route (Lin et al. 2020) with AIR's objects (``airscene.masked_objects``).

What differs from the grey grid, and why:

  * Cells have no order, so objects are composited without one: each cell's patch holds its
    object's premultiplied colour and mask, the patches are added up as grey ink is, and the
    colour is normalised where the masks sum over 1 (``MaskedObjects.composite_summed``); the
    background shows through by one minus the masks' sum. Where objects do not overlap this is
    the ordered composite exactly; where they do, their colours mix instead of one covering the
    other (an order would need cells decided in turn, SPAIR's sequential cells).
  * The background (``ModelConfig.background``) is drawn first, and the cell network reads the
    image and the image less the background (2C channels); glimpses read the image in colour.
  * p(x | z) scores the image's own pixels: beyond a coloured image there is no black plane, so
    an object's drawing beyond the edge is neither paid for nor rewarded.
  * The background learns from the whole image's likelihood with the objects as drawn, held
    fixed, and its own log p / q (``objective.cellwise_objective``); the cells score their
    patches over it detached, so an object cannot pull the background under it.
  * q's mode is refined on the scene's ELBO: two neighbouring cells often both claim one shape,
    about a pixel apart (each cell's q is trained against the other as drawn, and neither can
    say "exactly one of us"), so an object centred in another's window is tried off; a shape
    partly under another is often missed at q's mode, so the cells q most nearly found are
    tried on; the try that gains most is kept, pass by pass.
  * The segmentation (which object each pixel shows) is the posterior of the pixel's owner:
    masks decoded through a window are soft at a shape's rim, where the image's colour still
    says whose the pixel is.

What each choice measured: results/clutter/findings.md ("Sprites on the grid").
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from airscene.background import BackgroundDraw, build_background
from airscene.config import ConfigError, MaskedConfig, ModelConfig, RunConfig
from airscene.errors import AirsceneError
from airscene.grid import CellProposals, GridAIR, grid_schedule
from airscene.masked_objects import MaskedObjects
from airscene.model import Inference, pixel_log_likelihood
from airscene.registry import build_objects

# Objects tried off, and cells tried on, per image in each pass of ``MaskedGridAIR.refine``.
_SWITCH_CANDIDATES = 8
# At most this many values in the copies of the canvas that one pass of ``refine`` holds.
_TRY_VALUES = 2**24


class MaskedGridAIR(GridAIR):
    """Spatially parallel inference of masked objects over a background (see the module):
    ``model(x)`` on images ``x`` (B, C, H, H), or (B, H, H) for grey ones, returns an
    ``Inference`` with one entry per cell, its canvas the composite over the background."""

    reads_any_size = False  # the background is drawn at the canvas's size
    # Windows grow to exp(1.5 sigma) of the prior's side before a patch clips them (the sprites'
    # largest shapes fit at the prior's side 16 px), and the cell network starts wider than the
    # grey grid's: it reads colour and the image less its background.
    patch_sigmas = 1.5
    network_width = 32
    # How far beyond its drawn mask an object may claim pixels by their colour in
    # ``segmentation``: on the sprites' held-out scenes no rim left single triangles a pixel
    # or two short at the apex (foreground ARI 0.898, seed 1), 1 px gave 0.963, 2 px 0.988,
    # with the masks' IoU against the true ones rising too (0.967, 0.981, 0.984): the rim
    # takes object pixels, not the background's (results/clutter/findings.md).
    segmentation_rim = 2

    def __init__(self, config: ModelConfig, objects: MaskedObjects | None = None) -> None:
        objects = build_objects(config) if objects is None else objects
        if not isinstance(objects, MaskedObjects):
            raise AirsceneError(
                f"MaskedGridAIR infers masked objects; objects {config.objects.kind!r} are "
                "inferred by GridAIR or the sequential loop"
            )
        super().__init__(config, objects)
        self.channels = config.channels
        self.background = build_background(config)

    @staticmethod
    def recipe(run: RunConfig) -> RunConfig:
        """A masked-objects run (``train --kind sprites``) as the grid trains it: cells of 8 px,
        each object's window centred inside its cell, its side 7/8 of the family's prior size
        times exp(0.25 u), its mask's logits written (``MaskedConfig.mask_writing``); rho =
        0.01 per cell, annealed from 1/2 over the first 1,000 steps while the objects' KL warms
        up (as the digits grid); 5,000 steps of 32 images, the learning rate's cosine ending at
        a tenth, and q's mode refined by up to 4 passes of switches (``refine``). What each
        choice measured: results/clutter/findings.md."""
        objects = run.model.objects
        if not isinstance(objects, MaskedConfig):
            raise ConfigError(
                f"the masked grid infers masked objects; objects {objects.kind!r} are not"
            )
        # The window at the prior's mean 7/8 of the family's object size (14 px for the sprites'
        # 16), its log-side's spread 0.25: the prototype's measured window (16 px lagged it by
        # 7 points of count at 2,000 steps); the mask's logits written, not its values.
        scale = 0.875 * objects.z_where_prior_loc[0]
        objects = dataclasses.replace(
            objects,
            z_where_prior_loc=(scale, 0.0, 0.0),
            z_where_prior_scale=(0.25 * scale, 1, 1),
            mask_writing="logit",
        )
        model = dataclasses.replace(
            run.model,
            inference="grid",
            cell_size=8,
            cell_reach=0.5,
            z_pres_prior=0.01,
            grid_refine_passes=4,
            dair=False,
            core_pool=1,
            objects=objects,
        )
        train = grid_schedule(
            run.train,
            steps=5_000,
            final_lr_fraction=0.1,
            grad_clip=1e4,
            z_pres_baseline="learned",  # the sequential loop's; the grid has none
            eval_every=1_000,
        )
        return dataclasses.replace(run, model=model, train=train)

    # -- what the cells read ------------------------------------------------------------------

    def network_inputs(self, config: ModelConfig) -> int:
        """The image and the image less its background, C channels each."""
        return 2 * config.channels

    def cell_inputs(
        self,
        x: torch.Tensor,
        padded: int,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, BackgroundDraw | None]:
        """Images ``x`` padded to ``padded`` px as glimpses read them (B, C, padded, padded),
        what the cell network reads (the same and it less the background, detached: the
        objects do not train the background), and the background drawn (q's mode without
        ``sample``), None without one."""
        if x.shape[-1] != self.config.canvas_size:
            raise AirsceneError(
                f"this grid model reads {self.config.canvas_size} px images (its background is "
                f"drawn at that size), got {x.shape[-1]} px"
            )
        planes = self.objects.planes(x)
        background = None if self.background is None else self.background(x, generator, sample)
        under = 0.0 if background is None else self.objects.planes(background.image.detach())
        padding = (0, padded - x.shape[-1], 0, padded - x.shape[-1])
        canvas = F.pad(planes, padding)
        return canvas, torch.cat([canvas, F.pad(planes - under, padding)], 1), background

    # -- p(x | z) -----------------------------------------------------------------------------

    def under(self, x: torch.Tensor, cells: CellProposals) -> torch.Tensor:
        """The background under images ``x`` as planes (B, C, H, H): the one drawn, or black."""
        planes = self.objects.planes(x)
        if cells.background is None:
            return torch.zeros_like(planes)
        return self.objects.planes(cells.background)

    def reconstruction(
        self, x: torch.Tensor, cells: CellProposals, z_pres: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p(x | z) (B,) of the image's pixels, the composite (the model's images) and the
        objects' summed planes (B, C + 1, H, H) it composites."""
        side = x.shape[-1]
        summed = self.paint(cells.patches, z_pres, cells.padded)[..., :side, :side]
        log_likelihood, planes = self.image_fit(x, summed, self.under(x, cells))
        return log_likelihood, self.objects.image_of(planes), summed

    def image_fit(
        self, x: torch.Tensor, summed: torch.Tensor, under: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x | z) (B,) of images ``x`` given the objects' summed planes ``summed`` (B,
        C + 1, H, H) over the background's planes ``under``, and the composite's planes."""
        planes = self.objects.composite_summed(summed, under)
        log_p = pixel_log_likelihood(self.config, self.objects.planes(x), planes)
        return log_p.flatten(1).sum(1), planes

    def patch_log_likelihoods(
        self, x: torch.Tensor, cells: CellProposals, z_pres: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell (B, K), log p(x | z) of its patch's pixels inside the image with its object
        drawn and without it, the other cells as ``z_pres`` says (detached), over the
        background (detached); the first keeps the gradient of the cell's own drawing."""
        with torch.no_grad():
            pad = cells.padded - x.shape[-1]
            padding = (0, pad, 0, pad)
            seen = self.cell_patches(F.pad(self.objects.planes(x), padding))
            under = self.cell_patches(F.pad(self.under(x, cells).detach(), padding))
            inside = self.cell_patches(F.pad(x.new_ones(1, 1, *x.shape[-2:]), padding))
            others = self.cell_patches(self.paint(cells.patches, z_pres, cells.padded))
            others = others - z_pres.unsqueeze(-1) * cells.patches
            absent = self.patch_scores(seen, under, others, inside)
        return self.patch_scores(seen, under, others + cells.patches, inside), absent

    def patch_scores(
        self, seen: torch.Tensor, under: torch.Tensor, drawn: torch.Tensor, inside: torch.Tensor
    ) -> torch.Tensor:
        """log p of the patches ``seen`` (B, K, C * P * P) over the background's ``under``
        given the objects' summed planes ``drawn`` (B, K, (C + 1) * P * P), counting the pixels
        ``inside`` (1, K, P * P) the image, (B, K)."""
        batch, cells = drawn.shape[:2]
        c, p = self.channels, self.patch
        planes = self.objects.composite_summed(
            drawn.reshape(-1, c + 1, p, p), under.reshape(-1, c, p, p)
        )
        log_p = pixel_log_likelihood(self.config, seen.reshape(-1, c, p, p), planes)
        return (log_p.sum(1).view(batch, cells, -1) * inside).sum(-1)

    def scene_score(
        self,
        x: torch.Tensor,
        cells: CellProposals,
        z_pres: torch.Tensor,
        z_pres_prior: float | None = None,
    ) -> torch.Tensor:
        """The ELBO of each scene (B,) with its z_pres held as given and its objects and
        background as ``cells`` holds them (the background's own log p / q left out: no move of
        the search changes it)."""
        painted = self.paint(cells.patches, z_pres, cells.padded, ring=True)
        objects = (z_pres * (cells.log_p - cells.log_q)).sum(-1)
        return self.score_painted(x, self.under(x, cells), painted, z_pres, objects, z_pres_prior)

    def score_painted(
        self,
        x: torch.Tensor,
        under: torch.Tensor,
        painted: torch.Tensor,
        z_pres: torch.Tensor,
        objects: torch.Tensor,
        z_pres_prior: float | None = None,
    ) -> torch.Tensor:
        """``scene_score`` from the objects' summed planes ``painted`` (``paint(..., ring=True)``
        of the cells ``z_pres`` present) over the background ``under`` (planes), and the
        present objects' summed log p - log q ``objects`` (B,)."""
        side, margin = x.shape[-1], self.margin
        summed = painted[..., margin : margin + side, margin : margin + side]
        log_likelihood = self.image_fit(x, summed, under)[0]
        return log_likelihood + self.z_pres_log_prior(z_pres, z_pres_prior) + objects

    # -- q's mode, refined --------------------------------------------------------------------

    @torch.no_grad()
    def refine(
        self,
        x: torch.Tensor,
        cells: CellProposals,
        z_pres: torch.Tensor,
        z_pres_prior: float | None = None,
        passes: int = 1,
    ) -> tuple[CellProposals, torch.Tensor]:
        """q's mode ``z_pres`` refined on the scene's ELBO: in each of ``passes``, of the
        objects centred in another present object's window (the most doubtful
        ``_SWITCH_CANDIDATES``) each is tried off, and of the absent cells centred in the image
        the ``_SWITCH_CANDIDATES`` q most nearly found each tried on (its object as q proposes
        it); the try that gains most is kept, if any gains. Duplicates are the grid's typical
        over-count (two cells claiming one shape), a shape under another's edge its typical
        miss. An object alone is never switched off (a lone shape's object may cost more than
        the pixels it explains, and is still the shape). Each try is scored on a copy of the
        painted canvas with its cell's patch added or taken away, a few images at a time."""
        side = cells.padded + 2 * self.margin
        most = max(1, _TRY_VALUES // (2 * _SWITCH_CANDIDATES * (self.channels + 1) * side**2))
        if len(x) > most:  # the cells as they are: only z_pres changes
            parts = self.refine_in_parts(x, cells, z_pres, z_pres_prior, passes, most)
            return cells, torch.cat([z for _, z in parts])
        z_pres = z_pres.clone()
        rows = cells.padded // self.cell_size
        inside = self.cells_inside(x.shape[-1])
        index = torch.arange(z_pres.shape[1], device=x.device)
        centred = ((index // rows) < inside) & ((index % rows) < inside)
        tries_each = min(_SWITCH_CANDIDATES, z_pres.shape[1])
        never = torch.full_like(cells.logits, -math.inf)
        term = cells.log_p - cells.log_q
        under = self.under(x, cells)
        for _ in range(passes):
            painted = self.paint(cells.patches, z_pres, cells.padded, ring=True)
            score = self.score_painted(
                x, under, painted, z_pres, (z_pres * term).sum(-1), z_pres_prior
            )
            size, _, centre = self.window(cells.u, rows)
            present = z_pres > 0
            covered = present & self.covered(present, centre, size, rows)
            addable = ~present & centred
            offs = torch.where(covered, -cells.logits, never).topk(tries_each, dim=1).indices
            ons = torch.where(addable, cells.logits, never).topk(tries_each, dim=1).indices
            tries = torch.cat([offs, ons], 1)
            valid = torch.cat([covered.gather(1, offs), addable.gather(1, ons)], 1)
            image, slot = valid.nonzero(as_tuple=True)
            if len(image) == 0:
                break
            move = tries[image, slot]
            trial = torch.arange(len(image), device=x.device)
            tried = z_pres[image].clone()
            tried[trial, move] = 1 - tried[trial, move]
            sign = tried[trial, move] - z_pres[image, move]  # +1 switched on, -1 off
            # The try's canvas: the scene's, its cell's patch added or taken away.
            canvas = painted[image].permute(0, 2, 3, 1).contiguous()  # (T, S, S, planes)
            ys, xs = self.patch_pixels(move, rows)
            patch = cells.patches[image, move].view(len(image), -1, self.patch, self.patch)
            change = (sign.view(-1, 1, 1, 1) * patch).permute(0, 2, 3, 1)
            canvas.index_put_((trial[:, None, None], ys, xs), change, accumulate=True)
            tried_score = self.score_painted(
                x[image],
                under[image],
                canvas.permute(0, 3, 1, 2),
                tried,
                (tried * term[image]).sum(-1),
                z_pres_prior,
            )
            gain = torch.full(tries.shape, -math.inf, dtype=score.dtype, device=x.device)
            gain[image, slot] = tried_score - score[image]
            best_gain, best = gain.max(1)
            better = (best_gain > 0).nonzero().flatten()
            if len(better) == 0:
                break
            chosen = tries[better, best[better]]
            z_pres[better, chosen] = 1 - z_pres[better, chosen]
        return cells, z_pres

    # -- what the verbs and evaluations read ----------------------------------------------------

    @torch.no_grad()
    def segmentation(self, x: torch.Tensor, inference: Inference) -> torch.Tensor:
        """Per pixel of images ``x``, whose it is (B, H, W): 0 the background, k + 1 the object
        of cell k. The pixel's owner under its posterior, reading the composite as a mixture:
        each component's weight in the pixel's mean (an object's mask, over the masks' sum
        where that is over 1; the background's one minus the masks' sum, clipped) times the
        likelihood of the pixel under that component's own colour. A decoded mask is soft at a
        shape's rim, where by the masks alone the background would take the pixel; and it is
        drawn smooth from a glimpse of about the object's side, where the data's rims are
        judged at pixel centres, so it may stop a pixel or two short of a shape's corner (a
        triangle's apex): within ``segmentation_rim`` px of its mask an object may claim a pixel
        its colour explains better than the background's and the others' do."""
        objects = self.objects.at_canvas(x.shape[-1])
        planes = self.objects.planes(x)
        batch, cells = inference.z_pres.shape
        image, cell = inference.z_pres.nonzero(as_tuple=True)
        drawn = objects.draw({k: inference.objects[k][image, cell] for k in ("z_where", "z_what")})
        c = self.channels
        mask = drawn[:, c:]  # (M, 1, H, W)
        cover = torch.zeros_like(planes[:, :1]).index_add(0, image, mask)
        colour = drawn[:, :c] / mask.clamp(min=1e-6)
        # The rim: within ``segmentation_rim`` px of its drawn mask, where its own mask is
        # below its largest nearby, an object weighs as that largest mask, in that neighbour's
        # colour (beyond its mask the decoded colour means nothing), so the pixel's colour
        # decides between it, the background and the others. A claim by the rim weighs a
        # thousandth less, so that a tie with what another object draws itself there (a
        # neighbour of the same colour) goes to the one that draws it.
        reach = self.segmentation_rim
        nearby, nearest = F.max_pool2d(mask, 2 * reach + 1, 1, reach, return_indices=True)
        rim = mask < nearby
        near_colour = colour.flatten(2).gather(2, nearest.flatten(2).expand(-1, c, -1))
        colour = torch.where(rim, near_colour.view_as(colour), colour)
        share = torch.where(rim, 0.999 * nearby, mask) / cover[image].clamp(min=1.0)

        def owner_log_score(weight: torch.Tensor, seen: torch.Tensor, mean: torch.Tensor):
            fit = pixel_log_likelihood(self.config, seen, mean).sum(1, keepdim=True)
            return torch.log(weight) + fit

        if inference.background is None:
            background = torch.zeros_like(planes)
        else:
            background = self.objects.planes(inference.background)
        score = planes.new_full((batch, cells + 1, *x.shape[-2:]), -math.inf)
        score[:, :1] = owner_log_score(1 - cover.clamp(max=1.0), planes, background)
        score[image, cell + 1] = owner_log_score(share, planes[image], colour)[:, 0]
        return score.argmax(1)

    # -- sampling -------------------------------------------------------------------------------

    def draw_scenes(
        self,
        objects: dict[str, torch.Tensor],
        z_pres: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The mean images of scenes of ``objects`` (B, K, ...), the cells ``z_pres`` present,
        composited without order over backgrounds drawn from the prior."""
        image, cell = z_pres.nonzero(as_tuple=True)
        drawn = self.objects.draw({name: value[image, cell] for name, value in objects.items()})
        side = self.config.canvas_size
        summed = z_pres.new_zeros(len(z_pres), self.channels + 1, side, side)
        summed = summed.index_add(0, image, drawn)
        background = None
        if self.background is not None:
            background = self.background.sample(len(z_pres), z_pres, generator)
        planes = self.objects.composite_summed(summed, background)
        return self.objects.image_of(planes).clamp(0, 1)
