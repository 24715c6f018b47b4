"""Errors in what the user asked for, shared by every floor (this module imports nothing).

The CLI prints any of these as one line, `tandem: error: <message>`, and exits 2.
"""


class ConfigError(ValueError):
    """A config value is unknown or malformed; the message names the key and the fix."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or a second SIGTERM) as tandemrl's signal handler raises it: told apart from a
    KeyboardInterrupt that user code (a reward function) raises by itself."""


__all__ = ["ConfigError", "Interrupted"]
