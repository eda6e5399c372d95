import re

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, tiny_base
from PIL import Image
from wandb_files import read_offline_run

from ablations.frontier import frontier_plot, pareto_mask
from ablations.grid import expand, load_grid
from ablations.runner import ResultsStore, run_grid, run_name
from ablations.tables import render, summarise
from affbench.errors import ConfigError


def _cfg(root, heads, seeds=(0,), **model):
    base = tiny_base(root)
    base["model"].update(model)
    return {"name": "t", "base": base, "grid": {"model.head": list(heads), "seed": list(seeds)}}


def test_grid_expansion_and_keys(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "name: g\nbase:\n  model: {backbone: resnet18, head: frame, seq_len: 8}\n  seed: 0\n"
        "grid:\n  model.head: [frame, gru]\n  model.seq_len: [8, 16]\n  seed: [0, 1, 2]\n"
    )
    runs = expand(load_grid(path))
    assert len(runs) == 12 and len({r["key"] for r in runs}) == 12
    assert runs[0]["axes"] == {"model.head": "frame", "model.seq_len": 8, "seed": 0}
    assert runs[-1]["settings"]["model"] == {"backbone": "resnet18", "head": "gru", "seq_len": 16}
    assert run_name(runs[-1]["settings"]) == "resnet18+gru_t16_r112_s2"
    assert expand(load_grid(path))[5]["key"] == runs[5]["key"]  # keys are stable
    path.write_text("name: g\nbase: {}\ngrid:\n  seed: 3\n")
    with pytest.raises(ConfigError, match="non-empty list"):
        load_grid(path)
    path.write_text("name: g\nbase:\n  model: {head: [frame\ngrid: {}\n")
    with pytest.raises(ConfigError, match=r"g\.yaml: not valid YAML: .*line 3"):
        load_grid(path)


def test_shipped_ablations_expand():
    for name, n in (("quickstart", 6), ("temporal_heads", 24), ("backbones", 54), ("paper", 9)):
        cfg = load_grid(f"ablations/configs/{name}.yaml")
        assert len(expand(cfg)) == n, name


@pytest.mark.slow
def test_resume_failures_wandb_table_and_plot(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    # a negative learning rate passes the checks but fails when the optimiser is built: those
    # combinations fail at run time, are recorded, and the rest go on
    cfg = _cfg(synth_root, ["frame", "mixer1", "gru"], seq_len=8)
    cfg["grid"]["model.lr"] = [1e-3, -1.0]
    results = tmp_path / "results"
    first = run_grid(cfg, results, max_runs=2)
    assert list(first["status"]) == ["done", "failed"]
    df = run_grid(cfg, results)
    assert len(df) == 6 and df["key"].is_unique
    failed = df[df["status"] == "failed"]
    assert sorted(failed["model.lr"]) == [-1.0] * 3
    assert failed["error"].str.contains("Invalid learning rate").all()
    done = df[df["status"] == "done"]
    assert (
        len(done) == 3
        and np.isfinite(done["val/score"]).all()
        and (done["gmacs_per_frame"] > 0).all()
    )
    assert done["test/score"].notna().all()  # the synthetic test videos are labelled
    assert (done["steps"] == 2).all()  # 2 batches x 1 epoch, once
    # a third call runs nothing (finished keys are skipped; the failures stay recorded)
    before = (results / "t" / "results.csv").read_text()
    run_grid(cfg, results)
    assert (results / "t" / "results.csv").read_text() == before

    # W&B: one offline run per combination (a failure's too: it failed in training), plus the
    # summary run, with their values
    runs = [read_offline_run(d) for d in sorted((results / "t" / "wandb").glob("offline-run-*"))]
    train = [r for r in runs if r["name"] != "t-summary"]  # a summary run per call
    by_key = {r["config"]["key"]: r for r in train}
    assert len(train) == len(by_key) == 6 and set(by_key) == set(df["key"])
    for _, row in done.iterrows():
        summary = by_key[row["key"]]["summary"]
        assert by_key[row["key"]]["group"] == "t" and by_key[row["key"]]["name"] == row["run"]
        assert summary["val/score"] == pytest.approx(row["val/score"], abs=1e-6)
        assert summary["gmacs_per_frame"] == pytest.approx(row["gmacs_per_frame"])

    # the reports beside the store
    folder = results / "t"
    assert (folder / "table.md").read_text().count("\n|") >= 3
    assert "\\begin{table}" in (folder / "table.tex").read_text()
    Image.open(folder / "frontier.png").verify()


def _known_store():
    rows = []
    for head, gm, scores in (
        ("frame", 0.05, [0.50, 0.52, 0.54]),
        ("gru", 0.051, [0.60, 0.61, 0.62]),
        ("mixer3", 0.062, [0.58, 0.55, 0.61]),
    ):
        for seed, s in enumerate(scores):
            rows.append(
                {
                    "key": f"{head}{seed}",
                    "run": f"m+{head}_t8_r112_s{seed}",
                    "status": "done",
                    "model.head": head,
                    "model.backbone": "m",
                    "seed": seed,
                    "val/va_ccc": s,
                    "params_total_m": 1.5,
                    "gmacs_per_frame": gm,
                    "img_size": 112,
                    "seq_len": 8,
                    "latency_ms_median": 10.0,
                    "device": "cpu",
                    "threads": 2,
                }
            )
    return pd.DataFrame(rows)


def test_table_numbers_and_formats():
    df = _known_store()
    s = summarise(df, "model.head", "model.backbone", "val/va_ccc").set_index("model.head")
    assert s.loc["frame", "mean"] == pytest.approx(0.52)
    assert s.loc["frame", "std"] == pytest.approx(np.std([0.50, 0.52, 0.54], ddof=1))
    assert s.loc["gru", "count"] == 3
    md = render(df, "model.head", "model.backbone", "val/va_ccc", "md")
    assert "**0.610 ± 0.010**" in md  # the best mean, in bold
    assert "0.520 ± 0.020" in md and "**0.520" not in md
    assert "Params (M)" in md and "GMACs / frame" in md and "1 MAC = 2 FLOPs" in md
    assert "at 112 px with clips of T = 8." in md and "with 2 thread(s)" in md
    tex = render(df, "model.head", "model.backbone", "val/va_ccc", "latex")
    body = tex[tex.index("\\begin{tabular}") : tex.index("\\end{tabular}")]
    assert tex.lstrip().startswith("\\begin{table}") and tex.rstrip().endswith("\\end{table}")
    assert "\\caption{" in tex and "\\bfseries 0.610 $\\pm$ 0.010" in tex
    ncols = len(re.search(r"\\begin\{tabular\}\{([^}]*)\}", body).group(1))
    data_rows = [
        ln
        for ln in body.splitlines()
        if ln.rstrip().endswith("\\\\") and ln.startswith(("frame", "gru", "mixer3"))
    ]
    assert len(data_rows) == 3 and all(ln.count("&") == ncols - 1 for ln in data_rows)
    no_label = "\n".join(ln for ln in tex.splitlines() if not ln.startswith("\\label"))
    assert re.search(r"(?<!\\)_", no_label) is None and "va\\_ccc" in tex  # LaTeX compiles
    csv = render(df, "model.head", "model.backbone", "val/va_ccc", "csv")
    assert csv.splitlines()[1].startswith("frame,0.520 ± 0.020,1.50,0.050")


def test_pareto_and_plot(tmp_path):
    cost = np.array([1.0, 2.0, 3.0, 2.5, 1.0])
    score = np.array([0.5, 0.6, 0.7, 0.55, 0.4])
    assert pareto_mask(cost, score).tolist() == [True, True, True, False, False]
    df = pd.DataFrame({"val/score": score, "gmacs_per_frame": cost, "label": list("abcde")})
    fig = frontier_plot(df, "val/score", tmp_path / "f.png")
    assert len(fig.axes[0].collections[0].get_offsets()) == 5  # one point per model
    assert Image.open(tmp_path / "f.png").size[0] > 100
    assert fig.axes[0].get_xscale() == "log"


def test_store_keeps_one_row_per_key(tmp_path):
    store = ResultsStore(tmp_path)
    store.put({"key": "a", "status": "failed", "error": "x"})
    store.put({"key": "b", "status": "done"})
    store.put({"key": "a", "status": "done", "error": ""})
    df = store.read()
    assert list(df["key"]) == ["b", "a"] and store.status() == {"a": "done", "b": "done"}


def test_dry_run_lists_combinations_with_cost(tmp_path, capsys):
    from affbench.cli import main

    grid = tmp_path / "g.yaml"
    grid.write_text(
        "name: g\nbase:\n"
        f"  model: {{backbone: {TINY}, seq_len: 8, img_size: 112}}\n"
        "  seed: 0\ngrid:\n  model.head: [frame, mixer3]\n  seed: [0, 1]\n"
    )
    main(["ablate", str(grid), "--dry-run", "--results", str(tmp_path / "r")])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("| ") and "key" not in ln]
    assert len(lines) == 4 and all("todo" in ln for ln in lines)
    assert "mobilenetv4_conv_small_035+mixer3_t8_r112_s1" in out
    assert not (tmp_path / "r").exists()  # nothing trained, nothing written
