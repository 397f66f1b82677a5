"""The objective: learning signals, the REINFORCE estimator, the baseline's isolation."""

import dataclasses
import math

import pytest
import torch
from tiny import model_config

from airscene.densities import bernoulli_log_prob
from airscene.model import AIR, Inference, build_model
from airscene.networks import BaselineNetwork
from airscene.objective import (
    SignalNormaliser,
    air_objective,
    importance_weighted_log_px,
    learning_signals,
    training_inference,
)
from airscene.rows import decided_steps


def toy_inference(
    z_pres: torch.Tensor, logit: torch.Tensor, reward: torch.Tensor, rho: float
) -> Inference:
    """A one-step Inference: z_pres ~ Bernoulli(sigmoid(logit)), log p(x | z) = reward(z)."""
    b = z_pres.shape[0]
    zeros = torch.zeros(b, 1)
    present = z_pres.view(b, 1)
    return Inference(
        z_pres=present,
        z_pres_prob=torch.sigmoid(logit).expand(b, 1),
        objects={"z_where": torch.zeros(b, 1, 3)},
        feedback=torch.zeros(b, 1, 3),
        log_q_z_pres=bernoulli_log_prob(present, logit.expand(b, 1)),
        log_p_z_pres=present * math.log(rho) + (1 - present) * math.log(1 - rho),
        log_q_object=zeros,
        log_p_object=zeros,
        log_q_discrete=zeros,
        log_likelihood=reward,
        canvas=torch.zeros(b, 2, 2),
        scene=torch.zeros(b, 2, 2),
    )


def test_reinforce_gradient_matches_analytic_gradient():
    # E_q[f(z) + log p(z) - log q(z)] for z ~ Bernoulli(sigmoid(theta)) has a closed form; the
    # estimator's mean gradient (surrogate + reparameterised terms) must match its derivative.
    theta = torch.tensor(0.4, requires_grad=True)
    rho, reward_on, reward_off = 0.3, 5.0, 2.0

    prob = torch.sigmoid(theta)
    expected_value = (
        prob * reward_on
        + (1 - prob) * reward_off
        + prob * math.log(rho)
        + (1 - prob) * math.log(1 - rho)
        - (prob * prob.log() + (1 - prob) * (1 - prob).log())
    )
    (analytic,) = torch.autograd.grad(expected_value, theta)

    generator = torch.Generator().manual_seed(0)
    n = 400_000
    z = (torch.rand(n, generator=generator) < torch.sigmoid(theta.detach())).float()
    reward = torch.where(z > 0, reward_on, reward_off)
    # Any baseline the draw cannot move leaves the mean unchanged; the last is the signal had
    # the step stopped (``stopping_signals``), which depends on q(z = 0) but not on z.
    stop = reward_off + math.log(1 - rho) - math.log(1 - float(prob))
    for baseline in (0.0, 3.7, stop):
        inference = toy_inference(z, theta, reward, rho)
        objective = air_objective(inference, torch.full((n, 1), baseline))
        (estimate,) = torch.autograd.grad(-objective.loss, theta)
        assert abs(float(estimate) - float(analytic)) < 0.02 * abs(float(analytic)) + 5e-3


def test_learning_signals_credit_only_later_steps():
    b, n = 2, 3
    weights = torch.tensor([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]])
    inference = Inference(
        z_pres=torch.ones(b, n),
        z_pres_prob=torch.ones(b, n),
        objects={"z_where": torch.zeros(b, n, 3)},
        feedback=torch.zeros(b, n, 3),
        log_q_z_pres=torch.zeros(b, n),
        log_p_z_pres=weights,
        log_q_object=torch.zeros(b, n),
        log_p_object=torch.zeros(b, n),
        log_q_discrete=torch.zeros(b, n),
        log_likelihood=torch.tensor([100.0, 200.0]),
        canvas=torch.zeros(b, 2, 2),
        scene=torch.zeros(b, 2, 2),
    )
    expected = torch.tensor([[107.0, 106.0, 104.0], [256.0, 248.0, 232.0]])
    torch.testing.assert_close(learning_signals(inference), expected)


def small_air() -> AIR:
    torch.manual_seed(0)
    return build_model(
        model_config(
            lstm_size=16, encoder_hidden=16, decoder_hidden=16, predictor_hidden=16, z_what_dim=4
        )
    )


def colour_masked_air() -> AIR:
    """The sprites recipe's model (masked colour objects over the smooth background), tiny."""
    from airscene.config import sprites_run

    model = sprites_run().model
    objects = dataclasses.replace(model.objects, encoder_hidden=16, decoder_hidden=16)
    return build_model(
        dataclasses.replace(model, objects=objects, lstm_size=16, predictor_hidden=16)
    )


@pytest.mark.parametrize("kind", ["grey", "grey-background", "colour-masked"])
def test_stopping_signals_are_exactly_what_a_stopped_step_is_credited(kind):
    # Where a step drew z_pres = 0 its learning signal is that of stopping there, so the signal
    # less the stop's is 0; the first step's is the empty scene's, scored by hand.
    torch.manual_seed(0)
    if kind == "colour-masked":
        model = colour_masked_air()
        shape = (32, 3, 64, 64)
    else:
        background = "smooth" if kind == "grey-background" else "none"
        model = build_model(
            model_config(
                lstm_size=16,
                encoder_hidden=16,
                decoder_hidden=16,
                predictor_hidden=16,
                z_what_dim=4,
                dair=True,
                background=background,
            )
        )
        shape = (32, 50, 50)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3)) * 0.5
    rho = 0.4
    inference = training_inference(
        model, x, torch.Generator().manual_seed(4), z_pres_prior=rho, stop_signals=True
    )
    decided = decided_steps(inference.z_pres)
    stopped = (decided * (1 - inference.z_pres)).bool()
    assert stopped.any() and (inference.z_pres[:, 0] > 0).any()  # both kinds of step occur
    signals = learning_signals(inference)
    torch.testing.assert_close(inference.stop_signals[stopped], signals[stopped])
    assert (inference.stop_signals[decided == 0] == 0).all()
    empty = model.objects.composite(model.objects.blank_canvas(x), inference.background)
    first = (
        model.log_likelihood(x, empty)
        + math.log(1 - rho)
        - torch.log1p(-inference.z_pres_prob[:, 0].detach())
    )
    torch.testing.assert_close(inference.stop_signals[:, 0], first, rtol=1e-5, atol=1e-2)


def test_baseline_has_no_gradient_path_into_the_inference_network():
    model = small_air()
    baseline = BaselineNetwork(2500, model.latent_dim, 8)
    x = torch.rand(8, 50, 50)
    inference = model(x, generator=torch.Generator().manual_seed(1))
    baselines = baseline(
        x.flatten(1), inference.previous_latents().detach(), decided_steps(inference.z_pres)
    )
    objective = air_objective(inference, baselines, SignalNormaliser())

    objective.baseline_loss.backward(retain_graph=True)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in baseline.parameters())

    baseline.zero_grad(set_to_none=True)
    objective.loss.backward()
    assert all(p.grad is None for p in baseline.parameters())
    assert any(
        p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.predictor.parameters()
    )


def test_signal_normaliser_tracks_moments():
    normaliser = SignalNormaliser(momentum=0.0)
    residual = torch.tensor([[10.0, 30.0]])
    out = normaliser(residual, torch.ones_like(residual))
    torch.testing.assert_close(out, torch.tensor([[-1.0, 1.0]]))
    masked = normaliser(
        torch.tensor([[10.0, 1e6]]), torch.tensor([[1.0, 0.0]])
    )  # masked entries ignored
    assert float(normaliser.mean) == 10.0 and float(masked[0, 0]) == 0.0


def test_importance_weighted_bound_is_above_the_elbo():
    model = small_air()
    x = torch.rand(4, 50, 50, generator=torch.Generator().manual_seed(2)) * 0.3
    gen = torch.Generator().manual_seed(3)
    elbo = torch.stack([model(x, generator=gen).elbo for _ in range(200)]).mean(0)
    log_px = importance_weighted_log_px(model, x, samples=200, generator=gen)
    assert torch.all(log_px > elbo)
