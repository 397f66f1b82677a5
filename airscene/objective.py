"""The objective: the ELBO, its gradient estimator, and evaluation bounds.

A training step's inference (``training_inference``) is the model's pass of q with what the
objective asks for on top of the paper's ELBO: the exact enumeration of a discrete latent where
the object model can enumerate it, and, early in training, a coarse-to-fine likelihood (image
and reconstruction blurred alike, so a renderer's pose gradients reach objects that do not yet
overlap their image). The model stays what the paper says; these are curricula.

Gradients of the single-sample ELBO (paper sec. 2.2):
  * continuous latents (z_where, z_what) are reparameterised, so -ELBO backpropagates directly;
  * the discrete z_pres^i, and any discrete latent of a present object (its identity, for an
    object model that has one), get the likelihood-ratio (REINFORCE) term
        (L_i - b_i) * d log q(z_pres^i, discrete latents of object i | ...)
    with NVIL variance reduction (Mnih & Gregor 2014): L_i is the learning signal of step i,
    only the terms z_pres^i influences (that step's and every later step's log p - log q, and
    log p(x | z)), b_i a learned data-dependent baseline regressed onto L_i, and optionally
    (L_i - b_i) centred and scaled by running moments; or (``--z-pres-baseline stop``) b_i =
    S_i + the learned network's guess of L_i - S_i, S_i the exact signal of stopping at step i
    (``stopping_signals``), the residual not normalised. Object i's discrete latents are drawn
    after z_pres^i and influence the same terms, so they share L_i, b_i and the normalisation;
  * unless the object model can enumerate such a latent (the 3D objects' shape, one of three):
    then q's gradient is the exact expectation over its values, each scored as a re-rendered
    scene with the rest of the sample held fixed (``local_expectation``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from airscene.model import AIR, EnumeratedChoices, Inference
from airscene.rows import Generators, decided_steps, uniform

if TYPE_CHECKING:
    from airscene.grid import GridAIR


def training_inference(
    model: AIR,
    x: torch.Tensor,
    generator: Generators = None,
    z_pres_prior: float | None = None,
    likelihood_blur: float = 0.0,
    forward: Callable[..., Inference] | None = None,
    stop_signals: bool = False,
) -> Inference:
    """One pass of q on the minibatch ``x`` for a training step: ``model``'s inference with
    ``generator``'s noise and count prior ``z_pres_prior``, its log p(x | z) taken on images
    blurred by ``likelihood_blur`` pixels (> 0: the coarse-to-fine curriculum), and every
    enumerable discrete latent scored at each value (``Inference.choices``). ``forward`` runs
    the pass in the model's place (a data-parallel wrapper of it). ``stop_signals``: also
    each step's learning signal had it stopped (``Inference.stop_signals``)."""
    inference = (forward or model)(x, generator=generator, z_pres_prior=z_pres_prior)
    score = model.log_likelihood
    if likelihood_blur > 0:

        def score(data: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
            blurred = (gaussian_blur(data, likelihood_blur), gaussian_blur(mean, likelihood_blur))
            return model.log_likelihood(*blurred)

        inference.log_likelihood = score(x, inference.canvas)
    inference.choices = model.enumerate_choices(x, inference, score)
    if stop_signals:
        rho = model.config.z_pres_prior if z_pres_prior is None else z_pres_prior
        inference.stop_signals = stopping_signals(model, x, inference, score, math.log1p(-rho))
    return inference


@torch.no_grad()
def stopping_signals(
    model: AIR,
    x: torch.Tensor,
    inference: Inference,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    log_p_stop: float,
) -> torch.Tensor:
    """Per decided step i, (B, N), the learning signal L_i the sample would have had with
    z_pres^i = 0: log p(x | the objects of steps before i) + log p(z_pres^i = 0) - log
    q(z_pres^i = 0), exactly (stopping decides nothing later); zero where i was not decided.

    It is a baseline for z_pres^i that the draw of z_pres^i cannot move, so the likelihood-ratio
    estimator stays unbiased; where the step stopped, L_i - S_i is exactly 0, and where it went
    on, L_i - S_i is the value of that object and the later ones against stopping there (the
    trainer adds NVIL's network, which learns E[L_i - S_i | what came before]). A learned
    baseline must guess the whole scene's log p(x | z) (thousands of nats on a colour image) to
    give an extra, transparent object's cost of a few tens of nats a visible sign; this one
    cancels it exactly. ``score`` is the
    training step's log p(x | z) (its likelihood blur, if any); ``log_p_stop`` log(1 - rho)."""
    z_pres = inference.z_pres
    decided = decided_steps(z_pres)
    # log q(z_pres^i = 0) from log q(z_pres^i = 1) where it went on (no log(1 - sigmoid) of a
    # saturated probability), and the step's own term where it stopped.
    went_on = z_pres > 0
    log_q_drawn = inference.log_q_z_pres.detach()
    log_q_stop = torch.where(
        went_on, torch.log(-torch.expm1(log_q_drawn.clamp(max=-1e-30))), log_q_drawn
    ).clamp_min(-100.0)
    canvas = model.objects.blank_canvas(x)
    columns = []
    for t in range(z_pres.shape[1]):
        image = model.objects.composite(canvas, inference.background)
        columns.append(score(x, image))
        on = went_on[:, t].nonzero().squeeze(1)
        if len(on) == 0 or t == z_pres.shape[1] - 1:  # no later prefix is scored
            break
        values = {name: value[on, t] for name, value in inference.objects.items()}
        canvas = model.objects.paint(canvas, on, values)
    log_likelihood = torch.stack(columns, 1)
    log_likelihood = F.pad(log_likelihood, (0, z_pres.shape[1] - log_likelihood.shape[1]))
    return decided * (log_likelihood + log_p_stop - log_q_stop)


def learning_signals(inference: Inference) -> torch.Tensor:
    """L_i = log p(x | z) + sum_{j >= i} (log p - log q)_j, detached, (B, N).

    Terms of steps before i do not depend on z_pres^i, so they are left out (per-step credit
    assignment); what they would add is noise with zero mean.
    """
    weights = inference.step_log_weight.detach()
    later_or_same = weights.flip(1).cumsum(1).flip(1)
    return inference.log_likelihood.detach().unsqueeze(1) + later_or_same


class SignalNormaliser(nn.Module):
    """NVIL's running centring and scaling of the residual learning signal L - b.

    The batch moments are those of the whole minibatch: under data-parallel training each
    process holds a shard of it, and ``reduce_sum`` (a sum over the processes, in place) makes
    every process update the running moments with the same numbers.
    """

    def __init__(
        self,
        momentum: float = 0.9,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.momentum = momentum
        self.reduce_sum = reduce_sum
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("variance", torch.ones(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def _sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.reduce_sum is None else self.reduce_sum(tensor)

    @torch.no_grad()
    def forward(self, residual: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Update the moments with the masked ``residual`` (B, N) and return it normalised."""
        count, total = self._sum(torch.stack([mask.sum(), (residual * mask).sum()])).unbind()
        count = count.clamp_min(1.0)
        mean = total / count
        variance = self._sum((((residual - mean) ** 2) * mask).sum()) / count
        if self.training:
            keep = torch.where(self.initialised, self.momentum, 0.0)
            self.mean.copy_(keep * self.mean + (1 - keep) * mean)
            self.variance.copy_(keep * self.variance + (1 - keep) * variance)
            self.initialised.fill_(True)
        return (residual - self.mean) / self.variance.clamp_min(1.0).sqrt()


def local_expectation(choices: EnumeratedChoices, z_pres: torch.Tensor) -> torch.Tensor:
    """Per step (B, N), a surrogate whose gradient is that of E_q(c)[log p(x, c | rest) -
    log q(c)] over the enumerated values c of each present object's discrete latent, the rest
    of the sample held as drawn (a local expectation gradient, Titsias & Lazaro-Gredilla 2015):
    sum_c q(c) * [log p(x, c | rest) - log q(c)], the bracket detached. It moves q towards
    the values' posterior instead of weighting one draw by a noisy scene-level signal."""
    log_q = torch.log_softmax(choices.logits, dim=-1)
    value = (choices.log_joint - log_q).detach()
    value = value - value.max(-1, keepdim=True).values  # a constant per object: no gradient
    return z_pres * (log_q.exp() * value).sum(-1)


@dataclass
class Objective:
    """What one training step optimises, and what it reports."""

    loss: torch.Tensor  # scalar: -(ELBO + REINFORCE surrogate), for the model's parameters
    baseline_loss: torch.Tensor | None  # scalar: squared error of the baselines, for the
    # baseline network; None for an estimator without one
    elbo: torch.Tensor  # (B,) detached


def air_objective(
    inference: Inference,
    baselines: torch.Tensor,
    normaliser: SignalNormaliser | None = None,
) -> Objective:
    """The AIR training objective for one batch.

    ``baselines`` (B, N) come from ``BaselineNetwork`` on detached inputs; they enter the
    model's loss only detached, so the baseline is trained by ``baseline_loss`` alone.
    """
    decided = decided_steps(inference.z_pres)
    signals = learning_signals(inference)
    residual = signals - baselines.detach()
    if normaliser is not None:
        residual = normaliser(residual, decided)
    surrogate = (decided * residual * inference.log_q_z_pres).sum(1)
    if inference.choices is not None:  # discrete latents enumerated: their exact expectation
        surrogate = surrogate + local_expectation(inference.choices, inference.z_pres).sum(1)
        if inference.log_q_discrete is not None:
            # The ELBO's -log q(drawn value) has a gradient of zero mean: cancelled, not noise.
            surrogate = surrogate + inference.log_q_discrete.sum(1)
    elif inference.log_q_discrete is not None:  # present objects' discrete latents
        surrogate = surrogate + (residual * inference.log_q_discrete).sum(1)
    elbo = inference.elbo
    loss = -(elbo + surrogate).mean()
    baseline_loss = (decided * (baselines - signals) ** 2).sum(1).mean()
    return Objective(loss=loss, baseline_loss=baseline_loss, elbo=elbo.detach())


@torch.no_grad()
def importance_weighted_log_px(
    model: AIR,
    x: torch.Tensor,
    samples: int = 100,
    generator: torch.Generator | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """log p(x) estimated by importance sampling with q as proposal (the IWAE bound), (B,):
    log (1/K) sum_k p(x, z_k) / q(z_k | x). Tighter than the ELBO, and equal to it at K = 1."""
    rows_per_chunk = max(1, chunk // samples)
    estimates = []
    for start in range(0, x.shape[0], rows_per_chunk):
        block = x[start : start + rows_per_chunk]
        repeated = block.repeat_interleave(samples, dim=0)
        elbo = model(repeated, generator=generator).elbo.view(block.shape[0], samples)
        estimates.append(torch.logsumexp(elbo, dim=1) - math.log(samples))
    return torch.cat(estimates)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``images`` (B, H, W) blurred by a Gaussian of ``sigma`` pixels (truncated at 3 sigma,
    edges replicated): separable, so it is G_H @ image @ G_W^T with one small matrix per axis
    (a wide kernel costs no more than a narrow one, unlike a convolution)."""
    height, width = images.shape[-2:]
    rows = _blur_matrix(height, sigma, images.dtype, images.device)
    columns = rows if width == height else _blur_matrix(width, sigma, images.dtype, images.device)
    return rows @ images @ columns.T


def _blur_matrix(size: int, sigma: float, dtype: torch.dtype, device: torch.device):
    """(size, size): row i holds the Gaussian's weights of the pixels that blur into pixel i,
    the taps that fall off the edge added to the edge pixel (replicate padding)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    source = (torch.arange(size, device=device).unsqueeze(1) + offsets.long()).clamp(0, size - 1)
    matrix = torch.zeros(size, size, dtype=dtype, device=device)
    return matrix.scatter_add_(1, source, kernel.expand(size, -1).contiguous())


def cellwise_objective(
    model: GridAIR,
    x: torch.Tensor,
    generator: torch.Generator | None,
    z_pres_prior: float | None = None,
    kl_weight: float = 1.0,
) -> tuple[Inference, Objective]:
    """The ELBO's gradient for spatially parallel inference (``airscene.grid``), with each
    cell's z_pres summed out exactly instead of sampled.

    Cells are independent under q, so the ELBO's gradient with respect to cell k's q(z_pres)
    and object is that of E_{z_pres^k}[ELBO | the other cells as drawn]: two terms, z_pres^k = 0
    and 1, each a re-scored patch (the others' drawing held fixed and detached). Summed over
    the cells, the surrogate

        sum_k  q_k(1) [log p(x | others + object k) + log rho + log p/q(object k) - log q_k(1)]
             + q_k(0) [log p(x | others) + log(1 - rho) - log q_k(0)]

    has the ELBO's gradient in expectation, with no score-function noise at all (a local
    expectation gradient, Titsias & Lazaro-Gredilla 2015): no baseline is needed. Each object
    is trained through its drawing in proportion to q_k(1), which is the exact expectation of
    what a sample would give it. The likelihood differs between the two values only in the
    cell's patch, so only patches are scored.

    ``kl_weight`` scales the objects' log p/q (a warm-up below 1 lets the glimpses learn to
    draw before an object must pay its full cost), and a background's.

    The returned inference is scored with the objects' patches detached. Where it has a
    background (``airscene.masked_grid``), the loss adds that background's own term: the whole
    image's log p(x | z) with the objects held as drawn, plus ``kl_weight`` times its log p / q
    (its only gradient: the cells read it detached)."""
    cells = model.propose(x, generator)
    probs = torch.sigmoid(cells.logits)
    z_pres = (uniform(probs.shape, probs, generator) < probs).to(x.dtype).detach()
    present, absent = model.patch_log_likelihoods(x, cells, z_pres)
    rho = model.config.z_pres_prior if z_pres_prior is None else z_pres_prior
    log_q1, log_q0 = F.logsigmoid(cells.logits), F.logsigmoid(-cells.logits)
    value_on = present - absent + math.log(rho) + kl_weight * (cells.log_p - cells.log_q) - log_q1
    value_off = math.log1p(-rho) - log_q0
    surrogate = (probs * value_on + (1 - probs) * value_off).sum(1)
    # The objects as drawn, held fixed: their gradient is the surrogate's alone.
    drawn = replace(cells, patches=cells.patches.detach())
    inference = model.inference_of(x, drawn, z_pres, z_pres_prior)
    elbo = inference.elbo.detach()
    loss = -surrogate.mean()
    if inference.background_log_weight is not None:
        # A background (``airscene.masked_grid``) learns from the whole image's likelihood with
        # the objects as drawn, and its own log p / q, warmed up as the objects' is.
        background = inference.log_likelihood + kl_weight * inference.background_log_weight
        loss = loss - background.mean()
    return inference, Objective(loss=loss, baseline_loss=None, elbo=elbo)
