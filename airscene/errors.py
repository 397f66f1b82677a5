"""The one exception type the command line turns into a one-line message and exit code 2."""


class AirsceneError(Exception):
    """Bad input or state the user can fix: a wrong file, a bad config value, a missing path."""
