import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from affbench.cli import main
from lightning_modules.efficiency import ModelSpec, Streamer, count_macs, profile, static_costs
from lightning_modules.heads import list_heads

# timm's published params and GMACs (its results/benchmark-infer-amp-nchw-pt291-cu128-4090.csv)
PUBLISHED = list(csv.DictReader((Path(__file__).parent / "data/published_backbones.csv").open()))


@pytest.mark.parametrize("row", PUBLISHED, ids=lambda r: f"{r['model']}@{r['img_size']}")
def test_params_and_gmacs_match_the_published_figures(row):
    costs = static_costs(
        ModelSpec(row["model"], head="none", img_size=int(row["img_size"]), classifier=1000)
    )
    params, gmacs = float(row["param_count_m"]), float(row["gmacs"])
    assert costs["params_total_m"] == pytest.approx(params, rel=0.01)
    # 3%, and the published figure is rounded to two decimals: half a unit more either way
    assert abs(costs["gmacs_per_clip"] - gmacs) <= 0.03 * gmacs + 0.005
    assert costs["gflops_per_clip"] == pytest.approx(2 * costs["gmacs_per_clip"], abs=1e-4)


def test_counts_are_exact_on_known_layers():
    assert count_macs(nn.Linear(64, 32), torch.randn(5, 64)) == 5 * 64 * 32
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, torch.randn(2, 3, 10, 10)) == 2 * 8 * 10 * 10 * 3 * 3 * 3

    class Attention(nn.Module):  # what the hybrid MobileNetV4 blocks call
        def forward(self, q):
            return F.scaled_dot_product_attention(q, q, q)

    b, h, n, d = 2, 4, 49, 32
    assert count_macs(Attention(), torch.randn(b, h, n, d)) == 2 * b * h * n * n * d  # QK^T and AV
    gru = nn.GRU(10, 20, batch_first=True)
    t = 5
    assert count_macs(gru, torch.randn(2, t, 10)) == 2 * t * (10 * 60 + 20 * 60)
    # multi-head attention is counted through its matmuls, not skipped as a fused op
    mha = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    x = torch.randn(1, 10, 32)
    linear_only = 10 * (3 * 32 * 32 + 32 * 32 + 2 * 32 * 64)
    assert count_macs(mha, x) >= linear_only + 2 * 10 * 10 * 32


@pytest.mark.parametrize("head", list_heads())
def test_streaming_gives_the_clip_output_for_the_newest_frame(head):
    torch.manual_seed(0)
    spec = ModelSpec("mobilenetv4_conv_small_035", head=head, seq_len=8, img_size=112)
    model = spec.build().eval()
    clip = spec.example(1)
    streamer = Streamer(model, spec.seq_len)
    for t in range(spec.seq_len):
        out = streamer.step(clip[:, t])
    with torch.no_grad():
        full = model(clip)
    for task in full:
        torch.testing.assert_close(out[task], full[task][:, -1], rtol=1e-4, atol=1e-5)


def test_costs_are_cached_per_architecture(monkeypatch):
    spec = ModelSpec("mobilenetv4_conv_small_035", head="gru", seq_len=8, img_size=112)
    first = static_costs(spec)
    monkeypatch.setattr(
        ModelSpec, "build", lambda self: (_ for _ in ()).throw(AssertionError("rebuilt"))
    )
    assert static_costs(spec) == first
    with pytest.raises(AssertionError, match="rebuilt"):
        static_costs(ModelSpec("mobilenetv4_conv_small_035", head="gru", seq_len=16, img_size=112))


def test_profile_row_and_cli(capsys):
    spec = ModelSpec("mobilenetv4_conv_small_035", head="mixer3", seq_len=8, img_size=112)
    row = profile(spec, batch=2, runs=3, warmup=1, threads=1)
    for col in (
        "params_backbone_m",
        "params_head_m",
        "params_total_m",
        "params_trainable_m",
        "gmacs_per_clip",
        "gmacs_per_frame",
        "gflops_per_frame",
        "latency_ms_median",
        "latency_ms_p90",
        "frames_per_s",
        "stream_ms_per_new_frame",
        "recompute_ms_per_new_frame",
        "stream_gmacs_per_new_frame",
        "peak_mem_mib",
        "device",
        "torch",
        "threads",
        "batch",
        "precision",
    ):
        assert col in row, col
    assert row["gmacs_per_frame"] == pytest.approx(row["gmacs_per_clip"] / 8, rel=1e-3)
    assert row["params_total_m"] == pytest.approx(
        row["params_backbone_m"] + row["params_head_m"], abs=2e-4
    )
    assert row["latency_ms_p90"] >= row["latency_ms_median"] > 0 and row["threads"] == 1
    main(
        [
            "profile",
            "--backbone",
            "mobilenetv4_conv_small",
            "--head",
            "none",
            "--img-size",
            "224",
            "--format",
            "json",
            "--no-timing",
        ]
    )
    bare = json.loads(capsys.readouterr().out)
    assert bare["params_total_m"] == pytest.approx(3.77, abs=0.01) and bare["seq_len"] == 1


def test_profile_a_grid(capsys, tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(
        "name: g\nbase:\n"
        "  model: {backbone: mobilenetv4_conv_small_035, seq_len: 8, img_size: 112}\n"
        "  seed: 0\ngrid:\n  model.head: [frame, mixer1]\n  seed: [0, 1]\n"
    )
    main(["profile", "--grid", str(grid), "--no-timing", "--format", "csv"])
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["head"] for r in rows] == ["frame", "mixer1"]  # seeds cost the same: one row each
    assert float(rows[1]["gmacs_per_frame"]) > float(rows[0]["gmacs_per_frame"])
