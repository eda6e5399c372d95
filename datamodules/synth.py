"""A synthetic dataset in exactly the ABAW / Aff-Wild2 layout: the suite's embedded default.

What drives what (also in README, "The synthetic dataset"):

* Per video, valence v(t) and arousal a(t) are smooth random trajectories in [-1, 1] (filtered
  noise, time scales of 15 to 35 frames, centred per video). They are the VA labels.
* The expression class follows the (v, a) state: the class whose prototype in the VA plane is
  nearest wins, but only once it beats the current class by a margin (hysteresis), so the
  class at a frame depends on the past. 'Other' is switched on by a separate slow latent and
  shows as a lopsided mouth.
* The twelve AU intensities follow the expression's AU profile plus valence/arousal couplings and
  their own slow noise, with smooth onsets; an AU is labelled 1 where its intensity exceeds 0.5.
  Each AU moves its own part of the rendered face (see ``synth_faces.py``).
* Nuisances make single frames ambiguous while the clip is not: head pose and scale drift (faster
  with arousal), lighting changes, blur episodes, occluding bars and blocks, JPEG quality, and
  dropped frames (missing files, as where no face was detected).
* The messiness of the real set: missing frame files, unannotated runs (-5 / -1), ``_left`` /
  ``_right`` pairs, annotation files longer or shorter than the video, CRLF line ends, trailing
  blank lines and spaces after commas, disjoint Train/Validation/Test videos, and the organisers'
  test lists (``test_set_examples/``) with the test labels under ``Test_Set``.

Everything is drawn from ``numpy.random.default_rng([seed, video])``: the same seed writes the
same bytes.
"""

from __future__ import annotations

import io
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from datamodules.index import ANNOTATIONS_DIR, FRAMES_DIR, TEST_LISTS_DIR, test_list_path
from datamodules.synth_faces import AU_INDEX, Identity, render_face
from datamodules.tasks import AU_NAMES, EXPR_NAMES, SPLITS, TEST_SPLIT, get_task

# Prototype (valence, arousal) per expression (Other has none: a latent of its own switches it on)
_PROTOTYPES = np.array(
    [[0.0, 0.0], [-0.6, 0.65], [-0.7, 0.2], [-0.45, 0.9], [0.7, 0.35], [-0.6, -0.55], [0.25, 0.9]]
)
# AU profile (intensity) per expression, in AU_NAMES order
_PROFILE = np.zeros((8, 12))
for _c, _aus in {
    1: {"AU4": 0.9, "AU7": 0.8, "AU23": 0.8, "AU24": 0.7},
    2: {"AU4": 0.6, "AU10": 0.9, "AU15": 0.6},
    3: {"AU1": 0.9, "AU2": 0.8, "AU4": 0.6, "AU25": 0.8},
    4: {"AU6": 0.9, "AU12": 0.95, "AU25": 0.6},
    5: {"AU1": 0.8, "AU4": 0.7, "AU15": 0.9},
    6: {"AU1": 0.95, "AU2": 0.95, "AU25": 0.8, "AU26": 0.9},
    7: {"AU10": 0.5, "AU12": 0.4},
}.items():
    for _n, _w in _aus.items():
        _PROFILE[_c, AU_INDEX[_n]] = _w


def smooth_noise(rng: np.random.Generator, n: int, scale: float, dims: int = 1) -> np.ndarray:
    """(n, dims) Gaussian-filtered white noise, unit std, time scale ``scale`` frames."""
    pad = int(3 * scale) + 1
    x = rng.standard_normal((n + 2 * pad, dims))
    k = np.exp(-0.5 * (np.arange(-pad, pad + 1) / scale) ** 2)
    y = np.stack([np.convolve(x[:, j], k / k.sum(), mode="same") for j in range(dims)], 1)[pad:-pad]
    y = y - y.mean(axis=0, keepdims=True)  # no per-video offset: the variation is within videos
    return y / (y.std(axis=0, keepdims=True) + 1e-8)


@dataclass
class VideoLatents:
    valence: np.ndarray  # (n,)
    arousal: np.ndarray  # (n,)
    expr: np.ndarray  # (n,) int
    au: np.ndarray  # (n, 12) intensities in [0, 1]
    pose: np.ndarray  # (n, 4) dx, dy, angle, scale

    @property
    def au_labels(self) -> np.ndarray:
        return (self.au > 0.5).astype(np.int8)


def latent_trajectories(rng: np.random.Generator, n: int) -> VideoLatents:
    fps_scale = rng.uniform(15, 35)  # frames: many independent VA states per video
    v = np.tanh(0.9 * smooth_noise(rng, n, fps_scale)[:, 0] + rng.uniform(-0.15, 0.15))
    a = np.tanh(0.9 * smooth_noise(rng, n, fps_scale * 0.8)[:, 0] + rng.uniform(-0.1, 0.2))
    other = smooth_noise(rng, n, 30)[:, 0] > 1.5

    expr = np.zeros(n, np.int64)
    cur = int(np.argmin(((_PROTOTYPES - [v[0], a[0]]) ** 2).sum(1)))
    for t in range(n):  # hysteresis: switch only when another class is clearly nearer
        dist = np.sqrt(((_PROTOTYPES - [v[t], a[t]]) ** 2).sum(1))
        best = int(np.argmin(dist))
        if dist[cur] - dist[best] > 0.12:
            cur = best
        expr[t] = 7 if other[t] else cur

    target = _PROFILE[expr] + 0.22 * smooth_noise(rng, n, 25, 12)
    target[:, AU_INDEX["AU12"]] += 0.35 * np.maximum(v, 0)
    target[:, AU_INDEX["AU15"]] += 0.3 * np.maximum(-v, 0)
    target[:, AU_INDEX["AU25"]] += 0.25 * np.maximum(a, 0)
    target = np.clip(target, 0, 1)
    au = np.empty_like(target)  # smooth onsets and offsets: an exponential follower
    au[0] = target[0]
    for t in range(1, n):
        au[t] = au[t - 1] + 0.25 * (target[t] - au[t - 1])

    # head motion runs on a clock that ticks faster with arousal
    clock = np.cumsum(0.6 + 0.8 * (a + 1) / 2)
    fine = smooth_noise(rng, int(clock[-1]) + 2, 30, 4)
    pose_raw = np.stack([np.interp(clock, np.arange(len(fine)), fine[:, j]) for j in range(4)], 1)
    pose = pose_raw * [0.09, 0.07, 0.14, 0.06] + [0, 0, 0, 1]
    return VideoLatents(v, a, expr, au, pose)


def _episodes(rng: np.random.Generator, n: int, rate: float, lo: int, hi: int) -> np.ndarray:
    """(n,) bool: random runs of lo..hi frames, starting with probability ``rate`` per frame."""
    mask = np.zeros(n, bool)
    for s in np.flatnonzero(rng.random(n) < rate):
        mask[s : s + int(rng.integers(lo, hi + 1))] = True
    return mask


def render_video(rng: np.random.Generator, lat: VideoLatents) -> tuple[list[bytes | None], dict]:
    """JPEG bytes per frame (None where the frame is dropped) and the nuisance masks."""
    n = len(lat.valence)
    ident = Identity.random(rng)
    light = 1 + 0.15 * smooth_noise(rng, n, 50)[:, 0]
    gradient = 0.12 * smooth_noise(rng, n, 80)[:, 0]
    blur = _episodes(rng, n, 0.01, 3, 15)
    occlude = _episodes(rng, n, 0.008, 8, 40)
    dropped = _episodes(rng, n, 0.006, 1, 12)
    quality = np.clip(70 + 20 * smooth_noise(rng, n, 40)[:, 0], 30, 95).astype(int)
    occ_box = rng.uniform(0, 1, (n, 4))
    occ_col = tuple(int(c) for c in rng.uniform(0, 255, 3))
    ramp = np.linspace(-1, 1, 112)[None, :, None]
    frames: list[bytes | None] = []
    for t in range(n):
        if dropped[t]:
            frames.append(None)
            continue
        img = render_face(
            ident,
            float(lat.valence[t]),
            float(lat.arousal[t]),
            lat.au[t],
            tuple(lat.pose[t]),
            smirk=float(lat.expr[t] == 7),
        )
        if occlude[t]:  # a bar or a block, fixed during its episode
            s = np.flatnonzero(occlude[: t + 1] & ~np.r_[False, occlude[:t]])[-1]
            x0, y0, w, h = occ_box[s] * [90, 90, 50, 50] + [0, 0, 15, 15]
            if occ_box[s, 0] > 0.5:
                w = 112
            ImageDraw.Draw(img).rectangle([x0, y0, x0 + w, y0 + h], fill=occ_col)
        if blur[t]:
            img = img.filter(ImageFilter.GaussianBlur(1.6))
        arr = np.asarray(img, np.float32) * (light[t] + gradient[t] * ramp)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(quality[t]))
        frames.append(buf.getvalue())
    return frames, {"dropped": dropped, "blur": blur, "occluded": occlude}


def _unannotated(rng: np.random.Generator, n: int) -> np.ndarray:
    mask = np.zeros(n, bool)
    for _ in range(int(rng.integers(0, 3))):
        s = int(rng.integers(0, n))
        mask[s : s + int(rng.integers(5, 30))] = True
    return mask


def _annotation_text(task: str, lat: VideoLatents, missing: np.ndarray, rng, style: str) -> str:
    spec = get_task(task)
    sep = ", " if style == "spaces" else ","
    if task == "va":
        rows = [f"{x:.3f}{sep}{y:.3f}" for x, y in zip(lat.valence, lat.arousal, strict=True)]
        rows = [("-5" + sep + "-5") if m else r for r, m in zip(rows, missing, strict=True)]
    elif task == "expr":
        rows = ["-1" if m else str(int(c)) for c, m in zip(lat.expr, missing, strict=True)]
    else:
        lab = lat.au_labels
        rows = [
            sep.join(["-1"] * 12) if m else sep.join(map(str, r))
            for r, m in zip(lab, missing, strict=True)
        ]
    eol = "\r\n" if style == "crlf" else "\n"
    text = eol.join([spec.header, *rows]) + eol
    if style == "blank":
        text += eol * int(rng.integers(1, 4))
    return text


def _write_video(args: tuple) -> dict:
    root, name, split, seed, vid, n_frames, tasks = args
    rng = np.random.default_rng([seed, vid])
    lat = latent_trajectories(rng, n_frames)
    frames, _ = render_video(rng, lat)
    # Messiness: sometimes the face is lost for the last frames (annotation longer than the
    # frames), sometimes the annotation stops early (frames past its end are unannotated).
    tail = rng.random()
    if tail < 0.15:
        k = int(rng.integers(3, 20))
        frames[-k:] = [None] * k
    n_lines = n_frames - int(rng.integers(3, 20)) if 0.15 <= tail < 0.3 else n_frames

    folder = Path(root) / FRAMES_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    for t, data in enumerate(frames, start=1):
        if data is not None:
            (folder / f"{t:05d}.jpg").write_bytes(data)
    for task in tasks:
        style = rng.choice(["plain"] * 7 + ["crlf", "blank", "spaces"])
        text = _annotation_text(task, _cut(lat, n_lines), _unannotated(rng, n_lines), rng, style)
        out = Path(root) / ANNOTATIONS_DIR / get_task(task).challenge / split / f"{name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(text.encode())
    return {
        "video": name,
        "split": split,
        "frames": n_frames,
        "images": sum(f is not None for f in frames),
    }


def _cut(lat: VideoLatents, n: int) -> VideoLatents:
    return VideoLatents(lat.valence[:n], lat.arousal[:n], lat.expr[:n], lat.au[:n], lat.pose[:n])


def video_plan(videos: int, frames: int, seed: int) -> list[tuple[str, str, int, tuple[str, ...]]]:
    """(name, split, n_frames, tasks) per video: names in Aff-Wild2 style, one ``_left``/``_right``
    pair per split where there is room, each video annotated for one to three tasks."""
    rng = np.random.default_rng([seed, 10**6])
    n_val = max(1, round(videos * 0.2))
    n_test = max(1, round(videos * 0.12))
    n_train = max(1, videos - n_val - n_test)
    plan = []
    for split, count in ((SPLITS[0], n_train), (SPLITS[1], n_val), (TEST_SPLIT, n_test)):
        i = 0
        while i < count:
            res = rng.choice(["640x480", "1280x720", "1920x1080", "480x360"])
            base = f"{len(plan) + 100}-{rng.choice([25, 30])}-{res}"
            names = (
                [f"{base}_left", f"{base}_right"]
                if count - i >= 2 and i == 0 and count >= 4
                else [base]
            )
            for name in names:
                n = int(frames * rng.uniform(0.7, 1.3))
                if split == TEST_SPLIT:
                    tasks = ("va", "expr", "au")
                else:
                    tasks = tuple(
                        t for t, p in (("va", 0.9), ("expr", 0.85), ("au", 0.8)) if rng.random() < p
                    )
                    tasks = tasks or ("va",)
                plan.append((name, split, n, tasks))
                i += 1
    return plan


def write_test_lists(root: Path) -> None:
    """The organisers' example files: every frame of every test video, dummy values."""
    ann = root / ANNOTATIONS_DIR
    for task, dummy in (("va", "0,0"), ("expr", "0"), ("au", ",".join(["0"] * 12))):
        spec = get_task(task)
        rows = []
        for f in sorted((ann / spec.challenge / TEST_SPLIT).glob("*.txt")):
            n = max(
                len(f.read_text().strip().splitlines()) - 1,
                max((int(p.stem) for p in (root / FRAMES_DIR / f.stem).glob("*.jpg")), default=0),
            )
            rows += [f"{f.stem}/{k:05d}.jpg,{dummy}" for k in range(1, n + 1)]
        out = root / TEST_LISTS_DIR / f"{task.upper()}_test_set_example.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join([f"image_location,{spec.header}", *rows]) + "\n")


MARKER = ".affbench-synthetic"


def generate(
    out: Path | str, videos: int = 64, frames: int = 140, seed: int = 0, workers: int = 1
) -> list[dict]:
    """Write the dataset under ``out`` (replacing an earlier synthetic set there, refusing any
    other non-empty folder); returns one summary dict per video."""
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise FileExistsError(
                f"{out} is not empty and holds no synthetic dataset: not writing there"
            )
        for name in (FRAMES_DIR, ANNOTATIONS_DIR, TEST_LISTS_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"videos": videos, "frames": frames, "seed": seed}) + "\n")
    plan = video_plan(videos, frames, seed)
    jobs = [
        (str(out), name, split, seed, i, n, tasks) for i, (name, split, n, tasks) in enumerate(plan)
    ]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            done = list(pool.map(_write_video, jobs))
    else:
        done = [_write_video(j) for j in jobs]
    write_test_lists(out)
    return done


__all__ = [
    "generate",
    "latent_trajectories",
    "video_plan",
    "test_list_path",
    "EXPR_NAMES",
    "AU_NAMES",
]
