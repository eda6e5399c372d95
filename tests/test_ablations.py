import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, tiny_base
from PIL import Image
from wandb_files import read_offline_run

from ablations.frontier import frontier_plot, pareto_mask, short_label
from ablations.grid import expand, load_grid
from ablations.runner import ResultsStore, check_runs, grid_rows, open_grid, run_grid
from ablations.tables import render, summarise
from core.errors import ConfigError
from lightning_modules.experiment import flat, resume_checkpoint, run_name
from lightning_modules.intervals import load as load_stats
from lightning_modules.intervals import stats_path


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
    cfg["base"]["trainer"]["limit_val_batches"] = 1.0  # every validation video: intervals
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
    # each finished run kept its per-video statistics (val and the labelled test split): they
    # give its measures again, and the store gives each row its interval around its value
    for _, row in done.iterrows():
        for stage in ("val", "test"):
            stats = load_stats(stats_path(results / "t", row["key"]), stage)
            assert len(stats.ids) > (1 if stage == "val" else 0)
            assert float(stats.measure("score")) == pytest.approx(row[f"{stage}/score"], abs=1e-6)
    metric = next(c for c in done if c.endswith("_ci95_low")).removesuffix("_ci95_low")
    assert (done[f"{metric}_ci95_low"] < done[metric]).all()
    assert (done[metric] < done[f"{metric}_ci95_high"]).all()
    assert done[f"{metric}_p_vs_best"].between(0, 1).all()
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

    # the summary run's Table holds each row's interval and whether it is tied with the best
    summary_dir = next(
        d for d in (results / "t" / "wandb").glob("offline-run-*")
        if read_offline_run(d)["name"] == "t-summary"
    )  # fmt: skip
    (table,) = summary_dir.glob("files/media/table/results_*.table.json")
    columns = json.loads(table.read_text())["columns"]
    assert {f"{metric}_ci95_low", f"{metric}_p_vs_best", f"{metric}_tied_with_best"} <= set(columns)
    assert read_offline_run(summary_dir)["summary"][f"best_{metric}_ci95_low"] < 1

    # the reports beside the store
    folder = results / "t"
    assert (folder / "table.md").read_text().count("\n|") >= 3
    assert "\\begin{table" in (folder / "table.tex").read_text()  # table* where it is wide
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
    assert "at 112 px with clips of T = 8." in md
    assert "Latency" not in md  # the table has no latency column: no sentence about one
    one = render(df[df["seed"] == 0], "model.head", "model.backbone", "val/va_ccc", "md")
    assert "±" not in one.split("\n\n")[0] and "VA CCC (1 seed)" in one and "one seed." in one
    tex = render(df, "model.head", "model.backbone", "val/va_ccc", "latex")
    assert "\\caption{" in tex and "\\bfseries 0.610 \\pm 0.010" in tex  # LaTeX: test_latex.py
    assert "VA CCC" in tex and "va\\_ccc" not in tex  # the measure as the challenge names it
    csv = pd.read_csv(io.StringIO(render(df, "model.head", "model.backbone", "val/va_ccc", "csv")))
    frame = csv.set_index("model.head").loc["frame"]
    assert frame["mean"] == pytest.approx(0.52) and frame["seeds"] == 3
    assert frame["params_total_m"] == 1.5 and np.isnan(frame["ci95_low"])  # no statistics kept


def test_pareto_and_plot(tmp_path):
    cost = np.array([1.0, 2.0, 3.0, 2.5, 1.0])
    score = np.array([0.5, 0.6, 0.7, 0.55, 0.4])
    assert pareto_mask(cost, score).tolist() == [True, True, True, False, False]
    df = pd.DataFrame({"val/score": score, "gmacs_per_frame": cost, "label": list("abcde")})
    fig = frontier_plot(df, "val/score", tmp_path / "f.png")
    assert len(fig.axes[0].collections[0].get_offsets()) == 5  # one point per model
    assert Image.open(tmp_path / "f.png").size[0] > 100
    assert (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert fig.axes[0].get_xscale() == "log"


def test_a_crowded_frontier_plot_keeps_every_label_apart_and_every_point_visible(tmp_path):
    """Eight heads x two backbones, most of them within a few hundredths of each other: no
    two labels overlap, no label leaves the axes, every point lies inside the axes, one colour
    per head and one marker per backbone, the measure named on the axis."""
    heads = ["frame", "mean", "gru", "transformer", "tcn", "mixer1", "mixer3", "mixer3_frame"]
    rng = np.random.default_rng(0)
    rows = [
        {"head": h, "backbone": b, "val/va_ccc": 0.55 + 0.02 * rng.standard_normal(),
         "gmacs_per_frame": (0.035 if b == "mobilenetv4_conv_small" else 0.6) * (1 + 0.03 * i)}
        for b in ("mobilenetv4_conv_small", "resnet18") for i, h in enumerate(heads)
    ]  # fmt: skip
    df = pd.DataFrame(rows)
    df["label"] = [short_label(r, True) for _, r in df.iterrows()]
    fig = frontier_plot(df, "val/va_ccc", tmp_path / "crowded.png")
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    for t in ax.texts:
        t.update_positions(renderer)
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the text, not its line
    assert len(boxes) == len(df)
    assert not [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
               for b in boxes)  # fmt: skip
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    pts = ax.collections[0].get_offsets()
    assert len(pts) == len(df) and all(x0 < x < x1 and y0 < y < y1 for x, y in pts)
    assert ax.get_ylabel() == "val VA CCC" and ax.get_xlabel().startswith("GMACs per frame")
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert set(heads) <= legend and {"mobilenetv4_conv_small", "resnet18", "Pareto front"} <= legend
    assert short_label(df.iloc[0], True) == "MNv4-Conv-S frame"


def test_frontier_labels_keep_off_the_front_line_and_share_coincident_points(tmp_path):
    """Labels are placed off the front's dashed steps; two models drawn on one spot (frame and
    mean: the same cost, nearly the same measure) get one label with a line each, top first;
    ``shown`` names the measure on the axis (a one-task sweep's score is its VA CCC)."""
    from matplotlib.text import Text

    from ablations.frontier import _crosses

    df = pd.DataFrame({"head": ["frame", "mean", "gru", "tcn", "mixer3", "transformer"],
                       "val/score": [0.50, 0.5004, 0.56, 0.58, 0.62, 0.40],
                       "gmacs_per_frame": [0.010, 0.010, 0.011, 0.0115, 0.016, 0.012]})  # fmt: skip
    df["label"] = df["head"]
    fig = frontier_plot(df, "val/score", tmp_path / "f.png", shown="val/va_ccc")
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    assert ax.get_ylabel() == "val VA CCC"
    assert sorted(t.get_text() for t in ax.texts) == sorted(
        ["mean\nframe", "gru", "tcn", "mixer3", "transformer"]
    )
    front = df.iloc[[0, 2, 3, 4]]  # the front, by cost: its steps go across, then up
    xy = ax.transData.transform(front[["gmacs_per_frame", "val/score"]].to_numpy(float))
    corners = np.array([xy[0], *[p for a, b in zip(xy, xy[1:], strict=False)
                                 for p in ((b[0], a[1]), b)]])  # fmt: skip
    segments = np.stack([corners[:-1], corners[1:]], axis=1)
    for t in ax.texts:
        t.update_positions(renderer)
        assert _crosses(Text.get_window_extent(t, renderer), segments) == 0, t.get_text()


def _study_of(tmp_path, cfg):
    return open_grid(cfg, f"sqlite:///{tmp_path / 'grid.db'}", ResultsStore(tmp_path))


def test_results_store_rows_come_from_the_study(tmp_path):
    """One row per combination from its trials: done (a later failure of the same key does not
    undo it), failed (not retried), interrupted (its retry waits: where it stood), and none for
    a killed worker's combination whose retry waits, nor for a running one."""
    import optuna
    from optuna.trial import TrialState, create_trial

    cfg = {"name": "g", "base": {}, "grid": {}}
    study = _study_of(tmp_path, cfg)

    def add(key, state, value=None, **attrs):
        settings = json.dumps({"model": {"head": key}, "seed": 0})
        attrs = {"key": key, "run": key, "settings": settings, **attrs}
        study.add_trial(create_trial(state=state, value=value, user_attrs=attrs))

    add("a", TrialState.COMPLETE, 0.5, row={"val/score": 0.5, "gmacs_per_frame": 0.1})
    add("b", TrialState.FAIL, error="ValueError: bad")
    add("c", TrialState.FAIL, error="interrupted by SIGTERM", interrupted=True)
    add("c", TrialState.WAITING, interrupted=True, error="interrupted by SIGTERM",
        checkpoint="/x/c.ckpt", train_s=3.5)  # fmt: skip
    add("d", TrialState.FAIL)  # a killed worker's, failed for its silent heartbeat ...
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, study.trials[-1])  # ... retried
    add("e", TrialState.RUNNING)
    add("a", TrialState.FAIL, error="a rerun that failed")
    df = grid_rows(study, cfg).set_index("key")
    assert list(df.index) == ["a", "b", "c"]
    assert list(df["status"]) == ["done", "failed", "interrupted"]
    assert df.loc["a", "val/score"] == 0.5 and df.loc["a", "model.head"] == "a"
    assert df.loc["b", "error"] == "ValueError: bad"
    assert df.loc["c", "checkpoint"] == "/x/c.ckpt" and df.loc["c", "train_s"] == 3.5


def test_a_results_store_older_than_the_study_is_taken_in(synth_root, tmp_path):
    """A grid run by an earlier version (a results.csv, no study): its finished and failed
    combinations keep their state, nothing reruns (``max_runs=0``)."""
    cfg = _cfg(synth_root, ["frame", "gru", "mean"], seq_len=8)
    runs = expand(cfg)
    keys = [r["key"] for r in runs]
    folder = tmp_path / "t"
    settings = [json.dumps(r["settings"], sort_keys=True) for r in runs]
    old = pd.DataFrame(
        [
            {"key": keys[0], "run": "x", "status": "done", "val/score": 0.25, "steps": 6,
             "gmacs_per_frame": 0.01, "settings": settings[0], **flat(runs[0]["settings"]),
             "error": ""},
            {"key": keys[1], "run": "y", "status": "failed", "error": "ValueError: lr",
             "settings": settings[1], **flat(runs[1]["settings"])},
        ]
    )  # fmt: skip
    ResultsStore(folder).write(old)
    df = run_grid(cfg, tmp_path, wandb_disabled=True, max_runs=0).set_index("key")
    assert df.loc[keys[0], "status"] == "done" and df.loc[keys[0], "val/score"] == 0.25
    assert df.loc[keys[0], "steps"] == 6
    assert df.loc[keys[1], "status"] == "failed" and df.loc[keys[1], "error"] == "ValueError: lr"
    assert keys[2] not in df.index
    assert len(_study_of(folder, cfg).trials) == 2


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


def _grid_file(tmp_path, text: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, line, message",
    [
        # a typo in a section name was ignored and the run trained with the defaults
        ("name: g\nbase:\n  model: {head: frame}\n  trainr: {max_epochs: 1}\n", 4, "trainr"),
        ("base:\n  model:\n    head: frame\n    lrr: 0.1\n", 4, "did you mean lr"),
        ("base:\n  data: {batch_sise: 4}\n", 2, "batch_size"),
        ("base:\n  model: {head: framez}\n", 2, "unknown head 'framez'"),
        ("base:\n  model: {backbone: resnet_18}\n", 2, "unknown backbone 'resnet_18'"),
        ("base: {}\ngrid:\n  model.hed: [frame]\n", 3, "grid axis 'model.hed'"),
        ("base: {}\ngrid:\n  seed: [0]\n  model.head: [frame, lstm]\n", 4, "'lstm'"),
        ("base: {}\ngrid:\n  model.backbone: [resnet18, resnet_99]\n", 3, "resnet_99"),
        ("base: {}\ngrids:\n  seed: [0]\n", 2, "unknown key 'grids'"),
    ],
)
def test_grid_file_errors_name_the_file_and_line(tmp_path, text, line, message):
    path = _grid_file(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_grid(path)
    assert str(e.value).startswith(f"{path}:{line}: ") and message in str(e.value)


def test_grid_overrides_are_checked(tmp_path, capsys):
    from affbench.cli import main

    path = _grid_file(tmp_path, f"base:\n  model: {{backbone: {TINY}}}\n")
    with pytest.raises(SystemExit) as e:
        main(["ablate", str(path), "--set", "trainer.max_epoch=1", "--dry-run"])
    assert e.value.code == 2
    assert "--set trainer.max_epoch: unknown trainer setting" in capsys.readouterr().err


def test_every_combination_is_checked_before_the_first_trains(synth_root, tmp_path):
    cfg = _cfg(synth_root, ["frame", "mixer3"])
    cfg["grid"]["model.seq_len"] = [8, 6]  # mixer3 needs T % 4 == 0
    with pytest.raises(ConfigError) as e:
        run_grid(cfg, tmp_path / "r")
    msg = str(e.value)
    assert msg.startswith("1 of 4 combinations cannot run, nothing was trained")
    assert "tubelet length 4" in msg and "+mixer3_t6_r112_s0" in msg
    assert not (tmp_path / "r").exists()
    # several problems at once, in one line: a missing data root and an impossible stride
    cfg = _cfg(tmp_path / "nowhere", ["frame", "gru"])
    cfg["grid"]["data.stride"] = [4, 9]
    cfg["grid"]["data.root"] = [str(synth_root), str(tmp_path / "nowhere")]
    with pytest.raises(ConfigError) as e:
        check_runs(expand(cfg))
    msg = str(e.value)
    assert msg.startswith("6 of 8 combinations cannot run") and "\n" not in msg
    assert f"data root {tmp_path / 'nowhere'} does not exist" in msg
    assert "stride must be in 1..seq_len=8, got 9" in msg


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(Path.cwd())}
    return subprocess.run(
        [sys.executable, "-m", "affbench.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_settings_errors_are_one_line_in_ablate_and_dry_run(synth_root, tmp_path):
    path = _grid_file(
        tmp_path,
        f"base:\n  model: {{backbone: {TINY}, head: mixer3, seq_len: 6}}\n"
        f"  data: {{root: {synth_root}}}\ngrid:\n  seed: [0, 1]\n",
    )
    for extra in ([], ["--dry-run"]):
        r = _cli("ablate", str(path), "--results", str(tmp_path / "r"), *extra)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("affbench: error:"), r.stderr
        assert "seq_len (T) = 6 is not divisible by the tubelet length 4" in lines[0]
    assert not (tmp_path / "r").exists()


def test_ablate_exits_non_zero_when_a_combination_failed(synth_root, tmp_path, capsys):
    from affbench.cli import main

    path = _grid_file(
        tmp_path,
        f"base:\n  model: {{backbone: {TINY}, head: frame, seq_len: 8, lr: -1.0}}\n"
        f"  data: {{root: {synth_root}, batch_size: 2, num_workers: 0}}\n"
        "  trainer: {max_epochs: 1, limit_train_batches: 1, limit_val_batches: 1}\n",
    )
    with pytest.raises(SystemExit) as e:
        main(["ablate", str(path), "--results", str(tmp_path / "r"), "--no-wandb"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "Invalid learning rate: -1.0" in err and "--retry-failed" in err
    assert ResultsStore(tmp_path / "r" / "g").status() == {
        expand(load_grid(path))[0]["key"]: "failed"
    }


def test_stale_temp_files_and_truncated_checkpoints_are_ignored(tmp_path):
    (tmp_path / ".results.99999.csv").write_bytes(b"")  # a killed writer's, or a full disk's
    store = ResultsStore(tmp_path)
    store.write(pd.DataFrame([{"key": "a", "status": "done"}]))
    assert not (tmp_path / ".results.99999.csv").exists() and store.status() == {"a": "done"}
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    import torch

    torch.save({"state_dict": {"w": torch.zeros(3)}}, ckpts / "last.ckpt")
    good = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "interrupted.ckpt").write_bytes(good[: len(good) // 2])  # newer, but truncated
    assert resume_checkpoint(ckpts) == ckpts / "last.ckpt"
    (ckpts / "last.ckpt").write_bytes(b"")
    assert resume_checkpoint(ckpts) is None


@pytest.mark.slow
def test_sigterm_stops_the_grid_and_the_run_resumes_from_its_checkpoint(synth_root, tmp_path):
    path = _grid_file(
        tmp_path,
        f"name: g\nbase:\n  model: {{backbone: {TINY}, seq_len: 8, img_size: 112}}\n"
        f"  data: {{root: {synth_root}, batch_size: 2, num_workers: 0}}\n"
        "  trainer: {max_epochs: 2, limit_train_batches: 3, limit_val_batches: 1, "
        "limit_test_batches: 1}\ngrid:\n  model.head: [frame, gru]\n",
    )
    steps = tmp_path / "steps.log"
    script = Path(__file__).with_name("ablate_with_sigterm.py")
    cmd = [sys.executable, str(script), str(steps)]
    args = ["ablate", str(path), "--results", str(tmp_path / "r"), "--no-wandb"]
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    first = subprocess.run([*cmd, "4", *args], capture_output=True, text=True, env=env)
    assert first.returncode == 143, first.stderr  # 128 + SIGTERM
    assert "interrupted by SIGTERM" in first.stderr
    store = ResultsStore(tmp_path / "r" / "g")
    frame_key, gru_key = (r["key"] for r in expand(load_grid(path)))
    assert store.status() == {frame_key: "interrupted"}  # stopped: gru never started
    saved = tmp_path / "r" / "g" / "checkpoints" / frame_key / "interrupted.ckpt"
    import torch

    assert torch.load(saved, weights_only=False)["global_step"] == 5  # where it stood
    assert steps.read_text().split() == ["0", "1", "2", "3", "4"]

    second = subprocess.run([*cmd, "-1", *args], capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr
    df = store.read().set_index("key")
    assert df.loc[frame_key, "status"] == "done" and df.loc[gru_key, "status"] == "done"
    assert df.loc[frame_key, "resumed_from"] == str(saved)
    assert df.loc[frame_key, "steps"] == df.loc[gru_key, "steps"] == 6  # 2 epochs x 3 batches
    # frame resumed at step 5 (one step left), then gru trained from 0: nothing ran twice
    assert steps.read_text().split() == ["0", "1", "2", "3", "4", "5", *map(str, range(6))]
    assert not saved.exists()


@pytest.mark.slow
def test_two_ablate_processes_on_one_folder_run_each_combination_once(synth_root, tmp_path):
    heads = ["frame", "mean", "gru", "tcn"]
    path = _grid_file(
        tmp_path,
        f"name: g\nbase:\n  model: {{backbone: {TINY}, seq_len: 8, img_size: 112}}\n"
        f"  data: {{root: {synth_root}, batch_size: 2, num_workers: 0}}\n"
        "  trainer: {max_epochs: 1, limit_train_batches: 2, limit_val_batches: 1, "
        f"limit_test_batches: 1}}\ngrid:\n  model.head: [{', '.join(heads)}]\n",
    )
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(Path.cwd())}
    cmd = [sys.executable, "-m", "affbench.cli", "ablate", str(path), "--results", str(tmp_path)]
    logs = [open(tmp_path / f"p{i}.log", "w") for i in range(2)]  # noqa: SIM115
    procs = [subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT) for f in logs]
    codes = [p.wait(timeout=600) for p in procs]
    for f in logs:
        f.close()
    assert codes == [0, 0], [(tmp_path / f"p{i}.log").read_text()[-2000:] for i in range(2)]
    df = ResultsStore(tmp_path / "g").read()
    assert len(df) == 4 and df["key"].is_unique and (df["status"] == "done").all()
    runs = [read_offline_run(d) for d in (tmp_path / "g" / "wandb").glob("offline-run-*")]
    trained = sorted(r["config"]["key"] for r in runs if r.get("name") != "g-summary")
    assert trained == sorted(df["key"])  # each combination trained once, by one process
