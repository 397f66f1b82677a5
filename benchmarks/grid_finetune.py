"""Fine-tune a grid model (a run, checkpoint or shipped model) for a few thousand steps with
some of its model config changed, as issue 32's attempts 15e, 20 and 22 did: the learning rate
restarted at 2e-4 on a cosine, rho and the KL weight at their final values (no annealing, no
warm-up), its own data. A probe of what a change does to a model that already draws digits,
not a recipe: a recipe is one `airscene train` command.

    python benchmarks/grid_finetune.py RUN_DIR [--model many-digits] [--steps 3000]
        [--seed 7] [--set likelihood=bernoulli ...]

Count the result with `python benchmarks/grid_counts.py RUN_DIR`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json

from airscene.checkpoint import load_model

# The module (the package's `airscene.train` attribute is its train function): train() builds
# its Trainer from here, so the fine-tune swaps in one that starts from the given weights.
training = importlib.import_module("airscene.train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the fine-tuned run's directory (overwritten)")
    parser.add_argument("--model", default="many-digits", help="the weights to start from")
    parser.add_argument("--steps", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=7, help="minibatch order and noise")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=JSON",
        help="a model config field to change, its value as JSON or a bare string",
    )  # fmt: skip
    args = parser.parse_args()
    changes = {}
    for item in args.set:
        field, _, value = item.partition("=")
        try:
            changes[field] = json.loads(value)
        except json.JSONDecodeError:
            changes[field] = value
    start, checkpoint = load_model(args.model)
    config = checkpoint.config
    schedule = dataclasses.replace(
        config.train, steps=args.steps, learning_rate=2e-4, z_pres_prior_start=None,
        z_pres_prior_anneal_steps=0, kl_warmup_steps=0, seed=args.seed, eval_every=1_000,
    )  # fmt: skip
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, **changes), train=schedule
    )
    weights = start.state_dict()

    class FromWeights(training.Trainer):
        def __init__(self, *given, **named) -> None:
            super().__init__(*given, **named)
            self.model.load_state_dict(weights)

    training.Trainer = FromWeights
    result = training.train(config, args.run_dir, overwrite=True, progress=False)
    print(json.dumps(result.final_metrics, indent=1))


if __name__ == "__main__":
    main()
