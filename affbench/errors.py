"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""


class ConfigError(ValueError):
    """A setting that names nothing that exists (a backbone, a head, a task, ...)."""
