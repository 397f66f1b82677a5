"""The exceptions the command line turns into one line: ``AirsceneError`` (exit code 2) and
``TrainingInterrupted`` (exit code 130)."""


class AirsceneError(Exception):
    """Bad input or state the user can fix: a wrong file, a bad config value, a missing path."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM after writing a checkpoint; the message says where
    and how to resume."""
