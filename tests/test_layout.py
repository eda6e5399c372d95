"""The house's shape: no module imports a layer above its own (pyproject's import-linter
contract), and the base layer (core) imports nothing of the suite."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_points_back_up():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_the_contract_catches_an_upward_import(tmp_path):
    """The same check on a copy of the tree where the datamodule imports the ablation runner."""
    import shutil

    for name in ("affbench", "ablations", "sweeps", "lightning_modules", "datamodules", "core"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    bad = tmp_path / "datamodules" / "abaw.py"
    bad.write_text("import ablations.runner\n" + bad.read_text())
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run(
        [str(lint), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode != 0
    assert "datamodules.abaw -> ablations.runner" in out.stdout
