"""Benchmark figures are written, not typed: every benchmark command writes its rows with the
machine's conditions to ``results/<benchmark>-<machine>.csv``, and ``BENCHMARKS.md`` is generated
from those files alone."""

from __future__ import annotations

import csv
import os
import platform
from pathlib import Path

import pytest

from affbench.bench_page import BENCHMARKS, page_difference, render_page
from core import conditions as cond
from core.conditions import CONDITIONS, machine_slug, write_results

ROOT = Path(__file__).resolve().parents[1]


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _section(page: str, title: str) -> str:
    """The text of the page's section ``title``, up to the next section."""
    return page.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_committed_page_is_what_the_committed_csv_files_give():
    page = (ROOT / "BENCHMARKS.md").read_text()
    expected = render_page(ROOT / "results")
    assert page == expected, "BENCHMARKS.md is stale or edited by hand (affbench bench-page):\n" + (
        page_difference(page, expected) or "line endings or the last newline"
    )


def test_two_machines_each_with_their_conditions(tmp_path, monkeypatch):
    rows = [
        {"head": "gru", "start": "random", "val_va_ccc_mean": 0.123456, "seeds": 3},
        {"head": "gru", "start": "stage 1", "val_va_ccc_mean": 2.1, "wall_s": 1234.5678},
    ]
    here = write_results(rows, "stage1", tmp_path, command="affbench bench-stage1")
    monkeypatch.setattr(cond, "cpu_name", lambda: "Intel(R) Xeon(R) Platinum 8480+")
    monkeypatch.setattr(cond, "cpu_flags", lambda: ["avx512f", "amx_bf16"])
    monkeypatch.setattr(cond, "gpu_name", lambda: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    there = write_results(rows[:1], "stage1", tmp_path, command="affbench bench-stage1 --seeds 1")
    assert there.name == "stage1-nvidia-h100-16c.csv" and here.name != there.name
    page = render_page(tmp_path)
    assert page == render_page(tmp_path)  # no clock of its own, no ordering by chance
    stage1 = _section(page, "Stage 1")
    machine = here.stem.removeprefix("stage1-")
    assert f"### {machine}\n" in stage1 and "### nvidia-h100-16c\n" in stage1
    ours = stage1.split(f"### {machine}\n")[1].split("### ")[0]
    gpu = stage1.split("### nvidia-h100-16c\n")[1]
    assert f"CPU {_read(here)[0]['cpu']}" in ours and "by `affbench bench-stage1`." in ours
    assert "CPU Intel(R) Xeon(R) Platinum 8480+ (flags: avx512f, amx_bf16)" in gpu
    assert "logical cores 16;" in gpu and "GPU NVIDIA H100 80GB HBM3" in gpu
    assert "by `affbench bench-stage1 --seeds 1`." in gpu
    # the figures: 3 significant digits below 100, whole units above, integers as they are
    assert "| gru | random | 0.123 | 3 |" in ours
    assert "| gru | stage 1 | 2.10 |  | 1235 |" in ours
    assert "wall_s" not in gpu  # a column no row of that file fills is left out
    # the other sections are there, in their order, saying that they have no figures yet
    titles = [line[3:] for line in page.splitlines() if line.startswith("## ")]
    assert titles == [b.title for b in BENCHMARKS]
    assert "No figures yet" in _section(page, "Sweep engine")
    assert "No figures yet" not in stage1


def test_an_empty_results_folder_and_a_stray_file(tmp_path):
    page = render_page(tmp_path / "absent")
    assert page.count("No figures yet") == len(BENCHMARKS)
    (tmp_path / "notes.csv").write_text("a\n1\n")
    with pytest.raises(ValueError, match="notes.csv"):
        render_page(tmp_path)


def test_rows_of_several_kinds_get_a_table_each(tmp_path):
    rows = [
        {"measure": "training step", "head": "gru", "cached_step_ms": 17.84},
        {"measure": "cache size", "parts": "pooled", "kb_per_frame": 1.92},
    ]
    write_results(rows, "features", tmp_path, command="affbench bench-features")
    section = _section(render_page(tmp_path), "Feature cache")
    step, size = section.split("**training step**")[1].split("**cache size**")
    assert "| head | cached_step_ms |" in step and "17.8" in step and "kb_per_frame" not in step
    assert "| parts | kb_per_frame |" in size and "1.92" in size


def test_the_writer_records_this_machine(tmp_path):
    import torch

    rows = [{"head": "frame", "train_frames_per_s": 150.5}, {"head": "gru", "wall_s": 2.0}]
    path = write_results(rows, "stage1", tmp_path, command="affbench bench-stage1")
    got = _read(path)
    assert [r["head"] for r in got] == ["frame", "gru"] and got[1]["train_frames_per_s"] == ""
    assert list(got[0])[-len(CONDITIONS) :] == list(CONDITIONS)
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() == "Linux" and cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        model = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        flags = {f for ln in lines if ln.split(":")[0].strip() in ("flags", "Features")
                 for f in ln.split(":", 1)[1].split()}  # fmt: skip
        if model:
            assert got[0]["cpu"] == model[0]
        for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "asimd"):
            assert (flag in got[0]["cpu_flags"].split()) == (flag in flags), flag
    assert got[0]["cpu"] and got[0]["torch"] == torch.__version__
    assert got[0]["logical_cores"] == str(os.cpu_count())
    if torch.cuda.is_available():  # "<name>", or "<n> x <name>" for several
        assert got[0]["gpu"].endswith(torch.cuda.get_device_name(0))
    else:
        assert got[0]["gpu"] == ""
    assert got[0]["machine"] == machine_slug(got[0]["cpu"], os.cpu_count(), got[0]["gpu"])
    assert path.name == f"stage1-{got[0]['machine']}.csv"
    assert got[0]["date_utc"].endswith("Z") and got[0]["command"] == "affbench bench-stage1"
    # a rerun on the same machine replaces its file whole, and leaves nothing beside it
    write_results(rows[:1], "stage1", tmp_path, command="affbench bench-stage1 --seeds 1")
    assert len(_read(path)) == 1 and [p.name for p in tmp_path.iterdir()] == [path.name]
    with pytest.raises(ValueError, match="torch_threads"):
        write_results([{"torch_threads": 1}], "stage1", tmp_path)


def test_machine_slugs():
    assert machine_slug("AMD EPYC", 2) == "amd-epyc-2c"
    assert machine_slug("Intel(R) Xeon(R) CPU @ 2.20GHz", 4) == "intel-xeon-4c"
    assert machine_slug("AMD EPYC 7B13 64-Core Processor", 8) == "amd-epyc-7b13-8c"
    assert machine_slug("AMD EPYC", 16, "NVIDIA H100 80GB HBM3") == "nvidia-h100-16c"
    assert machine_slug("x", 16, "2 x NVIDIA A100-SXM4-80GB") == "2x-nvidia-a100-16c"


COMMANDS = [
    (["data", "bench-index", "--videos", "2"], "datamodules.bench.bench_index", "index"),
    (["data", "bench-loader", "ROOT", "--seq-len", "8,32"], "datamodules.bench.bench_loader",
     "loader"),
    (["bench-learning"], "lightning_modules.bench.bench_learning", "learning"),
    (["bench-stage1"], "ablations.bench.bench_stage1", "stage1"),
    (["bench-stage1-seeds"], "ablations.seeds_bench.bench_stage1_seeds", "stage1-seeds"),
    (["bench-features"], "ablations.features_bench.bench_features", "features"),
    (["bench-efficiency", "zoo"], "lightning_modules.efficiency_bench.zoo", "efficiency-zoo"),
    (["bench-efficiency", "growth"], "lightning_modules.efficiency_bench.growth",
     "efficiency-growth"),
    (["bench-efficiency", "overhead"], "lightning_modules.efficiency_bench.overhead",
     "efficiency-overhead"),
    (["bench-grid"], "ablations.bench.bench_grid", "grid"),
    (["bench-sweep"], "sweeps.bench.bench_sweep", "sweep"),
]  # fmt: skip


def test_every_benchmark_command_writes_its_file_for_the_page(tmp_path, monkeypatch, capsys):
    """Each command, its measurement replaced by two tiny rows: the CSV it writes, with its
    command line, lands in the section of the page named after it; --no-save writes nothing."""
    from affbench.cli import main

    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        return [{"measure": "m", "part": "p", "wall_s": 1.5},
                {"measure": "m", "part": "p", "wall_s": 2.5}]  # fmt: skip

    for _, function, _ in COMMANDS:
        monkeypatch.setattr(function, fake)
    assert {name for *_, name in COMMANDS} == {b.name for b in BENCHMARKS}
    results = tmp_path / "results"
    for argv, _, name in COMMANDS:
        main([*argv, "--format", "csv", "--results-dir", str(results)])
        assert "wall_s" in capsys.readouterr().out  # the table is still printed
        (path,) = results.glob(f"{name}-*.csv")
        got = _read(path)
        assert [r["wall_s"] for r in got] == (["1.5", "2.5"] * (2 if name == "loader" else 1))
        assert got[0]["command"] == "affbench " + " ".join(
            [*argv, "--format", "csv", "--results-dir", str(results)]
        )
        path.rename(tmp_path / path.name)  # one file at a time in results
    assert [c[2] for c in calls[1:3]] == [8, 32]  # the loader, once per clip length
    for path in tmp_path.glob("*.csv"):
        path.rename(results / path.name)
    page = render_page(results)
    assert "No figures yet" not in page
    assert page.count("\n### ") == len(BENCHMARKS)
    main(["bench-grid", "--no-save", "--results-dir", str(tmp_path / "other")])
    assert not (tmp_path / "other").exists()


def test_bench_page_check(tmp_path, capsys):
    from affbench.cli import main

    write_results([{"wall_s": 1.5}], "grid", tmp_path, command="affbench bench-grid")
    out = tmp_path / "BENCHMARKS.md"
    args = ["bench-page", "--results-dir", str(tmp_path), "--out", str(out)]
    main(args)
    assert out.read_text() == render_page(tmp_path)
    main([*args, "--check"])
    out.write_text(out.read_text().replace("| 1.50 |", "| 1.40 |"))
    with pytest.raises(SystemExit) as e:
        main([*args, "--check"])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "-| 1.40 |" in err and "+| 1.50 |" in err
