"""Objects with a mask: 2D objects of any colour that cover what lies behind them.

The paper's 2D objects add their grey ink into the canvas, which is right for strokes on black
and wrong for opaque things over a background: two overlapping shapes would mix their colours,
and a shape over a textured background would show it through. Here z_what decodes to an
appearance (one value per image channel, per glimpse pixel) and a mask, both written at z_where
as the paper's glimpses are. Objects are composited front to back in inference order (the first
found is in front, as the most salient, wholly visible object should be): the canvas keeps the
premultiplied colour and the coverage A so far, and each new object adds its colour times its
mask where (1 - A) is still uncovered. The background, if any, shows through by 1 - A
(``ObjectModel.composite``). DAIR reads the image less this composite: what is still unexplained.

A canvas is (B, C + 1, H, W): C channels of premultiplied colour, then the coverage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from airscene.config import MaskedConfig, ModelConfig
from airscene.errors import AirsceneError
from airscene.evaluate import Evaluation, evaluate, json_ready
from airscene.networks import AppearanceMaskDecoder, ConvGlimpseEncoder, GlimpseEncoder
from airscene.objects import GlimpseObjects, ObjectModel
from airscene.spatial import write_glimpse

# The mask logit of the canvas beyond a window, where ``write`` resamples logits (a mask of
# about 6e-6).
_OUTSIDE = -12.0


def occurrence_rank(image: torch.Tensor) -> torch.Tensor:
    """For a sequence of image indices (M,), how many earlier entries name the same image."""
    order = torch.argsort(image, stable=True)
    ordered = image[order]
    first = torch.searchsorted(ordered, ordered, side="left")
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(image), device=image.device) - first
    return rank


class MaskedObjects(GlimpseObjects):
    """Coloured objects with masks (see the module): z_where places a window as for the paper's
    objects; the glimpse of every channel is encoded to q(z_what); z_what ~ N(0, I) decodes to
    an appearance and a mask."""

    default_data = "sprites"
    # Cells have no order: on the grid, objects are composited without one
    # (``composite_summed``).
    inference_schemes = {"grid": "airscene.masked_grid:MaskedGridAIR"}

    def __init__(self, config: MaskedConfig, canvas_size: int, channels: int) -> None:
        ObjectModel.__init__(self)
        self.config, self.canvas_size, self.channels = config, canvas_size, channels
        self.z_what_dim = config.z_what_dim
        self.feedback_dim = 3 + config.z_what_dim
        conv = config.glimpse_networks == "conv"
        if conv:
            self.encoder = ConvGlimpseEncoder(
                config.glimpse_size, config.encoder_hidden, config.z_what_dim, channels
            )
        else:
            pixels = channels * config.glimpse_size**2
            self.encoder = GlimpseEncoder(pixels, config.encoder_hidden, config.z_what_dim)
        self.decoder = AppearanceMaskDecoder(
            config.z_what_dim,
            config.decoder_hidden,
            config.glimpse_size,
            channels,
            config.mask_bias,
            conv,
        )
        self.hold_where_prior(config.z_where_prior_loc, config.z_where_prior_scale)

    @classmethod
    def from_config(cls, config: ModelConfig) -> MaskedObjects:
        return cls(config.objects, config.canvas_size, config.channels)

    def initial_params(self):
        """As the paper's objects, the window's scale given before its squashing
        (``where_posterior``): it starts at the prior's."""
        low, high = self.config.window_range
        start = (self.config.z_where_prior_loc[0] - low) / (high - low)
        params = super().initial_params()
        params[0] = float(np.log(start / (1 - start)))
        return params

    def where_posterior(self, params):
        """q(z_where) as for the paper's objects, its mean scale squashed into
        ``window_range``: a window that grew over the whole image would paint the background as
        an object (measured: the first object of every image did, in early training)."""
        loc, scale = super().where_posterior(params)
        low, high = self.config.window_range
        size = low + (high - low) * torch.sigmoid(loc[:, :1])
        return torch.cat([size, loc[:, 1:]], dim=1), scale

    # -- the canvas: premultiplied colour and coverage, front to back ----------------------------

    def blank_canvas(self, x):
        """(B, C + 1, H, W) zeros for images ``x`` (B, H, W) or (B, C, H, W)."""
        size = x.shape[-1]
        return x.new_zeros(x.shape[0], self.channels + 1, size, size)

    def draw(self, values):
        """Each of M objects alone, (M, C + 1, H, W): its premultiplied colour and its mask."""
        return self.write(values["z_what"], values["z_where"], self.canvas_size)

    def write(self, z_what, z_where, size):
        """Objects ``z_what`` written into windows ``z_where`` of canvases of ``size`` px,
        (M, C + 1, size, size). The decoded glimpse is resampled onto the canvas as it is
        (``mask_writing`` mask), or its mask's logits are resampled and squashed there
        (``logit``): interpolating a mask softens its edge over a glimpse pixel however
        confident the decoder is, interpolating logits keeps it as sharp as they are steep."""
        if self.config.mask_writing == "mask":
            return write_glimpse(self.decoder(z_what), z_where, size)
        appearance, logit = self.decoder.appearance_and_logit(z_what)
        # Beyond the window the resampling reads zeros: logits offset so that zero is far out.
        written = write_glimpse(torch.cat([appearance, logit - _OUTSIDE], 1), z_where, size)
        mask = torch.sigmoid(written[:, self.channels :] + _OUTSIDE)
        return torch.cat([written[:, : self.channels] * mask, mask], 1)

    def paint(self, canvas, image, values):
        """Each object behind the ones already painted into its image (front to back)."""
        if len(image) == 0:
            return canvas
        drawn = self.draw(values)
        rank = occurrence_rank(image)
        for r in range(int(rank.max()) + 1):
            at = rank == r
            rows = image[at]  # each image once
            uncovered = 1 - canvas[rows, self.channels :]
            canvas = canvas.index_add(0, rows, uncovered * drawn[at])
        return canvas

    def image_of(self, planes: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) planes as the model's images: grey ones lose their channel axis."""
        return planes.squeeze(1) if self.channels == 1 else planes

    def canvas_image(self, canvas):
        return self.image_of(canvas[:, : self.channels])

    def coverage(self, canvas):
        return self.image_of(canvas[:, self.channels :])

    def planes(self, image: torch.Tensor) -> torch.Tensor:
        """Images (B, H, W) or (B, C, H, W) as planes (B, C, H, W): grey ones gain a channel."""
        return image.unsqueeze(1) if image.dim() == 3 else image

    def composite_summed(
        self, summed: torch.Tensor, background: torch.Tensor | None
    ) -> torch.Tensor:
        """The mean planes (B, C, H, W) of objects composited without an order: ``summed``
        (B, C + 1, H, W) holds their premultiplied colours and masks added up. Where the masks
        sum over 1 the colour is their mask-weighted mean; ``background`` (the model's images,
        None: black) shows through by one minus the masks' sum, clipped to [0, 1]. Where
        objects do not overlap, this is ``composite`` exactly."""
        colour, cover = summed[:, : self.channels], summed[:, self.channels :]
        planes = colour / cover.clamp(min=1.0)
        if background is None:
            return planes
        return planes + (1 - cover.clamp(max=1.0)) * self.planes(background)

    def unexplained(self, read, canvas, background):
        """The image less the composite of the objects so far over the background."""
        x = read if background is None else read + background
        return x - self.composite(canvas, background)

    # -- what the verbs, figures and evaluations read ------------------------------------------

    def drawn_boxes(self, objects, present=None, threshold: float = 0.5):
        """The tight box of the pixels each object's mask covers by more than ``threshold``."""
        return self.tight_boxes_of_drawings(
            objects,
            lambda drawn: drawn[:, self.channels] > threshold,
            self.windows(objects),
            present,
        )

    @torch.no_grad()
    def segmentation(self, objects: dict[str, torch.Tensor], z_pres: torch.Tensor) -> torch.Tensor:
        """Per pixel, what is seen there, (B, H, W) int64: 0 the background, t + 1 the object
        of step t (the one whose visible share of the pixel is largest)."""
        batch, steps = z_pres.shape
        size = self.canvas_size
        uncovered = z_pres.new_ones(batch, size, size)
        shares = [uncovered]  # the background's share, filled in last
        for t in range(steps):
            present = (z_pres[:, t] > 0).nonzero().squeeze(1)
            share = torch.zeros_like(uncovered)
            if len(present):
                mask = self.draw({k: v[present, t] for k, v in objects.items()})[:, self.channels]
                share[present] = mask * uncovered[present]
            uncovered = uncovered - share
            shares.append(share)
        shares[0] = uncovered
        return torch.stack(shares, 1).argmax(1)

    def evaluate(self, model, scenes, generator=None, iw_samples=0, progress=False):
        """``airscene.evaluate``'s metrics, and where the scenes have ground-truth masks, the
        foreground ARI of the inferred segmentation (``foreground_ari``)."""
        truth = getattr(scenes, "segmentation", None)
        scores = []

        def score_masks(start: int, x, mode) -> None:  # on evaluate's own pass over the scenes
            found = model.segmentation(x, mode).cpu().numpy()
            for true, inferred in zip(truth[start : start + len(found)], found, strict=True):
                foreground = true > 0
                if foreground.any():
                    scores.append(adjusted_rand_index(true[foreground], inferred[foreground]))

        base = evaluate(
            model,
            scenes,
            iw_samples=iw_samples,
            generator=generator,
            progress=progress,
            each_batch=None if truth is None else score_masks,
        )
        ari = float(np.mean(scores)) if scores else float("nan")
        return MaskedEvaluation(**vars(base), foreground_ari=ari)

    def explain_away(self, x, objects, z_pres, generator=None, passes=1):
        raise AirsceneError("explaining away is written for the paper's summed grey objects")


def adjusted_rand_index(truth: np.ndarray, predicted: np.ndarray) -> float:
    """The adjusted Rand index of two labellings of the same items (1-D int arrays): 1 for the
    same partition, about 0 for chance; 1 where both put every item in one cluster."""
    _, true_ids = np.unique(truth, return_inverse=True)
    _, found_ids = np.unique(predicted, return_inverse=True)
    table = np.zeros((true_ids.max() + 1, found_ids.max() + 1), dtype=np.float64)
    np.add.at(table, (true_ids, found_ids), 1)

    def pairs(n: np.ndarray) -> float:
        return float((n * (n - 1) / 2).sum())

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / max(pairs(np.array([len(truth)])), 1.0)
    best = (rows + cols) / 2
    if best == expected:  # both labellings put everything in one cluster (or one item)
        return 1.0
    return (index - expected) / (best - expected)


@dataclass
class MaskedEvaluation(Evaluation):
    """``Evaluation`` with the inferred masks' foreground ARI."""

    foreground_ari: float = float("nan")  # mean over images with objects: ARI of the inferred
    # segmentation on the true objects' pixels (the slot models' measure on Multi-dSprites)

    def to_dict(self) -> dict:
        return json_ready(self)

    def summary(self) -> str:
        text = super().summary()
        if not np.isnan(self.foreground_ari):
            text += f"\nforeground ARI {self.foreground_ari:.3f} (inferred masks)"
        return text

    def headline(self) -> dict[str, float]:
        return {**super().headline(), "eval_foreground_ari": self.foreground_ari}
