"""A fingerprint of training, to show that a change leaves it bit-equal: the sha256 of the
weights after 40 seeded steps of the default 2D model, 40 of DAIR and 12 of the 3D preset
(which takes the likelihood blur and the shape enumeration), with the final metrics.

    python benchmarks/training_fingerprint.py OUT_DIR
    cd WORKTREE && PYTHONPATH=. python /path/to/training_fingerprint.py OUT_DIR   # another revision

Compare the two ``fingerprint.json`` files: equal digests mean equal training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file

from airscene.config import DataConfig, ModelConfig, RunConfig, TrainConfig, scenes3d_run
from airscene.train import train


def digest(run: Path) -> str:
    weights = load_file(sorted(run.rglob("model.safetensors"))[-1])
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(weights[name].numpy().tobytes())
    return h.hexdigest()


def runs() -> dict[str, RunConfig]:
    steps = dict(steps=40, eval_every=0, checkpoint_every=40, log_every=10, threads=2)
    data = DataConfig(n_train=2000, n_test=200)
    scenes3d = scenes3d_run()
    return {
        "2d": RunConfig(data=data, train=TrainConfig(**steps)),
        "2d-dair": RunConfig(data=data, model=ModelConfig(dair=True), train=TrainConfig(**steps)),
        "3d": dataclasses.replace(
            scenes3d,
            data=dataclasses.replace(scenes3d.data, n_train=300, n_test=50),
            train=dataclasses.replace(
                scenes3d.train, steps=12, eval_every=0, checkpoint_every=12, log_every=4,
                batch_size=16, threads=2,
            ),
        ),
    }  # fmt: skip


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, config in runs().items():
        run_dir = out / f"run-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        result = train(config, run_dir, progress=False)
        timing = ("train_seconds", "steps_per_second")
        metrics = {k: v for k, v in result.final_metrics.items() if k not in timing}
        found[name] = {"weights": digest(run_dir), "metrics": metrics}
        print(name, found[name]["weights"], flush=True)
    (out / "fingerprint.json").write_text(json.dumps(found, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
