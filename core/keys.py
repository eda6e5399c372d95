"""Keys of experiments: a hash of the settings, the same on every machine and run."""

from __future__ import annotations

import hashlib
import json


def settings_key(settings: dict) -> str:
    """An experiment's key (a grid's combination, a stage 1): 12 hex digits of the SHA-1 of its
    settings as sorted JSON."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
