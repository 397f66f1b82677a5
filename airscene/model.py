"""Attend, Infer, Repeat (Eslami et al., NIPS 2016), top to bottom.

Generative model (paper eq. 1):

    p(x) = sum_n p_N(n) \\int p(z | n) p(x | z) dz

with n given by the chain z_pres^1, z_pres^2, ... (z_pres^i ~ Bernoulli(rho) while every earlier
z_pres is 1), and for each present object i: z_where^i ~ Normal (scale, x, y), z_what^i ~ N(0, I).
Each object's glimpse is decoded from z_what^i, written into the canvas at z_where^i by the
spatial transformer, the objects are summed, and p(x | z) scores the pixels.

Inference network (paper eq. 2-3): an LSTM attends to one object per step,

    q(z, n | x) = q(z_pres^{n+1} = 0 | z^{1:n}, x) prod_{i=1..n} q(z^i, z_pres^i = 1 | x, z^{1:i-1}),

each step predicting z_pres and z_where from its state, reading a glimpse at z_where and
encoding it to z_what. Steps after the first z_pres = 0 are masked out of every term. With
``dair`` the network reads the residual x - canvas-so-far instead of x (DAIR, paper sec. 3.1).

The appearance of objects (z_what, its prior and posterior, and how an object is drawn) sits
behind ``ObjectModel``: ``GlimpseObjects`` is the paper's learned 2D decoder; a fixed renderer
with other per-object latents plugs into the same recurrent loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from airscene.config import ModelConfig
from airscene.networks import GlimpseDecoder, GlimpseEncoder, RecurrentCore, WherePredictor
from airscene.spatial import read_glimpse, write_glimpse

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(value: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(value | loc, scale)."""
    return -0.5 * ((value - loc) / scale) ** 2 - scale.log() - _LOG_SQRT_2PI


def bernoulli_log_prob(value: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """Elementwise log Bernoulli(value | sigmoid(logit)), stable for large |logit|."""
    return value * F.logsigmoid(logit) + (1 - value) * F.logsigmoid(-logit)


def decided_steps(z_pres: torch.Tensor) -> torch.Tensor:
    """(B, N) 1 where step i's z_pres was actually decided: every earlier object was present."""
    return torch.cat([torch.ones_like(z_pres[:, :1]), z_pres[:, :-1]], dim=1)


def _standard_normal(
    shape: torch.Size | tuple, like: torch.Tensor, generator: torch.Generator | None
):
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


# ---------------------------------------------------------------------------------------------
# Objects: what an object looks like and how it is drawn (pluggable)


class ObjectModel(nn.Module):
    """The per-object appearance: prior and posterior of z_what, and drawing an object.

    The recurrent inference loop and the objective only use this interface, so a different
    object model (e.g. a fixed renderer with identity and pose latents) replaces this one
    without touching them.
    """

    z_what_dim: int

    def infer(
        self, glimpse: torch.Tensor, generator: torch.Generator | None, sample: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Glimpse (B, G, G) -> z_what (B, D) drawn from q(z_what | glimpse), and its log q (B,)."""
        raise NotImplementedError

    def log_prior(self, z_what: torch.Tensor) -> torch.Tensor:
        """log p(z_what) per object, (B,)."""
        raise NotImplementedError

    def sample_prior(
        self, n: int, like: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """n draws of z_what from its prior, (n, D)."""
        raise NotImplementedError

    def render(
        self,
        z_what: torch.Tensor,
        z_where: torch.Tensor,
        canvas_size: int,
        reference: bool = False,
    ) -> torch.Tensor:
        """The image (B, H, W) of one object with appearance z_what placed at z_where.

        ``reference`` asks for the plain implementation, where an object model has a faster one.
        """
        raise NotImplementedError


class GlimpseObjects(ObjectModel):
    """The paper's 2D objects: z_what ~ N(0, I); a decoder draws a glimpse that the spatial
    transformer writes into the canvas; an encoder maps a read glimpse to q(z_what)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.z_what_dim = config.z_what_dim
        pixels = config.glimpse_size**2
        self.encoder = GlimpseEncoder(pixels, config.encoder_hidden, config.z_what_dim)
        self.decoder = GlimpseDecoder(
            config.z_what_dim,
            config.decoder_hidden,
            config.glimpse_size,
            config.decoder_output_bias,
        )

    def infer(self, glimpse, generator, sample):
        loc, scale = self.encoder(glimpse.flatten(1))
        z_what = loc + scale * _standard_normal(loc.shape, loc, generator) if sample else loc
        return z_what, normal_log_prob(z_what, loc, scale).sum(-1)

    def log_prior(self, z_what):
        return (-0.5 * z_what**2 - _LOG_SQRT_2PI).sum(-1)

    def sample_prior(self, n, like, generator):
        return _standard_normal((n, self.z_what_dim), like, generator)

    def render(self, z_what, z_where, canvas_size, reference: bool = False):
        return write_glimpse(self.decoder(z_what), z_where, canvas_size, reference)


# ---------------------------------------------------------------------------------------------
# What one pass of inference returns


@dataclass
class Inference:
    """Latents and log-probabilities of one pass of q(z | x) and p(x, z), step-major on dim 1.

    Masked terms are exactly zero: ``log_q_z_pres``/``log_p_z_pres`` count only steps whose
    previous z_pres was 1 (the step's z_pres was actually decided); the z_where/z_what terms in
    ``log_q_object``/``log_p_object`` count only present objects.
    """

    z_pres: torch.Tensor  # (B, N) 1 = object present; once 0, 0 for every later step
    z_pres_prob: torch.Tensor  # (B, N) q(z_pres^i = 1 | x, z^{1:i-1})
    z_where: torch.Tensor  # (B, N, 3) scale, x, y
    z_where_loc: torch.Tensor  # (B, N, 3)
    z_where_scale: torch.Tensor  # (B, N, 3)
    z_what: torch.Tensor  # (B, N, D)
    log_q_z_pres: torch.Tensor  # (B, N)
    log_p_z_pres: torch.Tensor  # (B, N)
    log_q_object: torch.Tensor  # (B, N) log q(z_where^i) + log q(z_what^i), present objects
    log_p_object: torch.Tensor  # (B, N) log p(z_where^i) + log p(z_what^i), present objects
    log_likelihood: torch.Tensor  # (B,) log p(x | z)
    canvas: torch.Tensor  # (B, H, W) the reconstruction: the sum of the present objects

    @property
    def count(self) -> torch.Tensor:
        """Number of objects found per image, (B,) int64."""
        return self.z_pres.sum(1).long()

    @property
    def step_log_weight(self) -> torch.Tensor:
        """Per step, log p - log q of the latents decided at that step, (B, N)."""
        return self.log_p_z_pres - self.log_q_z_pres + self.log_p_object - self.log_q_object

    @property
    def elbo(self) -> torch.Tensor:
        """The single-sample evidence lower bound log p(x, z) - log q(z | x), (B,)."""
        return self.log_likelihood + self.step_log_weight.sum(1)

    def previous_latents(self) -> torch.Tensor:
        """What each step's network saw of the step before: [z_where, z_what, z_pres], (B, N, L);
        zeros for the first step (with z_pres = 1, 'keep going')."""
        latents = torch.cat([self.z_where, self.z_what, self.z_pres.unsqueeze(-1)], dim=-1)
        first = torch.zeros_like(latents[:, :1])
        first[..., -1] = 1.0
        return torch.cat([first, latents[:, :-1]], dim=1)


@dataclass
class PriorSample:
    """Scenes drawn from the generative model."""

    images: torch.Tensor  # (B, H, W) the mean image (canvas clipped to [0, 1])
    z_pres: torch.Tensor  # (B, N)
    z_where: torch.Tensor  # (B, N, 3)
    z_what: torch.Tensor  # (B, N, D)

    @property
    def count(self) -> torch.Tensor:
        return self.z_pres.sum(1).long()


# ---------------------------------------------------------------------------------------------
# The model


class AIR(nn.Module):
    """Attend, Infer, Repeat: ``model(x)`` runs inference on images ``x`` (B, H, W) in [0, 1]."""

    def __init__(self, config: ModelConfig, objects: ObjectModel | None = None) -> None:
        super().__init__()
        self.config = config
        self.objects = objects if objects is not None else GlimpseObjects(config)
        image_dim = config.canvas_size**2
        self.latent_dim = 3 + self.objects.z_what_dim + 1  # z_where, z_what, z_pres of last step
        self.core = RecurrentCore(image_dim, self.latent_dim, config.lstm_size)
        self.predictor = WherePredictor(
            config.lstm_size,
            config.predictor_hidden,
            config.z_where_prior_loc,
            config.z_where_max_scale,
        )
        self.register_buffer(
            "z_where_prior_loc", torch.tensor(config.z_where_prior_loc), persistent=False
        )
        self.register_buffer(
            "z_where_prior_scale", torch.tensor(config.z_where_prior_scale), persistent=False
        )

    # -- generative model -------------------------------------------------------------------

    def log_likelihood(self, x: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
        """log p(x | z) summed over pixels, (B,)."""
        if self.config.likelihood == "normal":
            sigma = torch.as_tensor(self.config.likelihood_sigma, dtype=x.dtype, device=x.device)
            return normal_log_prob(x, canvas, sigma).flatten(1).sum(1)
        mean = canvas.clamp(1e-4, 1 - 1e-4)
        return (x * mean.log() + (1 - x) * (1 - mean).log()).flatten(1).sum(1)

    def log_prior_z_where(self, z_where: torch.Tensor) -> torch.Tensor:
        return normal_log_prob(z_where, self.z_where_prior_loc, self.z_where_prior_scale).sum(-1)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, z_pres_prior: float | None = None
    ) -> PriorSample:
        """Draw ``n`` scenes from the prior: count, boxes and decoded objects."""
        rho = self.config.z_pres_prior if z_pres_prior is None else z_pres_prior
        like = self.z_where_prior_loc
        steps, size = self.config.max_steps, self.config.canvas_size
        z_pres, z_where, z_what = [], [], []
        canvas = like.new_zeros(n, size, size)
        present = like.new_ones(n)
        for _ in range(steps):
            present = present * (torch.rand(n, generator=generator, device=like.device) < rho).to(
                like.dtype
            )
            where = self.z_where_prior_loc + self.z_where_prior_scale * _standard_normal(
                (n, 3), like, generator
            )
            what = self.objects.sample_prior(n, like, generator)
            canvas = canvas + present.view(n, 1, 1) * self.objects.render(what, where, size)
            z_pres.append(present)
            z_where.append(where)
            z_what.append(what)
        return PriorSample(
            images=canvas.clamp(0, 1),
            z_pres=torch.stack(z_pres, 1),
            z_where=torch.stack(z_where, 1),
            z_what=torch.stack(z_what, 1),
        )

    # -- inference: the recurrent loop --------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
        z_pres_prior: float | torch.Tensor | None = None,
        reference: bool = False,
    ) -> Inference:
        """Infer the objects in ``x`` (B, H, W) and score them under p and q.

        ``sample=False`` takes the mode of every step instead of a draw (z_pres = [p >= 0.5],
        z_where and z_what at their posterior means): the deterministic answer for counting.
        ``z_pres_prior`` overrides rho (it may be annealed during training). ``reference=True``
        runs the plain path (affine_grid sampling, dense image products, each object drawn in
        its step) that the fast path is tested against: same latents, same numbers up to float
        rounding, same random draws in the same order.
        """
        config = self.config
        batch, steps, size = x.shape[0], config.max_steps, config.canvas_size
        rho = torch.as_tensor(
            config.z_pres_prior if z_pres_prior is None else z_pres_prior,
            dtype=x.dtype,
            device=x.device,
        )
        # Plain AIR's objects do not change what later steps see, so they are drawn all at once
        # after the loop; DAIR reads x - canvas, so its canvas must grow step by step.
        draw_in_loop = config.dair or reference

        # Plain AIR sees the same image at every step: project it into the gates once.
        image_gates = None if config.dair else self.core.project_image(x.flatten(1), reference)
        state = self.core.initial_state(batch, x)
        canvas = torch.zeros_like(x)
        previous_present = x.new_ones(batch)
        previous = x.new_zeros(batch, self.latent_dim)
        previous[:, -1] = 1.0

        keys = (
            "z_pres",
            "z_pres_prob",
            "z_pres_logit",
            "z_where",
            "z_where_loc",
            "z_where_scale",
            "z_what",
        )
        per_step: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
        log_q_what = []
        for _ in range(steps):
            seen = x - canvas if config.dair else x  # DAIR reads what is still unexplained
            gates = (
                self.core.project_image(seen.flatten(1), reference) if config.dair else image_gates
            )
            state = self.core(gates, previous, state)
            z_pres_logit, where_loc, where_scale = self.predictor(state[0])

            # z_pres: decided only while every earlier object was present.
            z_pres_prob = torch.sigmoid(z_pres_logit)
            if sample:
                uniform = torch.rand(batch, generator=generator, device=x.device, dtype=x.dtype)
                draw = (uniform < z_pres_prob).to(x.dtype)
            else:
                draw = (z_pres_prob >= 0.5).to(x.dtype)
            present = draw * previous_present

            # z_where by reparameterisation, then the glimpse at z_where and z_what from it.
            noise = _standard_normal(where_loc.shape, where_loc, generator) if sample else 0.0
            z_where = where_loc + where_scale * noise
            glimpse = read_glimpse(seen, z_where, config.glimpse_size, reference)
            z_what, log_q = self.objects.infer(glimpse, generator, sample)
            if draw_in_loop:
                canvas = canvas + present.view(batch, 1, 1) * self.objects.render(
                    z_what, z_where, size, reference
                )

            for key, value in zip(
                keys,
                (present, z_pres_prob, z_pres_logit, z_where, where_loc, where_scale, z_what),
                strict=True,
            ):
                per_step[key].append(value)
            log_q_what.append(log_q)
            previous_present = present
            previous = torch.cat([z_where, z_what, present.unsqueeze(-1)], dim=-1)

        z_pres, z_pres_prob, z_pres_logit, z_where, where_loc, where_scale, z_what = (
            torch.stack(per_step[key], dim=1) for key in keys
        )  # (B, N) x 3, (B, N, 3), (B, N, 3), (B, N, 3), (B, N, D)
        if not draw_in_loop:
            # Only present objects reach the canvas, so only they are decoded and drawn (on
            # Multi-MNIST a third of all steps), each added to its image in step order.
            found = z_pres.flatten().nonzero().squeeze(1)  # (K,) indices into B * N
            objects = self.objects.render(
                z_what.flatten(0, 1)[found], z_where.flatten(0, 1)[found], size
            )  # (K, H, W)
            canvas = canvas.index_add(0, found // steps, objects)

        # The terms of every step at once (paper eq. 2-3); masks as described in ``Inference``.
        decided = decided_steps(z_pres)
        log_q_where = normal_log_prob(z_where, where_loc, where_scale).sum(-1)
        log_p_object = self.log_prior_z_where(z_where) + self.objects.log_prior(z_what)
        return Inference(
            z_pres=z_pres,
            z_pres_prob=z_pres_prob,
            z_where=z_where,
            z_where_loc=where_loc,
            z_where_scale=where_scale,
            z_what=z_what,
            log_q_z_pres=decided * bernoulli_log_prob(z_pres, z_pres_logit),
            log_p_z_pres=decided * (z_pres * rho.log() + (1 - z_pres) * torch.log1p(-rho)),
            log_q_object=z_pres * (log_q_where + torch.stack(log_q_what, dim=1)),
            log_p_object=z_pres * log_p_object,
            log_likelihood=self.log_likelihood(x, canvas),
            canvas=canvas,
        )
