"""Why do models trained on {0, 1, 3} digits miscount 2-digit scenes? Train the interpolation
task's model (or with --task extrapolation the other task's, to check that a change keeps it)
with one change of recipe or data at a time, for a short run, and measure:

* count accuracy on the unseen count's test scenes (with N + 1 steps as the experiment does) and
  on the training counts' own test scenes (the model must still learn what it was shown);
* on 2-digit scenes, the mean probability of a third object and how much ink is still
  unexplained when the third step decides (DAIR's input there);
* the same probability on 1-digit scenes at their second step, where the residual is just as
  empty: if the network read only the residual, the two would agree.

    python benchmarks/interpolation_probe.py --variant base --dair --steps 3000 --seed 0
    python benchmarks/interpolation_probe.py --variant overlap --dair

A variant is a name from VARIANTS: config fields replaced in the experiment's run config.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from pathlib import Path

import torch

from airscene.config import RunConfig
from airscene.data.scenes import load_scenes
from airscene.data.training import images_to_tensor
from airscene.experiments.generalisation import TASKS, evaluate_with_extra_step, run_config
from airscene.provenance import git_revision
from airscene.train import train

HERE = Path(__file__).resolve().parent

# name -> {"data" | "model" | "train": {field: value}}
VARIANTS: dict[str, dict[str, dict]] = {
    "base": {},
    "overlap": {"data": {"overlap": True}},
    "rho1e-5": {"model": {"z_pres_prior": 1e-5}},
    "smaller-digits": {"data": {"scale_range": (0.7, 0.9)}},
    "smaller-digits-overlap": {"data": {"scale_range": (0.7, 0.9), "overlap": True}},
    "smaller-digits-no-memory": {
        "data": {"scale_range": (0.7, 0.9)},
        "model": {"dair_memory": False},
    },
    "smaller-digits-presence-residual": {
        "data": {"scale_range": (0.7, 0.9)},
        "model": {"presence_from": "residual"},
    },
    "presence-residual": {"model": {"presence_from": "residual"}},
    # On the experiment's recipe (smaller digits; DAIR without memory): one step more than the
    # largest training count, so that stopping after the last object is trained for every count
    # (with {0, 1, 3} and N = 3 no step ever decides after a third object).
    "steps-max-plus-one": {"model": {"max_steps": 4}},
    "presence-residual-overlap": {
        "model": {"presence_from": "residual"},
        "data": {"overlap": True},
    },
}


def apply_variant(config: RunConfig, variant: dict[str, dict]) -> RunConfig:
    parts = {
        part: dataclasses.replace(getattr(config, part), **fields)
        for part, fields in variant.items()
    }
    return dataclasses.replace(config, **parts)


@torch.no_grad()
def step_probabilities(run_dir: Path, counts: tuple[int, ...], n: int) -> dict:
    """On ``n`` test scenes of each count: the mean z_pres probability at each step (modes taken,
    so the steps after a stop read 0) and the unexplained ink when the step after the last
    object decides."""
    from airscene.checkpoint import load_model

    model, checkpoint = load_model(run_dir)
    model.eval()
    out = {}
    for count in counts:
        data = dataclasses.replace(checkpoint.config.data, counts=(count,), count_probs=None)
        test = load_scenes(data, "test", n=n)
        x = images_to_tensor(test.images, torch.device("cpu"))
        mode = model(x, sample=False)
        # A step is reached only when every step before it found an object.
        reached = torch.cat(
            [torch.ones_like(mode.z_pres[:, :1]), mode.z_pres[:, :-1].cumprod(1)], 1
        )
        probability = mode.z_pres_prob * reached
        unexplained, canvas = [], torch.zeros_like(x)
        for t in range(mode.z_pres.shape[1]):  # ink still unexplained after the first t objects
            drawn = model.objects.draw({k: v[:, t] for k, v in mode.objects.items()})
            canvas = canvas + mode.z_pres[:, t].view(-1, 1, 1) * drawn
            unexplained.append(float((x - canvas).clamp(min=0).sum((1, 2)).mean()))
        out[str(count)] = {
            "mean_z_pres_prob_by_step": probability.mean(0).tolist(),
            "unexplained_ink_after_step": unexplained,
            "inferred_count_mean": float(mode.count.float().mean()),
            "ink": float(x.sum((1, 2)).mean()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="base", choices=sorted(VARIANTS))
    parser.add_argument("--dair", action="store_true")
    parser.add_argument(
        "--task", default="interpolation", choices=sorted(TASKS), help="whose counts to train on"
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=2000, help="test scenes per evaluation")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--evaluate-only", action="store_true", help="measure the run already in --run-dir"
    )
    args = parser.parse_args(argv)
    train_counts, test_counts = TASKS[args.task]
    config = apply_variant(
        run_config(train_counts, args.dair, args.steps, args.seed), VARIANTS[args.variant]
    )
    prefix = "interp" if args.task == "interpolation" else args.task
    name = f"{prefix}-{'dair' if args.dair else 'air'}-{args.variant}-seed{args.seed}"
    run_dir = Path(args.run_dir or f"runs/{name}")
    started = time.perf_counter()
    if not args.evaluate_only:
        train(config, run_dir, overwrite=True, progress=False, command=["interpolation_probe.py"])
    seconds = time.perf_counter() - started if not args.evaluate_only else None
    task = evaluate_with_extra_step(run_dir, test_counts, args.scenes)
    own = evaluate_with_extra_step(run_dir, train_counts, args.scenes)
    probes = step_probabilities(run_dir, (1, 2, 3), 500)
    result = {
        "benchmark": "interpolation_probe",
        "date": datetime.date.today().isoformat(),
        "git_revision": git_revision(),
        "task": args.task,
        "variant": args.variant,
        "changes": VARIANTS[args.variant],
        "dair": args.dair,
        "seed": args.seed,
        "steps": args.steps,
        "train_seconds": None if seconds is None else round(seconds, 1),
        "test_counts": list(test_counts),
        "unseen_count_accuracy": task["count_accuracy"],
        "unseen_count_confusion": task["confusion"],
        "own_counts_accuracy": own["count_accuracy"],
        "own_accuracy_by_count": {k: v["accuracy"] for k, v in own["accuracy_by_count"].items()},
        "probes": probes,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "probes"}, indent=1))
    for count, probe in probes.items():
        p = ", ".join(f"{v:.2f}" for v in probe["mean_z_pres_prob_by_step"])
        left = ", ".join(f"{v:.1f}" for v in probe["unexplained_ink_after_step"])
        print(f"{count}-digit scenes: p(z_pres) by step [{p}]; ink {probe['ink']:.1f}, "
              f"unexplained after each step [{left}]")  # fmt: skip
    out = Path(args.out or HERE / "results" / f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
