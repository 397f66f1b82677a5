"""Object models: what one object of a scene is, and how objects make an image.

AIR's recurrent core decides, step by step, whether another object is present (z_pres); an
object model owns everything else about an object (paper eq. 1: p(z | n) and p(x | z)):

  * its latents, their prior p and their posterior q given the step's input (the image or the
    residual, and the parameters the core's predictor emits for them from its state);
  * how a present object is drawn, and how the drawn objects combine into the image (a sum for
    the paper's 2D objects; a renderer may occlude, nearest surface first).

``infer`` returns, per object, the log q of the reparameterised latents and, separately, the
log q of discrete latents (an object's identity, say), which the objective gives the same
likelihood-ratio term, baseline and per-step credit as z_pres. ``GlimpseObjects`` is the paper's
learned 2D object; a fixed renderer is another ``ObjectModel`` with its own config kind.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from airscene.background import over
from airscene.config import GlimpseConfig, ModelConfig
from airscene.densities import normal_log_prob, standard_normal_log_prob
from airscene.networks import (
    ConvGlimpseDecoder,
    ConvGlimpseEncoder,
    GlimpseDecoder,
    GlimpseEncoder,
)
from airscene.rows import StepNoise, standard_normal, truncated_normal
from airscene.spatial import read_glimpse, tight_boxes, write_glimpse, z_where_to_box

if TYPE_CHECKING:
    from airscene.data.family import GroundTruth
    from airscene.model import AIR, Inference

# The most pixels drawn at once when boxes are read from objects drawn alone.
_PIXELS_PER_DRAW = 1 << 24

# Maps one image's boxes (K, 4) in canvas pixels to the input image's pixels.
ToImage = Callable[[np.ndarray], np.ndarray]


@dataclass
class ObjectStep:
    """What an object model inferred at one step, one object per active row (K rows)."""

    values: dict[str, torch.Tensor]  # latents and their posterior's parameters, (K, ...) floats
    log_q: torch.Tensor  # (K,) log q of the reparameterised latents
    log_p: torch.Tensor  # (K,) log p of all the object's latents (discrete ones included)
    log_q_discrete: torch.Tensor | None  # (K,) log q of the discrete latents; None (at every
    # step) for an object model that has none


@dataclass
class DiscreteChoices:
    """Every value of one discrete latent of M present objects, each as the scene it makes."""

    images: torch.Tensor  # (M, S, h, w) the scene's mean image with the object's latent = s,
    # in a window of h x w pixels (the whole image, or where the values' images differ)
    window: torch.Tensor | None  # (M, h * w) the window's flat pixel indices; None: whole image
    logits: torch.Tensor  # (M, S) q's logits over the S values (with their gradient path)
    log_prior: torch.Tensor  # (M, S) log p of each value


class ObjectModel(nn.Module):
    """The interface between the recurrent loop (``airscene.model.AIR``) and one kind of object.

    Objects combine by summing unless a subclass overrides ``blank_canvas``, ``paint`` and
    ``canvas_image`` (a renderer that occludes keeps depth in its canvas, for instance).
    """

    feedback_dim: int  # size of ``feedback``'s last dimension
    canvas_size: int
    default_data = "multi-mnist"  # the ``DataConfig.kind`` it trains on unless told otherwise
    # Inference schemes of its own, by ``ModelConfig.inference``, where the registry's
    # (``airscene.registry.INFERENCE_SCHEMES``) do not fit its objects: "module:name" strings.
    inference_schemes: dict[str, str] = {}

    @classmethod
    def from_config(cls, config: ModelConfig) -> ObjectModel:
        """The object model of ``config.objects`` for a model of ``config`` (canvas, steps)."""
        raise NotImplementedError

    def initial_params(self) -> torch.Tensor:
        """(P,) what the core's predictor emits for this model's posterior at initialisation (its
        output bias): as many numbers as ``infer`` reads from ``params`` at every step."""
        raise NotImplementedError

    def infer(
        self, seen: torch.Tensor, params: torch.Tensor, noise: StepNoise | None
    ) -> ObjectStep:
        """Draw one object per row from q given what the step sees ``seen`` (K, H, W) and the
        predictor's ``params`` (K, P), with ``noise`` (the mode of q where it is None)."""
        raise NotImplementedError

    def feedback(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the next step's network sees of objects ``values`` (..., feedback_dim)."""
        raise NotImplementedError

    def sample_prior(
        self,
        n: int,
        like: torch.Tensor,
        generator: torch.Generator | None,
        within_canvas: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``n`` objects' latents drawn from the prior, the same names as ``ObjectStep.values``;
        ``within_canvas``: from the prior truncated to objects that lie wholly in the image."""
        raise NotImplementedError

    def draw(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each of M objects alone on a blank canvas, (M, H, W)."""
        raise NotImplementedError

    def blank_canvas(self, x: torch.Tensor) -> torch.Tensor:
        """The canvas of images ``x`` (B, H, W) before any object is painted."""
        return torch.zeros_like(x)

    def paint(
        self, canvas: torch.Tensor, image: torch.Tensor, values: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``canvas`` with the M objects ``values`` painted into the images ``image`` (M,), in
        order (the same image may appear several times)."""
        return canvas.index_add(0, image, self.draw(values))

    def canvas_image(self, canvas: torch.Tensor) -> torch.Tensor:
        """The objects' mean image (B, H, W) of a canvas, over black: what p(x | z) scores where
        there is no background (premultiplied: each object's colour times its coverage)."""
        return canvas

    def coverage(self, canvas: torch.Tensor) -> torch.Tensor:
        """How much the painted objects cover what lies behind them, in [0, 1], broadcastable
        against ``canvas_image``: by default their ink clipped to [0, 1]."""
        return self.canvas_image(canvas).clamp(0, 1)

    def composite(self, canvas: torch.Tensor, background: torch.Tensor | None) -> torch.Tensor:
        """The scene's mean image: the objects of ``canvas`` over ``background`` (None: black)."""
        image = self.canvas_image(canvas)
        return image if background is None else over(image, self.coverage(canvas), background)

    def unexplained(
        self, read: torch.Tensor, canvas: torch.Tensor, background: torch.Tensor | None
    ) -> torch.Tensor:
        """What a DAIR step reads once the objects of ``canvas`` are painted: ``read`` (the
        image, less ``background`` where the model has one) less the objects' image. For grey
        objects the background under their ink is left in (x - bg - ink, not x less the
        composite): the recipe measured in results/clutter; objects that cover the background
        by a mask subtract the composite."""
        return read - self.canvas_image(canvas)

    def scene_log_prior(
        self, objects: dict[str, torch.Tensor], z_pres: torch.Tensor
    ) -> torch.Tensor | None:
        """A prior term on how the objects ``objects`` (B, N, ...) of each scene lie together,
        per step (B, N), added to each present object's log p; None where objects are
        independent a priori (the default)."""
        return None

    def discrete_choices(
        self,
        canvas: torch.Tensor,
        objects: dict[str, torch.Tensor],
        image: torch.Tensor,
        step: torch.Tensor,
    ) -> DiscreteChoices | None:
        """For M present objects (``image``, ``step``) of a painted ``canvas``: the scene's mean
        image with that object's discrete latent set to each of its S values, the rest of the
        scene as drawn, so that its expectation under q can be taken exactly (a local expectation
        gradient); None where the model has no enumerable discrete latent (the default)."""
        return None

    def at_canvas(self, side: int) -> ObjectModel:
        """This object model drawing on a canvas of ``side`` pixels, its networks shared: what
        describes and boxes the objects of an image read whole at that size by a model that
        reads any size. Objects tied to their canvas (a renderer's camera) have only their own."""
        if side != self.canvas_size:
            raise ValueError(f"{type(self).__name__} draws {self.canvas_size} px canvases only")
        return self

    # -- what the verbs, figures and evaluations need of an object ---------------------------

    def drawn_boxes(
        self, objects: dict[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per image and step, the pixel box x0, y0, x1, y1 (end exclusive) of what the object
        ``objects`` (B, N, ...) draws, (B, N, 4): comparable with the data's ground-truth boxes.
        Given ``present`` (B, N) bool, only those objects are drawn (the others' boxes are the
        fallback): a grid of hundreds of cells holds a few dozen objects."""
        raise NotImplementedError

    def figure_boxes(self, objects: dict[str, torch.Tensor]) -> torch.Tensor:
        """The boxes (B, N, 4) that ``show`` and ``sample`` figures draw around each object;
        by default ``drawn_boxes``."""
        return self.drawn_boxes(objects)

    @torch.no_grad()
    def tight_boxes_of_drawings(
        self,
        objects: dict[str, torch.Tensor],
        marks: Callable[[torch.Tensor], torch.Tensor],
        otherwise: torch.Tensor,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each object of ``objects`` (B, N, ...) drawn alone, the tight box of the pixels
        ``marks`` picks from its drawing (M, H, W) -> bool; ``otherwise`` (B, N, 4) where it
        picks none or (given ``present``) where no object is. The shared core of
        ``drawn_boxes``."""
        boxes = otherwise.clone()
        if present is not None:  # only the present objects, a canvas-sized chunk at a time
            image, step = present.nonzero(as_tuple=True)
            chunk = max(1, _PIXELS_PER_DRAW // self.canvas_size**2)
            for start in range(0, len(image), chunk):
                i, t = image[start : start + chunk], step[start : start + chunk]
                drawn = self.draw({k: v[i, t] for k, v in objects.items()})
                tight, found = tight_boxes(marks(drawn))
                boxes[i, t] = torch.where(found[:, None], tight.to(boxes.dtype), boxes[i, t])
            return boxes
        for t in range(boxes.shape[1]):
            tight, found = tight_boxes(marks(self.draw({k: v[:, t] for k, v in objects.items()})))
            boxes[:, t] = torch.where(found[:, None], tight.to(boxes.dtype), boxes[:, t])
        return boxes

    def describe(self, inference: Inference, to_image: Sequence[ToImage]) -> list[list[Any]]:
        """Per image of ``inference``, its present objects as records (dataclasses; JSON Lines
        in ``airscene infer``) with every box mapped to the input's pixels by that image's
        ``to_image`` (canvas-pixel boxes (K, 4) -> the input's)."""
        raise NotImplementedError

    def segmentation(
        self, objects: dict[str, torch.Tensor], z_pres: torch.Tensor
    ) -> torch.Tensor | None:
        """Per pixel of each image, what is seen there, (B, H, W) int64: 0 the background,
        t + 1 the object of step t; None (the default) where objects have no masks."""
        return None

    def doubts(self, inference: Inference) -> list[str | None]:
        """Per image of ``inference``, why its objects cannot be right as they are (an object
        where none can be), or None; by default None for every image."""
        return [None] * inference.z_pres.shape[0]

    def evaluate(
        self,
        model: AIR,
        scenes: GroundTruth,
        generator: torch.Generator | None = None,
        iw_samples: int = 0,
        progress: bool = False,
    ) -> Any:
        """The metrics this kind of object has, of ``model`` on held-out ``scenes``: an object
        with ``to_dict()`` (the report), ``summary()`` (the report in words) and ``headline()``
        (the scalars logged in training); a progress bar on stderr if asked for."""
        raise NotImplementedError


class GlimpseObjects(ObjectModel):
    """The paper's 2D objects. z_where = (scale, x, y) ~ Normal places a window; q(z_where) is
    predicted by the core, the glimpse is read at z_where and encoded to q(z_what); z_what ~
    N(0, I) is decoded to a glimpse that the spatial transformer writes into the window."""

    default_data = "multi-mnist"

    def __init__(self, config: GlimpseConfig, canvas_size: int) -> None:
        super().__init__()
        self.config, self.canvas_size = config, canvas_size
        self.z_what_dim = config.z_what_dim
        self.feedback_dim = 3 + config.z_what_dim  # z_where, z_what
        if config.glimpse_networks == "conv":
            self.encoder = ConvGlimpseEncoder(
                config.glimpse_size, config.encoder_hidden, config.z_what_dim
            )
            decoder = ConvGlimpseDecoder
        else:
            pixels = config.glimpse_size**2
            self.encoder = GlimpseEncoder(pixels, config.encoder_hidden, config.z_what_dim)
            decoder = GlimpseDecoder
        self.decoder = decoder(
            config.z_what_dim,
            config.decoder_hidden,
            config.glimpse_size,
            config.decoder_output_bias,
        )
        self.hold_where_prior(config.z_where_prior_loc, config.z_where_prior_scale)

    def hold_where_prior(self, loc: Sequence[float], scale: Sequence[float]) -> None:
        """Keep p(z_where)'s loc and scale as buffers (they follow the model's device, and are
        not saved: the config holds them)."""
        self.register_buffer("z_where_prior_loc", torch.tensor(loc), persistent=False)
        self.register_buffer("z_where_prior_scale", torch.tensor(scale), persistent=False)

    @classmethod
    def from_config(cls, config: ModelConfig) -> GlimpseObjects:
        return cls(config.objects, config.canvas_size)

    def initial_params(self) -> torch.Tensor:
        """z_where's loc (3) and its scale before the bound (3): the window starts at the prior's
        z_where with a small spread, so glimpses begin where objects of the expected size would."""
        return torch.tensor([*self.config.z_where_prior_loc, -2.0, -2.0, -2.0])

    def where_posterior(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z_where)'s loc and scale, each (K, 3), from the predictor's ``params`` (K, 6)."""
        loc, raw_scale = params[:, :3], params[:, 3:]
        bound = self.config.z_where_max_scale
        if bound is None:
            return loc, F.softplus(raw_scale) + 1e-4
        return loc, bound * torch.sigmoid(raw_scale) + 1e-4

    def log_prior_z_where(self, z_where: torch.Tensor) -> torch.Tensor:
        """log p(z_where) per object, (K,)."""
        return normal_log_prob(z_where, self.z_where_prior_loc, self.z_where_prior_scale).sum(-1)

    def infer(self, seen, params, noise):
        where_loc, where_scale = self.where_posterior(params)
        z_where = where_loc if noise is None else where_loc + where_scale * noise.normal(3)
        glimpse = read_glimpse(seen, z_where, self.config.glimpse_size)  # (K, G, G)
        return self.infer_from_glimpse(glimpse, z_where, where_loc, where_scale, noise)

    def infer_from_glimpse(
        self,
        glimpse: torch.Tensor,
        z_where: torch.Tensor,
        where_loc: torch.Tensor,
        where_scale: torch.Tensor,
        noise: StepNoise | None,
    ) -> ObjectStep:
        """The rest of ``infer`` once the glimpse (K, G, G) is read at the drawn z_where (K, 3):
        z_what from the encoder, and the object's log-densities."""
        what_loc, what_scale = self.encoder(glimpse.flatten(1))
        z_what = (
            what_loc if noise is None else what_loc + what_scale * noise.normal(self.z_what_dim)
        )
        log_q_where = normal_log_prob(z_where, where_loc, where_scale).sum(-1)
        log_q_what = normal_log_prob(z_what, what_loc, what_scale).sum(-1)
        return ObjectStep(
            values={
                "z_where": z_where,
                "z_where_loc": where_loc,
                "z_where_scale": where_scale,
                "z_what": z_what,
            },
            log_q=log_q_where + log_q_what,
            log_p=self.log_prior_z_where(z_where) + standard_normal_log_prob(z_what).sum(-1),
            log_q_discrete=None,
        )

    def feedback(self, values):
        return torch.cat([values["z_where"], values["z_what"]], dim=-1)

    def sample_prior(self, n, like, generator, within_canvas=False):
        loc, scale = self.z_where_prior_loc, self.z_where_prior_scale
        z_where = loc + scale * standard_normal((n, 3), like, generator)
        if within_canvas:  # the window's centre at most 1 - s from the middle, on each axis
            reach = (1 - z_where[:, :1]).clamp_min(0.0).expand(n, 2)
            low, high = (-reach - loc[1:]) / scale[1:], (reach - loc[1:]) / scale[1:]
            z_where[:, 1:] = loc[1:] + scale[1:] * truncated_normal(low, high, generator)
        return {
            "z_where": z_where,
            "z_what": standard_normal((n, self.z_what_dim), like, generator),
        }

    def canvas_image(self, canvas):
        """The objects' summed intensities, capped at 1 if ``composite`` is capped."""
        return canvas.clamp(max=1.0) if self.config.composite == "capped" else canvas

    def draw(self, values):
        return self.write(values["z_what"], values["z_where"], self.canvas_size)

    def write(self, z_what: torch.Tensor, z_where: torch.Tensor, size: int) -> torch.Tensor:
        """Objects ``z_what`` (M, D) decoded and written into windows ``z_where`` (M, 3) of
        canvases of ``size`` px, each alone, (M, size, size)."""
        return write_glimpse(self.decoder(z_what), z_where, size)

    def at_canvas(self, side):
        if side == self.canvas_size:
            return self
        view = copy.copy(self)  # shares the encoder and decoder; only the canvas differs
        view.canvas_size = side
        return view

    # -- what the verbs, figures and evaluations read ------------------------------------------

    def windows(self, objects: dict[str, torch.Tensor]) -> torch.Tensor:
        """The attention window of each object as a pixel box, (B, N, 4)."""
        return z_where_to_box(objects["z_where"], self.canvas_size)

    def drawn_boxes(self, objects, present=None, threshold: float = 0.1):
        """The tight box of the pixels above ``threshold`` that each object draws (its ink); an
        object that draws nothing above it gets its window."""
        return self.tight_boxes_of_drawings(
            objects, lambda drawn: drawn > threshold, self.windows(objects), present
        )

    def figure_boxes(self, objects):
        """The attention windows: where each step looked."""
        return self.windows(objects)

    @torch.no_grad()
    def describe(self, inference, to_image):
        inks = self.drawn_boxes(inference.objects, inference.z_pres > 0).cpu().numpy()
        windows = self.windows(inference.objects).cpu().numpy()
        z_pres = inference.z_pres.cpu().numpy()
        presence = inference.z_pres_prob.cpu().numpy()
        z_where = inference.objects["z_where"].cpu().numpy()
        z_what = inference.objects["z_what"].cpu().numpy()
        described = []
        for row, mapping in enumerate(to_image):
            box, window = mapping(inks[row]), mapping(windows[row])
            described.append(
                [
                    DetectedObject(
                        step=t,
                        box=[round(float(v), 2) for v in box[t]],
                        window=[round(float(v), 2) for v in window[t]],
                        presence=round(float(presence[row, t]), 6),
                        z_where=[round(float(v), 6) for v in z_where[row, t]],
                        z_what=[round(float(v), 6) for v in z_what[row, t]],
                    )
                    for t in range(z_pres.shape[1])
                    if z_pres[row, t] > 0
                ]
            )
        return described

    def evaluate(self, model, scenes, generator=None, iw_samples=0, progress=False):
        """Count accuracy and confusion, box IoU, ELBO and log p(x) (``airscene.evaluate``)."""
        from airscene.evaluate import evaluate  # it builds on the model, which builds on this

        return evaluate(
            model, scenes, iw_samples=iw_samples, generator=generator, progress=progress
        )

    @torch.no_grad()
    def explain_away(
        self,
        x: torch.Tensor,
        objects: dict[str, torch.Tensor],
        z_pres: torch.Tensor,
        generator: torch.Generator | None = None,
        passes: int = 1,
    ) -> dict[str, torch.Tensor]:
        """``objects`` (an inference of images ``x``) with each present object's z_what read
        again from what the *other* present objects leave unexplained: its glimpse of x minus
        their drawing, at its own z_where. The loop reads object i from x (AIR) or from x minus
        objects 1..i-1 (DAIR), so where objects overlap, an earlier object's glimpse still holds
        part of a later one; here every object is read with every other one removed. Each pass
        redraws the others from the previous pass's z_what. Without ``generator`` z_what is q's
        mean, with it one draw from q."""
        if passes < 1:
            raise ValueError(f"passes must be at least 1, got {passes}")
        objects = dict(objects)
        image, step = z_pres.nonzero(as_tuple=True)
        if len(image) == 0:
            return objects
        z_where = objects["z_where"][image, step]
        z_what = objects["z_what"].clone()
        for _ in range(passes):
            drawn = self.draw({"z_where": z_where, "z_what": z_what[image, step]})  # each alone
            scene = torch.zeros_like(x).index_add(0, image, drawn)  # glimpse objects add up
            unexplained = x[image] - (scene[image] - drawn)  # x minus the other objects
            glimpse = read_glimpse(unexplained, z_where, self.config.glimpse_size)
            loc, scale = self.encoder(glimpse.flatten(1))
            if generator is not None:
                loc = loc + scale * torch.randn(loc.shape, generator=generator).to(loc)
            z_what[image, step] = loc
        objects["z_what"] = z_what
        return objects


@dataclass
class DetectedObject:
    """One 2D object found in an image, in inference order (a record of ``airscene infer``)."""

    step: int  # 0-based inference step that found it (a grid model: its cell, row by row)
    box: list[float]  # x0, y0, x1, y1 (end exclusive) of the object's drawn ink, in input pixels
    window: list[float]  # the attention window (glimpse) in input pixels
    presence: float  # q(z_pres = 1) at this step
    z_where: list[float]  # scale, x, y on the model's canvas (normalised); a rectangle: s, x, y, t
    z_what: list[float]  # appearance code
