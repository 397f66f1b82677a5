"""The neural networks of AIR: recurrent core, predictors, glimpse encoder/decoder (dense or
convolutional), baseline.

Plain ``nn.Module``s with no knowledge of the probabilistic model; ``airscene.model`` wires them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from airscene.rows import ActiveRows


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# Below this fraction of non-zero pixels the sparse product (forward and weight gradient) beats
# the dense one on CPU; where the two cross is measured by benchmarks/speed_probes.py
# (benchmarks/results/speed_probes.json).
SPARSE_DENSITY_LIMIT = 0.25


class _SparseImageProduct(torch.autograd.Function):
    """``bias + x @ weight`` for a mostly-zero ``x`` (B, I) that needs no gradient itself.

    Only the non-zero pixels enter the forward product and the weight gradient ``x^T @ grad``;
    the arithmetic is the dense one's, summed in another order. Both are weighted sums of rows,
    which is what ``embedding_bag`` computes: the forward sums, for each image, the weight rows
    of its lit pixels; the backward sums, for each pixel, the gradient rows of the images it is
    lit in, writing every row of the weight gradient once (empty sums are zero), with no zero
    fill beforehand (``torch.sparse.mm`` on a COO tensor is slower on CPU: speed_probes.py).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, pixels = x.shape
        image, pixel = x.nonzero(as_tuple=True)  # sorted by image, then pixel
        value = x[image, pixel]
        ctx.save_for_backward(image, pixel, value)
        ctx.pixels = pixels
        starts = torch.searchsorted(image, torch.arange(batch, device=x.device))
        sums = F.embedding_bag(pixel, weight, starts, mode="sum", per_sample_weights=value)
        return sums.add_(bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        image, pixel, value = ctx.saved_tensors
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            by_pixel = torch.argsort(pixel, stable=True)
            pixel_sorted = pixel[by_pixel]
            starts = torch.searchsorted(pixel_sorted, torch.arange(ctx.pixels, device=grad.device))
            grad_weight = F.embedding_bag(
                image[by_pixel],
                grad.contiguous(),
                starts,
                mode="sum",
                per_sample_weights=value[by_pixel],
            )
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return None, grad_weight, grad_bias


class ImageProjection(nn.Module):
    """``nn.Linear`` from the flattened image into the LSTM gates, the largest product of AIR.

    The weight is held as (in, out) so that both the forward product and the weight gradient
    read and write it without a transpose; checkpoints store it as (out, in), ``nn.Linear``'s
    layout, so files stay what any reader of a linear layer expects. On CPU, an image batch that
    needs no gradient and is mostly zero (digits on a blank canvas) takes the sparse product.
    """

    def __init__(self, in_features: int, out_features: int, bound: float) -> None:
        super().__init__()
        # Drawn in nn.Linear's (out, in) order, so a seed gives the same numbers as a linear layer.
        weight = torch.empty(out_features, in_features).uniform_(-bound, bound)
        self.weight = nn.Parameter(weight.t().contiguous())  # (in, out)
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self._register_state_dict_hook(_store_weight_out_in)
        self._register_load_state_dict_pre_hook(_load_weight_out_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in) -> (B, out)."""
        if _sparse_pays(x):
            return _SparseImageProduct.apply(x, self.weight, self.bias)
        return torch.addmm(self.bias, x, self.weight)


def _sparse_pays(x: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.requires_grad or x.dim() != 2:
        return False
    return torch.count_nonzero(x).item() < SPARSE_DENSITY_LIMIT * x.numel()


def _store_weight_out_in(module, state_dict, prefix, local_metadata):
    key = prefix + "weight"
    state_dict[key] = state_dict[key].t()
    return state_dict


def _load_weight_out_in(state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    key = prefix + "weight"
    if key in state_dict and state_dict[key].dim() == 2:
        state_dict[key] = state_dict[key].t()


class RecurrentCore(nn.Module):
    """An LSTM cell whose input is split into an image part and a latent part.

    Mathematically ``nn.LSTMCell`` on ``[image, latents]``; the image's projection into the
    gates is exposed separately because in plain AIR the image is the same at every step, so
    that (largest) product is computed once per image instead of once per step.
    """

    def __init__(self, image_dim: int, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.latent_dim = latent_dim
        bound = hidden**-0.5  # nn.LSTMCell's initialisation
        self.image_to_gates = ImageProjection(image_dim, 4 * hidden, bound)
        self.state_to_gates = nn.Linear(latent_dim + hidden, 4 * hidden, bias=False)
        nn.init.uniform_(self.state_to_gates.weight, -bound, bound)

    def project_image(self, image_flat: torch.Tensor) -> torch.Tensor:
        """(B, H*W) -> (B, 4*hidden): the image's contribution to the gates."""
        return self.image_to_gates(image_flat)

    def forward(
        self,
        image_gates: torch.Tensor,
        latents: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One LSTM step; ``state`` None is the zero initial state, taken as a shortcut."""
        if state is None:
            # h = c = 0: only the latents' columns of the weight contribute to the gates and the
            # forget gate multiplies zero, so the (B, L + H) x (L + H, 4H) product shrinks to
            # (B, L) x (L, 4H). Same numbers as the full step from zeros.
            weight = self.state_to_gates.weight[:, : self.latent_dim]
            gates = image_gates + F.linear(latents, weight)
            i, _, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(i) * torch.tanh(g)
        else:
            h, c = state
            gates = image_gates + self.state_to_gates(torch.cat([latents, h], dim=-1))
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class StepPredictor(nn.Module):
    """LSTM state -> the step's z_pres logit and the raw parameters of the object model's
    posterior (as many as it asks for; it reads them itself)."""

    def __init__(self, hidden: int, mlp_hidden: int, initial_params: torch.Tensor) -> None:
        super().__init__()
        self.net = mlp([hidden, mlp_hidden, 1 + initial_params.numel()])
        last = self.net[-1]
        # Start with objects likely present and the object's posterior at ``initial_params``
        # (small weights: every image starts from the same guess).
        nn.init.normal_(last.weight, 0.0, 0.01)
        with torch.no_grad():
            last.bias[0] = 2.0
            last.bias[1:] = initial_params

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H) -> z_pres logit (B,) and object parameters (B, P)."""
        out = self.net(h)
        return out[:, 0], out[:, 1:]


class PresenceHead(nn.Module):
    """What a DAIR step sees, through its image projection into the gates -> the step's z_pres
    logit: a decision that reads only what is still unexplained, not the recurrent state."""

    def __init__(self, gates: int, mlp_hidden: int) -> None:
        super().__init__()
        self.net = mlp([gates, mlp_hidden, 1])
        last = self.net[-1]
        nn.init.normal_(last.weight, 0.0, 0.01)  # start with objects likely present, as the
        with torch.no_grad():  # predictor does
            last.bias[0] = 2.0

    def forward(self, image_gates: torch.Tensor) -> torch.Tensor:
        """(B, 4H) -> z_pres logit (B,)."""
        return self.net(image_gates)[:, 0]


class GlimpseEncoder(nn.Module):
    """Glimpse (B, G*G) -> the Normal posterior over z_what (loc, scale)."""

    def __init__(self, glimpse_pixels: int, hidden: int, z_what_dim: int) -> None:
        super().__init__()
        self.net = mlp([glimpse_pixels, hidden, 2 * z_what_dim])

    def forward(self, glimpse_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale_raw = self.net(glimpse_flat).chunk(2, dim=-1)
        return loc, F.softplus(scale_raw) + 1e-4


class GlimpseDecoder(nn.Module):
    """z_what (B, D) -> glimpse intensities (B, G, G) in [0, 1]."""

    def __init__(self, z_what_dim: int, hidden: int, glimpse_size: int, output_bias: float) -> None:
        super().__init__()
        self.glimpse_size = glimpse_size
        self.net = mlp([z_what_dim, hidden, glimpse_size * glimpse_size])
        # A strongly negative bias starts every glimpse near blank: bright early reconstructions
        # make explaining nothing look better than explaining digits (collapse to 0 objects).
        nn.init.constant_(self.net[-1].bias, output_bias)

    def forward(self, z_what: torch.Tensor) -> torch.Tensor:
        logits = self.net(z_what)
        return torch.sigmoid(logits).view(-1, self.glimpse_size, self.glimpse_size)


class ConvGlimpseEncoder(nn.Module):
    """Glimpse (B, G*G) -> the Normal posterior over z_what (loc, scale), through two strided
    convolutions (G -> G/2 -> G/4) before a hidden layer: features that do not hinge on the
    exact pixel where a stroke falls inside the window."""

    def __init__(self, glimpse_size: int, hidden: int, z_what_dim: int, channels: int = 1) -> None:
        super().__init__()
        self.glimpse_size, self.channels = glimpse_size, channels
        quarter = glimpse_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = mlp([32 * quarter * quarter, hidden, 2 * z_what_dim])

    def forward(self, glimpse_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        glimpse = glimpse_flat.view(-1, self.channels, self.glimpse_size, self.glimpse_size)
        loc, scale_raw = self.head(self.features(glimpse)).chunk(2, dim=-1)
        return loc, F.softplus(scale_raw) + 1e-4


class ConvGlimpseDecoder(nn.Module):
    """z_what (B, D) -> glimpse intensities (B, G, G) in [0, 1] (with ``channels`` > 1:
    (B, channels, G, G)): a hidden layer to a (32, G/4, G/4) map, then two transposed
    convolutions that each double its side."""

    def __init__(
        self,
        z_what_dim: int,
        hidden: int,
        glimpse_size: int,
        output_bias: float,
        channels: int = 1,
    ) -> None:
        super().__init__()
        self.glimpse_size, self.channels = glimpse_size, channels
        self.quarter = glimpse_size // 4
        self.project = mlp([z_what_dim, hidden, 32 * self.quarter * self.quarter])
        self.upsample = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(16, channels, 4, stride=2, padding=1),
        )
        # As GlimpseDecoder: glimpses start near blank (no collapse to 0 objects).
        nn.init.constant_(self.upsample[-1].bias, output_bias)

    def forward(self, z_what: torch.Tensor) -> torch.Tensor:
        glimpse = torch.sigmoid(self.logits(z_what))
        return glimpse.squeeze(1) if self.channels == 1 else glimpse

    def logits(self, z_what: torch.Tensor) -> torch.Tensor:
        """The glimpse's logits, before the sigmoid, (B, channels, G, G)."""
        grid = self.project(z_what).view(-1, 32, self.quarter, self.quarter)
        return self.upsample(grid)


class AppearanceMaskDecoder(nn.Module):
    """z_what (B, D) -> an object's glimpse (B, C + 1, G, G) in [0, 1]: its appearance in C
    channels, premultiplied by its mask, then the mask itself."""

    def __init__(
        self,
        z_what_dim: int,
        hidden: int,
        glimpse_size: int,
        channels: int,
        mask_bias: float,
        conv: bool = False,
    ) -> None:
        super().__init__()
        self.glimpse_size, self.channels = glimpse_size, channels
        pixels = glimpse_size * glimpse_size
        # Objects start nearly transparent (as grey glimpses start near blank): opaque early
        # objects make explaining nothing look better than explaining objects.
        if conv:  # ConvGlimpseDecoder's networks with C + 1 output channels
            self.net = ConvGlimpseDecoder(z_what_dim, hidden, glimpse_size, 0.0, channels + 1)
            with torch.no_grad():
                self.net.upsample[-1].bias[channels] = mask_bias
        else:
            self.net = nn.Sequential(
                mlp([z_what_dim, hidden, (channels + 1) * pixels]),
                nn.Sigmoid(),
                nn.Unflatten(1, (channels + 1, glimpse_size, glimpse_size)),
            )
            with torch.no_grad():
                self.net[0][-1].bias.zero_()
                self.net[0][-1].bias[channels * pixels :] = mask_bias

    def forward(self, z_what: torch.Tensor) -> torch.Tensor:
        out = self.net(z_what)
        mask = out[:, self.channels :]
        return torch.cat([out[:, : self.channels] * mask, mask], dim=1)

    def appearance_and_logit(self, z_what: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The appearance (B, C, G, G) in [0, 1], not premultiplied, and the mask's logits
        (B, 1, G, G)."""
        if isinstance(self.net, ConvGlimpseDecoder):
            out = self.net.logits(z_what)
        else:
            out = self.net[2](self.net[0](z_what))
        return torch.sigmoid(out[:, : self.channels]), out[:, self.channels :]


class BaselineNetwork(nn.Module):
    """NVIL's data-dependent baseline: per step, a guess of the learning signal.

    Its own LSTM reads the image and the previous step's latents (all detached by the caller),
    so it shares no parameters and no gradient path with the inference network.
    """

    def __init__(self, image_dim: int, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.core = RecurrentCore(image_dim, latent_dim, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(
        self, image_flat: torch.Tensor, previous_latents: torch.Tensor, decided: torch.Tensor
    ) -> torch.Tensor:
        """``image_flat`` (B, H*W), ``previous_latents`` (B, N, L) -> baselines (B, N).

        Only the steps whose z_pres was decided (``decided`` (B, N) 1) are computed: the others
        enter no loss, and their baselines are zero.
        """
        image_gates = self.core.project_image(image_flat)
        batch, steps = previous_latents.shape[:2]
        rows = ActiveRows(batch, steps, image_flat.device)
        state = None  # zero
        values = []
        for t in range(steps):
            if t > 0:  # decided steps are nested: a step is decided only if the one before was
                state = rows.keep(decided[rows.index, t].nonzero().squeeze(1), *state)
            rows.record(t)
            state = self.core(rows.take(image_gates), rows.take(previous_latents[:, t]), state)
            values.append(self.head(state[0]).squeeze(-1))
        return rows.pack({"baseline": values}).scatter()["baseline"]
