"""The library's loop against the plain reference computation (``tests/reference.py``): same
weights and noise, same numbers.

The loop computes each step only for the images whose z_pres is still decided, builds sampling
grids directly, multiplies mostly-blank images sparsely (embedding_bag), holds the image
projections as (in, out), starts each LSTM from its zero state with the latents' columns alone
and draws plain AIR's objects after the loop, only those present. None of that may change the
mathematics: latents of decided steps, losses, every gradient and the random stream agree with
the reference (every step for every image, affine_grid, dense products, every object drawn in
its step) to float rounding, for AIR and DAIR.
"""

import dataclasses

import pytest
import reference
import torch
from tiny import model_config

from airscene.config import RunConfig, TrainConfig
from airscene.model import build_model
from airscene.networks import (
    BaselineNetwork,
    ImageProjection,
    _sparse_pays,
    _SparseImageProduct,
)
from airscene.objective import SignalNormaliser, air_objective
from airscene.rows import decided_steps
from airscene.spatial import read_grid, write_grid
from airscene.train import Trainer

CONFIG = model_config(lstm_size=64, encoder_hidden=64, decoder_hidden=64, predictor_hidden=64)


def blank_canvas_images(batch: int = 48, seed: int = 1) -> torch.Tensor:
    """Bright squares on a blank canvas: about 6% of pixels lit, like Multi-MNIST."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, 50, 50)
    for i in range(batch):
        for _ in range(int(torch.randint(0, 3, (1,), generator=g))):
            r, c = torch.randint(0, 40, (2,), generator=g).tolist()
            x[i, r : r + 10, c : c + 10] = torch.rand(10, 10, generator=g)
    return x


def losses_and_gradients(model, baseline, x, plain: bool):
    model.zero_grad(set_to_none=True)
    baseline.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(7)
    if plain:
        inference = reference.infer(model, x, generator=generator)
        baselines = reference.baselines(
            baseline, x.flatten(1), inference.previous_latents().detach()
        )
    else:
        inference = model(x, generator=generator)
        baselines = baseline(
            x.flatten(1), inference.previous_latents().detach(), decided_steps(inference.z_pres)
        )
    objective = air_objective(inference, baselines, SignalNormaliser())
    (objective.loss + objective.baseline_loss).backward()
    grads = {
        f"{prefix}.{name}": p.grad.clone()
        for prefix, net in (("model", model), ("baseline", baseline))
        for name, p in net.named_parameters()
        if p.grad is not None
    }
    return inference, objective, grads, generator.get_state()


@pytest.mark.parametrize(
    "dair, presence_from, dair_memory",
    [
        (False, "state", True),
        (True, "state", True),
        (True, "residual", True),
        (True, "state", False),
    ],
)
def test_fast_path_equals_reference_path(dair, presence_from, dair_memory):
    config = dataclasses.replace(
        CONFIG, dair=dair, presence_from=presence_from, dair_memory=dair_memory
    )
    torch.manual_seed(0)
    model, baseline = build_model(config), BaselineNetwork(2500, 3 + 50 + 1, 32)
    with torch.no_grad():  # q(z_pres = 1) near 1/2, so every count and every mask occurs
        model.predictor.net[-1].bias[0] = 0.0
        if presence_from == "residual":
            model.presence.net[-1].bias[0] = 0.0
    x = blank_canvas_images()
    assert _sparse_pays(x.flatten(1)), "the test images must take the sparse product"

    fast, fast_objective, fast_grads, fast_rng = losses_and_gradients(
        model, baseline, x, plain=False
    )
    ref, ref_objective, ref_grads, ref_rng = losses_and_gradients(model, baseline, x, plain=True)

    assert torch.equal(fast.z_pres, ref.z_pres)
    assert torch.equal(fast_rng, ref_rng), "both paths must draw the same random numbers"
    assert set(fast.count.tolist()) == {0, 1, 2, 3}
    # The fast path infers only decided steps; it leaves the latents of the others at zero.
    decided = decided_steps(ref.z_pres).bool()
    assert not decided.all(), "some images must stop before the last step"
    latents = {
        "z_pres_prob": (fast.z_pres_prob, ref.z_pres_prob),
        "feedback": (fast.feedback, ref.feedback),
        **{name: (fast.objects[name], ref.objects[name]) for name in ref.objects},
    }
    assert fast.objects.keys() == ref.objects.keys()
    for name, (fast_value, ref_value) in latents.items():
        torch.testing.assert_close(fast_value[decided], ref_value[decided], rtol=1e-5, atol=1e-4)
        assert not fast_value[~decided].any(), name
    for name in ("log_q_z_pres", "log_p_z_pres", "log_q_object", "log_p_object", "canvas"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fast.elbo, ref.elbo, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(fast_objective.loss, ref_objective.loss, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(fast_objective.baseline_loss, ref_objective.baseline_loss)
    every = [*model.parameters(), *baseline.parameters()]
    assert fast_grads.keys() == ref_grads.keys() and len(fast_grads) == len(every)
    for name, grad in fast_grads.items():
        scale = ref_grads[name].abs().max().clamp_min(1e-3)
        assert torch.isfinite(grad).all(), name
        assert float((grad - ref_grads[name]).abs().max() / scale) < 1e-3, name


@pytest.mark.parametrize("dair", [False, True])
def test_fast_path_when_every_image_stops_at_the_first_step(dair):
    # No image has an object: steps 2 and 3 have no rows to compute, yet they draw the same
    # random numbers as the reference path, so the generator ends in the same state.
    config = dataclasses.replace(CONFIG, dair=dair)
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        model.predictor.net[-1].bias[0] = -30.0
    x = blank_canvas_images(8)
    results = {}
    for plain in (False, True):
        generator = torch.Generator().manual_seed(5)
        infer = reference.infer if plain else lambda model, x, generator: model(x, generator)
        results[plain] = (infer(model, x, generator=generator), generator.get_state())
    (fast, fast_rng), (ref, ref_rng) = results[False], results[True]
    assert not fast.z_pres.any() and not ref.z_pres.any()
    assert torch.equal(fast_rng, ref_rng)
    torch.testing.assert_close(fast.elbo, ref.elbo)
    assert not fast.canvas.any()
    assert not fast.objects["z_where"][:, 1:].any()  # never inferred


def test_trainers_on_both_paths_stay_together():
    # Whole steps (objective, NVIL moments, fused Adam) from the same seed take the same path.
    # Adam divides by the gradient's own size, so a gradient that is zero up to rounding may
    # move its weight by up to the learning rate either way: a handful of weights differ.
    config = RunConfig(
        model=CONFIG, train=TrainConfig(batch_size=24, seed=3, threads=None, eval_every=0)
    )
    images = (blank_canvas_images(200, seed=2) * 255).to(torch.uint8)
    fast = Trainer(config, torch.device("cpu"))
    ref = ReferenceTrainer(config, torch.device("cpu"))
    for _ in range(5):
        assert fast.train_step(images, None) and ref.train_step(images, None)
    fast_loss, fast_elbo, _ = fast.take_means()
    ref_loss, ref_elbo, _ = ref.take_means()
    assert abs(fast_loss - ref_loss) < 1e-3 and abs(fast_elbo - ref_elbo) < 1e-3

    def weights(trainer):
        return torch.cat([p.flatten() for p in trainer.model.state_dict().values()])

    difference = (weights(fast) - weights(ref)).abs()
    assert float((difference > 1e-5).float().mean()) < 1e-4
    assert float(difference.max()) < 5 * config.train.learning_rate


def test_direct_grids_equal_affine_grid():
    g = torch.Generator().manual_seed(0)
    z_where = torch.rand(50, 3, generator=g) * torch.tensor([0.8, 2, 2]) + torch.tensor(
        [0.1, -1, -1]
    )
    z_where[:5, 0] *= -1  # negative scales (mirrored windows) too
    torch.testing.assert_close(read_grid(z_where, 28), reference.read_grid(z_where, 28))
    torch.testing.assert_close(write_grid(z_where, 50), reference.write_grid(z_where, 50))


def test_sparse_product_only_for_mostly_blank_images():
    x = blank_canvas_images()
    assert _sparse_pays(x.flatten(1))
    assert not _sparse_pays(torch.rand(8, 2500))  # photographs, noise: the dense product
    assert not _sparse_pays(x.flatten(1).requires_grad_())  # DAIR's residual needs a gradient


def test_sparse_product_equals_dense_product_with_blank_images_and_pixels():
    # Blank images (empty sums in the forward) and pixels lit in no image (empty rows of the
    # weight gradient) included.
    torch.manual_seed(0)
    x = blank_canvas_images(16, seed=3).flatten(1)
    x[3] = 0.0
    x[:, :50] = 0.0
    weight = torch.randn(2500, 40, requires_grad=True)
    bias = torch.randn(40, requires_grad=True)
    upstream = torch.randn(16, 40)
    sparse = _SparseImageProduct.apply(x, weight, bias)
    sparse_grads = torch.autograd.grad((sparse * upstream).sum(), (weight, bias))
    dense = torch.addmm(bias, x, weight)
    dense_grads = torch.autograd.grad((dense * upstream).sum(), (weight, bias))
    torch.testing.assert_close(sparse, dense)
    torch.testing.assert_close(sparse[3], bias.detach().expand(40))
    for got, expected in zip(sparse_grads, dense_grads, strict=True):
        torch.testing.assert_close(got, expected)
    assert not sparse_grads[0][:50].any()
    # A batch with no lit pixel at all.
    empty = _SparseImageProduct.apply(torch.zeros(4, 2500), weight, bias)
    (grad_weight,) = torch.autograd.grad(empty.sum(), weight)
    torch.testing.assert_close(empty, bias.detach().expand(4, 40))
    assert grad_weight.shape == weight.shape and not grad_weight.any()


def test_image_projection_saves_and_loads_the_linear_layout():
    torch.manual_seed(0)
    projection = ImageProjection(30, 8, bound=0.1)
    state = projection.state_dict()
    assert state["weight"].shape == (8, 30)  # as nn.Linear(30, 8) stores it
    linear = torch.nn.Linear(30, 8)
    linear.load_state_dict(state)
    x = torch.rand(4, 30)
    torch.testing.assert_close(projection(x), linear(x))
    other = ImageProjection(30, 8, bound=0.1)
    other.load_state_dict(linear.state_dict())
    torch.testing.assert_close(other(x), linear(x))
    # The same seed draws the same initial weights as a linear layer drawn uniformly would.
    torch.manual_seed(5)
    drawn = torch.empty(8, 30).uniform_(-0.1, 0.1)
    torch.manual_seed(5)
    torch.testing.assert_close(ImageProjection(30, 8, bound=0.1).state_dict()["weight"], drawn)


class ReferenceTrainer(Trainer):
    """A ``Trainer`` whose steps take the reference computation."""

    def objective(self, x, rho):
        return reference.objective(self.model, self.baseline, self.normaliser, x, self.noise, rho)
