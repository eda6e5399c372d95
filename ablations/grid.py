"""Ablation grids: a YAML file of base settings and grid axes, expanded into runs.

```yaml
name: temporal_heads
base:                       # AffectModule / AbawDataModule / Trainer settings, and the seed
  model: {backbone: mobilenetv4_conv_small, tasks: va, seq_len: 16, img_size: 112}
  data: {root: data/synthetic, batch_size: 8}
  trainer: {max_epochs: 3}
  seed: 0
grid:                       # dotted paths into base; every combination is one run
  model.head: [frame, gru, mixer3]
  seed: [0, 1, 2]
```
Each run has a key, a hash of its settings, so a results store can tell runs apart and resume.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import itertools
from collections.abc import Callable
from pathlib import Path

import yaml

from core.errors import ConfigError
from core.keys import settings_key
from sweeps.storage import HEARTBEAT


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of every mapping key of a YAML text, by its path of keys (for errors)."""
    out: dict[tuple[str, ...], int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                out[(*path, k.value)] = k.start_mark.line + 1
                walk(v, (*path, k.value))

    walk(yaml.compose(text), ())
    return out


@functools.cache
def _section_keys() -> dict[str, frozenset[str]]:
    """The settings each base section takes: the constructors' own parameters."""
    import lightning as L

    from datamodules.abaw import AbawDataModule
    from lightning_modules.module import AffectModule

    def params(fn) -> frozenset[str]:
        return frozenset(p for p in inspect.signature(fn).parameters if p != "self")

    return {
        "model": params(AffectModule.__init__),
        "data": params(AbawDataModule.__init__),
        "trainer": params(L.Trainer.__init__),
    }


FREE_DICTS = ("head_kwargs", "task_weights")  # dict settings whose keys the head/task checks


def path_problem(dotted: str) -> str | None:
    """Why a dotted settings path (``model.lr``, ``seed``, ``model.head_kwargs.levels``) names
    no setting; None if it does."""
    first, *rest = dotted.split(".")
    sections = _section_keys()
    if first == "seed":
        return None if not rest else f"{dotted!r}: seed takes no sub-keys"
    if first not in sections:
        return f"unknown section {first!r}; base settings are model, data, trainer and seed"
    if not rest:
        return None
    key = rest[0]
    if key not in sections[first]:
        close = difflib.get_close_matches(key, sections[first], n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return f"unknown {first} setting {key!r}{hint}"
    if len(rest) > 1 and key not in FREE_DICTS:
        return f"{first}.{key} takes no sub-keys"
    return None


def name_problem(dotted: str, value) -> str | None:
    """Why a value of ``model.head`` / ``model.backbone`` names nothing that exists."""
    if dotted == "model.head":
        from lightning_modules.heads import list_heads

        if value not in list_heads():
            return f"unknown head {value!r}; heads are: {', '.join(list_heads())}"
    elif dotted == "model.backbone":
        import timm

        if not isinstance(value, str) or not timm.is_model(value):
            return f"unknown backbone {value!r}: not a timm model name"
    return None


def check_base(base, fail: Callable[[tuple[str, ...], str], None], names: bool = True) -> None:
    """Check a base section (model / data / trainer / seed): every key a setting that exists,
    and (``names``) head and backbone names that exist. ``fail(path_of_keys, message)``
    raises."""
    if not isinstance(base, dict):
        fail(("base",), "base must be a mapping of model, data, trainer and seed settings")
    for section, value in base.items():
        where = ("base", section)
        if (problem := path_problem(str(section))) is not None:
            fail(where, problem)
        if section == "seed":
            continue
        if not isinstance(value, dict):
            fail(where, f"base.{section} must be a mapping of settings")
        for key, v in value.items():
            dotted = f"{section}.{key}"
            problem = path_problem(dotted) or (name_problem(dotted, v) if names else None)
            if problem is not None:
                fail((*where, key), problem)


def read_config(path: Path, what: str) -> tuple[object, Callable]:
    """A YAML config file's content, and ``fail(keys, message)``, which raises a ConfigError
    naming the file and the line of the key at ``keys``."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    text = path.read_text()
    try:
        cfg = yaml.safe_load(text) or {}
        lines = key_lines(text)
    except yaml.YAMLError as e:  # PyYAML's message holds the line and column
        raise ConfigError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None

    def fail(where: tuple[str, ...], msg: str):
        raise ConfigError(f"{path}:{lines.get(where, 1)}: {msg}")

    return cfg, fail


def load_grid(path: str | Path) -> dict:
    """The grid file, checked: unknown keys, settings, heads and backbones are errors naming the
    file and line, before anything runs."""
    path = Path(path)
    cfg, fail = read_config(path, "ablation config")
    if not isinstance(cfg, dict):
        fail((), "expected a mapping with name, description, base and grid")
    for k in cfg:
        if k not in ("name", "description", "base", "grid", "heartbeat", "pretrain"):
            fail(
                (k,),
                f"unknown key {k!r}; grid files have name, description, base, grid, heartbeat "
                "and pretrain",
            )
    if "pretrain" in cfg:  # stage 1: settings as base's, run once before the grid
        cfg["pretrain"] = cfg["pretrain"] or {}
        check_base(cfg["pretrain"], lambda where, msg: fail(("pretrain", *where[1:]), msg))
    beat = cfg.get("heartbeat") or {}
    if not isinstance(beat, dict) or not all(
        k in ("interval", "grace") and isinstance(v, int | float) and v > 0 for k, v in beat.items()
    ):
        fail(("heartbeat",), "heartbeat takes interval and grace, in seconds (> 0)")
    cfg["heartbeat"] = {**HEARTBEAT, **beat}
    if "base" not in cfg:
        fail((), "no 'base' section (the settings every combination starts from)")
    cfg.setdefault("name", path.stem)
    cfg["grid"] = cfg.get("grid") or {}
    check_base(cfg["base"] or {}, fail)
    if not isinstance(cfg["grid"], dict):
        fail(("grid",), "grid must be a mapping of dotted settings to lists of values")
    for axis, values in cfg["grid"].items():
        where = ("grid", axis)
        if not isinstance(values, list) or not values:
            fail(where, f"grid axis {axis!r} must be a non-empty list")
        if (problem := path_problem(str(axis))) is not None:
            fail(where, f"grid axis {axis!r}: {problem}")
        for v in values:
            if (problem := name_problem(axis, v)) is not None:
                fail(where, f"grid axis {axis!r}: {problem}")
    return cfg


def check_overrides(cfg: dict, keys: list[str]) -> None:
    """``--set`` keys name settings that exist (the same check as a grid file's)."""
    for key in keys:
        if (problem := path_problem(key)) is not None:
            raise ConfigError(f"--set {key}: {problem}")


def set_path(tree: dict, dotted: str, value) -> None:
    """``tree["model"]["head_kwargs"]["hidden"] = value`` for ``"model.head_kwargs.hidden"``."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


run_key = settings_key  # a combination's key: the hash of its settings


def expand(cfg: dict) -> list[dict]:
    """Every combination of the grid axes applied to ``base``, in axis order: a list of
    ``{"key", "settings", "axes"}``; ``axes`` holds only the varied values."""
    axes = list(cfg.get("grid", {}).items())
    runs = []
    for values in itertools.product(*(v for _, v in axes)):
        settings = copy.deepcopy(cfg["base"])
        chosen = {}
        for (axis, _), value in zip(axes, values, strict=True):
            set_path(settings, axis, value)
            chosen[axis] = value
        runs.append({"key": run_key(settings), "settings": settings, "axes": chosen})
    return runs
