"""The ABAW frame-level tasks as their annotation files define them (see abaw-format.md).

One ``TaskSpec`` per task, registered under the short name used everywhere else (CLI flags, batch
keys, metric keys): ``va``, ``expr``, ``au``. EMI (Hume-Vidmimic2) is video-level and lives on
another dataset; it is not read here.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import ConfigError

SPLITS = ("Train_Set", "Validation_Set")
TEST_SPLIT = "Test_Set"  # labels of the test videos, where a user has them (the synthetic set does)

AU_NAMES = (
    "AU1",
    "AU2",
    "AU4",
    "AU6",
    "AU7",
    "AU10",
    "AU12",
    "AU15",
    "AU23",
    "AU24",
    "AU25",
    "AU26",
)
EXPR_NAMES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")


@dataclass(frozen=True)
class TaskSpec:
    """How one challenge's annotation files look.

    ``columns`` is the header; ``values_per_line`` the number of values on a data line (EXPR's
    header names eight classes, its lines hold one index); ``num_outputs`` is the width K of
    ``targets[task]`` in a batch: VA values, EXPR one-hot, AU 0/1.
    """

    name: str
    challenge: str  # folder under the annotations folder
    columns: tuple[str, ...]
    values_per_line: int
    num_outputs: int
    unannotated: float  # the value that marks an unannotated frame
    dtype: str = "int8"  # how the index stores the values (class indices and 0/1 fit in int8)

    @property
    def header(self) -> str:
        return ",".join(self.columns)


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in _TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


register_task(
    TaskSpec("va", "VA_Estimation_Challenge", ("valence", "arousal"), 2, 2, -5.0, "float32")
)
register_task(TaskSpec("expr", "EXPR_Recognition_Challenge", EXPR_NAMES, 1, 8, -1.0))
register_task(TaskSpec("au", "AU_Detection_Challenge", AU_NAMES, 12, 12, -1.0))


def list_tasks() -> list[str]:
    return list(_TASKS)


def get_task(name: str) -> TaskSpec:
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; tasks are: {', '.join(_TASKS)}") from None


def parse_tasks(tasks: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"va,au"`` or ``["va", "au"]`` -> ``("va", "au")``, each checked against the registry."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [n.strip().lower() for n in names if n.strip()]
    if not names:
        raise ValueError("no task given; tasks are: " + ", ".join(_TASKS))
    for n in names:
        get_task(n)
    return tuple(dict.fromkeys(names))
