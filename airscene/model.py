"""Attend, Infer, Repeat (Eslami et al., NIPS 2016), top to bottom.

Generative model (paper eq. 1):

    p(x) = sum_n p_N(n) \\int p(z | n) p(x | z) dz

with n given by the chain z_pres^1, z_pres^2, ... (z_pres^i ~ Bernoulli(rho) while every earlier
z_pres is 1). Each present object's latents follow the object model's prior, the object model
paints the present objects into the canvas, and p(x | z) scores the pixels against it. For the
paper's 2D objects (``airscene.objects.GlimpseObjects``): z_where^i ~ Normal (scale, x, y),
z_what^i ~ N(0, I), each decoded to a glimpse written at z_where^i, the objects summed.

Inference network (paper eq. 2-3): an LSTM attends to one object per step,

    q(z, n | x) = q(z_pres^{n+1} = 0 | z^{1:n}, x) prod_{i=1..n} q(z^i, z_pres^i = 1 | x, z^{1:i-1}).

``AIR.step`` is one factor: the LSTM reads the image and the previous step's latents, its state
predicts z_pres and the parameters of the object's posterior, and the object model draws the
object (for 2D objects: z_where, the glimpse read there, z_what from it). ``AIR.forward`` is the
loop over steps. Once an image's z_pres is 0 its later steps enter no term of p or q, so the loop
runs each step only for the images it is decided for (``airscene.rows.ActiveRows``); the plain
every-step computation it is tested against is ``tests/reference.py``. With ``dair`` the
network reads the residual x - canvas-so-far instead of x (DAIR, paper sec. 3.1).

The model is what the paper says and nothing more: training curricula (a blurred likelihood, the
enumeration of a discrete latent) are the objective's requests (``airscene.objective``), made
of the pieces the model offers (``log_likelihood``, ``enumerate_choices``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from airscene.background import BackgroundDraw, build_background
from airscene.config import ModelConfig, RunConfig
from airscene.densities import (
    bernoulli_log_prob,
    generalised_normal_log_prob,
    normal_log_prob,
)
from airscene.networks import PresenceHead, RecurrentCore, StepPredictor
from airscene.objects import ObjectModel, ObjectStep
from airscene.registry import build_objects
from airscene.rows import ActiveRows, StepNoise

# ---------------------------------------------------------------------------------------------
# What inference and sampling return


@dataclass
class EnumeratedChoices:
    """One discrete latent of every present object, enumerated over its S values, each with the
    rest of the sample as drawn (``ObjectModel.discrete_choices``); zero where no object."""

    logits: torch.Tensor  # (B, N, S) q's logits (with their gradient path)
    log_joint: torch.Tensor  # (B, N, S) detached: log p(x | z with the value) + log p(value)


@dataclass
class Inference:
    """Latents and log-probabilities of one pass of q(z | x) and p(x, z), step-major on dim 1.

    Masked terms are exactly zero: ``log_q_z_pres``/``log_p_z_pres`` count only steps whose
    z_pres was decided (every earlier z_pres was 1); the object terms count only present
    objects. Steps that were not decided are not inferred: their latents are zero.
    """

    z_pres: torch.Tensor  # (B, N) 1 = object present; once 0, 0 for every later step
    z_pres_prob: torch.Tensor  # (B, N) q(z_pres^i = 1 | x, z^{1:i-1})
    objects: dict[
        str, torch.Tensor
    ]  # the object model's latents and posterior parameters, (B, N, ...)
    feedback: torch.Tensor  # (B, N, F) what the next step's network saw of each object
    log_q_z_pres: torch.Tensor  # (B, N)
    log_p_z_pres: torch.Tensor  # (B, N)
    log_q_object: torch.Tensor  # (B, N) log q of the object's latents (discrete ones included)
    log_p_object: torch.Tensor  # (B, N) log p of the object's latents
    log_q_discrete: torch.Tensor | None  # (B, N) the discrete latents' part of log_q_object;
    # None where the object model has no discrete latents
    log_likelihood: torch.Tensor  # (B,) log p(x | z)
    canvas: torch.Tensor  # (B, H, W) the reconstruction: the present objects painted (over the
    # background, if any); (B, C, H, W) in colour
    scene: torch.Tensor  # the object model's canvas that ``canvas`` is the image of (for a
    # renderer: every object's coverage, depth and shade); for summed objects ``canvas`` itself
    choices: EnumeratedChoices | None = None  # set by an objective that enumerates them
    background_log_weight: torch.Tensor | None = None  # (B,) log p(z_bg) - log q(z_bg | x)
    # where p(x | z) has a learned background (``airscene.background``)
    background: torch.Tensor | None = None  # the drawn background's image, like ``canvas``
    stop_signals: torch.Tensor | None = None  # (B, N) detached: each decided step's learning
    # signal had its z_pres been 0 (``objective.stopping_signals``); set by an objective

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
        elbo = self.log_likelihood + self.step_log_weight.sum(1)
        if self.background_log_weight is not None:
            elbo = elbo + self.background_log_weight
        return elbo

    def previous_latents(self) -> torch.Tensor:
        """What each step's network saw of the step before: [feedback, z_pres], (B, N, L);
        zeros for the first step (with z_pres = 1, 'keep going')."""
        latents = torch.cat([self.feedback, self.z_pres.unsqueeze(-1)], dim=-1)
        first = torch.zeros_like(latents[:, :1])
        first[..., -1] = 1.0
        return torch.cat([first, latents[:, :-1]], dim=1)


@dataclass
class PriorSample:
    """Scenes drawn from the generative model."""

    images: torch.Tensor  # (B, H, W) the mean image (canvas clipped to [0, 1])
    z_pres: torch.Tensor  # (B, N)
    objects: dict[str, torch.Tensor]  # the object model's latents, (B, N, ...)

    @property
    def count(self) -> torch.Tensor:
        return self.z_pres.sum(1).long()


class Step(NamedTuple):
    """One step of inference for the K images it runs for (paper eq. 3, one factor)."""

    z_pres: torch.Tensor  # (K,) the draw (or mode) of z_pres^i
    z_pres_prob: torch.Tensor  # (K,) q(z_pres^i = 1 | x, z^{1:i-1})
    log_q_z_pres: torch.Tensor  # (K,)
    log_p_z_pres: torch.Tensor  # (K,)
    objects: ObjectStep  # the object model's draw, for every row (used where z_pres = 1)
    log_q_object: torch.Tensor  # (K,) z_pres * log q of the object's latents
    log_p_object: torch.Tensor  # (K,) z_pres * log p of the object's latents
    log_q_discrete: torch.Tensor | None  # (K,) z_pres * log q of its discrete latents
    state: tuple[torch.Tensor, torch.Tensor]  # the LSTM's (h, c) after this step


class StepTrace:
    """The loop's record: what every step inferred, for the images it ran for. The core's values
    (z_pres and the log-densities) and the object model's latents are kept apart by name, packed
    into one table (``ActiveRows.pack``: one scatter for all) and read back apart."""

    def __init__(self, rows: ActiveRows) -> None:
        self.rows = rows
        self.values: dict[str, list[torch.Tensor]] = {}  # by name, each step's (K_t, ...)
        self.object_names: list[str] = []

    def add(self, t: int, step: Step) -> None:
        """Record step ``t``'s values for the images it ran for (``rows`` as they are now)."""
        if not self.values:
            self.object_names = list(step.objects.values)
            clash = set(self.object_names) & {*_CORE_VALUES, "log_q_discrete"}
            if clash:
                raise ValueError(f"object latents named like the core's values: {sorted(clash)}")
        self.rows.record(t)
        named = {name: getattr(step, name) for name in _CORE_VALUES}
        for name, value in {**named, **step.objects.values}.items():
            if value is not None:
                self.values.setdefault(name, []).append(value)
        if step.log_q_discrete is not None:
            self.values.setdefault("log_q_discrete", []).append(step.log_q_discrete)

    def scattered(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The core's values and the object latents, each name (B, N, ...), zero where a step
        was not decided."""
        self.packed = self.rows.pack(self.values)
        every = self.packed.scatter()
        objects = {name: every.pop(name) for name in self.object_names}
        return every, objects

    def present_objects(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """After ``scattered``: the image of every present object (M,), in step order, and their
        latents (M, ...)."""
        columns = self.packed.columns()
        found = columns["z_pres"].nonzero().squeeze(1)  # of every decided step
        image = self.packed.flat_index[found] // self.rows.steps
        return image, {name: columns[name][found] for name in self.object_names}


# The core's per-step values, in the order they are recorded (log_q_discrete after the object's).
_CORE_VALUES = (
    "z_pres",
    "z_pres_prob",
    "log_q_z_pres",
    "log_p_z_pres",
    "log_q_object",
    "log_p_object",
)


# ---------------------------------------------------------------------------------------------
# The model


class AIR(nn.Module):
    """Attend, Infer, Repeat: ``model(x)`` runs inference on images ``x`` (B, H, W) in [0, 1].

    The recurrent core (LSTM and predictor) owns z_pres and its state; ``objects`` owns every
    other per-object latent and how objects make the image: by default the one ``config.objects``
    names (``airscene.registry``); a model can also be given one directly.
    """

    estimator = "nvil"  # how training gets z_pres's gradient (``airscene.train.Trainer``)
    reads_any_size = False  # its core reads exactly canvas_size**2 pixels
    found_order = "inference step"  # what orders its objects (figures colour boxes by it)

    def __init__(self, config: ModelConfig, objects: ObjectModel | None = None) -> None:
        super().__init__()
        self.config = config
        self.objects = build_objects(config) if objects is None else objects
        # What a step sees of the one before: the object's feedback and its z_pres.
        self.latent_dim = self.objects.feedback_dim + 1
        self.core = RecurrentCore(config.core_input_size, self.latent_dim, config.lstm_size)
        self.predictor = StepPredictor(
            config.lstm_size, config.predictor_hidden, self.objects.initial_params()
        )
        if config.presence_from == "residual":
            self.presence = PresenceHead(4 * config.lstm_size, config.predictor_hidden)
        self.background = build_background(config)

    def core_view(self, image: torch.Tensor) -> torch.Tensor:
        """What the recurrent core reads of images (B, H, W) or (B, C, H, W): every number,
        flattened, or with ``core_pool`` their average over pool x pool pixels."""
        pool = self.config.core_pool
        if pool == 1:
            return image.flatten(1)
        planes = image.unsqueeze(1) if image.dim() == 3 else image
        return nn.functional.avg_pool2d(planes, pool).flatten(1)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one image it reads: (H, W), or (C, H, W) in colour."""
        size, channels = self.config.canvas_size, self.config.channels
        return (size, size) if channels == 1 else (channels, size, size)

    @property
    def most_objects(self) -> int:
        """The most objects a scene of its canvas can hold: N, its steps."""
        return self.config.max_steps

    @staticmethod
    def recipe(run: RunConfig) -> RunConfig:
        """A scene family's run (``SceneFamily.preset``) as this scheme trains it: as it is."""
        return dataclasses.replace(
            run, model=dataclasses.replace(run.model, inference="sequential")
        )

    # -- generative model -------------------------------------------------------------------

    def log_likelihood(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """log p(x | z) summed over pixels, (B,), for the canvas's mean image ``mean``."""
        return pixel_log_likelihood(self.config, x, mean).flatten(1).sum(1)

    @staticmethod
    def log_prior_z_pres(
        z_pres: torch.Tensor, log_rho: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """log p(z_pres^i | z_pres^{i-1} = 1) = log Bernoulli(z_pres^i | rho), elementwise, from
        ``log_rho`` = (log rho, log(1 - rho))."""
        return torch.where(z_pres > 0, log_rho[0], log_rho[1])

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
        """Draw ``n`` scenes from the prior: count, object latents and the image.

        The count comes from the model's geometric prior (``z_pres_prior``, default the model's
        rho) or, given ``counts``, from the categorical over ``counts`` (``count_probs``, default
        uniform): rho is a counting penalty chosen for training (1e-10 makes a second object
        ten billion times less likely than none), so scenes drawn with it are almost always
        empty. Every other latent is drawn from its prior either way; ``within_canvas`` truncates
        it to objects that lie wholly in the image (``ObjectModel.sample_prior``)."""
        like = next(self.parameters())
        if counts is None:
            rho = self.config.z_pres_prior if z_pres_prior is None else z_pres_prior
            z_pres, values = [], []
            present = like.new_ones(n)
            for _ in range(self.config.max_steps):
                keep = torch.rand(n, generator=generator, device=like.device) < rho
                present = present * keep.to(like.dtype)
                z_pres.append(present)
                values.append(self.objects.sample_prior(n, like, generator, within_canvas))
            z_pres = torch.stack(z_pres, 1)  # (n, N)
        else:
            z_pres = self._z_pres_of_counts(n, counts, count_probs, like, generator)
            values = [
                self.objects.sample_prior(n, like, generator, within_canvas)
                for _ in range(self.config.max_steps)
            ]
        objects = {name: torch.stack([v[name] for v in values], 1) for name in values[0]}
        image, step = z_pres.nonzero(as_tuple=True)  # present objects, in image-then-step order
        canvas = self.objects.paint(
            self.objects.blank_canvas(like.new_zeros(n, *self.image_shape)),
            image,
            {name: value[image, step] for name, value in objects.items()},
        )
        background = None
        if self.background is not None:
            background = self.background.sample(n, like, generator)
        images = self.objects.composite(canvas, background)
        return PriorSample(images=images.clamp(0, 1), z_pres=z_pres, objects=objects)

    def _z_pres_of_counts(
        self,
        n: int,
        counts: tuple[int, ...],
        count_probs: tuple[float, ...] | None,
        like: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """(n, N) z_pres of scenes whose counts are drawn from ``counts`` with ``count_probs``."""
        count = draw_counts(
            n, counts, count_probs, self.config.max_steps, "the model's N", generator
        )
        count = count.to(like.device)
        steps = torch.arange(self.config.max_steps, device=like.device)
        return (steps < count.unsqueeze(1)).to(like.dtype)

    # -- inference: one step ----------------------------------------------------------------

    def step(
        self,
        seen: torch.Tensor,
        image_gates: torch.Tensor,
        previous: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None,
        log_rho: tuple[torch.Tensor, torch.Tensor],
        noise: StepNoise | None,
    ) -> Step:
        """One step for K images: what the step sees ``seen`` (K, H, W) and its projection into
        the LSTM's gates ``image_gates`` (K, 4H), the previous step's latents ``previous``
        (K, L), the LSTM ``state`` (None: zero) and the count prior ``log_rho`` (log rho,
        log(1 - rho)). ``noise`` None takes every mode."""
        state = self.core(image_gates, previous, state)
        z_pres_logit, object_params = self.predictor(state[0])
        if self.config.presence_from == "residual":
            z_pres_logit = self.presence(image_gates)
        z_pres_prob = torch.sigmoid(z_pres_logit)
        if noise is None:
            z_pres = (z_pres_prob >= 0.5).to(z_pres_prob.dtype)
        else:
            z_pres = (noise.uniform() < z_pres_prob).to(z_pres_prob.dtype)
        drawn = self.objects.infer(seen, object_params, noise)
        discrete = drawn.log_q_discrete
        log_q = drawn.log_q if discrete is None else drawn.log_q + discrete
        return Step(
            z_pres=z_pres,
            z_pres_prob=z_pres_prob,
            log_q_z_pres=bernoulli_log_prob(z_pres, z_pres_logit),
            log_p_z_pres=self.log_prior_z_pres(z_pres, log_rho),
            objects=drawn,
            log_q_object=z_pres * log_q,
            log_p_object=z_pres * drawn.log_p,
            log_q_discrete=None if discrete is None else z_pres * discrete,
            state=state,
        )

    # -- inference: the loop over steps ------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
        z_pres_prior: float | torch.Tensor | None = None,
    ) -> Inference:
        """Infer the objects in ``x`` (B, H, W) and score them under p and q.

        ``sample=False`` takes the mode of every step instead of a draw (z_pres = [p >= 0.5],
        the object's latents at their posterior means): the deterministic answer for counting.
        ``z_pres_prior`` overrides rho (it may be annealed during training).
        """
        log_rho = self._log_rho(x, z_pres_prior)
        rows = ActiveRows(x.shape[0], self.config.max_steps, x.device)
        trace = StepTrace(rows)
        background = seen_background = None
        read = x  # what the network reads: the image, less its background if it has one
        if self.background is not None:
            background = self.background(x, generator, sample)
            seen_background = background.image.detach()
            read = x - seen_background
        # Plain AIR sees the same image at every step: project it into the gates once.
        image_gates = None if self.config.dair else self.core.project_image(self.core_view(read))
        canvas = self.objects.blank_canvas(x)  # painted step by step for DAIR only
        state, previous = None, self._first_latents(x, x.shape[0])
        for t in range(self.config.max_steps):
            if self.config.dair:  # DAIR reads what is still unexplained
                under = None if seen_background is None else rows.take(seen_background)
                seen = self.objects.unexplained(rows.take(read), rows.take(canvas), under)
                gates = self.core.project_image(self.core_view(seen))
            else:
                seen, gates = rows.take(read), rows.take(image_gates)
            noise = StepNoise(generator, x.shape[0], x, rows) if sample else None
            step = self.step(seen, gates, previous, state, log_rho, noise)
            trace.add(t, step)
            found = step.z_pres.nonzero().squeeze(1)  # only their next step is decided
            if self.config.dair:  # the canvas must be up to date before the next step reads it
                present = {k: v[found] for k, v in step.objects.values.items()}
                canvas = self.objects.paint(canvas, rows.index[found], present)
            state, previous = self._carried(step, found, rows)
        every, objects = trace.scattered()
        if not self.config.dair:  # plain AIR paints its present objects after the loop
            canvas = self.objects.paint(canvas, *trace.present_objects())
        return self._inference(x, canvas, every, objects, background)

    def _log_rho(
        self, like: torch.Tensor, z_pres_prior: float | torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log rho, log(1 - rho)) of the count prior, rho the model's unless overridden."""
        rho = self.config.z_pres_prior if z_pres_prior is None else z_pres_prior
        rho = torch.as_tensor(rho, dtype=like.dtype, device=like.device)
        return rho.log(), torch.log1p(-rho)

    def _first_latents(self, like: torch.Tensor, rows: int) -> torch.Tensor:
        """What the first step sees of a step before it: zeros, and z_pres = 1 (go on), (K, L)."""
        previous = like.new_zeros(rows, self.latent_dim)
        previous[:, -1] = 1.0
        return previous

    def _carried(
        self, step: Step, found: torch.Tensor, rows: ActiveRows
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor]:
        """The LSTM state and previous latents the next step starts from, for the images that
        go on (``found``, their positions among ``rows``, which then keep only them)."""
        h, c, feedback = rows.keep(found, *step.state, self.objects.feedback(step.objects.values))
        if not self.config.dair_memory:  # the next step starts afresh: it sees the residual only
            return None, self._first_latents(feedback, len(rows))
        return (h, c), torch.cat([feedback, feedback.new_ones(len(rows), 1)], dim=1)

    def _inference(
        self,
        x: torch.Tensor,
        canvas: torch.Tensor,
        every: dict[str, torch.Tensor],
        objects: dict[str, torch.Tensor],
        background: BackgroundDraw | None = None,
    ) -> Inference:
        """The loop's record, scattered into (B, N, ...) ``every`` (the core's values) and
        ``objects`` (the object latents), and the painted ``canvas`` (over ``background``, if
        any) scored against ``x``."""
        log_p_object = every["log_p_object"]
        together = self.objects.scene_log_prior(objects, every["z_pres"].detach())
        if together is not None:
            log_p_object = log_p_object + together
        image = self.objects.composite(canvas, None if background is None else background.image)
        return Inference(
            z_pres=every["z_pres"].detach(),  # a discrete draw: no gradient path
            z_pres_prob=every["z_pres_prob"],
            objects=objects,
            feedback=self.objects.feedback(objects),
            log_q_z_pres=every["log_q_z_pres"],
            log_p_z_pres=every["log_p_z_pres"],
            log_q_object=every["log_q_object"],
            log_p_object=log_p_object,
            log_q_discrete=every.get("log_q_discrete"),
            log_likelihood=self.log_likelihood(x, image),
            canvas=image,
            scene=canvas,
            background_log_weight=None if background is None else background.log_weight,
            background=None if background is None else background.image,
        )

    def segmentation(self, x: torch.Tensor, inference: Inference) -> torch.Tensor | None:
        """Per pixel of images ``x``, which object of ``inference`` is seen there (B, H, W), 0
        the background; None where objects have no masks (``ObjectModel.segmentation``)."""
        objects = self.objects.at_canvas(x.shape[-1])
        return objects.segmentation(inference.objects, inference.z_pres)

    # -- what an objective may ask for beyond the ELBO ---------------------------------------

    def enumerate_choices(
        self,
        x: torch.Tensor,
        inference: Inference,
        log_likelihood: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> EnumeratedChoices | None:
        """Each present object's discrete latent at every value, the rest of the sample as
        drawn, scored by ``log_likelihood`` (default the model's); None where the object model
        has no enumerable discrete latent. Where the object model scores a window, log p(x | z)
        of the pixels outside it is the same for every value, so it is left out: it shifts each
        object's values by one constant."""
        score = self.log_likelihood if log_likelihood is None else log_likelihood
        image, step = inference.z_pres.nonzero(as_tuple=True)
        choices = self.objects.discrete_choices(inference.scene, inference.objects, image, step)
        if choices is None:
            return None
        m, values = choices.logits.shape
        with torch.no_grad():
            scenes = choices.images.flatten(0, 1)
            data = x[image]
            if choices.window is not None:  # the values' images differ only there
                data = data.flatten(1).gather(1, choices.window).view(-1, *scenes.shape[1:])
            data = data.repeat_interleave(values, dim=0)
            log_joint = score(data, scenes).view(m, values) + choices.log_prior
        where = (image, step)
        shape = (*inference.z_pres.shape, values)
        return EnumeratedChoices(
            logits=choices.logits.new_zeros(shape).index_put(where, choices.logits),
            log_joint=log_joint.new_zeros(shape).index_put(where, log_joint),
        )


def draw_counts(
    n: int,
    counts: tuple[int, ...],
    count_probs: tuple[float, ...] | None,
    most: int,
    what_most_is: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``n`` counts drawn from ``counts`` with probabilities ``count_probs`` (default uniform),
    (n,) int64; each count must lie in 0..``most`` (``what_most_is`` says why, for the error)."""
    if not counts or min(counts) < 0 or max(counts) > most:
        raise ValueError(f"counts must lie in 0..{most} ({what_most_is}), got {counts}")
    probs = torch.tensor(
        count_probs if count_probs is not None else [1.0] * len(counts), dtype=torch.float64
    )
    if len(probs) != len(counts) or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"count_probs {count_probs} do not fit counts {counts}")
    which = torch.multinomial(probs / probs.sum(), n, replacement=True, generator=generator)
    return torch.tensor(counts)[which]


def pixel_log_likelihood(config: ModelConfig, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """log p(x | z) of every pixel of ``x`` given the canvas's mean image ``mean`` (same shape):
    the model's ``likelihood`` (normal with ``likelihood_sigma``, generalised to the shape
    ``likelihood_power``; or Bernoulli)."""
    if config.likelihood == "normal":
        if config.likelihood_power != 2.0:
            return generalised_normal_log_prob(
                x, mean, config.likelihood_sigma, config.likelihood_power
            )
        sigma = torch.as_tensor(config.likelihood_sigma, dtype=x.dtype, device=x.device)
        return normal_log_prob(x, mean, sigma)
    mean = mean.clamp(1e-4, 1 - 1e-4)
    return x * mean.log() + (1 - x) * (1 - mean).log()


def build_model(config: ModelConfig) -> nn.Module:
    """The model ``config`` describes: the object model ``config.objects`` names, inferred by
    the scheme ``config.inference`` names (``airscene.registry.INFERENCE_SCHEMES``: AIR's
    sequential loop, or the spatially parallel grid). The one constructor that training,
    loading, evaluation and the experiments use."""
    from airscene.registry import inference_scheme

    scheme = inference_scheme(config.inference, config.objects.kind)
    return scheme(config, build_objects(config))
