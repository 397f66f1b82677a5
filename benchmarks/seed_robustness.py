"""Does the recipe train from every seed? Count accuracy on the training batches over the first
steps of the default recipe (full-length learning-rate schedule), for many seeds and optionally
another count prior - the cheap way to see the failure this recipe is built against: a digit
split over two windows (top and bottom half), which holds count accuracy near 1/3 for good.

    python benchmarks/seed_robustness.py --seeds 0-9                 # the default recipe
    python benchmarks/seed_robustness.py --seeds 0-4 --z-pres-prior 1e-5

A seed passes when its count accuracy over the last 500 steps is at least ``--pass-at``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from pathlib import Path

import torch

from airscene.config import RunConfig
from airscene.data.scenes import load_scenes
from airscene.provenance import git_revision
from airscene.train import Trainer

HERE = Path(__file__).resolve().parent


def seed_list(text: str) -> list[int]:
    """'0-4' or '0,3,7' -> the seeds."""
    if "-" in text:
        first, last = (int(v) for v in text.split("-"))
        return list(range(first, last + 1))
    return [int(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--z-pres-prior", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--pass-at", type=float, default=0.75)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    base = RunConfig()
    if args.z_pres_prior is not None:
        base = dataclasses.replace(
            base, model=dataclasses.replace(base.model, z_pres_prior=args.z_pres_prior)
        )
    scenes = load_scenes(base.data, "train")
    images, counts = torch.from_numpy(scenes.images), torch.from_numpy(scenes.counts)
    runs = {}
    for seed in seed_list(args.seeds):
        config = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=seed))
        trainer = Trainer(config, torch.device("cpu"))
        accuracy = []
        for step in range(1, args.steps + 1):
            trainer.train_step(images, counts)
            if step % 500 == 0 or step == args.steps:
                accuracy.append(trainer.take_means()[2])
        runs[seed] = {
            "count_accuracy_every_500_steps": accuracy,
            "passed": accuracy[-1] >= args.pass_at,
        }
        print(f"seed {seed}: " + " ".join(f"{a:.3f}" for a in accuracy), flush=True)
    rho = base.model.z_pres_prior
    summary = {
        "benchmark": "seed_robustness",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "z_pres_prior": rho,
        "steps": args.steps,
        "pass_at": args.pass_at,
        "passed": sum(r["passed"] for r in runs.values()),
        "seeds": len(runs),
        "runs": runs,
    }
    out = Path(args.out or HERE / "results" / f"seed_robustness-rho{rho:g}.json")
    out.write_text(json.dumps(summary, indent=1))
    print(
        f"rho {rho:g}: {summary['passed']} of {summary['seeds']} seeds at >= {args.pass_at} -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
