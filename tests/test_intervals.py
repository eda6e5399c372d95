"""Intervals and paired comparisons: the measures from per-video sums equal the official ones, the
video bootstrap equals scipy's, and the paired bootstrap tells a real difference from none."""

import io
import re

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as scipy_stats

from lightning_modules import intervals
from lightning_modules.intervals import VideoStats, interval, paired, video_stats
from lightning_modules.scoring import FRAME_SPAN, FramePredictions, score_split, video_hash

TASKS = ("va", "expr", "au", "emi")


def _merged(seed: int = 0, videos: int = 12, quality: float = 0.0, tasks=TASKS, noise_seed=None):
    """FramePredictions' merged output for ``videos`` videos of 5-40 frames; predictions are
    ``quality`` x target + noise (0: no relation); ``noise_seed``: the noise drawn apart (the
    same videos and labels, another model's errors)."""
    rng = np.random.default_rng(seed)
    noisy = rng if noise_seed is None else np.random.default_rng(noise_seed)
    names = [f"video{v:02d}" for v in range(videos)]
    frames = {n: int(rng.integers(5, 40)) for n in names}
    fp = FramePredictions(tasks)
    for n in names:
        k = frames[n]
        va = rng.uniform(-1, 1, (k, 2))
        expr = rng.integers(0, 7, k)  # class 7 never a target: only sometimes predicted
        au = rng.integers(0, 2, (k, 12)).astype(float)
        au[:, 5] = 0  # an AU that never occurs
        emi = np.tile(rng.uniform(0, 1, 6), (k, 1))
        noise = noisy.normal(0, 1, (k, 8))
        target = {"va": va, "expr": np.eye(8)[expr], "au": au, "emi": emi}
        pred = {
            "va": np.tanh(quality * va + 0.5 * noise[:, :2]),
            "expr": torch.tensor(quality * np.eye(8)[expr] + noise).softmax(-1).numpy(),
            "au": 1 / (1 + np.exp(-(quality * (2 * au - 1) + noise[:, :1]))),
            "emi": np.clip(quality * emi + 0.2 * noise[:, :6], 0, 1),
        }
        valid = {t: rng.random(k) > 0.15 for t in tasks}
        if "emi" in valid:
            valid["emi"][:] = True  # scored per video: every frame carries the video's label
        fp.update(
            [n],
            torch.arange(1, k + 1)[None],
            torch.zeros(1, k, dtype=torch.bool),
            {t: torch.tensor(pred[t], dtype=torch.float32)[None] for t in tasks},
            {t: torch.tensor(target[t], dtype=torch.float32)[None] for t in tasks},
            {t: torch.tensor(valid[t])[None] for t in tasks},
        )
    return fp.compute(), dict(fp.video_names)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_measures_from_video_sums_equal_the_official_ones(seed):
    merged, names = _merged(seed, quality=1.0)
    official = score_split(merged)
    from_sums = video_stats(merged, names).measures()
    assert set(official) <= set(from_sums)
    for name, value in official.items():
        assert float(from_sums[name]) == pytest.approx(value, abs=1e-6), (
            name
        )  # torchmetrics counts in float32


def test_a_subset_of_videos_gives_that_subsets_measures():
    """Counting video 0 three times and leaving out video 1 is scoring that set of frames."""
    merged, names = _merged(3, quality=0.5)
    s = video_stats(merged, names)
    counts = np.ones(len(s.ids))
    counts[0], counts[1] = 3, 0
    vid = {t: (keys // FRAME_SPAN).numpy() for t, (keys, _, _) in merged.items()}
    picked = {}
    for t, (keys, pred, target) in merged.items():
        rep = torch.tensor(counts[np.searchsorted(s.ids, vid[t])], dtype=torch.long)
        idx = torch.repeat_interleave(torch.arange(len(keys)), rep)
        # repeated frames must keep distinct keys for a per-video task's merge: copies of a
        # video are new videos there, as in the bootstrap
        copy = torch.cat([torch.arange(int(r)) for r in rep]) if len(rep) else rep
        picked[t] = (keys[idx] + copy * (FRAME_SPAN << 20), pred[idx], target[idx])
    official = score_split(picked)
    got = s.measures(counts)
    for name, value in official.items():
        assert float(got[name]) == pytest.approx(value, abs=1e-6), (
            name
        )  # torchmetrics counts in float32


def test_video_bootstrap_matches_scipy():
    """One run, one seed: the percentile interval over videos equals scipy.stats.bootstrap's
    on the same per-video data (to Monte Carlo error of 20,000 resamples each)."""
    merged, names = _merged(4, videos=30, quality=0.4, tasks=("va",))
    s = video_stats(merged, names)
    mine = interval([s], "va_ccc", n_boot=20_000, seed=1)

    def statistic(idx, axis=-1):  # idx: (..., V) drawn video indices
        counts = np.apply_along_axis(np.bincount, axis, idx.astype(int), minlength=len(s.ids))
        return s.measure("va_ccc", counts)

    ref = scipy_stats.bootstrap(
        (np.arange(len(s.ids)),),
        statistic,
        n_resamples=20_000,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(2),
    ).confidence_interval
    width = ref.high - ref.low
    assert width > 0.05  # 30 videos: a real spread, so the comparison means something
    assert mine.low == pytest.approx(ref.low, abs=0.03 * width)
    assert mine.high == pytest.approx(ref.high, abs=0.03 * width)
    assert mine.mean == pytest.approx(score_split(merged)["va_ccc"], abs=1e-12)


def test_seeds_widen_the_interval():
    """Three seeds that disagree: the interval holds their spread, wider than one seed's."""
    runs = [video_stats(*_merged(5, quality=q, tasks=("va",))) for q in (0.2, 0.6, 1.0)]
    one = interval(runs[1:2], "va_ccc")
    three = interval(runs, "va_ccc")
    values = [float(r.measure("va_ccc")) for r in runs]
    assert three.mean == pytest.approx(np.mean(values))
    assert three.high - three.low > one.high - one.low
    assert three.low < np.mean(values) < three.high


def test_paired_bootstrap_tells_a_difference_from_none():
    good = [video_stats(*_merged(6, quality=1.5, tasks=("va",)))]
    bad = [video_stats(*_merged(6, quality=0.2, tasks=("va",)))]
    d = paired(good, bad, "va_ccc")
    assert d.diff > 0 and d.low > 0 and d.p < 0.01 and d.distinguishable
    same = paired(good, good, "va_ccc")
    assert same.diff == 0 and same.low == same.high == 0 and same.p == 1.0
    assert not same.distinguishable
    reverse = paired(bad, good, "va_ccc")
    assert reverse.diff == pytest.approx(-d.diff) and reverse.high < 0


def test_other_videos_cannot_be_paired():
    a = [video_stats(*_merged(7, videos=10, tasks=("va",)))]
    b = [video_stats(*_merged(7, videos=11, tasks=("va",)))]
    with pytest.raises(ValueError, match="scored on other videos.*video10"):
        paired(a, b, "va_ccc", labels=("gru", "tcn"))


def test_save_and_load_round_trip(tmp_path):
    merged, names = _merged(8)
    s = video_stats(merged, names)
    path = intervals.save(intervals.stats_path(tmp_path, "abc"), {"val": s})
    assert path == tmp_path / "videos" / "abc.npz"
    back = intervals.load(path, "val")
    assert sorted(back.names) == [f"video{v:02d}" for v in range(12)]
    assert list(back.names) == [names[int(i)] for i in back.ids]
    assert int(back.ids[0]) in {video_hash(f"video{v:02d}") for v in range(12)}
    for name, value in s.measures().items():
        assert float(back.measures()[name]) == float(value)
    with pytest.raises(KeyError, match="abc.npz holds no test"):
        intervals.load(path, "test")
    assert isinstance(back, VideoStats)


def _store_with_stats(tmp_path, qualities: dict[str, float], seeds: int = 3):
    """A results store whose runs have per-video statistics: head -> prediction quality."""
    import pandas as pd

    rows = []
    for head, q in qualities.items():
        for s in range(seeds):
            merged, names = _merged(10 + s, videos=20, quality=q + 0.05 * s, tasks=("va",))
            stats = video_stats(merged, names)
            key = f"{head}{s}"
            intervals.save(intervals.stats_path(tmp_path, key), {"val": stats})
            rows.append({"key": key, "run": f"m+{head}_s{s}", "status": "done", "seed": s,
                         "model.head": head, "model.backbone": "m",
                         "val/va_ccc": float(stats.measure("va_ccc"))})  # fmt: skip
    return pd.DataFrame(rows)


def test_tables_show_intervals_and_mark_rows_tied_with_the_best(tmp_path):
    from ablations.significance import with_intervals
    from ablations.tables import render, summarise

    df = _store_with_stats(tmp_path, {"frame": 0.0, "gru": 1.5, "mixer3": 1.45})
    s = summarise(df, "model.head", "model.backbone", "val/va_ccc", tmp_path)
    s = s.set_index("model.head")
    assert s.loc["gru", "tied_with_best"] and s.loc["gru", "p_vs_best"] == 1.0
    assert s.loc["mixer3", "tied_with_best"] and s.loc["mixer3", "p_vs_best"] >= 0.05
    assert not s.loc["frame", "tied_with_best"] and s.loc["frame", "p_vs_best"] < 0.05
    for head in s.index:
        assert s.loc[head, "ci95_low"] < s.loc[head, "mean"] < s.loc[head, "ci95_high"]
    assert (s["videos"] == 20).all()

    md = render(df, "model.head", "model.backbone", "val/va_ccc", "md", tmp_path)
    line = {r.split("|")[1].strip(): r for r in md.splitlines() if r.startswith("|")}
    g, m3 = s.loc["gru"], s.loc["mixer3"]
    assert f"**{g['mean']:.3f} [{g['ci95_low']:.3f}, {g['ci95_high']:.3f}]**" in line["gru"]
    assert f"{m3['mean']:.3f} [{m3['ci95_low']:.3f}, {m3['ci95_high']:.3f}] †" in line["mixer3"]
    assert "†" not in line["frame"] and "†" not in line["gru"]
    assert "VA CCC (95 % CI)" in md
    assert "bootstrap over the 20 validation videos and the seeds" in md

    csv = render(df, "model.head", "model.backbone", "val/va_ccc", "csv", tmp_path)
    assert "ci95_low" in csv.splitlines()[0] and "p_vs_best" in csv.splitlines()[0]

    per_run = with_intervals(df, tmp_path, ["model.head", "model.backbone"], "val/va_ccc")
    assert len(per_run) == len(df) and list(per_run["key"]) == list(df["key"])
    frame = per_run[per_run["model.head"] == "frame"]
    assert frame["val/va_ccc_ci95_low"].nunique() == 1  # the group's, on each of its seeds
    assert not frame["val/va_ccc_tied_with_best"].any()

    # a store without the files (scored before they were kept): mean ± std, no marks
    (tmp_path / "videos" / "frame0.npz").unlink()
    md = render(df, "model.head", "model.backbone", "val/va_ccc", "md", tmp_path)
    assert "±" in md and "†" not in md and "bootstrap" not in md


def test_compare_two_rows_and_two_grids(tmp_path, capsys):
    from ablations.compare import compare
    from affbench.cli import main

    one, two = tmp_path / "one", tmp_path / "two"
    _store_with_stats(one, {"frame": 0.0, "gru": 1.5}).to_csv(one / "results.csv", index=False)
    _store_with_stats(two, {"frame": 0.0, "gru": 0.3}).to_csv(two / "results.csv", index=False)

    rows = compare(f"{one}:gru", f"{one}:frame").set_index("measure")
    assert set(rows.index) == {"val/va_ccc", "val/valence_ccc", "val/arousal_ccc", "val/score"}
    va = rows.loc["val/va_ccc"]
    assert va["a"] == "m+gru" and va["b"] == "m+frame" and va["a_seeds"] == 3
    assert va["diff"] == pytest.approx(va["a_mean"] - va["b_mean"]) and va["diff"] > 0.3
    assert 0 < va["ci95_low"] < va["diff"] < va["ci95_high"] and va["p"] < 0.01

    grids = compare(str(one), str(two)).set_index(["a", "measure"])
    assert len(grids) == 8 and (grids.reset_index()["a"] == grids.reset_index()["b"]).all()
    # the same frame runs on both sides (the same statistics): no difference at all
    assert grids.loc[("m+frame", "val/va_ccc"), "diff"] == 0
    assert grids.loc[("m+frame", "val/va_ccc"), "p"] == 1.0
    assert grids.loc[("m+gru", "val/va_ccc"), "p"] < 0.01

    main(["compare", f"{one}:gru", f"{two}:gru"])
    out = capsys.readouterr().out
    assert "A - B [95 % CI]" in out
    assert re.search(
        r"\| m\+gru +\| m\+gru +\| val/va_ccc +\| +0\.\d{3} \| +0\.\d{3} \| [+-]0", out
    )
    assert "Paired bootstrap over the same 20 videos (3 and 3 seeds" in out
    with pytest.raises(SystemExit, match="no row matches 'lstm'.*m\\+frame, m\\+gru"):
        main(["compare", f"{one}:lstm", str(two)])
    (one / "videos" / "gru1.npz").unlink()
    with pytest.raises(SystemExit):
        main(["compare", f"{one}:gru", f"{two}:gru"])
    assert "gru1.npz: row m+gru" in capsys.readouterr().err


def test_a_sweeps_front_shows_intervals_and_ties_with_its_best_trial(tmp_path):
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from sweeps.frontier import frontier_table

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="front",
                                directions=["maximize", "minimize"])  # fmt: skip
    study.set_metric_names(["val/va_ccc", "gmacs_per_frame"])
    dist = {"model.head": CategoricalDistribution(["frame", "gru", "tcn"])}
    measured = {}
    # cheap and poor, dear and good, dearest and a little better: all three on the front
    for n, (head, quality, gmacs) in enumerate((("frame", 0.1, 0.01), ("gru", 1.45, 0.02),
                                                 ("tcn", 1.5, 0.03))):  # fmt: skip
        stats = video_stats(*_merged(20, 20, quality, ("va",), noise_seed=n))
        path = intervals.save(intervals.stats_path(tmp_path, f"trial{n}"), {"val": stats})
        measured[head] = float(stats.measure("va_ccc"))
        attrs = {"gmacs_per_frame": gmacs, "videos": str(path)}
        study.add_trial(create_trial(values=[measured[head], gmacs], params={"model.head": head},
                                     distributions=dist, user_attrs=attrs))  # fmt: skip
    csv = pd.read_csv(io.StringIO(frontier_table(study, "csv"))).set_index("head")
    assert list(csv.index) == ["frame", "gru", "tcn"]
    assert measured["frame"] < measured["gru"] < measured["tcn"]
    assert csv.loc["tcn", "tied_with_best"] == 1 and csv.loc["tcn", "p_vs_best"] == 1
    assert csv.loc["gru", "tied_with_best"] == 1 and csv.loc["frame", "tied_with_best"] == 0
    for head in csv.index:
        assert csv.loc[head, "ci95_low"] < measured[head] < csv.loc[head, "ci95_high"]
    md = frontier_table(study, "md")
    assert "VA CCC [95 % CI]" in md and "not distinguishable from the front's best" in md
    gru = next(ln for ln in md.splitlines() if "| gru" in ln)
    assert f"{measured['gru']:.3f} [" in gru and "] †" in gru
    tex = frontier_table(study, "latex")
    assert "95 \\% CI" in tex and tex.count("\\dag") == 2  # gru's mark, the caption's


def test_a_front_without_statistics_keeps_its_plain_measure(tmp_path):
    import optuna
    from optuna.trial import create_trial

    from sweeps.frontier import frontier_table

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="old",
                                directions=["maximize", "minimize"])  # fmt: skip
    study.set_metric_names(["val/score", "gmacs_per_frame"])
    study.add_trial(create_trial(values=[0.5, 0.01], user_attrs={"gmacs_per_frame": 0.01,
                                 "videos": str(tmp_path / "gone.npz")}))  # fmt: skip
    md = frontier_table(study, "md")
    assert "0.5 " in md and "CI" not in md and "†" not in md


def test_a_damaged_statistics_file_is_named_and_its_row_keeps_mean_and_std(tmp_path):
    from ablations.tables import render
    from core.errors import DataError

    df = _store_with_stats(tmp_path, {"frame": 0.0, "gru": 1.5})
    path = intervals.stats_path(tmp_path, "gru1")
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(DataError, match="gru1.npz: damaged per-video statistics"):
        intervals.load(path)
    md = render(df, "model.head", "model.backbone", "val/va_ccc", "md", tmp_path)
    assert "±" in md and "bootstrap" not in md  # no interval for any line: none mixed
