"""Count a prototype run on 1,000 held-out sprites scenes: at q's mode, and with duplicates
switched off by the scene's ELBO (a present object whose centre lies in another present
object's window is switched off when the scene's ELBO at the mode gains, greedily, as the
digits grid's search does); the foreground ARI of the inferred masks, per count and background;
a figure of the first 8 scenes (image with windows, reconstruction, background). What the
over-counts are (a second object whose nearest true shape is another object's: a duplicate), the
distance between such pairs, and the ARI with the background left out of each pixel's choice.

    python count.py RUN_PREFIX [key=value ...]   (the options the run was trained with)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train as prototype  # noqa: E402

from airscene.config import DataConfig  # noqa: E402
from airscene.masked_objects import adjusted_rand_index  # noqa: E402
from airscene.registry import scene_family  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

torch.set_num_threads(1)


def scene_score(model, o, x, bg, patches, z_pres, objects):
    """The scene's ELBO at q's mode with ``z_pres`` (1, K) present."""
    log_likelihood = model.log_likelihood(x, bg, patches, z_pres)
    rho = o["rho"]
    prior = torch.where(z_pres > 0, math.log(rho), math.log1p(-rho)).sum(1)
    return (log_likelihood + prior + (z_pres * objects).sum(1)).item()


def switch_off_duplicates(model, o, x, bg, cells, z_pres, b):
    """Scene ``b``'s z_pres with duplicates switched off while the scene's ELBO gains."""
    centre = (cells["zw"][b, :, 1:3] + 1) / 2 * 64
    side = cells["zw"][b, :, 0] * 64
    args = (x[b : b + 1], bg[b : b + 1], cells["patches"][b : b + 1])
    objects = (cells["log_p"] - cells["log_q"])[b : b + 1]
    z = z_pres[b : b + 1].clone()
    best = scene_score(model, o, *args, z, objects)
    while True:
        on = z[0].nonzero().flatten().tolist()
        inside = {
            i
            for i in on
            for j in on
            if i != j and (centre[i] - centre[j]).abs().max() < side[j] / 2
        }
        tries = []
        for i in inside:
            trial = z.clone()
            trial[0, i] = 0
            tries.append((scene_score(model, o, *args, trial, objects), i))
        if not tries or max(tries)[0] <= best:
            return z[0]
        best, i = max(tries)
        z[0, i] = 0


def duplicate_pairs(test, index, z_where, on):
    """The distances (px) between pairs of present objects whose nearest true shape (by its
    visible box's centre) is the same, in scene ``index``; objects ``on`` (n,), windows
    ``z_where`` (K, 3)."""
    n = int(test.counts[index])
    if n == 0 or len(on) < 2:
        return []
    box = test.boxes[index, :n].astype(float)
    truth = np.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2], -1)
    centre = ((z_where[on, 1:3] + 1) / 2 * 64).numpy()
    nearest = np.linalg.norm(centre[:, None] - truth[None], axis=-1).argmin(1)
    return [
        float(np.linalg.norm(centre[a] - centre[b]))
        for a in range(len(on))
        for b in range(a + 1, len(on))
        if nearest[a] == nearest[b]
    ]


def main() -> None:
    prefix = sys.argv[1]
    o = prototype.options(sys.argv[2:])
    model = prototype.SpritesGrid(o)
    model.load_state_dict(torch.load(prefix + ".pt"))
    model.eval()
    data = DataConfig(kind="sprites", canvas_size=64, counts=(0, 1, 2, 3, 4), n_test=1000)
    test = scene_family("sprites").load(data, "test")
    at_mode, found, aris, aris_objects, first = [], [], [], [], None
    # Over-counted scenes, at the mode and after the switch: those with a duplicate pair.
    over = {"at_mode": [0, 0], "switched": [0, 0]}  # [with a duplicate, without]
    pair_distances = []
    with torch.no_grad():
        for start in range(0, 1000, 100):
            x = torch.from_numpy(test.images[start : start + 100]).float() / 255
            bg = model.background(x, sample=False).image
            cells = model.propose(x, bg, sample=False)
            z_pres = (torch.sigmoid(cells["logits"]) > 0.5).float()
            at_mode += z_pres.sum(1).long().tolist()
            for b in range(len(x)):
                for stage in ("at_mode", "switched"):
                    if stage == "switched":
                        z_pres[b] = switch_off_duplicates(model, o, x, bg, cells, z_pres, b)
                    on = z_pres[b].nonzero().flatten()
                    if len(on) > test.counts[start + b]:
                        pairs = duplicate_pairs(test, start + b, cells["zw"][b], on)
                        over[stage][0 if pairs else 1] += 1
                        if stage == "at_mode":
                            pair_distances += pairs
            found += z_pres.sum(1).long().tolist()
            for scores, seg in (
                (aris, model.segmentation(cells, z_pres)),
                (aris_objects, model.segmentation(cells, z_pres, background=False)),
            ):
                for b in range(len(x)):
                    truth = test.segmentation[start + b]
                    if (truth > 0).any():
                        scores.append(adjusted_rand_index(truth[truth > 0], seg[b][truth > 0]))
            if first is None:
                mean = model.full(bg, cells["patches"], z_pres)
                first = (x[:8], mean[:8].clamp(0, 1), bg[:8], cells["zw"][:8], z_pres[:8])
    true, found, at_mode = test.counts[:1000], np.array(found), np.array(at_mode)
    kinds = test.backgrounds[:1000]
    result = {
        "count_at_mode": float((at_mode == true).mean()),
        "count": float((found == true).mean()),
        "over": float((found > true).mean()),
        "under": float((found < true).mean()),
        "foreground_ari": float(np.mean(aris)),
        "foreground_ari_background_left_out": float(np.mean(aris_objects)),
        "over_counted_scenes_with_a_duplicate_at_mode": over["at_mode"][0],
        "over_counted_scenes_without_at_mode": over["at_mode"][1],
        "over_counted_scenes_with_a_duplicate_switched": over["switched"][0],
        "over_counted_scenes_without_switched": over["switched"][1],
        "duplicate_pair_distance_px_median_p90": (
            np.percentile(pair_distances, [50, 90]).round(2).tolist() if pair_distances else []
        ),
        "count_by_true_count": {int(c): float((found[true == c] == c).mean()) for c in range(5)},
        "count_by_background": {
            int(k): float((found[kinds == k] == true[kinds == k]).mean()) for k in np.unique(kinds)
        },
    }
    print(json.dumps(result, indent=1))
    Path(prefix + "-count.json").write_text(json.dumps(result, indent=1))
    x, mean, bg, z_where, z_pres = first
    fig, ax = plt.subplots(3, 8, figsize=(16, 6))
    for i in range(8):
        for row, image in enumerate((x[i], mean[i], bg[i])):
            ax[row, i].imshow(image.permute(1, 2, 0).numpy())
            ax[row, i].axis("off")
        for k in z_pres[i].nonzero().flatten().tolist():
            s, cx, cy = z_where[i, k].tolist()
            w, px, py = s * 64, (cx + 1) / 2 * 64, (cy + 1) / 2 * 64
            box = Rectangle((px - w / 2 - 0.5, py - w / 2 - 0.5), w, w, fill=False, ec="w")
            ax[0, i].add_patch(box)
        ax[0, i].set_title(f"true {true[i]} found {int(z_pres[i].sum())}", fontsize=8)
    plt.tight_layout()
    plt.savefig(prefix + ".png", dpi=80)


if __name__ == "__main__":
    main()
