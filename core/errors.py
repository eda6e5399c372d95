"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""


class ConfigError(ValueError):
    """A setting that names nothing that exists (a backbone, a head, a task, ...)."""


class DataError(ValueError):
    """Data that cannot be trusted (frames that cannot be read, names the loader cannot follow):
    the message names the file or the data root, and the run stops rather than train on it."""
