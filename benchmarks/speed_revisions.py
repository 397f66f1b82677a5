"""The training step of this source tree against another revision's (a git worktree), timed
in one run: each revision steps in its own process, the two alternating round by round, so a
slow spell of the machine falls on both alike.

    git worktree add ../prev HEAD~1
    python benchmarks/speed_revisions.py --against ../prev            # batch 64, default recipe

Both start from the shipped model's weights (the regime of most of a run) and, separately,
from a fresh initialisation; each round times ``--steps`` steps after ``--warmup``. The figure
is the median step over all rounds, and the ratio is against's / this tree's (also per round,
the two revisions' rounds alternating which goes first).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Run inside each revision's process: only API that both revisions have.
WORKER = """
import json, sys, time, torch
from airscene.checkpoint import load_model
from airscene.config import RunConfig, TrainConfig
from airscene.data.scenes import load_scenes
from airscene.train import Trainer
batch, trained, warmup, steps = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
config = RunConfig(train=TrainConfig(batch_size=batch))
scenes = load_scenes(config.data, "train")
images, counts = torch.from_numpy(scenes.images), torch.from_numpy(scenes.counts)
trainer = Trainer(config, torch.device("cpu"))
if trained:
    trainer.model.load_state_dict(load_model("default")[0].state_dict())
times = []
for i in range(warmup + steps):
    started = time.perf_counter()
    trainer.train_step(images, counts)
    if i >= warmup:
        times.append(time.perf_counter() - started)
print(json.dumps(times))
"""


def time_revision(root: Path, batch: int, trained: bool, warmup: int, steps: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = [str(batch), "1" if trained else "0", str(warmup), str(steps)]
    out = subprocess.run(
        [sys.executable, "-c", WORKER, *args], env=env, cwd=root, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"{root}: the worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def revision(root: Path) -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--against", required=True, help="root of the other revision's worktree")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default=str(HERE / "results" / "speed_revisions.json"))
    args = parser.parse_args(argv)
    against = Path(args.against).resolve()
    if not (against / "airscene" / "__init__.py").is_file():
        raise SystemExit(f"{against}: not an airscene source tree")
    sys.path.insert(0, str(ROOT))
    from airscene.provenance import hardware

    results = {}
    for regime, trained in (("from shipped weights", True), ("from init", False)):
        times: dict[str, list[float]] = {"this": [], "against": []}
        ratios = []  # per round, against's median step / this tree's
        for round_ in range(args.rounds):
            order = [("this", ROOT), ("against", against)]
            medians = {}
            for name, root in order if round_ % 2 == 0 else order[::-1]:
                steps = time_revision(root, args.batch, trained, args.warmup, args.steps)
                times[name] += steps
                medians[name] = statistics.median(steps)
            ratios.append(medians["against"] / medians["this"])
        this, other = (statistics.median(times[n]) * 1e3 for n in ("this", "against"))
        results[regime] = {
            "this_ms": this,
            "against_ms": other,
            "speedup": other / this,
            "speedup_per_round": ratios,
            "median_speedup_of_rounds": statistics.median(ratios),
        }
        print(
            f"{regime}: this tree {this:.2f} ms/step, against {other:.2f} ms (x{other / this:.3f}; "
            f"rounds x{min(ratios):.3f}-x{max(ratios):.3f}, median x{statistics.median(ratios):.3f})"
        )
    summary = {
        "benchmark": "speed_revisions",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "this_revision": revision(ROOT),
        "against_revision": revision(against),
        "batch": args.batch,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "hardware": hardware(),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
