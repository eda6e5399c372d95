import os
import time

import numpy as np
import pytest
from conftest import ANN, frame_jpeg, frame_level, va_text, write_tree

from core.errors import DataError
from datamodules.annotations import AnnotationError
from datamodules.augment import ClipTransform
from datamodules.dataset import ClipDataset
from datamodules.index import build_index, find_annotations_dir, load_index, read_test_list
from datamodules.info import dataset_info
from datamodules.tasks import AU_NAMES, EXPR_NAMES

TR, VAL = "Train_Set", "Validation_Set"


def _row(idx, video, frame):
    return int(idx.start[idx.videos.index(video)] + frame - 1)


def test_missing_frames_keep_labels_in_place(tmp_path):
    va = [
        (round(0.1 * k - 0.5, 2), -round(0.1 * k - 0.5, 2)) for k in range(1, 9)
    ]  # frame k -> 0.1k-0.5
    write_tree(tmp_path, {"v1": [1, 2, 4, 5, 8]}, {("va", TR, "v1"): va_text(va)})
    idx = build_index(tmp_path, TR)
    assert idx.videos == ["v1"] and len(idx) == 8
    assert idx.frame.tolist() == list(range(1, 9))
    assert idx.has_image.tolist() == [True, True, False, True, True, False, False, True]
    for k in range(1, 9):
        np.testing.assert_allclose(idx.labels["va"][_row(idx, "v1", k)], va[k - 1], atol=1e-6)
    assert idx.image_path(_row(idx, "v1", 5)).name == "00005.jpg"


def test_left_right_are_two_videos_and_multitask_join(tmp_path):
    au_rows = [
        "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26",
        "1,0,0,0,0,0,0,0,0,0,0,1",
        "-1,0,0,0,0,0,0,0,0,0,0,0",
    ]
    write_tree(
        tmp_path,
        {"12-24-1920x1080_left": [1, 2, 3], "12-24-1920x1080_right": [1, 2, 3]},
        {
            ("va", TR, "12-24-1920x1080_left"): va_text([(0.1, 0.2), (0.3, 0.4), (-5, -5)]),
            ("va", TR, "12-24-1920x1080_right"): va_text([(-0.1, -0.2), (-0.3, -0.4), (0.5, 0.5)]),
            ("expr", TR, "12-24-1920x1080_left"): ",".join(EXPR_NAMES) + "\n4\n-1\n6\n",
            ("au", TR, "12-24-1920x1080_left"): "\n".join(au_rows) + "\n",
        },
    )
    idx = build_index(tmp_path, TR)
    assert idx.videos == ["12-24-1920x1080_left", "12-24-1920x1080_right"]
    left, right = (_row(idx, v, 1) for v in idx.videos)
    np.testing.assert_allclose(idx.labels["va"][left], [0.1, 0.2])
    np.testing.assert_allclose(idx.labels["va"][right], [-0.1, -0.2])
    # frame 1 of the left video carries all three tasks' labels; frame 3 only EXPR
    assert [idx.valid[t][left] for t in ("va", "expr", "au")] == [True, True, True]
    assert [idx.valid[t][left + 2] for t in ("va", "expr", "au")] == [False, True, False]
    assert idx.labels["expr"][left + 2, 0] == 6
    assert idx.labels["au"][left].tolist() == [1] + [0] * 10 + [1]
    assert len(AU_NAMES) == idx.labels["au"].shape[1]
    # the right video has no EXPR/AU file: nothing is valid there
    assert not idx.valid["expr"][right] and idx.annotated_videos["expr"].tolist() == [True, False]


def test_more_and_fewer_lines_than_frames_are_counted(tmp_path):
    write_tree(
        tmp_path,
        {"long": [1, 2, 3], "short": [1, 2, 3, 4, 5, 6]},
        {
            ("va", TR, "long"): va_text([(0.1, 0.1)] * 5),  # lines 4, 5 have no image
            ("va", TR, "short"): va_text([(0.2, 0.2)] * 4),  # frames 5, 6 have no line
        },
    )
    idx = build_index(tmp_path, TR)
    lines, annotated, blank, beyond_frames, beyond_lines = idx.counts["va"].T
    assert (
        lines.tolist() == [5, 4]
        and beyond_frames.tolist() == [2, 0]
        and beyond_lines.tolist() == [0, 2]
    )
    assert idx.lengths.tolist() == [5, 6]
    assert idx.valid["va"].tolist() == [True] * 5 + [True] * 4 + [False, False]
    assert idx.has_image.tolist() == [True] * 3 + [False] * 2 + [True] * 6


def test_nearest_image_row(tmp_path):
    write_tree(
        tmp_path, {"a": [2, 6], "b": []}, {("va", TR, v): va_text([(0, 0)] * 7) for v in "ab"}
    )
    idx = build_index(tmp_path, TR)
    near = idx.nearest_image_row()
    a = [int(idx.frame[r]) for r in near[:7]]
    assert a == [2, 2, 2, 2, 6, 6, 6]  # frame 4 is as near 2 as 6: the earlier frame wins
    assert near[7:].tolist() == [-1] * 7  # video b has no image at all


def test_annotations_folder_is_found_or_named(tmp_path):
    write_tree(tmp_path, {}, {("va", TR, "v"): va_text([(0, 0)])})
    assert find_annotations_dir(tmp_path).name == ANN
    assert find_annotations_dir(tmp_path, ANN).name == ANN
    with pytest.raises(FileNotFoundError, match="nope"):
        find_annotations_dir(tmp_path, "nope")
    write_tree(tmp_path, {}, {("va", TR, "v"): va_text([(0, 0)])}, ann_dir="8th_ABAW_Annotations")
    with pytest.raises(ValueError, match="several annotations folders"):
        find_annotations_dir(tmp_path)


def test_bad_file_error_reaches_the_index(tmp_path):
    write_tree(tmp_path, {"v": [1]}, {("va", TR, "v"): "valence,arousal\n0.1,0.1\n0.1,7\n"})
    with pytest.raises(AnnotationError, match=r"v\.txt:3:"):
        build_index(tmp_path, TR)


def test_cache_is_used_and_invalidated(tmp_path):
    cache = tmp_path / "cache"
    root = write_tree(
        tmp_path / "d", {"v": [1, 2]}, {("va", TR, "v"): va_text([(0.1, 0.1), (0.2, 0.2)])}
    )
    first = load_index(root, TR, cache_dir=cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    again = load_index(root, TR, cache_dir=cache)
    np.testing.assert_array_equal(again.labels["va"], first.labels["va"])
    assert again.has_image.tolist() == first.has_image.tolist()

    # an annotation file changes: the cache key changes and the new value is read
    ann = root / ANN / "VA_Estimation_Challenge" / TR / "v.txt"
    ann.write_text(va_text([(0.1, 0.1), (0.9, 0.9)]))
    os.utime(ann, ns=(time.time_ns() + 10**9,) * 2)
    changed = load_index(root, TR, cache_dir=cache)
    np.testing.assert_allclose(changed.labels["va"][1], [0.9, 0.9])
    # a frame is deleted: its folder's mtime changes and the index sees the missing image
    (root / "cropped_aligned" / "v" / "00002.jpg").unlink()
    os.utime(root / "cropped_aligned" / "v", ns=(time.time_ns() + 2 * 10**9,) * 2)
    assert load_index(root, TR, cache_dir=cache).has_image.tolist() == [True, False]
    assert len(list(cache.glob("*.npz"))) == 3

    # a damaged cache file is rebuilt, not trusted
    for f in cache.glob("*.npz"):
        f.write_bytes(b"garbage")
    assert load_index(root, TR, cache_dir=cache).has_image.tolist() == [True, False]


def test_test_list_defines_the_frames(tmp_path):
    write_tree(tmp_path, {"t1": [1, 2], "t2": [1]}, {("va", VAL, "x"): va_text([(0, 0)])})
    lst = tmp_path / "list.txt"
    lst.write_text(
        "image_location,valence,arousal\nt1/00001.jpg,0,0\nt1/00002.jpg,0,0\nt1/00003.jpg,0,0\nt2/00001.jpg,0,0\n"
    )
    df = read_test_list(lst)
    assert df["video"].tolist() == ["t1", "t1", "t1", "t2"] and df["frame"].tolist() == [1, 2, 3, 1]
    idx = build_index(tmp_path, "Test_Set", test_list=lst)
    assert idx.videos == ["t1", "t2"] and idx.listed.tolist() == [True, True, True, True]
    assert idx.has_image.tolist() == [True, True, False, True]
    bad = tmp_path / "bad.txt"
    bad.write_text("image_location,valence,arousal\nt1/00001.jpg,0,0\nt1-00002,0,0\n")
    with pytest.raises(AnnotationError, match=r"bad\.txt:3:"):
        read_test_list(bad)


def _write_named(root, video, names):
    """Frames of ``video`` under the given file names (each name's number is its frame)."""
    folder = root / "cropped_aligned" / video
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(frame_jpeg(int(name[:-4]) or 1))


def _levels(idx, video, n):
    """Mean grey level of frames 1..n of ``video`` as the loader decodes them."""
    v = idx.videos.index(video)
    ds = ClipDataset(idx, np.array([[v, 0]]), ("va",), n, ClipTransform(16))
    return ds[0]["frames"].float().mean(dim=(1, 2, 3)).tolist()


def test_cached_index_reads_frames_under_the_root_it_is_opened_with(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_tree(
        tmp_path / "a" / "data" / "x", {"v": [1, 2, 3]}, {("va", TR, "v"): va_text([(0, 0)] * 3)}
    )
    monkeypatch.chdir(tmp_path / "a")
    built = load_index("data/x", TR)  # `affbench data info data/x`, typed in folder a
    assert built.has_image.all()
    monkeypatch.chdir(tmp_path / "b")
    root = tmp_path / "a" / "data" / "x"
    idx = load_index(root, TR)  # training from folder b with the absolute path: the cached index
    assert _levels(idx, "v", 3) == pytest.approx([frame_level(f) for f in (1, 2, 3)], abs=2)
    assert idx.root == root and idx.image_path(1) == root / "cropped_aligned" / "v" / "00002.jpg"


def test_frame_names_of_other_paddings_are_read(tmp_path):
    n = 12
    _write_named(tmp_path, "plain", [f"{k}.jpg" for k in range(1, n + 1)])
    _write_named(tmp_path, "six", [f"{k:06d}.jpg" for k in range(1, n + 1)])
    write_tree(tmp_path, {}, {("va", TR, v): va_text([(0.1, 0.1)] * n) for v in ("plain", "six")})
    info = dataset_info(tmp_path)[TR]["va"]
    assert info["frames"] == 2 * n and info["missing_images"] == 0
    idx = load_index(tmp_path, TR)
    for video in idx.videos:  # the loader opens the names on disk: each frame its own pixels
        assert _levels(idx, video, n) == pytest.approx(
            [frame_level(k) for k in range(1, n + 1)], abs=2
        )
    assert idx.width.tolist() == [0, 6]
    assert idx.image_path(_row(idx, "plain", 10)).name == "10.jpg"
    assert idx.image_path(_row(idx, "six", 10)).name == "000010.jpg"


def test_stray_frame_zero_marks_no_frame_present(tmp_path):
    write_tree(
        tmp_path,
        {"a": [1, 2, 3], "b": [1, 2]},
        {("va", TR, "a"): va_text([(0, 0)] * 4), ("va", TR, "b"): va_text([(0, 0)] * 2)},
    )
    (tmp_path / "cropped_aligned" / "b" / "00000.jpg").write_bytes(frame_jpeg(0))
    idx = build_index(tmp_path, TR)
    # frame 4 of video a has no image; the stray 00000.jpg of b must not claim it
    assert idx.has_image.tolist() == [True, True, True, False, True, True]
    assert dataset_info(tmp_path)[TR]["va"]["missing_images"] == 1


@pytest.mark.parametrize(
    "names, words",
    [
        (["1.jpg", "2.jpg", "00001.jpg"], "two image files for frame 1 (00001.jpg, 1.jpg)"),
        (["01.jpg", "001.jpg"], "two image files for frame 1"),
        (["00001.jpg", "000002.jpg"], "mix zero-paddings"),
        (["00001.jpg", "2.jpg"], "mix zero-paddings (2.jpg and 00001.jpg)"),
    ],
)
def test_mixed_or_duplicate_frame_names_are_errors(tmp_path, names, words):
    _write_named(tmp_path, "v", names)
    write_tree(tmp_path, {}, {("va", TR, "v"): va_text([(0, 0)] * 2)})
    with pytest.raises(DataError) as e:
        dataset_info(tmp_path)
    assert str(tmp_path / "cropped_aligned" / "v") in str(e.value) and words in str(e.value)
