"""The 3D renderer's speed: forward and forward + backward (gradients for position and rotation)
for a batch of scenes of 3 objects, at 32x32 and 64x64, and at 64x64 as the model renders
(each object's rays only in its window), median over repeats; and, in the same run, a 3D
training step (the scenes3d defaults, batch 64) beside rendering that step's share: the
training scenes' own objects (1.5 per scene on average) as the model renders them, forward +
backward.

    python benchmarks/render3d_speed.py            # batch 64, this machine's CPU threads
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import time
from pathlib import Path

import torch

from airscene.provenance import git_revision, hardware
from airscene.render3d import Renderer, SceneSpace

HERE = Path(__file__).resolve().parent


def median_ms(run, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        run()
    laps = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        laps.append((time.perf_counter() - started) * 1e3)
    return statistics.median(laps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(HERE / "results" / "render3d_speed.json"))
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    shape = torch.randint(0, 3, (args.batch, 3), generator=generator)
    position = (torch.rand(args.batch, 3, 2, generator=generator) * 1.6 - 0.8).requires_grad_()
    rotation = (torch.rand(args.batch, 3, generator=generator) * 6.28).requires_grad_()
    results = {}
    for size in (32, 64):
        renderer = Renderer(dataclasses.replace(SceneSpace(), image_size=size))

        def forward(renderer=renderer):
            with torch.no_grad():
                renderer.render(shape, position, rotation)

        def forward_backward(renderer=renderer):
            renderer.render(shape, position, rotation).sum().backward()

        results[f"{size}x{size}"] = {
            "forward_ms": median_ms(forward, args.repeats),
            "forward_backward_ms": median_ms(forward_backward, args.repeats),
        }
        print(f"{size}x{size}, batch {args.batch}, 3 objects: {results[f'{size}x{size}']}")

    # What the model renders: each object's rays only in its window (Renderer.window).
    def windowed(renderer=renderer):
        return renderer.composite(*renderer.objects_in_windows(shape, position, rotation))

    def windowed_forward():
        with torch.no_grad():
            windowed()

    results["64x64 in windows"] = {
        "forward_ms": median_ms(windowed_forward, args.repeats),
        "forward_backward_ms": median_ms(lambda: windowed().sum().backward(), args.repeats),
    }
    print(f"64x64 in windows, batch {args.batch}, 3 objects: {results['64x64 in windows']}")
    results["training_step"] = training_step(args.batch, args.repeats)
    print(f"3D training step, batch {args.batch}: {results['training_step']}")
    summary = {
        "benchmark": "render3d_speed",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "hardware": hardware(),
        "batch": args.batch,
        "objects_per_scene": 3,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


def training_step(batch: int, repeats: int) -> dict[str, float]:
    """A 3D training step's median time, and rendering its minibatch's true scenes (fwd + bwd)."""
    from airscene.config import scenes3d_run
    from airscene.data.scenes3d import make_scenes3d
    from airscene.train import Trainer

    config = scenes3d_run()
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=batch))
    scenes = make_scenes3d(4 * batch, "train", seed=0)
    images, counts = torch.from_numpy(scenes.images), torch.from_numpy(scenes.counts)
    trainer = Trainer(config, torch.device("cpu"))
    step_ms = median_ms(lambda: trainer.train_step(images, counts), repeats)
    # What a step renders: the present objects only, painted into their images' canvas.
    objects = trainer.model.objects
    image, slot = torch.from_numpy(scenes.shapes[:batch] >= 0).nonzero(as_tuple=True)
    shape = torch.from_numpy(scenes.shapes[:batch])[image, slot].float()
    position = torch.from_numpy(scenes.positions[:batch])[image, slot].requires_grad_()
    rotation = torch.deg2rad(torch.from_numpy(scenes.rotations_deg[:batch])[image, slot])
    turn = (rotation * objects.order[shape.long()]).requires_grad_()

    def render():
        drawn = {"shape": shape, "position": position, "turn": turn}
        canvas = objects.paint(objects.blank_canvas(images[:batch].float()), image, drawn)
        objects.canvas_image(canvas).sum().backward()

    render_ms = median_ms(render, repeats)
    return {
        "step_ms": step_ms,
        "render_true_scenes_forward_backward_ms": render_ms,
        "objects_per_scene": float(counts[:batch].float().mean()),
        "render_fraction_of_step": render_ms / step_ms,
    }


if __name__ == "__main__":
    raise SystemExit(main())
