"""Can a renderer's pose gradient find an object from afar? Gradient descent on the position
alone (shape and rotation known) of single objects from random starts on the floor, scoring
p(x | z) unblurred or with a blur shrinking to none (``--likelihood-blur-start``'s curriculum).

    python benchmarks/pose_landscape.py          # 32 objects, blurs 0, 4 and 8 px
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from airscene.config import ModelConfig, RenderedConfig
from airscene.model import build_model
from airscene.provenance import git_revision, hardware

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=str(HERE / "results" / "pose_landscape.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    air = build_model(ModelConfig(canvas_size=64, objects=RenderedConfig()))
    objects, n = air.objects, args.objects
    true = {
        "shape": torch.randint(0, 3, (n,)).float(),
        "position": torch.rand(n, 2) * 1.6 - 0.8,
        "turn": torch.rand(n) * 6.28,
    }
    x = objects.draw(true).detach()
    results = {}
    for blur_start in (0.0, 4.0, 8.0):
        position = (torch.rand(n, 2) * 1.6 - 0.8).requires_grad_()
        optimiser = torch.optim.Adam([position], lr=0.02)
        for step in range(args.steps):
            blur = blur_start * max(0.0, 1 - step / (2 * args.steps / 3))
            guess = objects.draw(
                {"shape": true["shape"], "position": position, "turn": true["turn"]}
            )
            loss = -air.log_likelihood(x, guess, blur).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        error = (position.detach() - true["position"]).norm(
            dim=1
        ) / 1.6  # fraction of the floor's width
        results[f"blur {blur_start:g} px"] = {
            "median_error": float(error.median()),
            "found_fraction": float((error < 0.05).float().mean()),
        }
        print(blur_start, results[f"blur {blur_start:g} px"])
    summary = {
        "benchmark": "pose_landscape",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "hardware": hardware(),
        "objects": n,
        "steps": args.steps,
        "found_means": "final position within 5% of the floor's width of the truth",
        "results": results,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
