"""Synthetic still faces in AffectNet's file-list layout: stage 1's data when AffectNet is absent.

Each image is one face of the synthetic video set's renderer (``synth_faces.py``), drawn the
way ``synth.latent_trajectories`` draws a frame, so that an encoder pretrained here has learnt
what the video set shows:

* an AffectNet class (0..7, imbalanced as AffectNet is, milder) gives the ABAW class (``CLASSES``);
* valence/arousal are drawn around that class's prototype in the VA plane, kept where the video
  set's rule (the nearest prototype) gives the same class; Contempt ("Other") takes any VA and
  shows as the lopsided mouth;
* AU intensities: the class's AU profile, the valence/arousal couplings and noise, as in video;
* pose, lighting, blur and JPEG quality vary per image; every image is a new identity.

The face (its rendered square) sits in a larger canvas of another colour and texture, and the
csv gives its face box, so the crop matters. As in AffectNet, a few rows are None (VA labelled,
no expression), Uncertain or No-Face (no label at all: VA -2), and a few labelled expressions
lack VA (-2). Everything is drawn from ``numpy.random.default_rng([seed, split, image])``: the
same seed writes the same bytes, whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from datamodules.affectnet import (
    FILE_LISTS,
    HEADER,
    IMAGES_DIR,
    LISTS_DIR,
    NO_VA,
    TO_EXPR,
    read_stills,
)
from datamodules.synth import _PROFILE, _PROTOTYPES, MARKER  # the video set's own numbers
from datamodules.synth_faces import AU_INDEX, Identity, render_face

DEFAULT_OUT = "data/affectnet_synth"
# AffectNet class -> share of the images (0..7 as AffectNet's manual labels lean, milder; 8..10:
# the few None, Uncertain and No-Face rows)
CLASS_SHARE = np.array([0.2, 0.24, 0.1, 0.09, 0.08, 0.07, 0.1, 0.06, 0.02, 0.02, 0.02])
NO_VA_SHARE = 0.03  # labelled expressions without valence/arousal
PER_FOLDER = 250  # images per sub-folder, as AffectNet spreads its images over folders
CHUNK = 50  # images per job of a worker


def draw_va(rng: np.random.Generator, expr: int) -> tuple[float, float]:
    """Valence, arousal for an image of ABAW class ``expr``: near its prototype, and nearest to
    it among the prototypes (the video set's rule); anywhere for Other (7) and no class (-1)."""
    if expr < 0 or expr >= len(_PROTOTYPES):
        return tuple(np.tanh(0.7 * rng.standard_normal(2)).tolist())
    for _ in range(20):
        va = np.clip(_PROTOTYPES[expr] + 0.2 * rng.standard_normal(2), -1, 1)
        if np.argmin(((_PROTOTYPES - va) ** 2).sum(1)) == expr:
            return float(va[0]), float(va[1])
    return tuple(_PROTOTYPES[expr].tolist())


def draw_aus(rng: np.random.Generator, expr: int, v: float, a: float) -> np.ndarray:
    """(12,) AU intensities in [0, 1]: the class's profile, the VA couplings of the video set and
    noise (no class: the neutral profile)."""
    target = _PROFILE[max(expr, 0)] + 0.22 * rng.standard_normal(12)
    target[AU_INDEX["AU12"]] += 0.35 * max(v, 0)
    target[AU_INDEX["AU15"]] += 0.3 * max(-v, 0)
    target[AU_INDEX["AU25"]] += 0.25 * max(a, 0)
    return np.clip(target, 0, 1)


def render_still(rng: np.random.Generator, cls: int, face_size: int) -> tuple[bytes, list, tuple]:
    """One image of AffectNet class ``cls``: (JPEG bytes, face box [x, y, w, h], (valence,
    arousal) the face was drawn with)."""
    expr = int(TO_EXPR[cls])
    v, a = draw_va(rng, expr)
    size = int(face_size * rng.uniform(0.75, 1.25))
    width, height = (int(size * rng.uniform(1.3, 1.9)) for _ in range(2))
    x, y = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
    # the canvas: a coarse random texture scaled up (cheap), unlike the face's flat background
    texture = rng.uniform(0, 255, (4, 4, 3)) * 0.5 + rng.uniform(0, 128, 3)
    canvas = Image.fromarray(texture.astype(np.uint8)).resize((width, height), Image.BILINEAR)
    if cls != 10:  # No-Face: the canvas alone
        pose = rng.standard_normal(4) * [0.09, 0.07, 0.14, 0.06] + [0, 0, 0, 1]
        face = render_face(
            Identity.random(rng),
            v,
            a,
            draw_aus(rng, expr, v, a),
            tuple(pose),
            float(expr == 7),
            size,
        )
        canvas.paste(face, (x, y))
    if rng.random() < 0.05:
        canvas = canvas.filter(ImageFilter.GaussianBlur(1.2))
    ramp = np.linspace(-1, 1, width)[None, :, None]
    light = 1 + 0.15 * rng.standard_normal() + 0.12 * rng.standard_normal() * ramp
    pixels = np.clip(np.asarray(canvas, np.float32) * light, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=int(rng.integers(50, 96)))
    return buf.getvalue(), [x, y, size, size], (v, a)


def _write_images(args: tuple) -> list[str]:
    """Images ``start..stop-1`` of one split -> their csv rows (without the line end)."""
    out, split, seed, start, stop, face_size = args
    rows = []
    for k in range(start, stop):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, k])
        cls = int(rng.choice(len(CLASS_SHARE), p=CLASS_SHARE / CLASS_SHARE.sum()))
        data, (x, y, w, h), (v, a) = render_still(rng, cls, face_size)
        name = hashlib.sha1(f"{seed}-{split}-{k}".encode()).hexdigest()[:32]
        rel = f"{k // PER_FOLDER + 1}/{name}.jpg"  # names differ between splits
        path = Path(out) / IMAGES_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if cls in (9, 10) or (cls < 8 and rng.random() < NO_VA_SHARE):
            v = a = NO_VA
        eyes = [x + 0.35 * w, y + 0.4 * h, x + 0.65 * w, y + 0.4 * h, x + 0.5 * w, y + 0.75 * h]
        landmarks = ";".join(f"{p:.2f}" for p in eyes)  # a few points, as a quoted field
        rows.append(f'{rel},{x},{y},{w},{h},"{landmarks}",{cls},{v:.6f},{a:.6f}')
    return rows


def generate_affectnet(
    out: str | Path = DEFAULT_OUT,
    images: int = 2400,
    val_images: int = 300,
    seed: int = 0,
    img_size: int = 112,
    workers: int = 1,
) -> dict:
    """Write ``images`` training and ``val_images`` validation stills under ``out`` (replacing
    an earlier synthetic AffectNet set there, refusing any other non-empty folder); faces are
    about ``img_size`` pixels. Returns ``{"out", "images", "seed", "splits": {split:
    Stills.summary()}}``, read back from what was written."""
    out = Path(out)
    marker = out / MARKER
    if out.is_dir() and any(out.iterdir()):
        if not marker.exists() or json.loads(marker.read_text()).get("layout") != "affectnet":
            raise FileExistsError(
                f"{out} is not empty and holds no synthetic AffectNet set: not writing there"
            )
        for name in (IMAGES_DIR, LISTS_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps(
            {"layout": "affectnet", "images": images, "val_images": val_images, "seed": seed}
        )
        + "\n"
    )
    jobs = [
        (str(out), split, seed, s, min(s + CHUNK, n), img_size)
        for split, n in (("train", images), ("val", val_images))
        for s in range(0, n, CHUNK)
    ]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            done = list(pool.map(_write_images, jobs))
    else:
        done = [_write_images(j) for j in jobs]
    for split in FILE_LISTS:
        rows = [r for job, rows in zip(jobs, done, strict=True) if job[1] == split for r in rows]
        path = out / LISTS_DIR / FILE_LISTS[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([HEADER, *rows]) + "\n")
    splits = {split: read_stills(out, split).summary() for split in FILE_LISTS}
    return {"out": str(out), "images": images + val_images, "seed": seed, "splits": splits}
