"""The paper tables in LaTeX: their structure, and compiled for real by pdflatex (Debian's
texlive: `.ci/install-tex`, run by `make test`; outside CI the compile test skips where TeX is
missing) and read back from the PDF with pdftotext to check that numbers align on the point
and that every table fits its page."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import create_trial

from ablations.latex import PREAMBLE, fixed, significant, table_format
from ablations.tables import render
from sweeps.frontier import frontier_table

ROOT = Path(__file__).resolve().parents[1]
HEADS = ["frame", "mean", "gru", "transformer", "tcn", "mixer1", "mixer3", "mixer3_frame"]
BACKBONES = ["mobilenetv4_conv_small", "mobilenetv4_conv_medium", "mobilenetv4_hybrid_medium",
             "resnet18", "efficientnet_b0", "mobilenetv3_large_100"]  # fmt: skip


def _store(backbones, heads, seeds=3, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for b in backbones:
        for h in heads:
            params, gmacs = rng.uniform(1, 30), rng.uniform(0.01, 2)
            for s in range(seeds):
                rows.append({"key": f"{b}{h}{s}", "run": f"{b}+{h}_s{s}", "status": "done",
                             "model.head": h, "model.backbone": b, "seed": s,
                             "val/va_ccc": rng.uniform(-0.1, 0.65), "params_total_m": params,
                             "gmacs_per_frame": gmacs, "img_size": 112, "seq_len": 8})  # fmt: skip
    return pd.DataFrame(rows)


def _sweep(tmp_path) -> optuna.Study:
    """A finished two-objective sweep: heads with their own settings, a score of -2.7e-05."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="heads",
                                directions=["maximize", "minimize"])  # fmt: skip
    study.set_metric_names(["val/score", "gmacs_per_frame"])
    study.set_user_attr("sweep", {"base": {"model": {"tasks": "va"}}, "space": {}})
    dist = {"model.head": CategoricalDistribution(["frame", "gru"]),
            "model.lr": FloatDistribution(1e-4, 1e-2, log=True),
            "gru.hidden": CategoricalDistribution([64, 128])}  # fmt: skip
    for score, gmacs, head, hidden in ((-2.699e-05, 0.0101, "frame", None),
                                       (0.61234, 0.01234, "gru", 128),
                                       (0.4, 0.02, "gru", 64)):  # fmt: skip
        params = {"model.head": head, "model.lr": 3.1234e-4} | (
            {"gru.hidden": hidden} if hidden else {}
        )
        study.add_trial(create_trial(
            values=[score, gmacs], params=params,
            distributions={k: dist[k] for k in params},
            user_attrs={"gmacs_per_frame": gmacs, "params_total_m": 2.5 + 100 * gmacs,
                        "latency_ms_median": 6.04321, "device": "cpu", "threads": 2}))  # fmt: skip
    return study


def test_number_formats():
    assert table_format(["0.520 ± 0.020", "0.610 ± 0.100", ""]) == "1.3(3)"
    assert table_format(["-0.012", "12.50"]) == "-2.3"
    assert table_format(["8", "--", "128"]) == "3.0"
    assert table_format(["gru", "1.0"]) is None and table_format(["--", ""]) is None
    assert significant(2.5391) == "2.54" and significant(0.000123456) == "0.000123"
    assert significant(1234.5) == "1230" and significant(float("nan")) == ""
    assert fixed(-2.699e-05) == "0.000" and fixed(-0.0126) == "-0.013"


def test_grid_table_structure():
    df = _store(BACKBONES[:1], HEADS[:3])
    df = df.assign(**{"val/va_ccc": 0.5, "params_total_m": 12.5, "gmacs_per_frame": 0.05})
    df.loc[df["model.head"] == "gru", "val/va_ccc"] = [0.60, 0.61, 0.62]
    tex = render(df, "model.head", "model.backbone", "val/va_ccc", "latex")
    head = tex[tex.index(r"\toprule") : tex.index(r"\midrule")].splitlines()
    # the group row, its rule, one header row that names the rows too: no empty header row
    assert head[1].startswith(r" & \multicolumn{3}{c}{MNv4-Conv-S}") and "cmidrule" in head[2]
    assert head[3] == r"head & {VA CCC} & {Params (M)} & {MACs (G)} \\" and len(head) == 4
    spec = re.search(r"\\begin\{tabular\}\{(.*)\}$", tex, re.M).group(1)
    assert spec == "lS[table-format=1.3(2)]S[table-format=2.2]S[table-format=1.3]"
    assert r"gru & \bfseries 0.610 \pm 0.010 &" in tex  # the best, bold, parsed by siunitx
    assert r"frame & 0.500 \pm 0.000 &" in tex and "table}[t]" in tex  # a column's width

    six = render(_store(BACKBONES, HEADS[:4]), "model.head", "model.backbone", "val/va_ccc",
                 "latex")  # fmt: skip
    # six backbones side by side would be 3 pages wide: stacked, a block of rows each
    assert six.count(r"\itshape") == 6 and r"\itshape MNv3-L}" in six
    assert six.count(r"\bfseries") == 6  # the best head of each backbone
    assert len(re.search(r"\\begin\{tabular\}\{(.*)\}$", six, re.M).group(1).split("S[")) == 4


def test_sweep_front_in_latex_shows_architecture_and_rounded_numbers(tmp_path):
    tex = frontier_table(_sweep(tmp_path), "latex")
    header = next(ln for ln in tex.splitlines() if ln.startswith("{Trial}"))
    assert header == (r"{Trial} & head & {gru hidden} & {VA CCC} & {MACs (G)} & {Params (M)} & "
                      r"{Latency (ms)} \\")  # fmt: skip
    assert "lr" not in header  # the optimiser's settings are in the CSV
    rows = [ln for ln in tex.splitlines() if re.match(r"\d+ & ", ln)]
    assert rows == [r"0 & frame & {--} & 0.000 & 0.0101 & 3.51 & 6.04 \\",
                    r"1 & gru & 128 & 0.612 & 0.0123 & 3.73 & 6.04 \\"]  # fmt: skip
    assert "e-0" not in tex and "VA CCC" in tex and "on cpu (2 threads)" in tex


@pytest.fixture(scope="module")
def tex_tools():
    """pdflatex and pdftotext, installed by `.ci/install-tex` where missing (if it may);
    skipped outside CI where they still are missing, a failure in CI."""
    if not (shutil.which("pdflatex") and shutil.which("pdftotext")):
        subprocess.run([str(ROOT / ".ci" / "install-tex")], check=False)
    if not (shutil.which("pdflatex") and shutil.which("pdftotext")):
        if os.environ.get("CI"):
            pytest.fail("pdflatex/pdftotext missing: .ci/install-tex should have installed them")
        pytest.skip("TeX is not installed (Debian: texlive-latex-recommended texlive-science)")


def _compile(tmp_path: Path, tables: dict[str, str]) -> tuple[str, str]:
    """The tables in a two-column article, each followed by its measured width: (log, words of
    the PDF as pdftotext's bounding-box HTML)."""
    body = []
    for name, tex in tables.items():
        measure = rf"\typeout{{W:{name}:\the\wd0:\the\linewidth}}"
        body += [f"{name} text.", tex.replace(r"\ifdim\wd0", measure + r"\ifdim\wd0")]
    doc = "\n".join([r"\documentclass[twocolumn]{article}", PREAMBLE, r"\begin{document}",
                     *body, r"\end{document}"])  # fmt: skip
    (tmp_path / "doc.tex").write_text(doc)
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=os.environ | {"max_print_line": "10000"})  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    subprocess.run(["pdftotext", "-bbox", "doc.pdf", "words.html"], cwd=tmp_path, check=True)
    return run.stdout, (tmp_path / "words.html").read_text()


def _words(html: str) -> list[tuple[str, float, float, float]]:
    """(word, xMin, xMax, yMin) of every word in the PDF."""
    pat = r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="[\d.]+">([^<]*)</word>'
    return [(w, float(x0), float(x1), float(y0)) for x0, y0, x1, w in re.findall(pat, html)]


def _store_with_intervals(folder: Path, heads=HEADS) -> pd.DataFrame:
    """One backbone, ``heads`` x 3 seeds, each run with per-video statistics of 12 videos
    (predictions that follow the target by each head's own amount): intervals and marks."""
    from lightning_modules.intervals import VideoStats, save, stats_path
    from lightning_modules.scoring import video_hash

    rng = np.random.default_rng(0)
    names = [f"v{i}" for i in range(12)]
    ids = np.array(sorted(video_hash(n) for n in names), dtype=np.int64)
    target = [rng.uniform(-1, 1, (30, 2)) for _ in names]
    rows = []
    for h, head in enumerate(heads):
        quality = 0.9 if head in ("gru", "mixer3") else 0.2 + 0.05 * h
        for seed in range(3):
            sums = []
            for y in target:
                x = np.clip(quality * y + rng.normal(0, 0.4, y.shape), -1, 1)
                sums.append(np.concatenate([np.ones_like(x), x, y, x * x, y * y, x * y], 1).sum(0))
            stats = VideoStats(ids, np.array(names), {"va": np.array(sums)})
            key = f"{head}{seed}"
            save(stats_path(folder, key), {"val": stats})
            rows.append({"key": key, "run": f"m+{head}_s{seed}", "status": "done", "seed": seed,
                         "model.head": head, "model.backbone": BACKBONES[0],
                         "val/va_ccc": float(stats.measure("va_ccc")), "params_total_m": 2.5,
                         "gmacs_per_frame": 0.05, "img_size": 112, "seq_len": 8})  # fmt: skip
    return pd.DataFrame(rows)


def test_grid_table_with_intervals_in_latex(tmp_path):
    df = _store_with_intervals(tmp_path)
    tex = render(df, "model.head", "model.backbone", "val/va_ccc", "latex", tmp_path)
    head = tex[tex.index(r"\toprule") : tex.index(r"\midrule")].splitlines()
    assert head[3] == r"head & {VA CCC} & 95 \% CI & {Params (M)} & {MACs (G)} \\"
    spec = re.search(r"\\begin\{tabular\}\{(.*)\}$", tex, re.M).group(1)
    assert spec.startswith("lS[table-format=1.3]lS")  # the mean aligned, the interval as text
    tied = [ln for ln in tex.splitlines() if r"\dag" in ln and "&" in ln]
    assert len(tied) == 1 and tied[0].startswith(("gru &", "mixer3 &"))  # the other of the two
    pair = [ln for ln in tex.splitlines() if ln.startswith(("gru &", "mixer3 &"))]
    best = next(ln for ln in pair if ln not in tied).split(" & ")
    assert best[1].startswith(r"\bfseries 0.") and best[2].startswith("[0.")  # the mean bold
    assert r"\textsuperscript{\dag}: not distinguishable" in tex  # the caption explains it


def test_tables_compile_align_on_the_point_and_fit_the_page(tex_tools, tmp_path):
    one = _store(BACKBONES[:1], HEADS)
    one.loc[one["model.head"] == "gru", "val/va_ccc"] = 0.4  # 3 seeds: 0.400 ± 0.000
    one = one[(one["model.head"] != "tcn") | (one["seed"] == 0)]  # 1 seed: no ± std
    one.loc[one["model.head"] == "tcn", "val/va_ccc"] = 0.125
    tables = {
        "one": render(one, "model.head", "model.backbone", "val/va_ccc", "latex"),
        "two": render(
            _store(BACKBONES[:2], HEADS), "model.head", "model.backbone", "val/va_ccc", "latex"
        ),  # fmt: skip
        "six": render(
            _store(BACKBONES, HEADS[:4]), "model.head", "model.backbone", "val/va_ccc", "latex"
        ),  # fmt: skip
        "front": frontier_table(_sweep(tmp_path), "latex"),
        "ci": render(
            _store_with_intervals(tmp_path / "ci"),
            "model.head",
            "model.backbone",
            "val/va_ccc",
            "latex",
            tmp_path / "ci",
        ),  # fmt: skip
    }
    log, html = _compile(tmp_path, tables)
    assert "Overfull" not in log and "Missing" not in log
    widths = dict(
        (name, (float(w), float(line)))
        for name, w, line in re.findall(r"W:(\w+):([\d.]+)pt:([\d.]+)pt", log)
    )
    assert set(widths) == set(tables)
    for name, (w, line) in widths.items():  # shrunk by 15 % at most: still easily read
        assert w <= 1.15 * line, (name, w, line)
    assert r"\begin{table*}" in tables["two"] and widths["two"][1] > 400  # across the page

    words = _words(html)
    by_text = {}
    for w, x0, x1, y0 in words:
        by_text.setdefault(w, []).append((x0, x1, y0))
    # one column of "one": 0.400 (± 0.000) and 0.125 (one seed, no ±) start at the same x
    # (on the decimal point); right or centre alignment would put 0.125 under 0.000 or between
    (x_gru, _, y_gru), (x_tcn, _, y_tcn) = by_text["0.400"][0], by_text["0.125"][0]
    assert abs(y_gru - y_tcn) > 5 and abs(x_gru - x_tcn) < 0.5
    # the front's MACs column: 0.0101 and 0.0123 end together; its params 3.51 and 3.73 too
    assert abs(by_text["0.0101"][0][1] - by_text["0.0123"][0][1]) < 0.5
    assert "0.000" in by_text and not any("e-0" in w for w in by_text)
    # "ci": a mean with the dagger starts where the means without it start (aligned on the
    # point: the mark takes no width), and the caption's dagger is there too
    ci_rows = [ln for ln in tables["ci"].splitlines() if ln.startswith(tuple(HEADS))]
    tied = next(ln for ln in ci_rows if r"\dag" in ln).split(" & ")[1].split("{")[0]
    other = next(ln for ln in ci_rows if ln.startswith("frame &")).split(" & ")[1]
    assert abs(by_text[tied][-1][0] - by_text[other][-1][0]) < 0.5
