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


class StepNoise:
    """The random draws of one inference step, for the images ``rows`` of a batch of ``batch``.

    Every draw is made for the whole batch and the rows taken from it, so the random stream
    does not depend on which images are still being inferred: the fast path, which skips the
    images whose objects have all been found, draws exactly what the reference path draws.
    """

    def __init__(
        self,
        generator: torch.Generator | None,
        batch: int,
        like: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> None:
        self.generator, self.batch, self.like, self.rows = generator, batch, like, rows

    def _rows(self, draws: torch.Tensor) -> torch.Tensor:
        return draws if self.rows is None else draws[self.rows]

    def uniform(self) -> torch.Tensor:
        """U(0, 1) draws, (K,)."""
        like = self.like
        draws = torch.rand(
            self.batch, generator=self.generator, device=like.device, dtype=like.dtype
        )
        return self._rows(draws)

    def normal(self, dim: int) -> torch.Tensor:
        """Standard-normal draws, (K, dim)."""
        return self._rows(_standard_normal((self.batch, dim), self.like, self.generator))


def _draw_z_pres_and_where(
    z_pres_logit: torch.Tensor,
    where_loc: torch.Tensor,
    where_scale: torch.Tensor,
    noise: StepNoise | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q(z_pres = 1), a z_pres draw and a reparameterised z_where draw for one step, in the
    order both inference paths must draw them (the mode of each where ``noise`` is None)."""
    z_pres_prob = torch.sigmoid(z_pres_logit)
    if noise is None:
        return z_pres_prob, (z_pres_prob >= 0.5).to(z_pres_prob.dtype), where_loc
    z_pres = (noise.uniform() < z_pres_prob).to(z_pres_prob.dtype)
    return z_pres_prob, z_pres, where_loc + where_scale * noise.normal(3)


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
        self, glimpse: torch.Tensor, noise: StepNoise | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Glimpse (B, G, G) -> z_what (B, D) drawn from q(z_what | glimpse) with ``noise`` (its
        mode where ``noise`` is None), and its log q (B,)."""
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

    def infer(self, glimpse, noise):
        loc, scale = self.encoder(glimpse.flatten(1))
        z_what = loc if noise is None else loc + scale * noise.normal(self.z_what_dim)
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
    ``log_q_object``/``log_p_object`` count only present objects. Steps after an image's first
    z_pres = 0 are not inferred by the fast path: their latents are zero (the reference path
    computes them, but nothing uses them).
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
        ``z_pres_prior`` overrides rho (it may be annealed during training).

        The fast path computes each step only for the images still being inferred (every
        earlier z_pres was 1), draws plain AIR's objects once after the loop and only those
        present, and samples glimpses through grids built directly. ``reference=True`` runs the
        plain path it is tested against (every step for every image, affine_grid, dense image
        products, each object drawn in its step): same latents where a step was decided, same
        numbers up to float rounding, the same random draws in the same order.
        """
        rho = torch.as_tensor(
            self.config.z_pres_prior if z_pres_prior is None else z_pres_prior,
            dtype=x.dtype,
            device=x.device,
        )
        if reference:
            return self._infer_every_step(x, generator, sample, rho)
        return self._infer_decided_steps(x, generator, sample, rho)

    def _step_terms(
        self,
        rho: torch.Tensor,
        z_pres: torch.Tensor,
        z_pres_logit: torch.Tensor,
        z_where: torch.Tensor,
        where_loc: torch.Tensor,
        where_scale: torch.Tensor,
        z_what: torch.Tensor,
        log_q_what: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """log q(z_pres), log p(z_pres), and log q / log p of (z_where, z_what) counted only for
        present objects, for steps whose z_pres was decided (paper eq. 2-3); any leading shape."""
        log_q_where = normal_log_prob(z_where, where_loc, where_scale).sum(-1)
        log_p_object = self.log_prior_z_where(z_where) + self.objects.log_prior(z_what)
        return (
            bernoulli_log_prob(z_pres, z_pres_logit),
            z_pres * rho.log() + (1 - z_pres) * torch.log1p(-rho),
            z_pres * (log_q_where + log_q_what),
            z_pres * log_p_object,
        )

    def _infer_decided_steps(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None,
        sample: bool,
        rho: torch.Tensor,
    ) -> Inference:
        """The fast path: each step runs only on the images whose step is decided.

        Once an image's z_pres is 0, its later steps enter no term of p or q (they are masked),
        so they are not computed: with 0-2 digits and 3 steps that is a third of the step work.
        Each step's values are kept for its rows only and scattered into (B, N) once at the end;
        latents of undecided steps are left at zero.
        """
        config = self.config
        batch, steps, size = x.shape[0], config.max_steps, config.canvas_size
        # Plain AIR sees the same image at every step: project it into the gates once.
        image_gates = None if config.dair else self.core.project_image(x.flatten(1))
        canvas = torch.zeros_like(x)  # grows step by step for DAIR only
        rows = torch.arange(batch, device=x.device)  # images whose current step is decided
        state = None  # zero: the core's shortcut for a first step
        previous = x.new_zeros(batch, self.latent_dim)
        previous[:, -1] = 1.0

        step_present, step_values, step_index = [], [], []
        for t in range(steps):
            every_row = rows.numel() == batch
            image = x if every_row else x[rows]
            if config.dair:  # DAIR reads what is still unexplained
                seen = image - (canvas if every_row else canvas[rows])
            else:
                seen = image
            if config.dair:
                gates = self.core.project_image(seen.flatten(1))
            else:
                gates = image_gates if every_row else image_gates[rows]
            state = self.core(gates, previous, state)
            z_pres_logit, where_loc, where_scale = self.predictor(state[0])

            noise = StepNoise(generator, batch, x, None if every_row else rows) if sample else None
            z_pres_prob, z_pres, z_where = _draw_z_pres_and_where(
                z_pres_logit, where_loc, where_scale, noise
            )
            glimpse = read_glimpse(seen, z_where, config.glimpse_size)
            z_what, log_q_what = self.objects.infer(glimpse, noise)

            step_present.append(z_pres)
            step_values.append(
                torch.cat(
                    [
                        torch.stack([z_pres_prob, z_pres_logit, log_q_what], dim=1),
                        z_where,
                        where_loc,
                        where_scale,
                        z_what,
                    ],
                    dim=1,
                )
            )
            step_index.append(rows * steps + t)

            # The next step is decided only for the images with an object at this one.
            found = z_pres.nonzero().squeeze(1)
            if config.dair:  # the canvas must be up to date before the next step reads it
                objects = self.objects.render(z_what[found], z_where[found], size)
                canvas = canvas.index_add(0, rows[found], objects)
            if found.numel() < rows.numel():
                rows = rows[found]
                state = (state[0][found], state[1][found])
                z_where, z_what = z_where[found], z_what[found]
            previous = torch.cat([z_where, z_what, z_where.new_ones(rows.numel(), 1)], dim=1)

        z_pres = torch.cat(step_present)  # (K,): every decided step of every image
        values = torch.cat(step_values)  # (K, F)
        index = torch.cat(step_index)  # (K,) into B * N
        z_pres_prob, z_pres_logit, log_q_what = values[:, :3].unbind(1)
        z_where, where_loc, where_scale, z_what = values[:, 3:].split(
            [3, 3, 3, self.objects.z_what_dim], dim=1
        )
        if not config.dair:
            # Only present objects reach the canvas, so only they are decoded and drawn (on
            # Multi-MNIST a third of all steps), each added to its image in step order.
            found = z_pres.nonzero().squeeze(1)
            objects = self.objects.render(z_what[found], z_where[found], size)
            canvas = canvas.index_add(0, index[found] // steps, objects)
        terms = self._step_terms(
            rho, z_pres, z_pres_logit, z_where, where_loc, where_scale, z_what, log_q_what
        )
        # Into (B, N) at once; z_pres is a discrete draw and carries no gradient.
        decided = torch.cat([values, torch.stack(terms, dim=1)], dim=1)
        every = decided.new_zeros(batch * steps, decided.shape[1]).index_copy(0, index, decided)
        every = every.view(batch, steps, -1)
        z_where, where_loc, where_scale, z_what = every[..., 3:-4].split(
            [3, 3, 3, self.objects.z_what_dim], dim=-1
        )
        z_pres = z_pres.new_zeros(batch * steps).index_copy(0, index, z_pres)
        return Inference(
            z_pres=z_pres.view(batch, steps),
            z_pres_prob=every[..., 0],
            z_where=z_where,
            z_where_loc=where_loc,
            z_where_scale=where_scale,
            z_what=z_what,
            log_q_z_pres=every[..., -4],
            log_p_z_pres=every[..., -3],
            log_q_object=every[..., -2],
            log_p_object=every[..., -1],
            log_likelihood=self.log_likelihood(x, canvas),
            canvas=canvas,
        )

    def _infer_every_step(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None,
        sample: bool,
        rho: torch.Tensor,
    ) -> Inference:
        """The plain reference path: every step for every image, masked afterwards."""
        config = self.config
        batch, steps, size = x.shape[0], config.max_steps, config.canvas_size
        image_gates = None if config.dair else self.core.project_image(x.flatten(1), True)
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
            "log_q_what",
        )
        per_step: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
        for _ in range(steps):
            seen = x - canvas if config.dair else x  # DAIR reads what is still unexplained
            gates = self.core.project_image(seen.flatten(1), True) if config.dair else image_gates
            state = self.core(gates, previous, state)
            z_pres_logit, where_loc, where_scale = self.predictor(state[0])

            # z_pres: decided only while every earlier object was present.
            noise = StepNoise(generator, batch, x) if sample else None
            z_pres_prob, draw, z_where = _draw_z_pres_and_where(
                z_pres_logit, where_loc, where_scale, noise
            )
            present = draw * previous_present

            # z_where by reparameterisation, then the glimpse at z_where and z_what from it.
            glimpse = read_glimpse(seen, z_where, config.glimpse_size, reference=True)
            z_what, log_q_what = self.objects.infer(glimpse, noise)
            canvas = canvas + present.view(batch, 1, 1) * self.objects.render(
                z_what, z_where, size, reference=True
            )
            for key, value in zip(
                keys,
                (
                    present,
                    z_pres_prob,
                    z_pres_logit,
                    z_where,
                    where_loc,
                    where_scale,
                    z_what,
                    log_q_what,
                ),
                strict=True,
            ):
                per_step[key].append(value)
            previous_present = present
            previous = torch.cat([z_where, z_what, present.unsqueeze(-1)], dim=-1)

        z_pres, z_pres_prob, z_pres_logit, z_where, where_loc, where_scale, z_what, log_q_what = (
            torch.stack(per_step[key], dim=1) for key in keys
        )
        decided = decided_steps(z_pres)
        log_q_z_pres, log_p_z_pres, log_q_object, log_p_object = self._step_terms(
            rho, z_pres, z_pres_logit, z_where, where_loc, where_scale, z_what, log_q_what
        )
        return Inference(
            z_pres=z_pres,
            z_pres_prob=z_pres_prob,
            z_where=z_where,
            z_where_loc=where_loc,
            z_where_scale=where_scale,
            z_what=z_what,
            log_q_z_pres=decided * log_q_z_pres,
            log_p_z_pres=decided * log_p_z_pres,
            log_q_object=log_q_object,
            log_p_object=log_p_object,
            log_likelihood=self.log_likelihood(x, canvas),
            canvas=canvas,
        )
