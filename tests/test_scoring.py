"""The official measures against a plain numpy reference, on clips that overlap and are padded."""

from collections import defaultdict

import numpy as np
import pytest
import torch

from lightning_modules.scoring import FramePredictions, score_split, tune_au_thresholds

rng = np.random.default_rng(0)
VIDEOS = {"10-60-1280x720": 24, "7-25-640x480_left": 12, "7-25-640x480_right": 19}
T, STRIDE = 8, 3


def _labels():
    """Per video and frame: VA (or -5), EXPR class (or -1), AU row (or a -1)."""
    out = {}
    for v, n in VIDEOS.items():
        va = rng.uniform(-1, 1, (n, 2))
        va[rng.random(n) < 0.2] = -5
        expr = rng.integers(0, 8, n)
        expr[rng.random(n) < 0.2] = -1
        au = rng.integers(0, 2, (n, 12))
        au[rng.random(n) < 0.2, 3] = -1
        emi = np.tile(rng.uniform(0, 1, 6), (n, 1))  # video-level: the same on every frame
        out[v] = {"va": va, "expr": expr, "au": au, "emi": emi}
    return out


def _clips(labels):
    """Overlapping windows (stride < T), the last one padded; a random prediction per clip frame."""
    clips = []
    for v, n in VIDEOS.items():
        for s in range(0, n, STRIDE):
            frames = np.arange(s + 1, s + T + 1)
            pad = frames > n
            rows = np.minimum(frames, n) - 1
            lab = labels[v]
            c = {"video": v, "frame": frames, "pad": pad, "pred": {}, "target": {}, "valid": {}}
            c["pred"]["va"] = rng.uniform(-1, 1, (T, 2))
            c["pred"]["expr"] = rng.dirichlet(np.ones(8), T)
            c["pred"]["au"] = rng.uniform(0, 1, (T, 12))
            c["pred"]["emi"] = rng.uniform(0, 1, (T, 6))
            c["valid"]["va"] = (lab["va"][rows] != -5).all(1) & ~pad
            c["target"]["va"] = np.where(c["valid"]["va"][:, None], lab["va"][rows], 0)
            c["valid"]["expr"] = (lab["expr"][rows] >= 0) & ~pad
            c["target"]["expr"] = (
                np.eye(8)[np.clip(lab["expr"][rows], 0, 7)] * c["valid"]["expr"][:, None]
            )
            c["valid"]["au"] = (lab["au"][rows] >= 0).all(1) & ~pad
            c["target"]["au"] = np.where(c["valid"]["au"][:, None], lab["au"][rows], 0)
            c["valid"]["emi"] = ~pad
            c["target"]["emi"] = lab["emi"][rows]
            clips.append(c)
            if s + T >= n:
                break
    return clips


def _np_reference(clips):
    acc = defaultdict(list)
    for c in clips:
        for t in range(T):
            if not c["pad"][t]:
                acc[(c["video"], int(c["frame"][t]))].append(c)
    merged = defaultdict(lambda: ([], [], []))  # task -> (keys, preds, targets)
    for key, cs in sorted(acc.items()):
        t_of = [int(np.flatnonzero(c["frame"] == key[1])[0]) for c in cs]
        for task in ("va", "expr", "au", "emi"):
            if cs[0]["valid"][task][t_of[0]]:
                merged[task][0].append(key)
                merged[task][1].append(
                    np.mean([c["pred"][task][t] for c, t in zip(cs, t_of, strict=True)], 0)
                )
                merged[task][2].append(cs[0]["target"][task][t_of[0]])
    out = {}
    p, y = (np.array(a, dtype=np.float64) for a in merged["va"][1:])

    def ccc(a, b):
        return (
            2
            * np.mean((a - a.mean()) * (b - b.mean()))
            / (a.var() + b.var() + (a.mean() - b.mean()) ** 2)
        )

    out["valence_ccc"], out["arousal_ccc"] = ccc(p[:, 0], y[:, 0]), ccc(p[:, 1], y[:, 1])
    out["va_ccc"] = (out["valence_ccc"] + out["arousal_ccc"]) / 2

    def f1(pred, true):
        tp, fp, fn = np.sum(pred & true), np.sum(pred & ~true), np.sum(~pred & true)
        return None if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)

    p, y = (np.array(a) for a in merged["expr"][1:])
    pc, yc = p.argmax(1), y.argmax(1)
    scores = [f1(pc == k, yc == k) for k in range(8)]
    out["expr_f1"] = np.mean([s for s in scores if s is not None])
    p, y = (np.array(a) for a in merged["au"][1:])
    out["au_f1"] = np.mean([f1(p[:, j] > 0.5, y[:, j] > 0.5) or 0.0 for j in range(12)])
    keys, p, y = merged["emi"]
    vids = sorted({k[0] for k in keys})
    pv = np.array(
        [np.mean([pp for k, pp in zip(keys, p, strict=True) if k[0] == v], 0) for v in vids]
    )
    yv = np.array(
        [np.mean([yy for k, yy in zip(keys, y, strict=True) if k[0] == v], 0) for v in vids]
    )
    out["emi_pcc"] = np.mean([np.corrcoef(pv[:, j], yv[:, j])[0, 1] for j in range(6)])
    out["score"] = np.mean([out[k] for k in ("va_ccc", "expr_f1", "au_f1", "emi_pcc")])
    return out


def _feed(metric, clips, batch=4):
    for i in range(0, len(clips), batch):
        cs = clips[i : i + batch]

        def stack(field, task=None, cs=cs):
            return torch.from_numpy(np.stack([c[field][task] if task else c[field] for c in cs]))

        tasks = ("va", "expr", "au", "emi")
        metric.update(
            [c["video"] for c in cs],
            stack("frame"),
            stack("pad"),
            {t: stack("pred", t).float() for t in tasks},
            {t: stack("target", t).float() for t in tasks},
            {t: stack("valid", t) for t in tasks},
        )


def test_measures_match_numpy_on_overlapping_padded_clips():
    labels = _labels()
    clips = _clips(labels)
    assert any(c["pad"].any() for c in clips)  # there is padding
    ref = _np_reference(clips)
    metric = FramePredictions(("va", "expr", "au", "emi"))
    _feed(metric, clips)
    got = score_split(metric.compute())
    assert set(got) == set(ref)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-6), k
    # merging is exact: every annotated frame once
    merged = metric.compute()
    n_va = sum(int((labels[v]["va"] != -5).all(1).sum()) for v in VIDEOS)
    assert len(merged["va"][0]) == n_va and len(torch.unique(merged["va"][0])) == n_va


def test_clip_level_scoring_is_not_the_official_one():
    clips = _clips(_labels())
    official = _np_reference(clips)["va_ccc"]
    # scoring every clip frame as it comes (overlaps counted twice, padding included as the
    # last frame repeated) gives another number
    p = np.concatenate([c["pred"]["va"] for c in clips])
    y = np.concatenate([c["target"]["va"] for c in clips])
    keep = np.concatenate([(c["target"]["va"] != 0).any(1) | c["pad"] for c in clips])
    p, y = p[keep], y[keep]
    clip_level = np.mean(
        [
            2
            * np.cov(p[:, j], y[:, j], bias=True)[0, 1]
            / (p[:, j].var() + y[:, j].var() + (p[:, j].mean() - y[:, j].mean()) ** 2)
            for j in range(2)
        ]
    )
    assert abs(clip_level - official) > 1e-3


def test_duplicated_clips_do_not_change_the_score():
    """A distributed sampler pads its last shard with repeated samples: still each frame once."""
    clips = _clips(_labels())
    a, b = FramePredictions(("va", "au")), FramePredictions(("va", "au"))
    _feed(a, clips)
    _feed(b, clips + clips[:3])
    assert score_split(a.compute()) == pytest.approx(score_split(b.compute()), abs=1e-9)


def test_tuned_au_thresholds_never_lose_to_half():
    pred = torch.rand(400, 12, dtype=torch.float64) * 0.6  # shifted low: 0.5 is a poor cut
    target = (pred + 0.1 * torch.rand(400, 12, dtype=torch.float64) > 0.35).double()
    thr = tune_au_thresholds(pred, target)
    assert ((thr > 0.04) & (thr < 0.96)).all()
    from lightning_modules.scoring import measures

    out = measures("au", torch.arange(400), pred, target, thr)
    assert out["au_f1_tuned"] > out["au_f1"] + 0.1


def _np_au_f1(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean over AUs of the binary F1 at probability > 0.5 (an AU never predicted nor present
    scores 0)."""
    scores = []
    for j in range(pred.shape[1]):
        hard, true = pred[:, j] > 0.5, target[:, j] > 0.5
        tp, fp, fn = np.sum(hard & true), np.sum(hard & ~true), np.sum(~hard & true)
        scores.append(0.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def test_au_f1_thresholds_probabilities_at_half_whatever_their_range():
    from lightning_modules.scoring import measures

    g = np.random.default_rng(1)
    pred = g.uniform(0, 1, (300, 12))
    pred[::7, 3] = 0.5  # exactly 0.5 is negative (> 0.5, as before)
    target = (g.uniform(0, 1, (300, 12)) < 0.4).astype(float)
    keys = torch.arange(300)
    got = measures("au", keys, torch.from_numpy(pred), torch.from_numpy(target))["au_f1"]
    assert got == pytest.approx(_np_au_f1(pred, target), abs=1e-6)
    # one value just outside [0, 1] (a calibration, an average of logits...) must not make the
    # metric squash every probability through a sigmoid (that gave 0.518 for 0.838 once)
    pred[5, 0] = 1.02
    got = measures("au", keys, torch.from_numpy(pred), torch.from_numpy(target))
    assert got["au_f1"] == pytest.approx(_np_au_f1(pred, target), abs=1e-6)
    thr = torch.full((12,), 0.5, dtype=torch.float64)
    assert measures("au", keys, torch.from_numpy(pred), torch.from_numpy(target), thr)[
        "au_f1_tuned"
    ] == pytest.approx(got["au_f1"], abs=1e-12)


@pytest.mark.parametrize("task", ["va", "expr", "au", "emi"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_predictions_are_an_error_not_a_score(task, bad):
    from lightning_modules.objectives import OUTPUTS
    from lightning_modules.scoring import FRAME_SPAN, measures, video_hash

    g = torch.Generator().manual_seed(0)
    k = OUTPUTS[task]
    keys = torch.tensor([video_hash(f"v{i % 4}") * FRAME_SPAN + i for i in range(40)])
    pred = torch.rand(40, k, generator=g, dtype=torch.float64)
    target = (torch.rand(40, k, generator=g, dtype=torch.float64) > 0.5).double()
    assert measures(task, keys, pred, target)  # finite: a number
    pred[17, k - 1] = bad
    pred[30, 0] = bad
    with pytest.raises(FloatingPointError, match=rf"^{task}: 2 of 40 frames .* frame 17 of video"):
        measures(task, keys, pred, target)


def test_a_non_finite_prediction_names_its_video_and_frame():
    labels = _labels()
    clips = _clips(labels)
    c = next(c for c in clips if c["valid"]["expr"][2] and c["frame"][0] > 1)
    for other in clips:  # the frame in every clip that holds it
        if other["video"] == c["video"]:
            other["pred"]["expr"][other["frame"] == c["frame"][2], 5] = np.nan
    metric = FramePredictions(("va", "expr", "au", "emi"))
    _feed(metric, clips)
    merged = metric.compute()  # gathered and merged, as at the end of validation
    with pytest.raises(
        FloatingPointError,
        match=rf"^expr: 1 of \d+ frames .* frame {c['frame'][2]} of video {c['video']};",
    ):
        score_split(merged, None, metric.video_names)
