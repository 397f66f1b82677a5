"""The neural networks of AIR: recurrent core, predictors, glimpse encoder/decoder, baseline.

Plain ``nn.Module``s with no knowledge of the probabilistic model; ``airscene.model`` wires them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RecurrentCore(nn.Module):
    """An LSTM cell whose input is split into an image part and a latent part.

    Mathematically ``nn.LSTMCell`` on ``[image, latents]``; the image's projection into the
    gates is exposed separately because in plain AIR the image is the same at every step, so
    that (largest) product is computed once per image instead of once per step.
    """

    def __init__(self, image_dim: int, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.image_to_gates = nn.Linear(image_dim, 4 * hidden)
        self.state_to_gates = nn.Linear(latent_dim + hidden, 4 * hidden, bias=False)
        bound = hidden**-0.5  # nn.LSTMCell's initialisation
        for weight in (
            self.image_to_gates.weight,
            self.image_to_gates.bias,
            self.state_to_gates.weight,
        ):
            nn.init.uniform_(weight, -bound, bound)

    def project_image(self, image_flat: torch.Tensor) -> torch.Tensor:
        """(B, H*W) -> (B, 4*hidden): the image's contribution to the gates."""
        return self.image_to_gates(image_flat)

    def forward(
        self,
        image_gates: torch.Tensor,
        latents: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        gates = image_gates + self.state_to_gates(torch.cat([latents, h], dim=-1))
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def initial_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = like.new_zeros(batch, self.hidden)
        return zeros, zeros


class WherePredictor(nn.Module):
    """LSTM state -> z_pres logit and the Normal posterior over z_where (loc, scale)."""

    def __init__(
        self,
        hidden: int,
        mlp_hidden: int,
        z_where_loc_init: tuple[float, float, float],
        z_where_max_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.z_where_max_scale = z_where_max_scale
        self.net = mlp([hidden, mlp_hidden, 1 + 3 + 3])
        last = self.net[-1]
        # Start at the prior's z_where with a small spread, and with objects likely present:
        # the glimpse then begins where objects of the expected size would be.
        nn.init.normal_(last.weight, 0.0, 0.01)
        with torch.no_grad():
            last.bias.zero_()
            last.bias[0] = 2.0
            last.bias[1:4] = torch.tensor(z_where_loc_init)
            last.bias[4:7] = -2.0

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(h)
        z_pres_logit = out[:, 0]
        z_where_loc = out[:, 1:4]
        if self.z_where_max_scale is None:
            z_where_scale = F.softplus(out[:, 4:7]) + 1e-4
        else:
            z_where_scale = self.z_where_max_scale * torch.sigmoid(out[:, 4:7]) + 1e-4
        return z_pres_logit, z_where_loc, z_where_scale


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


class BaselineNetwork(nn.Module):
    """NVIL's data-dependent baseline: per step, a guess of the learning signal.

    Its own LSTM reads the image and the previous step's latents (all detached by the caller),
    so it shares no parameters and no gradient path with the inference network.
    """

    def __init__(self, image_dim: int, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.core = RecurrentCore(image_dim, latent_dim, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, image_flat: torch.Tensor, previous_latents: torch.Tensor) -> torch.Tensor:
        """``image_flat`` (B, H*W), ``previous_latents`` (B, N, L) -> baselines (B, N)."""
        image_gates = self.core.project_image(image_flat)
        state = self.core.initial_state(image_flat.shape[0], image_flat)
        baselines = []
        for t in range(previous_latents.shape[1]):
            state = self.core(image_gates, previous_latents[:, t], state)
            baselines.append(self.head(state[0]).squeeze(-1))
        return torch.stack(baselines, dim=1)
