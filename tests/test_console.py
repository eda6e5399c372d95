"""What a person sees in a terminal while a grid runs: finished runs' lines, and one status line
below them that is redrawn in place (never glued to a run line), ending at the final count."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_base
from terminal import run_in_terminal, screen

REPO = Path(__file__).resolve().parents[1]
BAR = "████"


def test_run_lines_name_the_measure_a_score_equals():
    from sweeps.display import measure_name, short_name

    assert measure_name({"model": {"tasks": "va"}}) == "VA CCC"
    assert measure_name('{"model": {"tasks": ["expr"]}}') == "EXPR F1"  # a grid's stored JSON
    assert measure_name({"model": {"tasks": ["va", "expr"]}}) == "score"  # the mean of two
    assert measure_name({"model": {"tasks": "va,au"}}) == measure_name(None) == "score"
    name = "t003-mobilenetv4_conv_small+gru_t8_r96_s0"  # a sweep's run
    assert short_name(name) == "t003-MNv4-Conv-S+gru_t8_r96_s0"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_grid_in_a_terminal_keeps_one_live_status_line(synth_root, tmp_path, workers):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "base": tiny_base(synth_root),
                                    "grid": {"model.head": ["frame", "gru"],
                                             "seed": [0, 1]}}))  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "TERM": "xterm", "AFFBENCH_DISPLAY_POLL": "0.2"}
    env.pop("AFFBENCH_VERBOSE", None)
    cmd = [sys.executable, "-m", "affbench.cli", "ablate", str(grid), f"--results={tmp_path}",
           f"--workers={workers}"]  # fmt: skip
    rc, raw = run_in_terminal(cmd, cwd=REPO, env=env)
    lines = screen(raw)
    assert rc == 0, "\n".join(lines[-40:])
    runs = [ln for ln in lines if ": val VA CCC " in ln]
    assert len(runs) == 4 and all(ln.startswith("[") for ln in runs), lines  # none glued
    status = [ln for ln in lines if ln.startswith("g ") and BAR in ln]
    assert len(status) == 1, lines  # redrawn in place: one line left on the screen
    assert "4/4 done · last " in status[0] and ": VA CCC " in status[0]
    assert lines.index(status[0]) > max(lines.index(r) for r in runs)  # below the run lines
    assert lines.index(status[0]) < next(i for i, ln in enumerate(lines) if ln.startswith(
        "g: 4 done, 0 failed"))  # fmt: skip
    # while it ran, the line said what was running (the raw output holds each redraw)
    assert " · running " in raw and "0/4 done" in raw
    if workers > 1:  # the worker processes wrote to a file that the display printed from
        log = (tmp_path / "g" / "logs" / "workers.log").read_text()
        assert sum(": val VA CCC " in ln for ln in log.splitlines()) == 4
