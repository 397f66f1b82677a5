"""The tiny model every fast test trains or runs: the real code, at a size that takes milliseconds."""

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
