"""Still faces in AffectNet's three layouts: reading, the errors that name the file and line, the
batch contract of clips of one frame, unreadable images, and the synthetic file-list set."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import ConfigError, DataError
from datamodules.abaw import IMAGENET_MEAN, IMAGENET_STD, MIN_FRAMES_CHECKED
from datamodules.affectnet import HEADER, read_stills
from datamodules.annotations import AnnotationError
from datamodules.stills import AffectNetDataModule
from datamodules.synth import _PROTOTYPES
from datamodules.synth_stills import generate_affectnet

GREY, RED = (40, 40, 40), (200, 30, 30)
# AffectNet class -> ABAW class: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust,
# 6 Anger, 7 Contempt (Other), 8 None, 9 Uncertain, 10 No-Face
ABAW_OF = [0, 4, 5, 6, 3, 2, 1, 7, -1, -1, -1]


def jpeg(path: Path, size=(64, 64), colour=GREY, box=None, inside=RED) -> Path:
    """A flat JPEG; with ``box`` (x, y, w, h) that region in another colour (the face)."""
    img = Image.new("RGB", size, colour)
    if box is not None:
        x, y, w, h = box
        img.paste(Image.new("RGB", (w, h), inside), (x, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=95, subsampling=0)  # no chroma bleeding past the box
    return path


def write_lists(root: Path, rows: dict[str, list[tuple]], under_lists: bool = True) -> Path:
    """File-list layout: rows (sub/file, x, y, w, h, expression, valence, arousal) per split;
    each image is written as a grey canvas with its box red."""
    images = root / "Manually_Annotated_Images" if under_lists else root
    folder = root / "Manually_Annotated_file_lists" if under_lists else root
    folder.mkdir(parents=True, exist_ok=True)
    for split, entries in rows.items():
        lines = [HEADER]
        for rel, x, y, w, h, e, v, a in entries:
            if not (images / rel).exists():
                jpeg(images / rel, box=(x, y, w, h) if w > 0 and h > 0 else None)
            lines.append(f'{rel},{x},{y},{w},{h},"1.5;2.5;3.5;4.5",{e},{v},{a}')
        name = "training.csv" if split == "train" else "validation.csv"
        (folder / name).write_text("\n".join(lines) + "\n")
    return root


def eleven(prefix: str = "1") -> list[tuple]:
    """One row of each AffectNet class 0..10; VA -2 on 3 (a labelled expression) and 9, 10."""
    va = [(0.5, 0.25), (0.9, 0.1), (-0.6, -0.3), (0.2, 0.8), (-0.4, 0.9), (-0.7, 0.2)]
    va += [(-0.6, 0.6), (0.1, 0.3), (0.05, -0.1), (-2, -2), (-2, -2)]
    va[3] = (-2, -2)
    return [(f"{prefix}/img{k}.jpg", 8 + k, 4 + k, 24 + k, 20 + k, k, *va[k]) for k in range(11)]


def expect_error(root: Path, split: str, where: str, *reason: str) -> None:
    with pytest.raises(AnnotationError) as e:
        read_stills(root, split)
    msg = str(e.value)
    assert msg.startswith(where + ":") or msg.startswith(where + " "), msg
    for r in reason:
        assert r in msg, msg


# -- (a) file lists --------------------------------------------------------------------------------
@pytest.mark.parametrize("under_lists", [True, False])
def test_file_lists_read_paths_boxes_and_labels(tmp_path, under_lists):
    root = write_lists(tmp_path, {"train": eleven(), "val": eleven("2")[:2]}, under_lists)
    # a blank line and a CRLF line end: numbered as the file has them
    csv = root / ("Manually_Annotated_file_lists" if under_lists else "") / "training.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([*lines[:3], "", lines[3] + "\r", *lines[4:]]) + "\n")

    s = read_stills(root, "train")
    assert s.layout == "file lists" and len(s) == 11
    images = root / "Manually_Annotated_Images" if under_lists else root
    assert s.path.tolist() == [str(images / f"1/img{k}.jpg") for k in range(11)]
    assert s.box.dtype == np.int32
    assert s.box.tolist() == [[8 + k, 4 + k, 24 + k, 20 + k] for k in range(11)]
    assert s.expr.dtype == np.int8 and s.expr.tolist() == ABAW_OF  # Contempt -> Other (7)
    assert s.affectnet.tolist() == list(range(11))
    assert s.va.dtype == np.float32
    no_va = np.isnan(s.va).all(axis=1)
    assert no_va.tolist() == [k in (3, 9, 10) for k in range(11)]
    assert s.va[0].tolist() == [0.5, 0.25] and s.va[8].tolist() == pytest.approx([0.05, -0.1])
    assert s.where(0) == f"{csv}:2" and s.where(2) == f"{csv}:5"  # line 4 is blank
    assert s.labelled().tolist() == [k not in (9, 10) for k in range(11)]
    summary = s.summary()
    assert summary["unlabelled"] == 2 and summary["no_expr"] == 3 and summary["va"] == 8
    assert summary["expr"]["Other"] == 1 and summary["expr"]["Happiness"] == 1
    assert len(read_stills(root, "val")) == 2


BAD_ROWS = [
    # (line 3's text, reason); line 2 is always good
    ('1/b.jpg,1,1,20,20,"1;2",3,0.1,0.2,7', "expected 9 fields, got 10"),
    ('1/b.jpg,1,1,20,20,"1;2",3,0.1', "expected 9 fields, got 8"),
    ('1/b.jpg,1,1,20,20,"1;2",11,0.1,0.2', "expression 11 is not an integer 0..10"),
    ('1/b.jpg,1,1,20,20,"1;2",2.5,0.1,0.2', "expression 2.5 is not an integer 0..10"),
    ('1/b.jpg,1,1,20,20,"1;2",-1,0.1,0.2', "expression -1 is not an integer 0..10"),
    ('1/b.jpg,1,1,20,20,"1;2",3,1.5,0.2', "valence 1.5 outside [-1, 1]"),
    ('1/b.jpg,1,1,20,20,"1;2",3,0.1,-3', "arousal -3 outside [-1, 1]"),
    ('1/b.jpg,1,1,20,20,"1;2",3,0.1,abc', "arousal 'abc' is not a number"),
    ('1/b.jpg,1,1,20,20,"1;2",happy,0.1,0.2', "expression 'happy' is not a number"),
    ('1/b.jpg,x,1,20,20,"1;2",3,0.1,0.2', "face_x 'x' is not a number"),
    ('1/b.jpg,1,1,0,20,"1;2",3,0.1,0.2', "face box of size 0 x 20"),
    ('1/b.jpg,1,1,20,-5,"1;2",3,0.1,0.2', "face box of size 20 x -5"),
    ('1/gone.jpg,1,1,20,20,"1;2",3,0.1,0.2', "no image"),
]


@pytest.mark.parametrize("line,reason", BAD_ROWS)
def test_a_bad_row_names_the_file_and_line(tmp_path, line, reason):
    root = write_lists(tmp_path, {"train": [("1/a.jpg", 1, 1, 20, 20, 0, 0.1, 0.2)]})
    jpeg(root / "Manually_Annotated_Images" / "1" / "b.jpg")
    csv = root / "Manually_Annotated_file_lists" / "training.csv"
    good = '1/c.jpg,1,1,20,20,"1;2",3,0.1,0.2'
    jpeg(root / "Manually_Annotated_Images" / "1" / "c.jpg")
    csv.write_text(csv.read_text() + line + "\n" + good + "\n")
    expect_error(root, "train", f"{csv}:3", reason)


def test_a_missing_image_and_a_wrong_header_are_named(tmp_path):
    root = write_lists(tmp_path, {"train": eleven()})
    images = root / "Manually_Annotated_Images"
    (images / "1" / "img4.jpg").unlink()
    csv = root / "Manually_Annotated_file_lists" / "training.csv"
    expect_error(root, "train", f"{csv}:6", f"no image {images / '1' / 'img4.jpg'}")
    csv.write_text(csv.read_text().replace("face_x", "facex", 1))
    expect_error(root, "train", f"{csv}:1", "header", "expected")


# -- (b) per-image .npy ----------------------------------------------------------------------------
def write_npy(root: Path, split: str, labels: list[tuple]) -> Path:
    """Per-image .npy layout: (exp, val, aro) per image N = 0, 1, ... as given (any np.save-able
    value); a landmarks file beside, to be ignored."""
    base = root / f"{split}_set"
    for n, (e, v, a) in enumerate(labels):
        jpeg(base / "images" / f"{n}.jpg", size=(32, 32))
        for suffix, value in (("exp", e), ("val", v), ("aro", a), ("lnd", np.zeros(136))):
            (base / "annotations").mkdir(parents=True, exist_ok=True)
            np.save(base / "annotations" / f"{n}_{suffix}.npy", np.asarray(value))
    return root


def test_npy_layout_reads_numbers_and_numeric_strings(tmp_path):
    labels = [
        (np.array("3"), np.array("-0.25"), np.array("0.5")),  # numeric strings, 0-d
        (np.array([7]), np.array([0.1]), np.array([0.2])),  # one-element arrays: Contempt
        (np.int64(8), 0.3, -0.4),  # None: VA only
        (np.array(["10"]), np.array(["-2"]), np.array(["-2"])),  # No-Face, no VA: unlabelled
        (6, -2.0, -2.0),  # Anger without VA
    ] + [(1, 0.9, 0.1)] * 7  # 12 images: numeric order 0, 1, 2, ..., 10, 11 (not 0, 1, 10, 11)
    root = write_npy(tmp_path, "train", labels)
    s = read_stills(root, "train")
    assert s.layout == "per-image .npy"
    images = root / "train_set" / "images"
    assert s.path.tolist() == [str(images / f"{n}.jpg") for n in range(12)]
    assert (s.box == -1).all()
    assert s.expr.tolist() == [6, 7, -1, -1, 1] + [4] * 7
    assert s.va[:2].tolist() == [[-0.25, 0.5], pytest.approx([0.1, 0.2])]
    assert np.isnan(s.va[3:5]).all() and s.va[2].tolist() == pytest.approx([0.3, -0.4])
    assert s.labelled().tolist() == [True] * 3 + [False] + [True] * 8
    assert s.where(1) == str(root / "train_set" / "annotations" / "1_exp.npy")


@pytest.mark.parametrize(
    "n,suffix,bad,reason",
    [
        (1, "exp", b"not an npy file", "cannot be read"),
        (1, "val", np.array("abc"), "'abc', not a number"),
        (2, "aro", np.array(1.5), "arousal 1.5 outside [-1, 1]"),
        (0, "exp", np.array(12), "expression 12 is not an integer 0..10"),
        (2, "exp", np.array([1, 2]), "holds 2 values"),
        (1, "aro", None, "missing"),
    ],
)
def test_a_bad_npy_is_named(tmp_path, n, suffix, bad, reason):
    root = write_npy(tmp_path, "val", [(1, 0.1, 0.2)] * 3)
    path = root / "val_set" / "annotations" / f"{n}_{suffix}.npy"
    if bad is None:
        path.unlink()
    elif isinstance(bad, bytes):
        path.write_bytes(bad)
    else:
        np.save(path, bad)
    expect_error(root, "val", str(path), reason)


# -- (c) class folders -----------------------------------------------------------------------------
def test_class_folders_read_names_in_any_case_and_indices(tmp_path):
    for folder, n in (("Neutral", 2), ("HAPPY", 1), ("sadness", 1), ("7", 2), ("anger", 1)):
        for k in range(n):
            jpeg(tmp_path / "train" / folder / f"{k}.jpg", size=(32, 32))
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "anger" / "x.png")
    (tmp_path / "train" / "anger" / "notes.txt").write_text("not an image")
    jpeg(tmp_path / "validation" / "fear" / "0.jpg", size=(32, 32))
    s = read_stills(tmp_path, "train")
    assert s.layout == "class folders" and len(s) == 8
    by_path = dict(zip(s.path.tolist(), s.expr.tolist(), strict=True))
    assert by_path[str(tmp_path / "train" / "Neutral" / "1.jpg")] == 0
    assert by_path[str(tmp_path / "train" / "HAPPY" / "0.jpg")] == 4
    assert by_path[str(tmp_path / "train" / "sadness" / "0.jpg")] == 5
    assert by_path[str(tmp_path / "train" / "7" / "1.jpg")] == 7  # Contempt -> Other
    assert by_path[str(tmp_path / "train" / "anger" / "x.png")] == 1
    assert np.isnan(s.va).all() and (s.box == -1).all()
    assert s.where(0) == str(tmp_path / "train" / "7")
    v = read_stills(tmp_path, "val")  # validation/ is the val split
    assert v.expr.tolist() == [3] and v.path.tolist() == [str(tmp_path / "validation/fear/0.jpg")]

    jpeg(tmp_path / "train" / "joy" / "0.jpg")
    expect_error(tmp_path, "train", str(tmp_path / "train" / "joy"), "unknown class folder 'joy'")


def test_no_layout_is_an_error_listing_the_three(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        read_stills(tmp_path, "val")
    msg = str(e.value)
    assert str(tmp_path) in msg
    for part in ("(a) file lists", "validation.csv", "(b) per-image .npy", "val_set/images/N.jpg",
                 "N_exp.npy", "(c) class folders", "<root>/val/<class>"):  # fmt: skip
        assert part in msg, msg
    assert "training.csv" not in msg


# -- the datamodule --------------------------------------------------------------------------------
def _dm(root, **kw) -> AffectNetDataModule:
    kw = {"img_size": 16, "batch_size": 4, "num_workers": 0, "augment": False, **kw}
    return AffectNetDataModule(root=str(root), **kw)


def _batches(dm, loader):
    return [dm.on_after_batch_transfer(dm.on_before_batch_transfer(b, 0), 0) for b in loader]


def test_batches_follow_the_clip_contract_with_one_frame(tmp_path):
    root = write_lists(tmp_path, {"train": eleven(), "val": eleven("2")})
    dm = _dm(root)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 9  # Uncertain and No-Face without VA: left out
    raw = next(iter(dm.val_dataloader()))
    assert raw["frames"].dtype == torch.uint8 and raw["frames"].shape == (4, 1, 3, 16, 16)
    batches = _batches(dm, dm.val_dataloader())
    assert [len(b["video"]) for b in batches] == [4, 4, 1]
    keys = []
    for b in batches:
        n = len(b["video"])
        assert b["frames"].dtype == torch.float32 and b["frames"].shape == (n, 1, 3, 16, 16)
        # the crop: the red face box fills the frame, normalised with ImageNet's mean/std
        want = [(c / 255 - m) / s for c, m, s in zip(RED, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
        got = b["frames"].mean(dim=(0, 1, 3, 4))
        assert got.tolist() == pytest.approx(want, abs=0.08)
        assert b["targets"]["va"].shape == (n, 1, 2) and b["targets"]["expr"].shape == (n, 1, 8)
        assert b["frame"].dtype == torch.int64 and b["frame"].shape == (n, 1)
        for key in ("pad", "filled", "corrupt"):
            assert b[key].dtype == torch.bool and b[key].shape == (n, 1) and not b[key].any()
        assert b["bad_files"] == []
        for v, f in zip(b["video"], b["frame"][:, 0].tolist(), strict=True):
            keys.append((v, f))
        for i, f in enumerate(b["frame"][:, 0].tolist()):
            k = f - 1  # AffectNet class k is on row k here
            assert b["valid"]["expr"][i].tolist() == [ABAW_OF[k] >= 0]
            assert b["valid"]["va"][i].tolist() == [k not in (3, 9, 10)]
            onehot = b["targets"]["expr"][i, 0]
            if ABAW_OF[k] >= 0:
                assert onehot.tolist() == [float(c == ABAW_OF[k]) for c in range(8)]
            else:
                assert onehot.sum() == 0
            if k not in (3, 9, 10):
                assert b["targets"]["va"][i, 0].tolist() == pytest.approx(eleven()[k][6:])
    assert sorted(f for _, f in keys) == [k + 1 for k in range(11) if k not in (9, 10)]
    assert {v for v, _ in keys} == {"val-0"} and len(set(keys)) == len(keys)
    train = _batches(dm, dm.train_dataloader())
    assert {v for b in train for v in b["video"]} == {"train-0"}


def test_tasks_and_seq_len_are_checked(tmp_path):
    root = write_lists(tmp_path, {"train": eleven(), "val": eleven("2")})
    with pytest.raises(ConfigError, match=r"va and expr labels only, not \['au'\]"):
        _dm(root, tasks="va,au")
    with pytest.raises(ConfigError, match="stills are clips of one frame"):
        _dm(root, seq_len=8)
    dm = _dm(root, tasks="va")  # rows without VA are left out
    dm.setup("validate")
    assert len(dm.datasets["val"]) == 8
    b = next(iter(dm.val_dataloader()))
    assert set(b["targets"]) == {"va"} and b["valid"]["va"].all()


def test_a_corrupt_jpeg_is_named_once_and_never_trained_on(tmp_path, caplog):
    rows = eleven()
    rows[5] = ("1/box_off.jpg", 80, 80, 10, 10, 1, 0.3, 0.3)  # a box outside the 64x64 image
    root = write_lists(tmp_path, {"train": rows, "val": eleven("2")})
    bad = root / "Manually_Annotated_Images" / "1" / "img2.jpg"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    dm = _dm(root, augment=True)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="datamodules.stills"):
        batches = _batches(dm, dm.train_dataloader()) + _batches(dm, dm.train_dataloader())
    off = f"{root / 'Manually_Annotated_Images' / '1' / 'box_off.jpg'} (face box outside the image)"
    assert dict(dm.bad_files) == {str(bad): 2, off: 2}
    warned = [r.getMessage() for r in caplog.records if "unreadable image" in r.getMessage()]
    assert len(warned) == 2 and any(str(bad) in w for w in warned)
    assert dm.frames_checked == 18 and dm.frames_unreadable == 4
    for b in batches:
        for i, f in enumerate(b["frame"][:, 0].tolist()):
            corrupt = f - 1 in (2, 5)
            assert b["corrupt"][i].tolist() == [corrupt]
            if corrupt:  # no task's label: never trained on or scored
                assert not any(b["valid"][t][i].any() for t in ("va", "expr"))
                assert b["frames"][i].abs().max() < 0.05  # the mean colour, normalised to 0
            else:
                assert b["valid"]["expr"][i].tolist() == [ABAW_OF[f - 1] >= 0]


def test_mostly_unreadable_images_stop_the_run_naming_the_root(tmp_path):
    root = write_lists(tmp_path, {"train": eleven(), "val": eleven("2")})
    for jpg in (root / "Manually_Annotated_Images" / "1").glob("*.jpg"):
        jpg.write_bytes(b"")
    dm = _dm(root, batch_size=3)
    dm.setup("fit")
    with pytest.raises(DataError) as e:
        for _ in range(20):
            _batches(dm, dm.train_dataloader())
    assert f"data root {root.resolve()}" in str(e.value) and "could not be read" in str(e.value)
    assert MIN_FRAMES_CHECKED <= dm.frames_checked < MIN_FRAMES_CHECKED + 3


# -- the synthetic set -----------------------------------------------------------------------------
def test_synthetic_stills_read_back_and_are_deterministic(tmp_path):
    kw = dict(images=120, val_images=10, img_size=32)
    done = generate_affectnet(tmp_path / "a", seed=3, **kw)
    train, val = read_stills(tmp_path / "a", "train"), read_stills(tmp_path / "a", "val")
    assert (len(train), len(val)) == (120, 10) and train.layout == "file lists"
    assert done["splits"]["train"] == train.summary() and done["images"] == 130
    s = done["splits"]["train"]
    assert s["unlabelled"] > 0 and s["no_expr"] > s["unlabelled"] and s["va"] < 120
    classes = set(train.affectnet.tolist())
    assert set(range(8)) <= classes <= set(range(11)) and classes & {8, 9, 10}
    # every face box lies inside a larger canvas
    for path, (x, y, w, h) in zip(train.path[:20], train.box[:20], strict=True):
        width, height = Image.open(path).size
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
        assert w * h < width * height
    # valence/arousal agree with the class as the video set's rule says: nearest prototype
    for e, va in zip(train.expr, train.va, strict=True):
        if 0 <= e < 7 and not np.isnan(va).any():
            assert np.argmin(((_PROTOTYPES - va) ** 2).sum(1)) == e
    lists = Path("Manually_Annotated_file_lists") / "training.csv"
    generate_affectnet(tmp_path / "b", seed=3, **kw)
    assert (tmp_path / "a" / lists).read_bytes() == (tmp_path / "b" / lists).read_bytes()
    assert (
        Path(train.path[7]).read_bytes()
        == Path(str(train.path[7]).replace(str(tmp_path / "a"), str(tmp_path / "b"))).read_bytes()
    )
    generate_affectnet(tmp_path / "b", seed=4, **kw)  # over an earlier synthetic set: fine
    assert (tmp_path / "a" / lists).read_bytes() != (tmp_path / "b" / lists).read_bytes()
    assert len(list((tmp_path / "b" / "Manually_Annotated_Images").rglob("*.jpg"))) == 130
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mine.txt").write_text("not synthetic")
    with pytest.raises(FileExistsError):
        generate_affectnet(tmp_path / "c", **kw)


def test_cli_writes_synthetic_stills(tmp_path, capsys):
    from affbench.cli import main

    out = tmp_path / "stills"
    args = ["--layout", "affectnet", "--out", str(out), "--images", "12", "--val-images", "4"]
    main(["data", "synth", *args])
    text = capsys.readouterr().out
    assert f"wrote 16 still images (AffectNet file lists) to {out}" in text
    assert "train: 12 images" in text and "val: 4 images" in text
    assert len(read_stills(out, "val")) == 4


def test_png_stills_in_class_folders_decode(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), RED).save(buf, "PNG")
    (tmp_path / "val" / "contempt").mkdir(parents=True)
    (tmp_path / "val" / "contempt" / "a.png").write_bytes(buf.getvalue())
    jpeg(tmp_path / "train" / "neutral" / "a.jpg", size=(20, 12))
    dm = _dm(tmp_path, tasks="expr")
    dm.setup("validate")
    (b,) = _batches(dm, dm.val_dataloader())
    assert b["targets"]["expr"][0, 0].argmax() == 7 and not b["corrupt"].any()
    want = (RED[0] / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert b["frames"][0, 0, 0].mean().item() == pytest.approx(want, abs=0.02)
