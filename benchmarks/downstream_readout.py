"""The downstream experiment's object readouts at one labelled-set size, for any AIR model: the
latent-only readout (each object's z_what drawn by the model's frozen decoder, a small CNN, the
task's answer exactly from the digit distributions) and the same readout on each object's
attended glimpse (more than the latents), on the sum and ascending-order tasks. The same
scenes, views (posterior mean and draws), classifier and steps as ``airscene experiment
downstream``, without its baselines: the quick way to compare models' latents.

    python benchmarks/downstream_readout.py --model runs/dair --out OUT.json
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
    fit_classifier,
)
from airscene.experiments.downstream import TASKS, DownstreamSettings, air_latents, air_views
from airscene.provenance import git_revision

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--labels", type=int, default=10_000, help="labelled 2-digit scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "downstream_readout.json"))
    args = parser.parse_args(argv)
    settings = DownstreamSettings()
    model, checkpoint = load_model(args.model)
    two = DataConfig(canvas_size=model.config.canvas_size, counts=(2,), seed=args.seed)
    pool = load_scenes(two, "train", n=args.labels)
    test = load_scenes(two, "test", n=settings.test_scenes)
    size, objects = model.objects.config.glimpse_size, model.config.max_steps
    readouts = {
        "AIR + object readout": (False, lambda: DecodedGlimpseCNN(model.objects.decoder, size)),
        "AIR windows + glimpse readout (more than the latents)": (True, lambda: GlimpseCNN(size)),
    }
    results: dict[str, dict[str, float]] = {task: {} for task in TASKS}
    for name, (glimpses, digit) in readouts.items():
        posterior = torch.Generator().manual_seed(args.seed)
        views = air_views(model, pool.images, settings.posterior_draws, posterior, glimpses)
        test_inputs = air_latents(model, test.images, glimpses=glimpses)
        for task, (make_labels, _) in TASKS.items():
            torch.manual_seed(args.seed)
            readout = ObjectDigitReadout(objects, digit(), task)
            labels = torch.from_numpy(make_labels(pool))
            fit_classifier(
                readout,
                views.flatten(0, 1),
                labels.repeat(len(views)),
                settings.classifier_steps,
                args.seed,
            )
            score = accuracy(readout, test_inputs, torch.from_numpy(make_labels(test)))
            results[task][name] = score
            print(f"{task}, {name}: {100 * score:.2f}%", flush=True)
    summary = {
        "benchmark": "downstream_readout",
        "date": datetime.date.today().isoformat(),
        "git_revision": git_revision(),
        "model": args.model,
        "model_git_revision": checkpoint.meta.get("git_revision"),
        "model_training_command": checkpoint.meta.get("command"),
        "labelled_scenes": args.labels,
        "test_scenes": settings.test_scenes,
        "accuracy": results,
    }
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
