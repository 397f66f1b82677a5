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

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from airscene.config import GlimpseConfig, ModelConfig
from airscene.densities import normal_log_prob, standard_normal_log_prob
from airscene.networks import (
    ConvGlimpseDecoder,
    ConvGlimpseEncoder,
    GlimpseDecoder,
    GlimpseEncoder,
)
from airscene.rows import StepNoise, standard_normal
from airscene.spatial import read_glimpse, write_glimpse


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
        self, n: int, like: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """``n`` objects' latents drawn from the prior, the same names as ``ObjectStep.values``."""
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
        """The mean image (B, H, W) of a canvas: what p(x | z) scores."""
        return canvas

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


class GlimpseObjects(ObjectModel):
    """The paper's 2D objects. z_where = (scale, x, y) ~ Normal places a window; q(z_where) is
    predicted by the core, the glimpse is read at z_where and encoded to q(z_what); z_what ~
    N(0, I) is decoded to a glimpse that the spatial transformer writes into the window."""

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
        self.register_buffer(
            "z_where_prior_loc", torch.tensor(config.z_where_prior_loc), persistent=False
        )
        self.register_buffer(
            "z_where_prior_scale", torch.tensor(config.z_where_prior_scale), persistent=False
        )

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

    def sample_prior(self, n, like, generator):
        z_where = self.z_where_prior_loc + self.z_where_prior_scale * standard_normal(
            (n, 3), like, generator
        )
        return {
            "z_where": z_where,
            "z_what": standard_normal((n, self.z_what_dim), like, generator),
        }

    def draw(self, values):
        glimpse = self.decoder(values["z_what"])  # (M, G, G)
        return write_glimpse(glimpse, values["z_where"], self.canvas_size)


def _rendered(objects, model: ModelConfig) -> ObjectModel:
    from airscene.objects3d import RenderedObjects  # imported here: it builds on this module

    return RenderedObjects(objects, model.canvas_size, model.max_steps)


# The object models, by the ``kind`` of their config (``airscene.config.OBJECT_CONFIGS``).
OBJECT_MODELS: dict[str, Callable[[object, ModelConfig], ObjectModel]] = {
    "glimpse": lambda objects, model: GlimpseObjects(objects, model.canvas_size),
    "render3d": _rendered,
}


def build_objects(config: ModelConfig) -> ObjectModel:
    """The object model ``config.objects`` describes."""
    return OBJECT_MODELS[config.objects.kind](config.objects, config)
