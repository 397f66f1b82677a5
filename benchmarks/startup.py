"""Start-up time of the command: ``airscene --help``, ``airscene infer --help`` and the first
``infer`` result on one image (a fresh process each time; the median of ``--repeats``).

    python benchmarks/startup.py [--repo PATH]   # PATH: another checkout, e.g. a git worktree

Timing another checkout (``--repo``) in the same run gives the before/after ratio. Writes
``benchmarks/results/startup-REVISION.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
COMMANDS = {
    "airscene --help": ["--help"],
    "airscene infer --help": ["infer", "--help"],
    "first infer result, one image": ["infer", "{image}", "--quiet"],
}


def seconds(repo: Path, argv: list[str], repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(  # run in the checkout: ``-m`` puts the working folder first on the path
            [sys.executable, "-m", "airscene", *argv],
            env=env, cwd=repo, check=True, capture_output=True,
        )  # fmt: skip
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def revision(repo: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=None, help="another checkout to time too")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    repos = {"this": HERE.parent, **({"other": args.repo.resolve()} if args.repo else {})}
    with tempfile.TemporaryDirectory() as scratch:
        image = Path(scratch) / "digit.png"
        Image.fromarray(np.zeros((50, 50), np.uint8)).save(image)
        table: dict[str, dict[str, float]] = {}
        for label, argv in COMMANDS.items():
            argv = [a.format(image=image) for a in argv]
            table[label] = {name: seconds(repo, argv, args.repeats) for name, repo in repos.items()}
            cells = ", ".join(
                f"{name} ({revision(repo)}) {table[label][name]:.2f} s"
                for name, repo in repos.items()
            )
            print(f"{label}: {cells}")
    record = {"revisions": {name: revision(repo) for name, repo in repos.items()}, "seconds": table,
              "repeats": args.repeats}  # fmt: skip
    out = HERE / "results" / f"startup-{revision(HERE.parent)}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
