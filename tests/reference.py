"""The plain computation of AIR with the paper's 2D objects: the oracle of the tests and the
reference path of the benchmarks.

Every step runs for every image and is masked afterwards; the image enters the LSTM through a
dense product; glimpses are read and written through ``affine_grid`` from the spatial
transformer's 2x3 matrices; every object is drawn in its own step, present or not; each LSTM
starts from an explicit zero state. It shares the model's weights and small parameterisations
(the predictor, the encoder and decoder, q(z_where)'s bound), not its loop: the library's loop
(``AIR.forward``, ``BaselineNetwork.forward``) must give the same latents where a step was
decided, the same losses and gradients up to float rounding, and the same random stream.
It is a test oracle: the library never imports it; ``benchmarks/speed.py`` times against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from airscene.densities import bernoulli_log_prob
from airscene.model import AIR, Inference
from airscene.networks import BaselineNetwork, RecurrentCore
from airscene.objective import Objective, SignalNormaliser, air_objective
from airscene.objects import GlimpseObjects, ObjectStep
from airscene.rows import Generators, StepNoise, decided_steps
from airscene.spatial import safe_scale


def read_theta(z_where: torch.Tensor) -> torch.Tensor:
    """Affine maps (M, 2, 3) from glimpse to canvas coordinates for ``z_where`` (M, 3)."""
    s, x, y = z_where.unbind(-1)
    zero = torch.zeros_like(s)
    return torch.stack([s, zero, x, zero, s, y], dim=-1).view(-1, 2, 3)


def write_theta(z_where: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """Affine maps (M, 2, 3) from a canvas of ``canvas_size`` px to glimpse coordinates: the
    inverse of ``read_theta``."""
    s, x, y = z_where.unbind(-1)
    inv = 1.0 / safe_scale(s, canvas_size)
    zero = torch.zeros_like(s)
    return torch.stack([inv, zero, -x * inv, zero, inv, -y * inv], dim=-1).view(-1, 2, 3)


def read_grid(z_where: torch.Tensor, glimpse_size: int) -> torch.Tensor:
    """``spatial.read_grid`` through ``affine_grid``, (M, G, G, 2)."""
    shape = [z_where.shape[0], 1, glimpse_size, glimpse_size]
    return F.affine_grid(read_theta(z_where), shape, align_corners=False)


def write_grid(z_where: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """``spatial.write_grid`` through ``affine_grid``, (M, H, H, 2)."""
    shape = [z_where.shape[0], 1, canvas_size, canvas_size]
    return F.affine_grid(write_theta(z_where, canvas_size), shape, align_corners=False)


def image_gates(core: RecurrentCore, image_flat: torch.Tensor) -> torch.Tensor:
    """The image's projection into the LSTM gates by the dense product, (B, 4H)."""
    projection = core.image_to_gates
    return torch.addmm(projection.bias, image_flat, projection.weight)


def zero_state(core: RecurrentCore, batch: int, like: torch.Tensor):
    zeros = like.new_zeros(batch, core.hidden)
    return zeros, zeros


def glimpse_object(
    objects: GlimpseObjects, seen: torch.Tensor, params: torch.Tensor, noise: StepNoise | None
) -> ObjectStep:
    """``GlimpseObjects.infer`` with the glimpse read through ``affine_grid``."""
    where_loc, where_scale = objects.where_posterior(params)
    z_where = where_loc if noise is None else where_loc + where_scale * noise.normal(3)
    grid = read_grid(z_where, objects.config.glimpse_size)
    glimpse = F.grid_sample(seen.unsqueeze(1), grid, align_corners=False).squeeze(1)
    return objects.infer_from_glimpse(glimpse, z_where, where_loc, where_scale, noise)


def draw_glimpse_object(objects: GlimpseObjects, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """``GlimpseObjects.draw`` with the glimpse written through ``affine_grid``, (M, H, W)."""
    glimpse = objects.decoder(values["z_what"])
    grid = write_grid(values["z_where"], objects.canvas_size)
    return F.grid_sample(glimpse.unsqueeze(1), grid, align_corners=False).squeeze(1)


def infer(
    model: AIR,
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    sample: bool = True,
    z_pres_prior: float | torch.Tensor | None = None,
) -> Inference:
    """``model(x, generator, sample, z_pres_prior)`` computed plainly: every step for every
    image, masked afterwards."""
    if not isinstance(model.objects, GlimpseObjects):
        raise TypeError("the reference computation is written for the paper's 2D objects")
    config, objects = model.config, model.objects
    rho = torch.as_tensor(
        config.z_pres_prior if z_pres_prior is None else z_pres_prior,
        dtype=x.dtype,
        device=x.device,
    )
    batch = x.shape[0]
    plain_gates = None if config.dair else image_gates(model.core, x.flatten(1))
    state = zero_state(model.core, batch, x)
    canvas = torch.zeros_like(x)
    previous_present = x.new_ones(batch)
    previous = x.new_zeros(batch, model.latent_dim)
    previous[:, -1] = 1.0
    steps: dict[str, list[torch.Tensor]] = {}
    for _ in range(config.max_steps):
        seen = x - canvas if config.dair else x
        gates = image_gates(model.core, seen.flatten(1)) if config.dair else plain_gates
        state = model.core(gates, previous, state)
        z_pres_logit, params = model.predictor(state[0])
        if config.presence_from == "residual":
            z_pres_logit = model.presence(gates)
        noise = StepNoise(generator, batch, x) if sample else None
        z_pres_prob = torch.sigmoid(z_pres_logit)
        if noise is None:
            draw = (z_pres_prob >= 0.5).to(x.dtype)
        else:
            draw = (noise.uniform() < z_pres_prob).to(x.dtype)
        present = draw * previous_present  # decided only while every earlier object was present
        drawn = glimpse_object(objects, seen, params, noise)
        canvas = canvas + present.view(batch, 1, 1) * draw_glimpse_object(objects, drawn.values)
        for name, value in {
            "z_pres": present,
            "z_pres_prob": z_pres_prob,
            "z_pres_logit": z_pres_logit,
            "log_q": drawn.log_q,
            "log_p": drawn.log_p,
            **{f"object.{k}": v for k, v in drawn.values.items()},
        }.items():
            steps.setdefault(name, []).append(value)
        previous_present = present
        previous = torch.cat([objects.feedback(drawn.values), present.unsqueeze(-1)], dim=-1)
        if not config.dair_memory:
            state = zero_state(model.core, batch, x)
            previous = torch.zeros_like(previous)
            previous[:, -1] = 1.0

    every = {name: torch.stack(values, dim=1) for name, values in steps.items()}
    z_pres = every["z_pres"]
    decided = decided_steps(z_pres)
    values = {k[len("object.") :]: v for k, v in every.items() if k.startswith("object.")}
    return Inference(
        z_pres=z_pres,
        z_pres_prob=every["z_pres_prob"],
        objects=values,
        feedback=objects.feedback(values),
        log_q_z_pres=decided * bernoulli_log_prob(z_pres, every["z_pres_logit"]),
        log_p_z_pres=decided * AIR.log_prior_z_pres(z_pres, (rho.log(), torch.log1p(-rho))),
        log_q_object=z_pres * every["log_q"],
        log_p_object=z_pres * every["log_p"],
        log_q_discrete=None,
        log_likelihood=model.log_likelihood(x, canvas),
        canvas=canvas,
        scene=canvas,
    )


def baselines(
    network: BaselineNetwork, image_flat: torch.Tensor, previous_latents: torch.Tensor
) -> torch.Tensor:
    """``BaselineNetwork.forward`` computed plainly: every step for every image, (B, N)."""
    gates = image_gates(network.core, image_flat)
    state = zero_state(network.core, image_flat.shape[0], image_flat)
    values = []
    for t in range(previous_latents.shape[1]):
        state = network.core(gates, previous_latents[:, t], state)
        values.append(network.head(state[0]).squeeze(-1))
    return torch.stack(values, dim=1)


def objective(
    model: AIR,
    baseline: BaselineNetwork,
    normaliser: SignalNormaliser | None,
    x: torch.Tensor,
    generator: Generators,
    rho: float,
) -> tuple[Inference, Objective]:
    """A training step's inference and objective computed plainly (``Trainer.objective`` of the
    library: a trainer whose ``objective`` returns this takes the reference path)."""
    inference = infer(model, x, generator=generator, z_pres_prior=rho)
    values = baselines(baseline, x.flatten(1), inference.previous_latents().detach())
    return inference, air_objective(inference, values, normaliser)
