"""Kept for scripts that import the errors from here; they live in ``core.errors``."""

from core.errors import ConfigError, DataError

__all__ = ["ConfigError", "DataError"]
