"""Plot the time-to-accuracy curves written by ``time_to_accuracy.py`` (one line per run),
with the Pyro example's figures on the same machine for reference, and print a summary table.

    python benchmarks/plot_time_to_accuracy.py            # -> benchmarks/results/time_to_accuracy.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from airscene.experiments.count import plot_curves

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--out", default=str(HERE / "results" / "time_to_accuracy.png"))
    args = parser.parse_args(argv)

    runs = [json.loads(p.read_text()) for p in sorted(Path(args.results).glob("tta-*.json"))]
    if not runs:
        raise SystemExit(f"no tta-*.json files in {args.results}")
    print(
        f"{'run':<14} {'final':>7} {'best':>7} {'s to 95%':>9} {'s to 98%':>9} {'steps to 98%':>13}"
    )
    for run in runs:
        s95, s98 = run["seconds_to"]["0.95"], run["seconds_to"]["0.98"]
        print(
            f"{run['name']:<14} {run['final_count_accuracy']:>7.4f} {run['best_count_accuracy']:>7.4f} "
            f"{s95 if s95 is not None else '-':>9} {s98 if s98 is not None else '-':>9} "
            f"{run['steps_to']['0.98'] if run['steps_to']['0.98'] else '-':>13}"
        )
    plot_curves(runs, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
