"""A model's training step with and without denormal floats flushed to zero, at the fewest and
the most objects its scenes hold: for the grid, how much of the step's growth with n (issue 32's
cost target: flat within 20% from n = 1 to 9) is denormal arithmetic; for every shipped model,
what the verbs' flush (``airscene.flush_denormals``) saves.

    python benchmarks/step_denormals.py [--model many-digits] [--steps 20] [--threads 1]
        [--flush-at-start]

For each n of the fewest and the most objects the model's training scenes hold (``many-digits``:
1 and 9; ``sprites``: 1 and 4) and each setting of ``torch.set_flush_denormal``, the median of
``steps`` training steps of the model's own recipe from its weights
(``many_objects.step_seconds``, two warm-up steps first), on minibatches of training scenes of n
objects; each cell is timed twice, the order reversed the second time. ``set_flush_denormal``
sets the calling thread only, so set after the intra-op threads exist, their work is still done
with denormals; ``--flush-at-start`` sets it before any of them exists (the threads then start
with it) and times that alone. Writes
``benchmarks/results/step_denormals/MODEL[_at_start].json`` (or ``--out``; the committed tables
alternate the two kinds of process three times, written as ``MODEL_REP[_at_start].json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from pathlib import Path

import torch

from airscene.checkpoint import load_model
from airscene.experiments.many_objects import step_seconds
from airscene.floats import flush_denormals
from airscene.provenance import git_revision, hardware
from airscene.registry import scene_family

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="many-digits", help="a run, checkpoint or shipped model")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per cell")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--flush-at-start",
        action="store_true",
        help="flush denormals before any intra-op thread starts, and time only that",
    )
    parser.add_argument("--out", type=Path, help="the JSON written (default: see above)")
    args = parser.parse_args()
    at_start = "_at_start" if args.flush_at_start else ""
    out = (
        args.out or HERE / "results" / "step_denormals" / f"{Path(args.model).name}{at_start}.json"
    )
    if args.flush_at_start:
        flush_denormals()  # what the verbs call, before any thread exists
    torch.set_num_threads(args.threads)
    model, checkpoint = load_model(args.model)
    config = checkpoint.config
    counts = (min(n for n in config.data.counts if n > 0), max(config.data.counts))
    family = scene_family(config.data.kind)
    images = {
        n: torch.from_numpy(
            family.load(
                dataclasses.replace(config.data, counts=(n,), count_probs=None), "train", n=256
            ).images
        )
        for n in counts
    }
    timings: dict[str, dict[int, list[float]]] = {}
    for flush in (True,) if args.flush_at_start else (False, True):
        torch.set_flush_denormal(flush)
        name = "flush at start" if args.flush_at_start else f"flush={flush} after the threads start"
        cells = timings.setdefault(name, {n: [] for n in counts})
        for order in (counts, counts[::-1]):
            for n in order:
                cells[n].append(1000 * step_seconds(config, model, images[n], args.steps))
        print(
            f"{name}: "
            + ", ".join(f"n={n} {min(ms):.1f}-{max(ms):.1f} ms" for n, ms in cells.items()),
            flush=True,
        )
    torch.set_flush_denormal(False)
    result = {
        "date": datetime.date.today().isoformat(),
        "git_revision": git_revision(),
        "hardware": hardware(),
        "model": args.model,
        "threads": args.threads,
        "flush_at_start": args.flush_at_start,
        "timed_steps": args.steps,
        "step_ms": timings,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
