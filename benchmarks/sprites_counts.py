"""Count accuracy and foreground ARI of sprites models (runs, checkpoints or shipped models) on
held-out coloured sprites: how the seeds and variants of a recipe compare, with no training.

    python benchmarks/sprites_counts.py RUN [RUN ...] [--scenes 1000] [--out FILE]

For each model, on ``--scenes`` held-out scenes of its own data config: ``airscene eval``'s
report (count accuracy at the model's inference, box IoU, foreground ARI of its segmentation),
and beside it the count at q's mode unrefined (grid models, ``grid_refine_passes`` 0), the
count by true count and by background kind, and the foreground ARI by true count (a scene of
one object scores 1 or 0: any pixel of it given to the background splits its one cluster).
Writes ``benchmarks/results/sprites_counts.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np
import torch

from airscene.checkpoint import load_model
from airscene.data.training import images_to_tensor
from airscene.masked_objects import adjusted_rand_index
from airscene.provenance import git_revision, hardware
from airscene.registry import scene_family

HERE = Path(__file__).resolve().parent
BATCH = 100


@torch.no_grad()
def measure(model_name: str, scenes: int) -> dict:
    model, checkpoint = load_model(model_name)
    model.eval()
    held_out = scene_family(checkpoint.config.data.kind).load(
        checkpoint.config.data, "test", n=scenes
    )
    report = model.objects.evaluate(model, held_out).to_dict()
    found, at_mode, aris = [], [], []
    for start in range(0, scenes, BATCH):
        x = images_to_tensor(held_out.images[start : start + BATCH], torch.device("cpu"))
        inference = model(x, sample=False)
        found += inference.count.tolist()
        if model.config.inference == "grid":  # each cell's q(z_pres), before the search
            at_mode += (inference.z_pres_prob > 0.5).sum(1).tolist()
        segmentation = model.segmentation(x, inference).numpy()
        for i, inferred in enumerate(segmentation):
            truth = held_out.segmentation[start + i]
            if (truth > 0).any():
                score = adjusted_rand_index(truth[truth > 0], inferred[truth > 0])
                aris.append((int(held_out.counts[start + i]), score))
    true, found = held_out.counts[:scenes], np.array(found)
    kinds = held_out.backgrounds[:scenes]
    aris = np.array(aris)
    row = {
        "eval": report,
        "count": float((found == true).mean()),
        "count_at_q_mode": float((np.array(at_mode) == true).mean()) if at_mode else None,
        "over": float((found > true).mean()),
        "under": float((found < true).mean()),
        "count_by_true_count": {int(n): float((found[true == n] == n).mean()) for n in set(true)},
        "count_by_background": {
            int(k): float((found[kinds == k] == true[kinds == k]).mean()) for k in set(kinds)
        },
        "foreground_ari": float(aris[:, 1].mean()),
        "foreground_ari_by_true_count": {
            int(n): float(aris[aris[:, 0] == n, 1].mean()) for n in set(aris[:, 0].astype(int))
        },
    }
    print(
        f"{model_name}: count {100 * row['count']:.1f}% (q's mode "
        f"{100 * (row['count_at_q_mode'] or float('nan')):.1f}%), foreground ARI "
        f"{row['foreground_ari']:.3f}, box IoU {report['mean_iou']:.3f}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="runs, checkpoints or shipped model names")
    parser.add_argument("--scenes", type=int, default=1_000, help="held-out scenes")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "sprites_counts.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = {
        "date": datetime.date.today().isoformat(),
        "git_revision": git_revision(),
        "hardware": hardware(),
        "scenes": args.scenes,
        "models": {name: measure(name, args.scenes) for name in args.models},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
