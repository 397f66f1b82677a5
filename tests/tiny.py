"""The tiny model every fast test trains or runs: the real code, at a size that takes milliseconds."""

import dataclasses

from airscene.config import GlimpseConfig, ModelConfig

TINY_MODEL = dict(
    lstm_size=16,
    encoder_hidden=16,
    decoder_hidden=16,
    predictor_hidden=16,
    z_what_dim=4,
    baseline_lstm_size=8,
)
# The same sizes as command-line flags.
TINY_FLAGS = [
    arg for name, value in TINY_MODEL.items() for arg in (f"--{name.replace('_', '-')}", str(value))
]

_GLIMPSE_FIELDS = {f.name for f in dataclasses.fields(GlimpseConfig)}


def model_config(**fields) -> ModelConfig:
    """A ModelConfig from flat fields, as the command line takes them: the glimpse object model's
    go into its ``GlimpseConfig``."""
    objects = {k: v for k, v in fields.items() if k in _GLIMPSE_FIELDS}
    core = {k: v for k, v in fields.items() if k not in _GLIMPSE_FIELDS}
    return ModelConfig(**core, objects=GlimpseConfig(**objects))
