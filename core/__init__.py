"""The base layer: what every layer may import (errors, host facts, a benchmark's conditions
and its CSV, paths), importing no layer above it. The house: ``core`` <- ``datamodules`` <-
``lightning_modules`` <- ``ablations`` / ``sweeps`` <- ``affbench`` (the command); the
import-linter contract in ``pyproject.toml`` holds every import to that direction
(``tests/test_layout.py``)."""
