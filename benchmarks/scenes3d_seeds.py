"""Does the 3D recipe train from every seed? ``airscene train --kind scenes3d --seed S`` for each
seed, then each model scored on fresh held-out scenes (a scene seed never used in training or in
its evaluations during training), with the step at which it first met every target of the 3D
experiment (``airscene.experiments.scenes3d.TARGETS``) on its own held-out scenes.

    python benchmarks/scenes3d_seeds.py --seeds 0-2            # about 11 minutes a seed, 2 cores

Finished runs under ``--runs`` are reused (a stopped benchmark continues where it was).
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
from seed_robustness import seed_list  # benchmarks/, beside this script

from airscene.checkpoint import load_model
from airscene.config import scenes3d_run
from airscene.data.scenes3d import load_scenes3d
from airscene.evaluate3d import evaluate_scenes3d
from airscene.experiments.generalisation import finished_run
from airscene.experiments.scenes3d import TARGETS, meets_targets, run_config, training_curve
from airscene.provenance import git_revision
from airscene.train import train

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--steps", type=int, default=None, help="default: the 3D recipe's")
    parser.add_argument("--runs", default="runs/scenes3d-seeds", help="where the runs are kept")
    parser.add_argument("--scene-seed", type=int, default=2026, help="of the fresh scenes")
    parser.add_argument("--scenes", type=int, default=1000, help="fresh held-out scenes")
    parser.add_argument("--out", default=str(HERE / "results" / "scenes3d-seeds.json"))
    args = parser.parse_args(argv)

    runs = {}
    for seed in seed_list(args.seeds):
        config = run_config("autograd", args.steps or scenes3d_run().train.steps, seed)
        run_dir = Path(args.runs) / f"seed-{seed}"
        if not finished_run(run_dir, config):
            train(config, run_dir, overwrite=True, progress=False)
        model, checkpoint = load_model(run_dir)
        fresh = load_scenes3d(args.scenes, "test", args.scene_seed, config.data.counts)
        held_out = evaluate_scenes3d(model, fresh, generator=torch.Generator().manual_seed(0))
        curve = training_curve(run_dir)
        reached = next((row for row in curve if meets_targets(row)), None)
        result = held_out.to_dict()
        runs[seed] = {
            "run": str(run_dir),
            "trained_at": checkpoint.meta.get("git_revision"),
            "train_seconds": curve[-1]["train_seconds"] if curve else None,
            "fresh_scenes": {
                key: result[key]
                for key in (
                    "count_accuracy",
                    "shape_accuracy",
                    "position_error_median",
                    "rotation_error_median_deg",
                )
            },
            "meets_targets_on_fresh_scenes": meets_targets(result),
            "targets_first_met_during_training": reached,
            "curve": curve,
        }
        print(
            f"seed {seed}: count {result['count_accuracy']:.3f} shape {result['shape_accuracy']:.3f} "
            f"position {result['position_error_median']:.3f} "
            f"rotation {result['rotation_error_median_deg']:.1f} deg; targets first met at step "
            f"{reached['step'] if reached else 'never'}",
            flush=True,
        )
    summary = {
        "benchmark": "scenes3d_seeds",
        "command": "airscene train --kind scenes3d --seed S, then each model on fresh scenes",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "threads": torch.get_num_threads(),
        "targets": TARGETS,
        "fresh_scenes": {"n": args.scenes, "scene_seed": args.scene_seed},
        "passed": sum(run["meets_targets_on_fresh_scenes"] for run in runs.values()),
        "seeds": len(runs),
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"{summary['passed']} of {summary['seeds']} seeds meet every target -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
