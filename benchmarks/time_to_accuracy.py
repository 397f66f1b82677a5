"""Time to accuracy: train from scratch with the default recipe, evaluating count accuracy on
10,000 held-out test scenes (MNIST test digits) at fixed intervals.

Writes the curve (step, training seconds, ELBO, count accuracy) as JSON, and appends one line
per run to a results file so seeds can be run across sessions (or on a GPU) and collected:

    python benchmarks/time_to_accuracy.py --seed 0            # AIR, default recipe
    python benchmarks/time_to_accuracy.py --seed 0 --dair     # DAIR, same recipe plus its switch

Wall-clock figures count training steps only; evaluation time is excluded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from airscene.experiments.count import count_config, time_to_accuracy

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dair", action="store_true", help="train DAIR instead of AIR")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the recipe's)"
    )
    parser.add_argument(
        "--eval-every", type=int, default=None, help="default: the protocol's (500)"
    )
    parser.add_argument(
        "--eval-scenes", type=int, default=None, help="default: the protocol's (10,000)"
    )
    parser.add_argument(
        "--z-pres-prior", type=float, default=None, help="rho (default: the recipe's)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--run-dir", default=None, help="default: runs/tta-{air,dair}-seedN")
    parser.add_argument(
        "--out",
        default=None,
        help="curve JSON (default: benchmarks/results/tta-{air,dair}-seedN.json)",
    )
    parser.add_argument("--results", default=str(HERE / "results" / "time_to_accuracy_runs.jsonl"))
    args = parser.parse_args(argv)

    name = f"{'dair' if args.dair else 'air'}-seed{args.seed}"
    # The protocol (recipe, evaluation schedule) is the count experiment's; flags override it.
    protocol = count_config(args.dair, args.seed, quick=False)
    given = {"steps": args.steps, "eval_every": args.eval_every, "eval_scenes": args.eval_scenes}
    config = dataclasses.replace(
        protocol,
        train=dataclasses.replace(
            protocol.train,
            device=args.device,
            **{key: value for key, value in given.items() if value is not None},
        ),
    )
    if args.z_pres_prior is not None:
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, z_pres_prior=args.z_pres_prior)
        )
    run_dir = Path(args.run_dir or f"runs/tta-{name}")
    summary = time_to_accuracy(config, run_dir, name, command=[sys.executable, *sys.argv])
    curve = summary["curve"]
    out = Path(args.out or HERE / "results" / f"tta-{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    line = {k: v for k, v in summary.items() if k not in ("curve", "config")}
    with open(args.results, "a") as file:
        file.write(json.dumps(line) + "\n")

    print(f"{'step':>7} {'seconds':>9} {'elbo':>9} {'count acc':>10}")
    for point in curve:
        print(
            f"{point['step']:>7} {point['train_seconds']:>9.0f} {point['elbo']:>9.1f} {point['count_accuracy']:>10.4f}"
        )
    print(
        f"{name}: final {summary['final_count_accuracy']:.4f}; seconds to 95%: {summary['seconds_to']['0.95']}, "
        f"to 98%: {summary['seconds_to']['0.98']}  -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
