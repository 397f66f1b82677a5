"""Sequential AIR and DAIR on many objects: SPAIR's comparison (48x48 canvases of 1-9 MNIST
digits of 14 px, digits allowed to touch and overlap a little: ``--kind scattered-digits``).

Trains each model with the scene family's preset (``airscene train --kind scattered-digits``,
``--dair`` for DAIR) for ``--steps`` steps, then, per digit count n in {1, 3, 5, 7, 9}:

  * count accuracy and AP at IoU 0.5 (drawn boxes ranked by q(z_pres = 1)) on ``--scenes``
    held-out scenes of exactly n MNIST test digits;
  * the time of a training step on minibatches of n-digit scenes (the trained model, its own
    recipe; the median of ``--timed-steps`` steps after two warm-up steps).

    python benchmarks/many_objects_sequential.py --steps 10000 [--dair-only | --air-only]

Writes ``benchmarks/results/many_objects_sequential-STEPS.json`` (and the runs into --runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from airscene.checkpoint import load_model
from airscene.data.scattered import SCATTERED_DIGITS
from airscene.experiments.many_objects import step_seconds
from airscene.experiments.runs import count_row
from airscene.provenance import git_revision, hardware
from airscene.train import train

HERE = Path(__file__).resolve().parent
COUNTS = (1, 3, 5, 7, 9)


# The models compared: the preset's model changed by these fields.
VARIANTS = {
    "AIR": {},
    "DAIR": {"dair": True},
    # Each step starts afresh from the residual and decides z_pres from it alone: whether ink is
    # left to explain, whatever number of objects came before.
    "DAIR-residual": {"dair": True, "dair_memory": False, "presence_from": "residual"},
    "AIR-stop": {},
    "DAIR-stop": {"dair": True},
}
# ... and their recipe by these: z_pres's stop baseline instead of NVIL's learned one.
TRAIN_VARIANTS = {"AIR-stop": {"z_pres_baseline": "stop"}, "DAIR-stop": {"z_pres_baseline": "stop"}}


def run_config(name: str, steps: int, seed: int):
    preset = SCATTERED_DIGITS.preset()
    return dataclasses.replace(
        preset,
        model=dataclasses.replace(preset.model, **VARIANTS[name]),
        train=dataclasses.replace(
            preset.train, steps=steps, seed=seed, eval_every=1000, **TRAIN_VARIANTS.get(name, {})
        ),
    )


def measure(run_dir: Path, config, scenes: int, timed_steps: int) -> dict:
    model, _ = load_model(run_dir)
    rows = {}
    for n in COUNTS:
        data = dataclasses.replace(config.data, counts=(n,))
        rows[n] = count_row(model, SCATTERED_DIGITS.load(data, "test", n=scenes))
        images = torch.from_numpy(SCATTERED_DIGITS.load(data, "train", n=512).images)
        rows[n]["step_seconds"] = seconds = step_seconds(config, model, images, timed_steps)
        print(
            f"  n={n}: count {100 * rows[n]['count_accuracy']:.1f}%, AP@0.5 "
            f"{rows[n]['average_precision']:.3f}, step {1000 * seconds:.0f} ms",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=1000, help="held-out scenes per count")
    parser.add_argument("--timed-steps", type=int, default=10)
    parser.add_argument("--runs", type=Path, default=Path("runs/many-objects"))
    parser.add_argument("--models", default="AIR,DAIR", help=f"of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    report = {"date": time.strftime("%Y-%m-%d"), "git_revision": git_revision(),
              "hardware": hardware(), "steps": args.steps, "seed": args.seed, "models": {}}  # fmt: skip
    tag = "" if args.models == "AIR,DAIR" else "-" + args.models.replace(",", "-").lower()
    out = HERE / "results" / f"many_objects_sequential-{args.steps}{tag}.json"
    for name in args.models.split(","):
        config = run_config(name, args.steps, args.seed)
        run_dir = args.runs / f"{name.lower()}-{args.steps}-seed{args.seed}"
        started = time.perf_counter()
        if not (run_dir / "checkpoints").is_dir():
            train(config, run_dir, progress=False)
        trained = time.perf_counter() - started
        print(f"{name}: trained in {trained:.0f} s -> {run_dir}", flush=True)
        report["models"][name] = {"run": str(run_dir), "train_seconds": trained,
                                  "by_count": measure(run_dir, config, args.scenes, args.timed_steps)}  # fmt: skip
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
