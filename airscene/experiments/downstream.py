"""The downstream-task experiment (paper sec. 3.1, "representational power").

Two supervised tasks on 2-digit Multi-MNIST: the *sum* of the digits, and whether the digits are
in *ascending order* read left to right. A small classifier reads frozen AIR latents in a
permutation-robust way (objects sorted by their horizontal position); the same classifier on an
unstructured VAE's latents and a CNN on raw pixels are the baselines. Each learns from 10, 100,
1,000 and 10,000 labelled scenes: the paper's data-efficiency curve.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from airscene.checkpoint import PRETRAINED, load_model
from airscene.config import DataConfig, DownstreamSettings
from airscene.data.scenes import Scenes, load_scenes
from airscene.data.training import images_to_tensor
from airscene.evaluate import evaluate
from airscene.experiments.baselines import (
    DecodedGlimpseCNN,
    GlimpseCNN,
    ObjectDigitReadout,
    PixelCNN,
    PixelVAE,
    ensemble_accuracy,
    feature_classifier,
    fit_classifier,
    train_vae,
)
from airscene.model import AIR
from airscene.provenance import git_revision
from airscene.spatial import read_glimpse


def _left_to_right(scenes: Scenes) -> np.ndarray:
    """Digit labels (B, K) of each scene ordered by the centre of their ink box; -1 pads.

    An object's place is its centre: where digits stack (their ink overlapping in x), the left
    edges can read in the other order (a wide digit's edge left of a narrow digit's, its centre
    right of it), and a reader of objects knows where each is, not how far its ink reaches."""
    x0, x1 = scenes.boxes[..., 0].astype(np.int64), scenes.boxes[..., 2].astype(np.int64)
    centre = np.where(scenes.labels >= 0, x0 + x1, np.iinfo(np.int64).max)  # twice the centre
    order = np.argsort(centre, axis=1, kind="stable")
    return np.take_along_axis(scenes.labels.astype(np.int64), order, axis=1)


def sum_labels(scenes: Scenes) -> np.ndarray:
    """The sum of the digits in each scene, (B,) int64 (0 for an empty scene)."""
    return np.where(scenes.labels >= 0, scenes.labels, 0).astype(np.int64).sum(axis=1)


def ascending_labels(scenes: Scenes) -> np.ndarray:
    """1 where the digits read left to right never decrease (ties count as ascending), else 0.

    Scenes with fewer than two digits are trivially ascending.
    """
    ordered = _left_to_right(scenes)
    present = ordered >= 0
    pairs = present[:, 1:] & present[:, :-1]
    rises = np.where(pairs, ordered[:, 1:] >= ordered[:, :-1], True)
    return rises.all(axis=1).astype(np.int64)


def ordered_object_latents(
    z_pres: torch.Tensor, z_where: torch.Tensor, z_what: torch.Tensor
) -> torch.Tensor:
    """Per-object features [present, z_where, z_what] with objects sorted by x (left to right);
    absent objects go last and are all zeros. (B, N, 1 + 3 + D): a classifier on this sees the
    same input whatever order inference found the objects in."""
    present = z_pres > 0
    features = torch.cat([z_pres.unsqueeze(-1), z_where, z_what], dim=-1) * present.unsqueeze(-1)
    x = torch.where(present, z_where[..., 1], torch.full_like(z_where[..., 1], float("inf")))
    order = torch.argsort(x, dim=1, stable=True)
    return torch.gather(features, 1, order.unsqueeze(-1).expand_as(features))


# ---------------------------------------------------------------------------------------------
# The experiment: frozen AIR latents against an unstructured VAE and a CNN on pixels

TASKS = {"sum": (sum_labels, 19), "ascending": (ascending_labels, 2)}  # name: (labels, classes)
# The first three read their input with the same kind of model (an MLP for both latents, the
# baseline's CNN for pixels); the fourth reads AIR's latents with a readout built on its objects,
# the last the same readout on each object's attended glimpse (more than the latents).
GLIMPSE_READOUT = "AIR windows + glimpse readout (more than the latents)"
REPRESENTATIONS = (
    "AIR latents",
    "VAE latents",
    "CNN on pixels",
    "AIR + object readout",
    GLIMPSE_READOUT,
)
# The readers that answer the question (can AIR's objects be read at ~95%?): from 1,000
# labels up they are fitted ``readout_fits`` times, and the fits read together.
OBJECT_READOUTS = ("AIR + object readout", GLIMPSE_READOUT)
# The AIR whose latents are read unless told otherwise: the shipped conv + DAIR model, whose z_what
# holds the digits better than the default model's (README, downstream tasks).
MODEL = "conv-dair"
PAPER_FINDING = (
    "AIR's latents reach high accuracy (about 95%) with far fewer labelled images than the "
    "baselines (as read by a published summary of the paper's figure; approximate)"
)


@torch.no_grad()
def air_latents(
    model: AIR,
    images: np.ndarray,
    batch: int = 512,
    generator: torch.Generator | None = None,
    glimpses: bool = False,
    explain_away: int = 0,
) -> torch.Tensor:
    """AIR's representation of each scene: its per-object latents, objects sorted left to right
    (``ordered_object_latents``), flattened to (B, N * (1 + 3 + D)). Deterministic inference
    (every latent at its posterior mode or mean), or with ``generator`` one draw from q(z | x).
    With ``explain_away`` > 0, each object's z_what is read again that many passes with the
    other objects removed from the image (``GlimpseObjects.explain_away``; not with ``glimpses``, which
    read pixels instead of z_what).

    With ``glimpses``, each object's attended glimpse of the image (G * G pixels, read at its
    z_where) takes the place of its z_what: more than the latents, (B, N * (1 + 3 + G * G))."""
    chunks = []
    for start in range(0, len(images), batch):
        x = images_to_tensor(images[start : start + batch])
        inference = model(x, generator=generator, sample=generator is not None)
        appearance = inference.objects["z_what"]
        if glimpses:
            size = model.objects.config.glimpse_size
            steps = inference.objects["z_where"].shape[1]
            seen = x.repeat_interleave(steps, 0)  # (B * N, H, W), each image once per step
            read = read_glimpse(seen, inference.objects["z_where"].flatten(0, 1), size)
            appearance = read.view(len(x), steps, size * size)
        elif explain_away > 0:
            objects = model.objects.explain_away(
                x, inference.objects, inference.z_pres, generator, passes=explain_away
            )
            appearance = objects["z_what"]
        latents = ordered_object_latents(inference.z_pres, inference.objects["z_where"], appearance)
        chunks.append(latents.flatten(1))
    return torch.cat(chunks)


def air_views(
    model: AIR,
    images: np.ndarray,
    draws: int,
    generator: torch.Generator,
    glimpses: bool = False,
    explain_away: int = 0,
) -> torch.Tensor:
    """``air_latents`` of ``images`` at the posterior mean, then ``draws`` draws from q(z | x)
    by ``generator``: a reader's views of the scenes (for training or test), (1 + draws, B, F)."""
    options = {"glimpses": glimpses, "explain_away": explain_away}
    return torch.stack(
        [air_latents(model, images, **options)]
        + [air_latents(model, images, generator=generator, **options) for _ in range(draws)]
    )


@torch.no_grad()
def vae_latents(
    vae: PixelVAE, images: np.ndarray, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The VAE's representation of each scene: its posterior mean, or with ``generator`` one
    draw from its posterior, (B, latent_dim)."""
    x = images_to_tensor(images).flatten(1)
    chunks = []
    for i in range(0, len(x), 1024):
        loc, scale = vae.encode(x[i : i + 1024])
        noise = None if generator is None else torch.randn(loc.shape, generator=generator)
        chunks.append(loc if noise is None else loc + scale * noise)
    return torch.cat(chunks)


def _standardised(views: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Statistics of the whole unlabelled pool, every view (posterior means and draws; no labels
    # involved), so even 10 labels see features on a common scale. Not of the means alone: a
    # latent the model leaves unused has means that hardly vary and draws as wide as the prior,
    # and scaled by the means' spread those draws swamp the reader's input (conv + DAIR: 89 of
    # 162 features spread over 10 times wider in the draws than in the means).
    pooled = views.flatten(0, 1)
    mean, std = pooled.mean(0), pooled.std(0).clamp_min(1e-3)
    return (views - mean) / std, (test - mean) / std


def run_downstream(
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    model: str | Path = MODEL,
    progress: bool = True,
    settings: DownstreamSettings | None = None,
) -> dict[str, Any]:
    """Train classifiers for the sum and ascending-order tasks on 2-digit scenes from labelled
    sets of each size, reading frozen AIR latents, frozen VAE latents, or raw pixels (CNN);
    write report.md, results.json and downstream.png into ``out_dir``.

    ``model`` is the AIR checkpoint whose latents are read (default: the shipped conv + DAIR
    model, trained without labels on Multi-MNIST with 0-2 digits). The VAE is trained here on
    the same images. ``settings`` overrides the sizes that ``quick`` picks.
    """
    if settings is None:
        settings = DownstreamSettings.quick() if quick else DownstreamSettings()
    air, checkpoint = load_model(model)  # a bad model fails before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    canvas = checkpoint.config.model.canvas_size
    pool_size = max(settings.label_sizes)
    two_digits = DataConfig(canvas_size=canvas, counts=(2,), seed=seed)
    pool = load_scenes(two_digits, "train", n=pool_size)
    test = load_scenes(two_digits, "test", n=settings.test_scenes)

    # Every representation's training inputs are views (V, pool, ...): the posterior mean first,
    # then the latent representations' posterior draws (``posterior_draws``).
    posterior = torch.Generator().manual_seed(seed)
    passes = settings.explain_away
    latent_views = air_views(air, pool.images, settings.posterior_draws, posterior, False, passes)
    # Test views (V, test, ...): the posterior mean, then ``test_draws`` draws of their own.
    test_posterior = torch.Generator().manual_seed(seed + 1)
    latent_test = air_views(air, test.images, settings.test_draws, test_posterior, False, passes)
    air_pool = latent_views[0]
    log = _progress_printer(progress)
    log(f"VAE: {settings.vae_steps} steps on Multi-MNIST 0-2 digit scenes (AIR's training data)")
    vae_images = load_scenes(checkpoint.config.data, "train").images
    vae = train_vae(vae_images, air_pool.shape[1], settings.vae_steps, seed)  # same latent size

    def vae_views(images: np.ndarray, draws: int, generator: torch.Generator) -> torch.Tensor:
        return torch.stack(
            [vae_latents(vae, images)] + [vae_latents(vae, images, generator) for _ in range(draws)]
        )

    # The glimpse readout's views: the mean and draws of its own from the same generators.
    glimpse_views = air_views(air, pool.images, settings.posterior_draws, posterior, glimpses=True)
    glimpse_test = air_views(air, test.images, settings.test_draws, test_posterior, glimpses=True)
    vae_test = vae_views(test.images, settings.test_draws, test_posterior)
    inputs = {  # name: (training views, test views)
        "AIR latents": _standardised(latent_views, latent_test),
        "VAE latents": _standardised(
            vae_views(pool.images, settings.posterior_draws, posterior), vae_test
        ),
        "CNN on pixels": (images_to_tensor(pool.images)[None], images_to_tensor(test.images)[None]),
        "AIR + object readout": (latent_views, latent_test),
        GLIMPSE_READOUT: (glimpse_views, glimpse_test),
    }
    objects = checkpoint.config.model.max_steps

    def make_classifier(name: str, task: str, classes: int, features: int) -> torch.nn.Module:
        if name == "CNN on pixels":
            return PixelCNN(canvas, classes)
        if name == "AIR + object readout":
            digit = DecodedGlimpseCNN(air.objects.decoder, air.objects.config.glimpse_size)
            return ObjectDigitReadout(objects, digit, task)
        if name == GLIMPSE_READOUT:
            glimpse = GlimpseCNN(air.objects.config.glimpse_size)
            return ObjectDigitReadout(objects, glimpse, task)
        return feature_classifier(features, classes)

    draws = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    results: dict[str, Any] = {}
    for task, (make_labels, classes) in TASKS.items():
        train_labels = torch.from_numpy(make_labels(pool))
        test_labels = torch.from_numpy(make_labels(test))
        results[task] = {"majority_class_accuracy": _majority(test_labels, classes)}
        for size in settings.label_sizes:
            repeats = settings.repeats_below_1000 if size < 1000 else 1
            steps = settings.small_set_steps if size < 1000 else settings.classifier_steps
            subsets = [draws.choice(pool_size, size, replace=False) for _ in range(repeats)]
            row = {}
            for name in REPRESENTATIONS:
                train_inputs, test_views = inputs[name]
                together = name in OBJECT_READOUTS and size >= 1000 and settings.readout_fits > 1
                # Below 1,000 labels: one fit per drawn subset; from 1,000 up, one subset and,
                # for the object readouts, ``readout_fits`` fits of it.
                fits = [(r, r) for r in range(repeats)]
                if together:
                    fits = [(0, k) for k in range(settings.readout_fits)]
                scores, fitted = [], []
                for r, k in fits:
                    index = torch.from_numpy(subsets[r])
                    torch.manual_seed(seed + k)
                    classifier = make_classifier(name, task, classes, train_inputs.shape[-1])
                    fit_classifier(
                        classifier,
                        train_inputs[:, index].flatten(0, 1),  # every view of the subset
                        train_labels[index].repeat(len(train_inputs)),
                        steps,
                        seed + k,
                        cosine=settings.cosine,
                    )
                    fitted.append(classifier)
                    scores.append(
                        ensemble_accuracy([classifier], test_views.unbind(0), test_labels)
                    )
                if together:
                    row[name] = {
                        "accuracy": ensemble_accuracy(fitted, test_views.unbind(0), test_labels),
                        "fits_together": len(fitted),
                        "runs": scores,
                        "mean_of_the_fits": float(np.mean(scores)),
                    }
                else:
                    row[name] = {"accuracy": float(np.mean(scores)), "runs": scores}
                log(f"{task:>9} {size:>6} labels  {name:<14} {100 * row[name]['accuracy']:5.1f}%")
            results[task][str(size)] = row

    summary = {
        "experiment": "downstream",
        "quick": quick,
        "seed": seed,
        "git_revision": git_revision(),
        "air_model": (
            f"{model} (shipped: airscene/pretrained/{PRETRAINED[model]})"
            if isinstance(model, str) and model in PRETRAINED
            else str(checkpoint.path)
        ),
        "air_model_eval_count_accuracy_on_2_digits": _count_accuracy(air, test),
        "settings": dataclasses.asdict(settings),
        "feature_dims": {name: int(inputs[name][1][0, 0].numel()) for name in REPRESENTATIONS},
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    _figure(results, settings.label_sizes, out / "downstream.png")
    (out / "report.md").write_text(_report(summary, settings))
    return summary


def _cell(result: dict[str, Any]) -> str:
    """A report cell: the accuracy, and the mean of single fits where several answer together."""
    if "fits_together" not in result:
        return f"{100 * result['accuracy']:.1f}%"
    return f"{100 * result['accuracy']:.1f}% ({100 * result['mean_of_the_fits']:.1f}%)"


def _majority(labels: torch.Tensor, classes: int) -> float:
    return float(torch.bincount(labels, minlength=classes).max()) / len(labels)


def _count_accuracy(model: AIR, scenes: Scenes) -> float:
    return float(evaluate(model, scenes).count_accuracy)


def _progress_printer(enabled: bool):
    def log(message: str) -> None:
        if enabled:
            print(message, file=sys.stderr, flush=True)

    return log


def _figure(results: dict[str, Any], sizes: tuple[int, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(TASKS), figsize=(10, 3.6))
    for axis, task in zip(axes, TASKS, strict=True):
        for name, style in zip(REPRESENTATIONS, ("o-", "s--", "^:", "d-.", "x-"), strict=True):
            accuracies = [results[task][str(n)][name]["accuracy"] for n in sizes]
            axis.plot(sizes, accuracies, style, label=name)
        axis.axhline(results[task]["majority_class_accuracy"], color="grey", lw=0.8, ls="-.",
                     label="majority class")  # fmt: skip
        axis.set_xscale("log")
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("labelled 2-digit scenes")
        axis.set_ylabel("test accuracy")
        axis.set_title({"sum": "sum of the digits", "ascending": "digits in ascending order"}[task])
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _report(summary: dict[str, Any], settings: DownstreamSettings) -> str:
    results, sizes = summary["results"], settings.label_sizes
    lines = ["# Downstream tasks: the value of AIR's latents", ""]
    if summary["quick"]:
        lines += ["*Quick mode: small sizes; see the full run for the numbers to quote.*", ""]
    lines += [
        f"Classifiers trained on labelled 2-digit Multi-MNIST scenes and tested on "
        f"{settings.test_scenes:,} others (MNIST test digits). AIR latents: the frozen model "
        f"`{summary['air_model']}` (trained without labels on 0-2 digit scenes; it counts "
        f"{100 * summary['air_model_eval_count_accuracy_on_2_digits']:.1f}% of these test scenes "
        f"right), its per-object [z_pres, z_where, z_what] sorted left to right "
        f"({summary['feature_dims']['AIR latents']} numbers). VAE latents: the posterior of a "
        f"VAE of the whole image with a latent of the same size, trained on the same 0-2 digit "
        f"scenes for {settings.vae_steps:,} steps. Both read by the same MLP (two hidden layers "
        f"of 256), trained on each labelled scene's posterior mean and "
        f"{settings.posterior_draws} draws from its posterior (AIR's q(z | x), the VAE's q(z | x)) "
        + (
            f"and tested with their class probabilities averaged over each test scene's "
            f"posterior mean and {settings.test_draws} draws from its posterior (every reader "
            f"but the CNN). "
            if settings.test_draws
            else "and tested on the posterior mean. "
        )
        + "CNN: three convolutions and an MLP on the pixels. "
        f"Every classifier: Adam, {settings.classifier_steps:,} minibatches of 64 "
        f"({settings.small_set_steps:,} under 1,000 labels), learning rate "
        + ("1e-3 decaying to 0 (cosine)" if settings.cosine else "1e-3")
        + f"; sets under 1,000 labels drawn {settings.repeats_below_1000} time(s), mean shown. "
        + (
            f"From 1,000 labels up, each object readout is fitted {settings.readout_fits} times "
            "on the same scenes and the fits answer together (class probabilities averaged); the "
            "mean of the single fits is in parentheses. "
            if settings.readout_fits > 1
            else ""
        )
        + (
            f"AIR's z_what is read again ({settings.explain_away} pass(es)) from the image with "
            "the scene's other objects removed (their drawing subtracted), for every view. "
            if settings.explain_away
            else ""
        )
        + "AIR + object "
        "readout: AIR's latents read through its objects - each object's z_what is drawn into a "
        "glimpse by AIR's own frozen decoder (so the reader still sees the latents only), a small "
        "CNN maps that glimpse to a distribution over 10 digit classes, and the sum's "
        "distribution (by convolution) or the probability of rising order follow exactly; it is "
        "trained on the task labels alone (same views as the MLP) and has no counterpart for the "
        "unstructured representations. AIR windows + glimpse readout: the same readout, its "
        "CNN given each object's attended glimpse (the input's pixels in the window AIR "
        "inferred, for the posterior mean and each draw of z_where) in place of the decoded "
        "z_what: more than the latents, shown for what AIR's windows alone are worth. A digit's place, "
        "for 'left to right', is the centre of its ink box.",
        "",
        f"The paper's finding to check: {PAPER_FINDING}.",
        "",
    ]
    for task in TASKS:
        lines += [
            f"## {task} (majority class: {100 * results[task]['majority_class_accuracy']:.1f}%)",
            "",
            "| labelled scenes | " + " | ".join(REPRESENTATIONS) + " |",
            "|---|" + "---|" * len(REPRESENTATIONS),
        ]
        for n in sizes:
            cells = [_cell(results[task][str(n)][name]) for name in REPRESENTATIONS]
            lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["![downstream](downstream.png)", ""]
    return "\n".join(lines)
