"""The comparison models of the downstream experiment: an unstructured VAE of the whole image,
a CNN on raw pixels, and the small classifier that reads a frozen representation; and the
readers of AIR's objects (``ObjectDigitReadout`` and its digit networks).

Plain supervised and unsupervised learners, kept apart from AIR: they import nothing of it (the
object readout is handed AIR's decoder, a frozen module, by the experiment).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from airscene.networks import mlp


class PixelVAE(nn.Module):
    """A VAE of the whole image with one Gaussian latent vector (Kingma & Welling 2014).

    The unstructured counterpart of AIR: the same images, a latent of the same size as AIR's
    per-scene representation, but no notion of objects, their number or their positions.
    """

    def __init__(self, image_pixels: int, latent_dim: int, hidden: int = 400) -> None:
        super().__init__()
        self.encoder = mlp([image_pixels, hidden, hidden, 2 * latent_dim])
        self.decoder = mlp([latent_dim, hidden, hidden, image_pixels])

    def encode(self, x_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) -> the posterior's mean and standard deviation, each (B, latent_dim)."""
        loc, scale_raw = self.encoder(x_flat).chunk(2, dim=-1)
        return loc, F.softplus(scale_raw) + 1e-4

    def negative_elbo(self, x_flat: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """-ELBO per image with a Bernoulli pixel likelihood, averaged over the batch."""
        loc, scale = self.encode(x_flat)
        z = loc + scale * torch.randn(loc.shape, generator=generator, device=loc.device)
        logits = self.decoder(z)
        reconstruction = F.binary_cross_entropy_with_logits(logits, x_flat, reduction="none")
        kl = 0.5 * (loc**2 + scale**2 - 1).sum(-1) - scale.log().sum(-1)
        return (reconstruction.sum(-1) + kl).mean()


def train_vae(
    images: np.ndarray, latent_dim: int, steps: int, seed: int, batch_size: int = 64
) -> PixelVAE:
    """Fit a ``PixelVAE`` to uint8 ``images`` (N, H, W) by Adam on the ELBO."""
    torch.manual_seed(seed)
    pixels = images.shape[1] * images.shape[2]
    vae = PixelVAE(pixels, latent_dim)
    optimiser = torch.optim.Adam(vae.parameters(), lr=1e-3)
    order = np.random.default_rng(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    data = torch.from_numpy(images).reshape(len(images), pixels)
    for _ in range(steps):
        x = data[order.integers(0, len(data), batch_size)].float() / 255.0
        loss = vae.negative_elbo(x, noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return vae.eval()


class PixelCNN(nn.Module):
    """A small convolutional classifier on raw pixels (the supervised baseline)."""

    def __init__(self, image_size: int, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, stride=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 5, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 1, image_size, image_size)).shape[1]
        self.head = mlp([flat, 128, classes])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W) in [0, 1] -> class logits (B, classes)."""
        return self.head(self.features(images.unsqueeze(1)))


def feature_classifier(features: int, classes: int, hidden: int = 256) -> nn.Module:
    """The small classifier that reads a frozen representation: an MLP with two hidden layers."""
    return mlp([features, hidden, hidden, classes])


def fit_classifier(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    seed: int,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    cosine: bool = False,
) -> nn.Module:
    """Train ``model`` on (inputs, labels) by Adam on the cross-entropy for ``steps`` minibatches
    (the whole set when it is smaller than a batch); returns it in eval mode.

    With ``cosine`` the learning rate decays from 1e-3 to 0 over the steps (a cosine), so the fit
    ends at a settled point rather than wherever its last minibatches left it."""
    torch.manual_seed(seed)
    order = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=weight_decay)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(steps, 1))
        if cosine
        else None
    )
    model.train()
    for _ in range(steps):
        index = (
            torch.from_numpy(order.integers(0, len(inputs), batch_size))
            if len(inputs) > batch_size
            else torch.arange(len(inputs))
        )
        loss = F.cross_entropy(model(inputs[index]), labels[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if schedule is not None:
            schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, chunk: int = 1024):
    """Fraction of ``inputs`` whose most likely class is the label."""
    return _fraction_right(lambda rows: model(inputs[rows]), labels, chunk)


@torch.no_grad()
def ensemble_accuracy(
    models: list[nn.Module],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    chunk: int = 1024,
) -> float:
    """Fraction of ``inputs`` whose most likely class, under the mean of the ``models``' class
    probabilities (each a softmax of its outputs), is the label.

    ``inputs`` may be several views of the same test items (a sequence of tensors, e.g. the
    posterior mean and draws from q(z | x)): the mean is then over every model and every view,
    a Monte Carlo estimate of the class probabilities under the posterior. Views stacked in
    one tensor must be unbound first (``views.unbind(0)``): a tensor is one view."""
    views = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if any(len(view) != len(labels) for view in views):
        raise ValueError(f"every view must hold one row per label ({len(labels)})")

    def mean_probabilities(rows: slice) -> torch.Tensor:
        return torch.stack([torch.softmax(m(v[rows]), -1) for m in models for v in views]).mean(0)

    return _fraction_right(mean_probabilities, labels, chunk)


def _fraction_right(scores, labels: torch.Tensor, chunk: int) -> float:
    """Fraction of items whose highest of ``scores(rows)`` (rows: a slice of the items; (B, C))
    is the label, ``chunk`` items at a time."""
    hits = sum(
        int((scores(slice(i, i + chunk)).argmax(-1) == labels[i : i + chunk]).sum())
        for i in range(0, len(labels), chunk)
    )
    return hits / len(labels)


class GlimpseCNN(nn.Module):
    """Digit logits of a glimpse (M, G, G): two convolutions and an MLP."""

    def __init__(self, glimpse_size: int, classes: int = 10) -> None:
        super().__init__()
        self.glimpse_size = glimpse_size
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = mlp([32 * (glimpse_size // 4) ** 2, 128, classes])

    def forward(self, glimpse: torch.Tensor) -> torch.Tensor:
        """(M, G, G), or flattened (M, G * G) -> (M, classes)."""
        side = self.glimpse_size
        return self.head(self.features(glimpse.reshape(len(glimpse), 1, side, side)))


class DecodedGlimpseCNN(GlimpseCNN):
    """Digit logits of z_what read as the glimpse the generative model draws from it: the frozen
    ``decoder`` (z_what -> (G, G), a copy of AIR's, never trained here) followed by a
    ``GlimpseCNN``. Still a function of the latents alone; the decoder gives the reader the image
    structure a vector reader has to learn from labels (translation, strokes)."""

    def __init__(self, decoder: nn.Module, glimpse_size: int, classes: int = 10) -> None:
        super().__init__(glimpse_size, classes)
        self.decoder = copy.deepcopy(decoder).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> DecodedGlimpseCNN:
        super().train(mode)
        self.decoder.eval()  # frozen: part of AIR, not of the reader
        return self

    def forward(self, z_what: torch.Tensor) -> torch.Tensor:
        """(M, D) -> (M, classes)."""
        with torch.no_grad():
            glimpse = self.decoder(z_what)  # (M, G, G)
        return super().forward(glimpse)


class ObjectDigitReadout(nn.Module):
    """A readout that uses AIR's structure: one shared ``digit`` network maps each present
    object's z_what (M, D) to logits over the 10 digit classes (M, 10), and the task's answer
    follows from those exactly - the sum's distribution by convolving the objects'
    distributions, 'ascending' by a pass left to right. Trained on the task's labels alone (no
    digit labels).

    Reads ``ordered_object_latents`` flattened: N objects of [z_pres, z_where (3), z_what (D)],
    left to right, absent objects last. An absent object adds 0 to the sum and ends the order.
    (Given each object's attended glimpse, flattened, in place of its z_what, and a ``digit``
    network of glimpses, it reads more than the latents: the input's pixels in each window.)
    """

    def __init__(self, objects: int, digit: nn.Module, task: str, digits: int = 10) -> None:
        super().__init__()
        if task not in ("sum", "ascending"):
            raise ValueError(f"unknown task {task!r}")
        self.objects, self.task, self.digits = objects, task, digits
        self.digit = digit

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N * (4 + D)) -> log-probabilities of the task's classes (B, C)."""
        per_object = features.view(features.shape[0], self.objects, -1)  # (B, N, 4 + D)
        is_present = per_object[..., 0] > 0  # (B, N)
        present = is_present.to(features.dtype).unsqueeze(-1)  # (B, N, 1)
        # Only present objects are read (absent ones are masked out below anyway).
        digit = features.new_full((*is_present.shape, self.digits), 1.0 / self.digits)
        digit[is_present] = torch.softmax(self.digit(per_object[..., 4:][is_present]), dim=-1)
        if self.task == "sum":
            zero = F.one_hot(torch.zeros((), dtype=torch.long), self.digits).to(digit)
            digit = present * digit + (1 - present) * zero  # an absent object adds 0
            total = digit[:, 0]
            for i in range(1, self.objects):  # distribution of the running sum, (B, 9 i + 10)
                total = _convolve(total, digit[:, i])
            probabilities = total[:, : 2 * self.digits - 1]  # the task's 19 classes (0-18)
        else:
            # last[b, d]: probability that the digits so far rise and the last one is d.
            last = digit[:, 0]
            for i in range(1, self.objects):
                rises = last.cumsum(-1) * digit[:, i]  # earlier digit <= this one
                last = present[:, i] * rises + (1 - present[:, i]) * last
            ascending = last.sum(-1) * present[:, 0, 0] + (1 - present[:, 0, 0])
            probabilities = torch.stack([1 - ascending, ascending], dim=-1)
        return probabilities.clamp_min(1e-7).log()


def _convolve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distribution of the sum of two independent counts, (B, m) and (B, n) -> (B, m + n - 1)."""
    out = a.new_zeros(a.shape[0], a.shape[1] + b.shape[1] - 1)
    for value in range(b.shape[1]):
        out[:, value : value + a.shape[1]] += a * b[:, value : value + 1]
    return out
