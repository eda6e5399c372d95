"""Sweep files: base settings, objectives and a conditional search space, read from YAML.

```yaml
name: quick
base:                                  # as an ablation's base: model, data, trainer, seed
  model: {backbone: mobilenetv4_conv_small, tasks: va, img_size: 112}
  data: {root: data/synthetic, batch_size: 8}
  trainer: {max_epochs: 2}
mode: multi             # multi: maximise `metric`, minimise GMACs per frame (and latency)
metric: val/score       # the measure, maximised
latency_objective: false
max_gmacs_per_frame: null              # a trial over this budget is not trained (pruned)
pruner: null            # single mode only: median | percentile | hyperband | successive_halving
sampler: tpe            # tpe | nsga2 | random | gp, or {name: tpe, seed: 0, ...}
n_trials: 12
space:                  # each entry is one Optuna parameter, its name the key
  model.head: {choices: [frame, gru, mixer3]}
  model.lr: {float: [1.0e-4, 3.0e-3], log: true}
  gru.hidden: {path: model.head_kwargs.hidden, choices: [64, 128], when: {model.head: gru}}
```

An entry's value lands at ``path`` in the settings (default: its name). ``when`` makes it
conditional: it is suggested only when every named earlier entry took one of the listed values,
so ``gru.hidden`` exists only in GRU trials (Optuna's TPE with ``group: true`` models such
spaces). A malformed file is an error naming the file and the line of the entry.
"""

from __future__ import annotations

import copy
from pathlib import Path

import optuna

from ablations.grid import check_base, name_problem, path_problem, read_config, set_path
from core.errors import ConfigError
from lightning_modules.experiment import GMACS_PER_FRAME, LATENCY_MS
from lightning_modules.scoring import (
    AROUSAL,
    AU_TUNED,
    MEASURE,
    MONITOR,
    SCORE,
    VALENCE,
    metric_key,
)
from sweeps.storage import HEARTBEAT

KEYS = {
    "name",
    "description",
    "base",
    "pretrain",
    "space",
    "mode",
    "metric",
    "latency_objective",
    "max_gmacs_per_frame",
    "pruner",
    "sampler",
    "n_trials",
    "heartbeat",
}
KINDS = ("choices", "float", "int")
ENTRY_KEYS = {*KINDS, "log", "step", "path", "when"}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "threshold": "ThresholdPruner",
}
SAMPLERS = {
    "tpe": "TPESampler",
    "nsga2": "NSGAIISampler",
    "nsga3": "NSGAIIISampler",
    "random": "RandomSampler",
    "gp": "GPSampler",
}
COST, LATENCY = GMACS_PER_FRAME, LATENCY_MS


def load_sweep(path: str | Path) -> dict:
    """The sweep file, checked, with defaults filled in. Errors name the file and line."""
    path = Path(path)
    cfg, fail = read_config(path, "sweep config")

    if not isinstance(cfg, dict):
        fail((), "expected a mapping of sweep settings")
    for k in cfg:
        if k not in KEYS:
            fail((k,), f"unknown key {k!r}; sweep files have {', '.join(sorted(KEYS))}")
    for k in ("base", "space"):
        if not isinstance(cfg.get(k), dict) or not cfg[k]:
            fail((k,) if k in cfg else (), f"{k!r} must be a non-empty mapping")
    # a typo in a setting would be ignored and every trial train with the default: refuse it
    check_base(cfg["base"], fail, names=False)  # names: check_runnable, all at once
    if "pretrain" in cfg:  # stage 1, run once before the trials (as a grid's pretrain: section)
        cfg["pretrain"] = cfg["pretrain"] or {}
        check_base(cfg["pretrain"], lambda where, msg: fail(("pretrain", *where[1:]), msg))
    cfg.setdefault("name", path.stem)
    cfg.setdefault("mode", "multi")
    cfg.setdefault("metric", MONITOR)
    cfg.setdefault("latency_objective", False)
    cfg.setdefault("max_gmacs_per_frame", None)
    cfg.setdefault("pruner", None)
    cfg.setdefault("sampler", "tpe")
    cfg.setdefault("n_trials", 20)
    cfg["heartbeat"] = {**HEARTBEAT, **(cfg.get("heartbeat") or {})}
    if cfg["mode"] not in ("multi", "single"):
        fail(("mode",), f"mode must be multi or single, got {cfg['mode']!r}")
    measures = [
        metric_key("val", n) for n in (*MEASURE.values(), VALENCE, AROUSAL, AU_TUNED, SCORE)
    ]
    if cfg["metric"] not in measures:
        fail(("metric",), f"metric {cfg['metric']!r} is not a measure; measures: {measures}")
    has_pruner = cfg["pruner"] not in (None, "none")
    checks = (
        ("pruner" if has_pruner else "latency_objective", lambda: check_modes(cfg)),
        ("pruner", lambda: make_pruner(cfg["pruner"])),
        ("sampler", lambda: make_sampler(cfg["sampler"])),
    )
    for key, check in checks:
        try:
            check()
        except ConfigError as e:
            fail((key,), str(e))
    trainer = cfg["base"].get("trainer") or {}
    if trainer.get("devices", 1) not in (1, "1", [0]) or trainer.get("num_nodes", 1) != 1:
        fail(
            ("base", "trainer"),
            "a sweep trial trains on one device: scale a sweep with workers (--workers K, one "
            "GPU each, or the same command on several machines), not trainer.devices/num_nodes",
        )
    seen: dict[str, dict] = {}
    for name, entry in cfg["space"].items():
        where = ("space", name)
        if not isinstance(entry, dict):
            fail(where, f"space entry {name!r} must be a mapping such as {{choices: [a, b]}}")
        kinds = [k for k in KINDS if k in entry]
        if len(kinds) != 1:
            fail(where, f"space entry {name!r} needs exactly one of choices, float, int")
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            fail(where, f"space entry {name!r}: unknown keys {sorted(unknown)}")
        if (problem := path_problem(str(entry.get("path", name)))) is not None:
            fail(where, f"space entry {name!r} goes nowhere: {problem} (set its path:)")
        values = entry[kinds[0]]
        if kinds[0] == "choices":
            if not isinstance(values, list) or not values:
                fail(where, f"space entry {name!r}: choices must be a non-empty list")
            if any(not isinstance(v, bool | int | float | str) for v in values):
                fail(where, f"space entry {name!r}: choices must be numbers or strings")
        elif (
            not isinstance(values, list)
            or len(values) != 2
            or not all(isinstance(v, int | float) for v in values)
            or values[0] >= values[1]
        ):
            fail(where, f"space entry {name!r}: {kinds[0]} needs [low, high] with low < high")
        for cond in entry.get("when") or {}:
            if cond not in seen:
                fail(where, f"space entry {name!r}: 'when' names {cond!r}, not an earlier entry")
        seen[name] = entry
    return cfg


def check_modes(cfg: dict) -> None:
    """Optuna prunes single-objective trials only: refuse a pruner with several objectives."""
    if cfg["mode"] == "multi" and cfg.get("pruner") not in (None, "none"):
        raise ConfigError(
            "a pruner needs mode: single: Optuna cannot prune multi-objective trials "
            "(use mode: single with max_gmacs_per_frame for a budget, or drop the pruner)"
        )
    if cfg["mode"] == "single" and cfg.get("latency_objective"):
        raise ConfigError("latency_objective needs mode: multi")


def _named(spec, aliases: dict[str, str], module, what: str):
    if spec is None or spec == "none":
        return None
    kw = dict(spec) if isinstance(spec, dict) else {"name": spec}
    name = str(kw.pop("name", ""))
    cls = getattr(module, aliases.get(name, name), None)
    if cls is None or not isinstance(cls, type):
        raise ConfigError(f"unknown {what} {name!r}; {what}s are: {', '.join(aliases)}")
    try:
        return cls(**kw)
    except TypeError as e:
        raise ConfigError(f"{what} {name!r}: {e}") from None


def make_pruner(spec) -> optuna.pruners.BasePruner | None:
    """``median`` or ``{name: median, n_startup_trials: 2}`` -> an Optuna pruner (or None)."""
    return _named(spec, PRUNERS, optuna.pruners, "pruner")


def make_sampler(spec, worker: int = 0) -> optuna.samplers.BaseSampler:
    """``tpe`` or ``{name: tpe, seed: 0}`` -> an Optuna sampler. TPE defaults to multivariate
    and grouped (it models the conditional space's branches apart). A seed makes a one-worker
    sweep repeatable: the same trials in the same order, and (each trial's training seeded by
    its settings) the same values. Local worker ``i`` takes seed + i, so workers never draw the
    same trials (on several machines, give each its own seed). With several workers the
    proposals cannot repeat: a model-based sampler (TPE, GP, NSGA-II) proposes from the trials
    finished when it is asked, and which those are is a matter of timing; what a trial measures
    given its settings still repeats. Nor do they with ``latency_objective``, whose values are
    timings, unless the cost cache already holds every architecture's."""
    kw = dict(spec) if isinstance(spec, dict) else {"name": spec}
    if kw.get("seed") is not None:
        kw["seed"] = int(kw["seed"]) + worker
    if SAMPLERS.get(kw["name"], kw["name"]) == "TPESampler":
        kw = {"multivariate": True, "group": True, **kw}
    return _named(kw, SAMPLERS, optuna.samplers, "sampler")


def directions(cfg: dict) -> list[str]:
    """maximise the measure; in multi mode also minimise GMACs per frame (and latency)."""
    if cfg["mode"] == "single":
        return ["maximize"]
    return ["maximize", "minimize"] + (["minimize"] if cfg["latency_objective"] else [])


def objective_names(cfg: dict) -> list[str]:
    if cfg["mode"] == "single":
        return [cfg["metric"]]
    return [cfg["metric"], COST] + ([LATENCY] if cfg["latency_objective"] else [])


def suggest(trial: optuna.Trial, cfg: dict) -> dict:
    """The trial's settings: ``base`` with every active space entry suggested into place."""
    settings = copy.deepcopy(cfg["base"])
    taken: dict[str, object] = {}
    for name, entry in cfg["space"].items():
        when = entry.get("when") or {}
        if any(taken.get(k) not in (v if isinstance(v, list) else [v]) for k, v in when.items()):
            continue
        if "choices" in entry:
            value = trial.suggest_categorical(name, entry["choices"])
        elif "float" in entry:
            low, high = entry["float"]
            value = trial.suggest_float(
                name, low, high, log=entry.get("log", False), step=entry.get("step")
            )
        else:
            low, high = entry["int"]
            value = trial.suggest_int(
                name, low, high, log=entry.get("log", False), step=entry.get("step", 1)
            )
        taken[name] = value
        set_path(settings, entry.get("path", name), value)
    return settings


def check_runnable(cfg: dict, where: str = "sweep") -> None:
    """Before any training, what would fail every trial, all at once in one ConfigError: the
    data root without annotations, and any head or backbone name the sweep can take (the base's
    and the choices of the entries placed at ``model.head`` / ``model.backbone``) that does not
    exist. Trials would otherwise spend the budget failing one by one."""
    from datamodules.index import find_annotations_dir
    from lightning_modules.heads import list_heads

    data = cfg["base"].get("data") or {}
    root = data.get("root", "data/synthetic")
    problems = []
    try:
        find_annotations_dir(Path(root), data.get("annotations"))
    except (FileNotFoundError, ValueError) as e:
        problems.append(str(e).splitlines()[0])
    names = {"model.head": [], "model.backbone": []}
    model = cfg["base"].get("model") or {}
    for path in names:
        if path.split(".")[1] in model:
            names[path].append(model[path.split(".")[1]])
    for name, entry in cfg["space"].items():
        if entry.get("path", name) in names and "choices" in entry:
            names[entry.get("path", name)] += entry["choices"]
    for path, what in (("model.head", "head"), ("model.backbone", "backbone")):
        bad = [v for v in dict.fromkeys(names[path]) if name_problem(path, v) is not None]
        if bad:
            known = f"heads: {', '.join(list_heads())}" if what == "head" else "timm model names"
            problems.append(f"unknown {what}(s) {', '.join(map(repr, bad))} ({known})")
    if problems:
        raise ConfigError(f"{where}: no trial can run: {'; '.join(problems)}")
