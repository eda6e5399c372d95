"""Every shipped YAML names only heads that are registered, backbones that timm knows and tasks
that are registered: grid files (base settings and grid axes), sweep files (base settings, the
choices of the search space and its ``when`` conditions) and LightningCLI configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from datamodules.tasks import parse_tasks
from lightning_modules.backbone import is_backbone, list_backbones, timm_tag
from lightning_modules.heads import list_heads

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    p
    for folder in ("ablations/configs", "sweeps/configs", "lightning_modules/configs")
    for p in (ROOT / folder).glob("*.yaml")
)
NAMED = ("model.head", "model.backbone", "model.tasks")  # the settings that name something
WEIGHTS = "model.pretrained"


def named_values(cfg: dict) -> list[tuple[str, str, object]]:
    """(where in the file, setting, value) for every value a config gives one of ``NAMED``."""
    found: list[tuple[str, str, object]] = []

    def model(where: str, section: dict | None) -> None:
        for key, value in (section or {}).items():
            found.append((f"{where}.{key}", f"model.{key}", value))

    model("model", cfg.get("model"))  # a LightningCLI config
    model("base.model", (cfg.get("base") or {}).get("model"))  # grid and sweep files
    for axis, values in (cfg.get("grid") or {}).items():
        found += [(f"grid.{axis}", axis, v) for v in values]
    for name, entry in (cfg.get("space") or {}).items():
        found += [(f"space.{name}", entry.get("path", name), v) for v in entry.get("choices", [])]
        for setting, cond in (entry.get("when") or {}).items():
            for v in cond if isinstance(cond, list) else [cond]:
                found.append((f"space.{name}.when", setting, v))
    return [(where, setting, v) for where, setting, v in found if setting in (*NAMED, WEIGHTS)]


def name_problems(path: Path) -> list[str]:
    """Why the names a config file gives head, backbone and tasks do not all exist ([] if they
    do), and a problem too if it names none of one kind (its layout went unread)."""
    values = named_values(yaml.safe_load(path.read_text()) or {})
    problems = []
    for where, setting, value in values:
        if setting == "model.head" and value not in list_heads():
            problems.append(f"{path.name}: {where}: unknown head {value!r}")
        elif setting == "model.backbone" and not is_backbone(value):
            problems.append(f"{path.name}: {where}: {value!r} is not a timm model")
        elif setting == "model.tasks":
            try:
                parse_tasks(value)
            except ConfigError as e:
                problems.append(f"{path.name}: {where}: {e}")
    if any(s == WEIGHTS and v == "timm" for _, s, v in values):  # each backbone's published ones
        for where, setting, value in values:
            try:
                if setting == "model.backbone" and is_backbone(value):
                    timm_tag(value, "timm")
            except ConfigError as e:
                problems.append(f"{path.name}: {where}: {e}")
    for setting in NAMED:
        if not any(s == setting for _, s, _ in values):
            problems.append(f"{path.name}: names no {setting}")
    return problems


def test_every_config_folder_ships_configs():
    assert {p.parent.relative_to(ROOT).as_posix() for p in CONFIGS} == {
        "ablations/configs",
        "sweeps/configs",
        "lightning_modules/configs",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shipped_config_names_only_what_exists(path):
    assert name_problems(path) == []


def test_an_unknown_head_backbone_or_task_is_caught(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "base:\n"
        "  model: {backbone: mobilenetv4_conv_smol, tasks: 'va,emotion'}\n"
        "grid:\n"
        "  model.head: [frame, lstm]\n"
        "space:\n"
        "  gru.hidden: {path: model.head_kwargs.hidden, choices: [64], when: {model.head: gruu}}\n"
    )
    with pytest.raises(AssertionError):  # the shipped files' test fails on it
        test_shipped_config_names_only_what_exists(bad)
    timm = tmp_path / "timm.yaml"  # the tests' narrow Conv-S has no published weights
    timm.write_text(
        "base: {model: {backbone: mobilenetv4_conv_small, head: frame, tasks: va, "
        "pretrained: timm}}\ngrid: {model.backbone: [resnet18, mobilenetv4_conv_small_035]}\n"
    )
    assert name_problems(timm) == [
        "timm.yaml: grid.model.backbone: timm publishes no weights for mobilenetv4_conv_small_035; "
        "pick a backbone that has some"
    ]
    problems = name_problems(bad)
    assert problems == [
        "bad.yaml: base.model.backbone: 'mobilenetv4_conv_smol' is not a timm model",
        "bad.yaml: base.model.tasks: unknown task 'emotion'; tasks are: va, expr, au, emi",
        "bad.yaml: grid.model.head: unknown head 'lstm'",
        "bad.yaml: space.gru.hidden.when: unknown head 'gruu'",
    ]


def test_every_listed_backbone_is_a_timm_model():
    assert "mobilenetv4_conv_small" in list_backbones()
    assert [b for b in list_backbones() if not is_backbone(b)] == []
    assert not is_backbone("mobilenetv4_conv_smol") and not is_backbone(None)


def test_cli_help_lists_the_registered_heads_backbones_and_tasks(capsys):
    from affbench.cli import main
    from datamodules.tasks import list_tasks

    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "{heads}" not in text and "{backbones}" not in text
    for name in [*list_heads(), *list_backbones(), *list_tasks()]:
        assert f"{name}," in text or f"{name} " in text, name


def test_the_main_jobs_sweep_finds_the_grids_stage1_and_features():
    """``make demo`` runs the frozen_heads grid, then the frozen_heads sweep on the same cached
    features: both files must name the same stage 1 and the same frozen encoder, or the sweep
    trains stage 1 and extracts the features again."""
    from core.keys import settings_key
    from lightning_modules.pretrain import grid_stage1

    grid, sweep = (
        yaml.safe_load((ROOT / folder / "frozen_heads.yaml").read_text())
        for folder in ("ablations/configs", "sweeps/configs")
    )
    assert settings_key(grid_stage1(grid)) == settings_key(grid_stage1(sweep))
    encoder = ("backbone", "img_size", "freeze")
    assert {k: grid["base"]["model"].get(k) for k in encoder} == {
        k: sweep["base"]["model"].get(k) for k in encoder
    }
