"""The model: shapes, masking of steps after z_pres = 0, DAIR, prior samples, determinism."""

from types import SimpleNamespace

import pytest
import torch
from tiny import model_config

from airscene.config import ConfigError
from airscene.densities import bernoulli_log_prob, generalised_normal_log_prob, normal_log_prob
from airscene.model import AIR, build_model, pixel_log_likelihood
from airscene.rows import decided_steps
from airscene.spatial import read_glimpse

SMALL = dict(
    lstm_size=32,
    encoder_hidden=32,
    decoder_hidden=32,
    predictor_hidden=32,
    z_what_dim=6,
    baseline_lstm_size=16,
)


def small_model(seed: int = 0, **overrides) -> AIR:
    torch.manual_seed(seed)
    model = build_model(model_config(**{**SMALL, **overrides}))
    with torch.no_grad():  # z_pres probability about 1/2: every count shows up in a batch
        model.predictor.net[-1].bias[0] = 0.0
    return model


def images(batch: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 50, 50, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dair", [False, True])
def test_shapes_and_counts(dair):
    model = small_model(dair=dair)
    out = model(images(), generator=torch.Generator().manual_seed(0))
    b, n = 64, model.config.max_steps
    assert (
        out.z_pres.shape == (b, n)
        and out.objects["z_where"].shape == (b, n, 3)
        and out.objects["z_what"].shape == (b, n, 6)
    )
    assert (
        out.canvas.shape == (b, 50, 50)
        and out.log_likelihood.shape == (b,)
        and out.elbo.shape == (b,)
    )
    # Once z_pres is 0 it stays 0, and every count 0..N occurs for p = 1/2.
    assert torch.all(out.z_pres[:, 1:] <= out.z_pres[:, :-1])
    assert set(out.count.tolist()) == set(range(n + 1))
    assert torch.isfinite(out.elbo).all()


@pytest.mark.parametrize("dair", [False, True])
def test_steps_after_z_pres_zero_contribute_nothing(dair):
    model = small_model(dair=dair)
    x = images()
    out = model(x, generator=torch.Generator().manual_seed(3))
    decided = torch.cat([torch.ones_like(out.z_pres[:, :1]), out.z_pres[:, :-1]], dim=1)
    # z_pres terms exist only where the step's z_pres was decided (all earlier objects present)
    assert torch.all(out.log_q_z_pres[decided == 0] == 0) and torch.all(
        out.log_p_z_pres[decided == 0] == 0
    )
    assert torch.all(out.log_q_z_pres[decided == 1] < 0)
    # z_where/z_what terms exist only for present objects
    absent = out.z_pres == 0
    assert torch.all(out.log_q_object[absent] == 0) and torch.all(out.log_p_object[absent] == 0)
    assert torch.all(out.log_q_object[~absent] != 0)
    # the canvas is the sum of the present objects only
    rendered = torch.stack(
        [
            model.objects.draw({k: v[:, t] for k, v in out.objects.items()})
            for t in range(out.z_pres.shape[1])
        ],
        1,
    )
    torch.testing.assert_close(out.canvas, (out.z_pres[..., None, None] * rendered).sum(1))


@pytest.mark.parametrize("dair", [False, True])
def test_absent_objects_get_no_gradient_from_the_bound(dair):
    model = small_model(dair=dair)
    appearance = list(model.objects.parameters())
    for bias, expect_gradient in ((-30.0, False), (30.0, True)):
        with torch.no_grad():
            model.predictor.net[-1].bias[0] = bias  # z_pres never / always 1
        out = model(images(16), generator=torch.Generator().manual_seed(4))
        assert set(out.count.tolist()) == ({3} if expect_gradient else {0})
        grads = torch.autograd.grad(out.elbo.sum(), appearance, allow_unused=True)
        touched = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        assert touched == expect_gradient


def test_deterministic_mode_and_seeded_sampling():
    model = small_model()
    x = images(8)
    a = model(x, sample=False)
    b = model(x, sample=False)
    torch.testing.assert_close(a.objects["z_where"], b.objects["z_where"])
    torch.testing.assert_close(a.z_pres, (a.z_pres_prob >= 0.5).float().cumprod(1))
    s1 = model(x, generator=torch.Generator().manual_seed(9))
    s2 = model(x, generator=torch.Generator().manual_seed(9))
    s3 = model(x, generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(s1.elbo, s2.elbo)
    assert not torch.allclose(s1.objects["z_what"], s3.objects["z_what"])


def test_dair_reads_the_residual():
    # With DAIR the second step's network input changes when the first object changes;
    # plain AIR's second-step gates see only x and the previous latents.
    air, dair = small_model(dair=False), small_model(dair=True)
    dair.load_state_dict(air.state_dict())
    x = images(4)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a, d = air(x, generator=gen()), dair(x, generator=gen())
    # Same weights and noise: step 1 is identical, later steps differ only through the residual.
    torch.testing.assert_close(a.objects["z_where"][:, 0], d.objects["z_where"][:, 0])
    assert not torch.allclose(a.objects["z_where"][:, 1], d.objects["z_where"][:, 1])


def test_dair_presence_from_the_residual_ignores_the_recurrent_state():
    # presence_from residual: a step's z_pres probability is a function of what it sees alone,
    # so it cannot count the objects before it; the object's posterior still reads the state.
    x = images(8)
    for presence_from, state_matters in (("state", True), ("residual", False)):
        model = small_model(dair=True, presence_from=presence_from)
        gates = model.core.project_image(x.flatten(1))
        previous = torch.zeros(8, model.latent_dim)
        log_rho = (torch.tensor(0.5).log(), torch.tensor(0.5).log())
        states = [None, (torch.randn(8, 32), torch.randn(8, 32))]
        steps = [model.step(x, gates, previous, s, log_rho, noise=None) for s in states]
        same = torch.allclose(steps[0].z_pres_prob, steps[1].z_pres_prob)
        assert same != state_matters, presence_from
        assert not torch.allclose(
            steps[0].objects.values["z_where"], steps[1].objects.values["z_where"]
        )
    with pytest.raises(ValueError, match="needs DAIR"):
        model_config(dair=False, presence_from="residual")


def test_dair_without_memory_steps_see_the_residual_alone():
    # --no-dair-memory: a step's answer depends on what it sees only. An image whose first
    # object was painted away gets, at step 2, the answer step 1 gives for the residual itself.
    model = small_model(dair=True, dair_memory=False)
    x = images(6)
    first = model(x, sample=False)
    painted = model.objects.draw({k: v[:, 0] for k, v in first.objects.items()})
    residual = x - painted
    again = model(residual, sample=False)
    found = first.z_pres[:, 0] > 0
    assert found.any()
    torch.testing.assert_close(first.z_pres_prob[found, 1], again.z_pres_prob[found, 0])
    torch.testing.assert_close(
        first.objects["z_where"][found, 1], again.objects["z_where"][found, 0]
    )
    # With memory (the paper's DAIR) the same comparison fails: the state carries step 1.
    remembering = small_model(dair=True)
    first = remembering(x, sample=False)
    painted = remembering.objects.draw({k: v[:, 0] for k, v in first.objects.items()})
    again = remembering(x - painted, sample=False)
    assert not torch.allclose(
        first.objects["z_where"][found, 1], again.objects["z_where"][found, 0]
    )
    with pytest.raises(ValueError, match="needs DAIR"):
        model_config(dair=False, dair_memory=False)


def test_prior_samples():
    model = small_model()
    drawn = model.sample(500, generator=torch.Generator().manual_seed(0), z_pres_prior=0.5)
    assert drawn.images.shape == (500, 50, 50)
    assert float(drawn.images.min()) >= 0 and float(drawn.images.max()) <= 1
    histogram = torch.bincount(drawn.count, minlength=4).float() / 500
    # Bernoulli(1/2) chain: p(n) = 1/2, 1/4, 1/8, 1/8
    torch.testing.assert_close(
        histogram, torch.tensor([0.5, 0.25, 0.125, 0.125]), atol=0.06, rtol=0
    )
    blank = drawn.count == 0
    assert float(drawn.images[blank].abs().max()) == 0.0
    # z_where's prior reaches off the canvas, so a few objects fall outside it; most are seen.
    assert float((drawn.images[~blank].amax(dim=(1, 2)) > 0).float().mean()) > 0.8


def test_log_probs():
    value, loc, scale = torch.tensor([0.3]), torch.tensor([0.1]), torch.tensor([0.5])
    torch.testing.assert_close(
        normal_log_prob(value, loc, scale), torch.distributions.Normal(loc, scale).log_prob(value)
    )
    logit = torch.tensor([-30.0, 0.3, 30.0])
    for z in (0.0, 1.0):
        expected = torch.distributions.Bernoulli(logits=logit).log_prob(torch.full_like(logit, z))
        torch.testing.assert_close(bernoulli_log_prob(torch.full_like(logit, z), logit), expected)


def test_generalised_normal_likelihood():
    """Shape 2 is the normal of the same sigma; every shape is a density (integrates to 1), has
    the normal's width where |x - mean| = sigma * sqrt(2), and punishes large misfits more and
    small ones less as the shape grows."""
    x = torch.linspace(-4, 4, 40_001, dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    torch.testing.assert_close(
        generalised_normal_log_prob(x, zero, 0.3, 2.0),
        normal_log_prob(x, zero, torch.tensor(0.3, dtype=torch.float64)),
    )
    edge = torch.tensor([0.3 * 2**0.5], dtype=torch.float64)
    for power in (1.5, 3.0, 4.0):
        density = generalised_normal_log_prob(x, zero, 0.3, power).exp()
        assert abs(float(density.sum() * (x[1] - x[0])) - 1) < 1e-4
        drop = generalised_normal_log_prob(zero, zero, 0.3, power) - generalised_normal_log_prob(
            edge, zero, 0.3, power
        )
        torch.testing.assert_close(drop, torch.ones_like(drop))  # down by 1 nat there
    misfit = torch.tensor([0.05, 1.0], dtype=torch.float64)
    cost = [
        generalised_normal_log_prob(zero, zero, 0.3, p)
        - generalised_normal_log_prob(misfit, zero, 0.3, p)
        for p in (2.0, 4.0)
    ]
    assert cost[1][0] < cost[0][0] and cost[1][1] > cost[0][1]
    # The model's pixel likelihood takes it; the default (shape 2) is the normal, untouched.
    image, mean = torch.rand(2, 8, 8), torch.rand(2, 8, 8)
    shaped = model_config(likelihood_power=4.0, likelihood_sigma=0.25)
    torch.testing.assert_close(
        pixel_log_likelihood(shaped, image, mean),
        generalised_normal_log_prob(image, mean, 0.25, 4.0),
    )
    assert torch.equal(
        pixel_log_likelihood(model_config(), image, mean),
        normal_log_prob(image, mean, torch.tensor(0.3)),
    )
    with pytest.raises(ConfigError, match="normal likelihood only"):
        model_config(likelihood="bernoulli", likelihood_power=3.0)
    for bad in (0.5, 17.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="likelihood_power must lie in"):
            model_config(likelihood_power=bad)


def test_z_where_posterior_scale_is_bounded():
    model = small_model(z_where_max_scale=0.1)
    with torch.no_grad():
        model.predictor.net[-1].bias[4:7] = 50.0  # would be a huge spread without the bound
    with torch.no_grad():
        out = model(images(8), generator=torch.Generator().manual_seed(0))
    assert float(out.objects["z_where_scale"].max()) <= 0.1 + 2e-4
    unbounded = small_model(z_where_max_scale=None)
    with torch.no_grad():
        unbounded.predictor.net[-1].bias[4:7] = 50.0
    with torch.no_grad():
        out = unbounded(images(8))
    # Steps after the first z_pres = 0 are not inferred: their latents are zero.
    decided = decided_steps(out.z_pres).bool()
    assert float(out.objects["z_where_scale"][decided].min()) > 10


def test_prior_samples_with_the_counts_asked_for():
    model = small_model()
    drawn = model.sample(
        600,
        generator=torch.Generator().manual_seed(1),
        counts=(0, 2, 3),
        count_probs=(0.5, 0.25, 0.25),
    )
    histogram = torch.bincount(drawn.count, minlength=4).float() / 600
    torch.testing.assert_close(histogram, torch.tensor([0.5, 0.0, 0.25, 0.25]), atol=0.05, rtol=0)
    # Objects fill the first steps: z_pres is 1 exactly for the first `count` steps.
    steps = torch.arange(model.config.max_steps)
    assert torch.equal(drawn.z_pres, (steps < drawn.count.unsqueeze(1)).float())
    with pytest.raises(ValueError, match="counts must lie in 0..3"):
        model.sample(4, counts=(4,))


def test_conv_glimpse_networks_start_blank_and_learn_to_autoencode_glimpses():
    from airscene.config import ConfigError, GlimpseConfig
    from airscene.networks import ConvGlimpseDecoder, ConvGlimpseEncoder

    model = small_model(glimpse_networks="conv", glimpse_size=12)
    encoder, decoder = model.objects.encoder, model.objects.decoder
    assert isinstance(encoder, ConvGlimpseEncoder) and isinstance(decoder, ConvGlimpseDecoder)
    # Glimpses start near blank (sigmoid of the output bias, -2), as the dense decoder's do.
    start = decoder(torch.randn(16, 6)).detach()
    assert start.shape == (16, 12, 12) and 0.05 < float(start.mean()) < 0.2

    # Encoder and decoder together learn to reproduce four glimpses (gradients reach both).
    torch.manual_seed(0)
    glimpses = torch.zeros(4, 12, 12)
    glimpses[0, 2:10, 5:7] = glimpses[1, 5:7, 2:10] = 1.0  # a vertical and a horizontal bar
    glimpses[2, 2:10, 2:10] = 1.0  # a square
    glimpses[3] = torch.eye(12)  # a diagonal
    optimiser = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=3e-3)

    def error() -> torch.Tensor:
        loc, _ = encoder(glimpses.flatten(1))
        return ((decoder(loc) - glimpses) ** 2).mean()

    with torch.no_grad():
        before = float(error())
    for _ in range(200):
        optimiser.zero_grad()
        error().backward()
        optimiser.step()
    with torch.no_grad():
        assert float(error()) < 0.1 * before

    with pytest.raises(ConfigError, match="multiple of 4"):
        GlimpseConfig(glimpse_networks="conv", glimpse_size=10)


def test_explain_away_reads_each_object_from_the_image_without_the_others():
    model = small_model()
    generator = torch.Generator().manual_seed(5)
    z_where = torch.tensor([[0.5, -0.2, 0.0], [0.5, 0.2, 0.1], [0.3, 0.0, 0.0]])
    first_what = torch.randn(6, generator=generator)
    present = torch.tensor([[1.0, 1.0, 0.0]])  # a third step, not present

    def scene(second_what: torch.Tensor):
        """Object 0 and a second, overlapping object of appearance ``second_what``: the image
        exactly their drawing, and an inference that found them."""
        z_what = torch.stack([first_what, second_what, torch.zeros(6)])
        x = model.objects.draw({"z_where": z_where[:2], "z_what": z_what[:2]}).sum(0)[None]
        return x, SimpleNamespace(
            z_pres=present, objects={"z_where": z_where[None], "z_what": z_what[None]}
        )

    second_what = torch.randn(6, generator=generator)
    x, inference = scene(second_what)
    read_again = model.objects.explain_away(x, inference.objects, inference.z_pres)["z_what"][0]
    other_x, other = scene(-3 * second_what)
    read_again_other = model.objects.explain_away(other_x, other.objects, other.z_pres)["z_what"][0]
    size = model.objects.config.glimpse_size
    alone = model.objects.draw({"z_where": z_where[:1], "z_what": first_what[None]})
    with torch.no_grad():
        read_alone = model.objects.encoder(read_glimpse(alone, z_where[:1], size).flatten(1))[0]
        read_in_x = model.objects.encoder(read_glimpse(x, z_where[:1], size).flatten(1))[0]
    # Object 0 is read from its own drawing alone, whatever the other object looks like; read
    # from x itself (what the loop does) it would not be.
    torch.testing.assert_close(read_again[0], read_alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(read_again_other[0], read_alone[0], atol=1e-5, rtol=0)
    assert (read_in_x[0] - read_alone[0]).abs().max() > 1e-2
    assert torch.equal(read_again[2], torch.zeros(6))  # the absent step is left as it was
    # With a generator: a draw from q, not its mean.
    drawn = model.objects.explain_away(
        x, inference.objects, inference.z_pres, generator=torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(drawn["z_what"][0, 0], read_again[0])
    with pytest.raises(ValueError, match="passes"):
        model.objects.explain_away(x, inference.objects, inference.z_pres, passes=0)
