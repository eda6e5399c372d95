import numpy as np
import pytest
from conftest import frame_level, va_text, write_tree

from datamodules.augment import ClipTransform
from datamodules.clips import eval_windows, scored_mask, train_windows, window_rows
from datamodules.dataset import ClipDataset, collate_clips
from datamodules.index import build_index

TR = "Train_Set"


@pytest.fixture
def index(tmp_path):
    # video a: 11 frames, 4 and 9 missing, 6-7 unannotated; video b: 3 frames; c: unannotated
    va_a = [(0.01 * k, -0.01 * k) for k in range(1, 12)]
    va_a[5] = va_a[6] = (-5, -5)
    write_tree(
        tmp_path,
        {"a": [1, 2, 3, 5, 6, 7, 8, 10, 11], "b": [1, 2, 3], "c": [1, 2, 3, 4]},
        {
            ("va", TR, "a"): va_text(va_a),
            ("va", TR, "b"): va_text([(0.5, 0.5)] * 3),
            ("va", TR, "c"): va_text([(-5, -5)] * 4),
        },
    )
    return build_index(tmp_path, TR)


@pytest.mark.parametrize("seq_len, stride", [(4, 4), (4, 2), (4, 1), (5, 3), (16, 16), (1, 1)])
def test_eval_windows_cover_every_annotated_frame(index, seq_len, stride):
    scored = scored_mask(index, ("va",))
    windows = eval_windows(index, seq_len, stride, scored)
    seen = np.zeros(len(index), int)
    for v, o in windows:
        rows, pad = window_rows(index, int(v), int(o), seq_len)
        assert pad.tolist() == sorted(pad.tolist())  # padding only at the end
        assert (~pad).any()
        np.add.at(seen, rows[~pad], 1)
    assert (seen[scored] >= 1).all()
    if stride == seq_len:  # no overlap: each frame exactly once, unpadded
        assert (seen[scored] == 1).all()
    # the unannotated video c yields no evaluation window
    assert index.videos.index("c") not in windows[:, 0].tolist()


def test_eval_windows_need_stride_le_seq_len(index):
    with pytest.raises(ValueError, match="stride"):
        eval_windows(index, 4, 5)


def test_train_windows_hold_labels(index):
    w = train_windows(index, ("va",), 4, 2)
    assert len(w) > 0
    scored = scored_mask(index, ("va",))
    for v, o in w:
        rows, pad = window_rows(index, int(v), int(o), 4)
        assert scored[rows[~pad]].any()
    # the 3-frame video b still gives one (padded) window
    b = index.videos.index("b")
    assert w[w[:, 0] == b].tolist() == [[b, 0]]


def test_samples_mark_padding_and_filled_frames(index):
    transform = ClipTransform(16)
    windows = eval_windows(index, 4, 4, scored_mask(index, ("va",)))
    ds = ClipDataset(index, windows, ("va",), 4, transform)
    a = index.videos.index("a")
    samples = [ds[i] for i in range(len(ds)) if windows[i, 0] == a]
    assert [s["frame"].tolist() for s in samples] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    last = samples[-1]
    assert last["pad"].tolist() == [False, False, False, True]
    assert last["valid"]["va"].tolist() == [True, True, True, False]
    # frame 4 and 9 have no image: filled from their nearest frame (3 and 8: ties go earlier)
    assert samples[0]["filled"].tolist() == [False, False, False, True]
    assert last["filled"].tolist() == [True, False, False, False]
    assert not any(s["corrupt"].any() for s in samples)
    levels = samples[0]["frames"].float().mean(dim=(1, 2, 3)).tolist()
    assert levels == pytest.approx([frame_level(f) for f in (1, 2, 3, 3)], abs=2)
    # labels stay with their frames whatever images are missing
    np.testing.assert_allclose(samples[0]["targets"]["va"][3], [0.04, -0.04], atol=1e-6)
    assert samples[1]["valid"]["va"].tolist() == [True, False, False, True]
    batch = collate_clips(samples)
    assert batch["frames"].shape == (3, 4, 3, 16, 16) and batch["video"] == ["a"] * 3
    assert (
        batch["targets"]["va"].shape == (3, 4, 2)
        and batch["valid"]["va"].dtype == __import__("torch").bool
    )
