"""Started by torchrun from tests/test_distributed.py: a few data-parallel steps of the tiny
model, then each rank saves what the ranks must agree on (weights, signal moments, metric sums)
to OUT/rank-R.pt, so the test can compare the ranks."""

import sys
from pathlib import Path

import torch
from tiny import TINY_MODEL, model_config

from airscene.config import DataConfig, RunConfig, TrainConfig
from airscene.data.training import training_data
from airscene.distributed import World
from airscene.train import Trainer


def worker_config() -> RunConfig:
    return RunConfig(
        data=DataConfig(n_train=100, n_test=40),
        model=model_config(**TINY_MODEL),
        train=TrainConfig(steps=6, batch_size=8, threads=1),
    )


def main(out: Path) -> None:
    torch.set_num_threads(1)
    config = worker_config()
    images, counts, _ = training_data(config)
    world = World.from_environment(torch.device("cpu"))
    trainer = Trainer(config, torch.device("cpu"), world)
    images, counts = torch.from_numpy(images), torch.from_numpy(counts)
    for _ in range(config.train.steps):
        trainer.train_step(images, counts)
    state = {
        **{"model." + k: v for k, v in trainer.model.state_dict().items()},
        **{"baseline." + k: v for k, v in trainer.baseline.state_dict().items()},
        **{"normaliser." + k: v for k, v in trainer.normaliser.state_dict().items()},
        "means": torch.tensor(trainer.take_means()),
    }
    torch.save(state, out / f"rank-{world.rank}.pt")
    world.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
