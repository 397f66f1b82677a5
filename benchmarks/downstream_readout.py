"""The downstream experiment's object readouts at one labelled-set size, for any AIR model: the
latent-only readout (each object's z_what drawn by the model's frozen decoder, a small CNN, the
task's answer exactly from the digit distributions) and the same readout on each object's
attended glimpse (more than the latents), on the sum and ascending-order tasks. The same
scenes, views (posterior mean and draws), classifier and steps as ``airscene experiment
downstream``, without its baselines: the quick way to compare models' latents.

One fit of a readout moves by about a point with the order its minibatches come in; ``--fits K``
trains K readouts per task (fit k: classifier initialisation and minibatch draws seeded
``seed + k``) and reports each, their mean and their range, so that models can be told apart,
and the accuracy of the K readouts together (their class probabilities averaged: an ensemble,
still a reader of the latents alone). ``--learning-rate constant`` keeps each fit's learning
rate at 1e-3 (the experiment's recipe before 889a53c) instead of decaying it to 0 (a cosine).
``--test-draws K`` also reads each test scene as K draws from q(z | x) beside the posterior mean
and reports the readouts' class probabilities averaged over those views too (the answer under
the posterior rather than at its mean).

    python benchmarks/downstream_readout.py --model runs/dair --out OUT.json
    python benchmarks/downstream_readout.py --model runs/conv --fits 3 --latents-only
    python benchmarks/downstream_readout.py --model runs/conv --fits 3 --latents-only \
        --learning-rate constant
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from airscene.checkpoint import load_model
from airscene.config import DataConfig
from airscene.data.scenes import load_scenes
from airscene.experiments.baselines import (
    DecodedGlimpseCNN,
    GlimpseCNN,
    ObjectDigitReadout,
    accuracy,
    ensemble_accuracy,
    fit_classifier,
)
from airscene.experiments.downstream import TASKS, DownstreamSettings, air_views
from airscene.provenance import git_revision

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    settings = DownstreamSettings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--labels", type=int, default=10_000, help="labelled 2-digit scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fits", type=int, default=1, help="readouts trained per task")
    parser.add_argument(
        "--latents-only", action="store_true", help="skip the glimpse readout (more than latents)"
    )
    parser.add_argument(
        "--learning-rate",
        choices=("cosine", "constant"),
        default="cosine" if settings.cosine else "constant",
        help="each fit's learning rate: decayed to 0 (cosine) or constant (default: the "
        "experiment's)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=settings.classifier_steps,
        help="minibatches per fit",
    )
    parser.add_argument(
        "--explain-away",
        type=int,
        default=0,
        metavar="PASSES",
        help="the latent readout reads each object's z_what read again with the other objects "
        "removed, this many passes (GlimpseObjects.explain_away; 0: the z_what of inference)",
    )
    parser.add_argument(
        "--test-draws",
        type=int,
        default=0,
        metavar="K",
        help="also answer with the class probabilities averaged over the test scene's posterior "
        "mean and K draws from q(z | x)",
    )
    parser.add_argument("--out", default=str(HERE / "results" / "downstream_readout.json"))
    args = parser.parse_args(argv)
    model, checkpoint = load_model(args.model)
    two = DataConfig(canvas_size=model.config.canvas_size, counts=(2,), seed=args.seed)
    pool = load_scenes(two, "train", n=args.labels)
    test = load_scenes(two, "test", n=settings.test_scenes)
    size, objects = model.objects.config.glimpse_size, model.config.max_steps
    readouts = {
        "AIR + object readout": (False, lambda: DecodedGlimpseCNN(model.objects.decoder, size)),
        "AIR windows + glimpse readout (more than the latents)": (True, lambda: GlimpseCNN(size)),
    }
    if args.latents_only:
        readouts = dict(list(readouts.items())[:1])
    results: dict[str, dict[str, float]] = {task: {} for task in TASKS}
    fits: dict[str, dict[str, list[float]]] = {task: {} for task in TASKS}
    ensembles: dict[str, dict[str, float]] = {task: {} for task in TASKS}
    under_posterior: dict[str, dict[str, float]] = {task: {} for task in TASKS}
    for name, (glimpses, digit) in readouts.items():
        posterior = torch.Generator().manual_seed(args.seed)
        # The glimpse readout reads pixels, not z_what: air_latents leaves explain_away to z_what.
        passes = args.explain_away
        views = air_views(model, pool.images, settings.posterior_draws, posterior, glimpses, passes)
        # The test scenes' posterior mean, then --test-draws draws of their own (a generator
        # apart from the training views').
        test_posterior = torch.Generator().manual_seed(args.seed + 1)
        test_views = air_views(
            model, test.images, args.test_draws, test_posterior, glimpses, passes
        )
        test_inputs = test_views[0]
        for task, (make_labels, _) in TASKS.items():
            labels = torch.from_numpy(make_labels(pool))
            test_labels = torch.from_numpy(make_labels(test))
            scores, fitted = [], []
            for fit in range(args.fits):
                torch.manual_seed(args.seed + fit)
                readout = ObjectDigitReadout(objects, digit(), task)
                fit_classifier(
                    readout,
                    views.flatten(0, 1),
                    labels.repeat(len(views)),
                    args.steps,
                    args.seed + fit,
                    cosine=args.learning_rate == "cosine",
                )
                fitted.append(readout)
                scores.append(accuracy(readout, test_inputs, test_labels))
                print(f"{task}, {name}, fit {fit}: {100 * scores[-1]:.2f}%", flush=True)
            results[task][name] = sum(scores) / len(scores)
            fits[task][name] = scores
            if args.fits > 1:
                ensembles[task][name] = ensemble_accuracy(fitted, test_inputs, test_labels)
                print(
                    f"{task}, {name}: mean {100 * results[task][name]:.2f}%, "
                    f"range {100 * min(scores):.2f}-{100 * max(scores):.2f}%, "
                    f"the {args.fits} together {100 * ensembles[task][name]:.2f}%",
                    flush=True,
                )
            if args.test_draws > 0:
                under_posterior[task][name] = ensemble_accuracy(
                    fitted, test_views.unbind(0), test_labels
                )
                print(
                    f"{task}, {name}: the {args.fits} fit(s) over the posterior mean and "
                    f"{args.test_draws} draws {100 * under_posterior[task][name]:.2f}%",
                    flush=True,
                )
    summary = {
        "benchmark": "downstream_readout",
        "date": datetime.date.today().isoformat(),
        "git_revision": git_revision(),
        "model": args.model,
        "model_git_revision": checkpoint.meta.get("git_revision"),
        "model_training_command": checkpoint.meta.get("command"),
        "labelled_scenes": args.labels,
        "test_scenes": settings.test_scenes,
        "fits": args.fits,
        "steps_per_fit": args.steps,
        "explain_away_passes": args.explain_away,
        "learning_rate": "cosine decay from 1e-3 to 0"
        if args.learning_rate == "cosine"
        else "constant 1e-3",
        "accuracy": results,  # the mean over the fits
        "accuracy_of_each_fit": fits,
        "accuracy_of_the_fits_together": ensembles,  # class probabilities averaged (fits > 1)
        "test_draws": args.test_draws,
        # The fits' class probabilities averaged over the test posterior mean and its draws.
        "accuracy_over_test_draws": under_posterior,
    }
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
