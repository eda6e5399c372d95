import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affbench.cli import main
from datamodules.index import ANNOTATIONS_DIR
from datamodules.synth import generate, latent_trajectories
from datamodules.synth_faces import AU_INDEX, Identity, render_face
from datamodules.tasks import get_task


def _tree_digest(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        generate(tmp_path / name, videos=5, frames=30, seed=seed)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_parallel_generation_writes_the_same_bytes(tmp_path):
    generate(tmp_path / "one", videos=4, frames=20, seed=5, workers=1)
    generate(tmp_path / "two", videos=4, frames=20, seed=5, workers=2)
    assert _tree_digest(tmp_path / "one") == _tree_digest(tmp_path / "two")


def test_layout_and_messiness(synth_root):
    frames_dir = synth_root / "cropped_aligned"
    videos = sorted(p.name for p in frames_dir.iterdir())
    assert any(v.endswith("_left") for v in videos) and any(v.endswith("_right") for v in videos)
    jpgs = sorted(frames_dir.glob("*/*.jpg"))
    assert all(len(p.stem) == 5 and p.stem.isdigit() for p in jpgs)
    img = Image.open(jpgs[0])
    assert img.size == (112, 112) and img.mode == "RGB"
    splits = {}
    for task in ("va", "expr", "au"):
        for split in ("Train_Set", "Validation_Set", "Test_Set"):
            folder = synth_root / ANNOTATIONS_DIR / get_task(task).challenge / split
            splits.setdefault(split, set()).update(p.stem for p in folder.glob("*.txt"))
    assert splits["Train_Set"] and splits["Validation_Set"] and splits["Test_Set"]
    assert not splits["Train_Set"] & splits["Validation_Set"]
    assert not (splits["Train_Set"] | splits["Validation_Set"]) & splits["Test_Set"]
    texts = [p.read_bytes() for p in (synth_root / ANNOTATIONS_DIR).rglob("*.txt")]
    assert any(b"\r\n" in t for t in texts)
    assert any(b"-5,-5" in t or b"-5, -5" in t for t in texts)
    # frames are missing somewhere (dropped faces) while their annotation lines exist
    n_lines = {
        p.stem: len(p.read_text().strip().splitlines()) - 1
        for p in (synth_root / ANNOTATIONS_DIR / "VA_Estimation_Challenge").rglob("*.txt")
    }
    n_images = {v: len(list((frames_dir / v).glob("*.jpg"))) for v in n_lines}
    assert any(n_images[v] < n_lines[v] for v in n_lines)
    assert (
        (synth_root / "test_set_examples" / "VA_test_set_example.txt")
        .read_text()
        .startswith("image_location,valence,arousal\n")
    )


def _count_by_hand(root: Path, task: str, split: str) -> dict:
    """The counts `data info` must report, computed from the raw files without the reader."""
    spec = get_task(task)
    folder = root / ANNOTATIONS_DIR / spec.challenge / split
    out = {"videos": 0, "frames": 0, "annotated_frames": 0, "missing_images": 0}
    for f in folder.glob("*.txt"):
        lines = f.read_bytes().replace(b"\r", b"").decode().split("\n")[1:]
        while lines and not lines[-1].strip():
            lines.pop()
        images = {int(p.stem) for p in (root / "cropped_aligned" / f.stem).glob("*.jpg")}
        n = max(len(lines), max(images, default=0))
        out["videos"] += 1
        out["frames"] += n
        out["missing_images"] += n - len(images)
        for ln in lines:
            vals = [float(x) for x in ln.split(",")]
            out["annotated_frames"] += (
                not any(x in (-5.0, -1.0) for x in vals) if task != "va" else -5.0 not in vals
            )
    return out


def test_the_reader_reads_what_the_generator_writes(synth_root, capsys):
    main(["data", "info", str(synth_root), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"Train_Set", "Validation_Set", "Test_Set"}
    for split in info:
        for task in ("va", "expr", "au"):
            got = info[split][task]
            assert {
                k: got[k] for k in ("videos", "frames", "annotated_frames", "missing_images")
            } == _count_by_hand(synth_root, task, split)
            assert got["annotated_frames"] + got["unannotated_frames"] == got["frames"]
    expr = info["Train_Set"]["expr"]["labels"]
    assert sum(expr.values()) == info["Train_Set"]["expr"]["annotated_frames"]


@pytest.mark.parametrize("au", list(AU_INDEX))
def test_each_au_changes_the_face_where_it_should(au):
    ident = Identity.random(np.random.default_rng(0))
    base = np.zeros(12)
    on = base.copy()
    on[AU_INDEX[au]] = 1
    a = np.asarray(render_face(ident, 0.0, 0.0, base), np.float32)
    b = np.asarray(render_face(ident, 0.0, 0.0, on), np.float32)
    diff = np.abs(a - b).sum(-1)
    assert diff.sum() > 200  # visibly different
    centre_row = np.average(np.arange(112), weights=diff.sum(1))
    upper = {"AU1", "AU2", "AU4", "AU6", "AU7"}  # brows, eyes and cheeks: the upper face
    assert (centre_row < 56) == (au in upper), centre_row


def test_latents_drive_labels_consistently():
    lats = [latent_trajectories(np.random.default_rng(s), 2000) for s in range(5)]
    v, a, expr = (
        np.concatenate([getattr(x, k) for x in lats]) for k in ("valence", "arousal", "expr")
    )
    assert np.abs(v).max() <= 1 and np.abs(a).max() <= 1
    assert np.bincount(expr, minlength=8).min() > 100  # every class occurs
    # the expression follows the VA state (nearest prototype, with hysteresis)
    assert v[expr == 4].mean() > 0.5  # happiness: positive
    assert v[expr == 1].mean() < -0.5 and a[expr == 1].mean() > 0.4  # anger: negative, aroused
    assert a[expr == 5].mean() < -0.4 and v[expr == 5].mean() < 0  # sadness: calm, negative
    lat = lats[0]
    # AU12 (lip corner puller) goes with positive valence
    assert np.corrcoef(lat.au[:, AU_INDEX["AU12"]], lat.valence)[0, 1] > 0.3
    # smooth in time: frame-to-frame change is small next to the spread
    assert np.abs(np.diff(lat.valence)).mean() < 0.1 * lat.valence.std()
