"""How well can anything read digits from an AIR model's objects? The ceiling of the downstream
experiment's readers, measured with digit labels they never get there.

On 1-digit scenes (so each inferred object is one known digit), or with ``--digits 2`` on the
downstream tasks' 2-digit scenes (objects matched to the digits by position), classifiers learn
the digit from ``--labels`` labelled objects and are tested on 5,000 others (10,000 objects of
5,000 scenes with ``--digits 2``):

* an MLP on z_what (the posterior mean; what the downstream readers see of an object);
* a linear map of z_what;
* a small CNN on the glimpse AIR's own decoder draws from z_what (still only the latents);
* a small CNN on the attended glimpse itself (more than the latents: the input pixels);
* k-means on z_what without labels, each cluster named by its majority digit (the purity).

A sum of two digits is right when both digits are (and rarely otherwise), so the square of a
per-digit accuracy bounds what a reader on that input reaches on the sum task.

    python benchmarks/downstream_ceiling.py --model default
    python benchmarks/downstream_ceiling.py --model default --digits 2 --out OUT.json
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from airscene.checkpoint import load_model
from airscene.config import DataConfig
from airscene.data.scenes import load_scenes
from airscene.data.training import images_to_tensor
from airscene.experiments.baselines import (
    DecodedGlimpseCNN,
    GlimpseCNN,
    accuracy,
    feature_classifier,
    fit_classifier,
)
from airscene.provenance import git_revision
from airscene.spatial import read_glimpse, z_where_to_box

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def single_objects(model, split: str, n: int):
    """z_what, the attended glimpse and the digit label of the first object of ``n`` 1-digit
    scenes."""
    scenes = load_scenes(DataConfig(counts=(1,), seed=0), split, n=n)
    what, glimpse = [], []
    for start in range(0, n, 1000):
        x = images_to_tensor(scenes.images[start : start + 1000])
        inference = model(x, sample=False)
        what.append(inference.objects["z_what"][:, 0])
        glimpse.append(
            read_glimpse(x, inference.objects["z_where"][:, 0], model.config.objects.glimpse_size)
        )
    labels = torch.from_numpy(scenes.labels[:, 0].astype(np.int64))
    return torch.cat(what), torch.cat(glimpse), labels


@torch.no_grad()
def paired_objects(model, split: str, n: int, passes: int = 0):
    """z_what, the attended glimpse and the digit label of the objects of 2-digit scenes, ``n``
    objects (two per scene, in pairs) from the scenes where AIR found exactly two; each object
    is matched to a true digit by the centres of its window and of the digit's ink box. With
    ``passes`` > 0, z_what is read again with the other object explained away
    (``GlimpseObjects.explain_away``)."""
    scenes = load_scenes(DataConfig(counts=(2,), seed=0), split, n=(n + 1) // 2 + n // 20 + 10)
    size = model.config.objects.glimpse_size
    what, glimpse, labels = [], [], []
    for start in range(0, len(scenes.images), 1000):
        x = images_to_tensor(scenes.images[start : start + 1000])
        inference = model(x, sample=False)
        z_what = inference.objects["z_what"]
        if passes > 0:
            z_what = model.objects.explain_away(
                x, inference.objects, inference.z_pres, passes=passes
            )["z_what"]
        two = inference.count == 2
        z_where = inference.objects["z_where"][two][
            :, :2
        ]  # (P, 2, 3): plain AIR's objects come first
        box = z_where_to_box(z_where, model.config.canvas_size)
        found = (box[..., :2] + box[..., 2:]) / 2  # (P, 2, 2) window centres
        truth_box = torch.from_numpy(scenes.boxes[start : start + 1000][two.numpy()][:, :2])
        truth = (truth_box[..., :2] + truth_box[..., 2:]).float() / 2
        digit = torch.from_numpy(scenes.labels[start : start + 1000][two.numpy()][:, :2])
        same = (found - truth).norm(dim=-1).sum(-1)
        swapped = (found - truth.flip(1)).norm(dim=-1).sum(-1)
        digit = torch.where((swapped < same)[:, None], digit.flip(1), digit)
        seen = x[two].repeat_interleave(2, 0)
        what.append(z_what[two][:, :2].flatten(0, 1))
        glimpse.append(read_glimpse(seen, z_where.flatten(0, 1), size))
        labels.append(digit.flatten().long())
    return torch.cat(what)[:n], torch.cat(glimpse)[:n], torch.cat(labels)[:n]


def kmeans_purity(train: torch.Tensor, labels: torch.Tensor, test, test_labels, k: int) -> float:
    generator = torch.Generator().manual_seed(0)
    centres = train[torch.randperm(len(train), generator=generator)[:k]].clone()
    for _ in range(50):
        assigned = torch.cdist(train, centres).argmin(1)
        for c in range(k):
            if (assigned == c).any():
                centres[c] = train[assigned == c].mean(0)
    assigned = torch.cdist(train, centres).argmin(1)
    names = torch.stack(
        [torch.bincount(labels[assigned == c], minlength=10).argmax() for c in range(k)]
    )
    return float((names[torch.cdist(test, centres).argmin(1)] == test_labels).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--labels", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--steps", type=int, default=4000, help="classifier minibatches of 64")
    parser.add_argument(
        "--digits",
        type=int,
        choices=(1, 2),
        default=1,
        help="objects of 1-digit scenes, or of 2-digit scenes (the downstream tasks' scenes: a "
        "window may hold part of the other digit); 2 also scores both digits of a test scene",
    )
    parser.add_argument(
        "--explain-away",
        type=int,
        default=0,
        metavar="PASSES",
        help="with --digits 2: read each object's z_what again with the other object removed, "
        "this many passes (GlimpseObjects.explain_away; 0: the z_what of inference)",
    )
    parser.add_argument("--out", default=str(HERE / "results" / "downstream_ceiling.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, checkpoint = load_model(args.model)
    objects = single_objects
    if args.digits == 2:  # one object alone has no other to explain away
        objects = functools.partial(paired_objects, passes=args.explain_away)
    what, glimpse, labels = objects(model, "train", max(args.labels))
    test_what, test_glimpse, test_labels = objects(
        model, "test", 5000 if args.digits == 1 else 10000
    )
    mean, std = what.mean(0), what.std(0).clamp_min(1e-3)
    what_n, test_what_n = (what - mean) / std, (test_what - mean) / std
    size = model.config.objects.glimpse_size
    readers = {
        "MLP on z_what": (lambda: feature_classifier(what.shape[1], 10), what_n, test_what_n),
        "linear on z_what": (lambda: nn.Linear(what.shape[1], 10), what_n, test_what_n),
        "CNN on the decoded z_what": (
            lambda: DecodedGlimpseCNN(model.objects.decoder, size),
            what,
            test_what,
        ),
        "CNN on the attended glimpse (more than the latents)": (
            lambda: GlimpseCNN(size),
            glimpse,
            test_glimpse,
        ),
    }
    results: dict[str, dict[str, float]] = {}
    both: dict[str, dict[str, float]] = {name: {} for name in readers}
    for name, (make, train_inputs, test_inputs) in readers.items():
        results[name] = {}
        for n in args.labels:
            torch.manual_seed(0)
            reader = fit_classifier(make(), train_inputs[:n], labels[:n], args.steps, 0)
            results[name][str(n)] = accuracy(reader, test_inputs, test_labels)
            line = f"{name}, {n} digit labels: {100 * results[name][str(n)]:.2f}%"
            if args.digits == 2:  # both digits of a scene right: about what a sum reader reaches
                with torch.no_grad():
                    right = (
                        torch.cat(
                            [
                                reader(test_inputs[i : i + 1000]).argmax(-1)
                                for i in range(0, len(test_inputs), 1000)
                            ]
                        )
                        == test_labels
                    )
                both[name][str(n)] = float(right.view(-1, 2).all(1).float().mean())
                line += f", both digits of a scene {100 * both[name][str(n)]:.2f}%"
            print(line, flush=True)
    purity = {
        str(k): kmeans_purity(what_n, labels, test_what_n, test_labels, k) for k in (10, 30, 100)
    }
    print("k-means purity on z_what (no labels):", purity)
    summary = {
        "benchmark": "downstream_ceiling",
        "date": datetime.date.today().isoformat(),
        "git_revision": git_revision(),
        "model": args.model,
        "model_git_revision": checkpoint.meta.get("git_revision"),
        "model_training_command": checkpoint.meta.get("command"),
        "test_objects": len(test_labels),
        "classifier_steps": args.steps,
        "digit_accuracy": results,
        "kmeans_purity": purity,
        "scenes": f"{args.digits}-digit",
        "explain_away_passes": args.explain_away,
    }
    if args.digits == 2:
        summary["test_scenes_with_both_digits_right"] = both
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
