"""Procedural face renderer for the synthetic ABAW dataset.

A face is a handful of polygons in face coordinates (x right, y down, the face oval about
[-0.62, 0.62] x [-0.78, 0.85]) whose geometry is a function of the frame's state: valence,
arousal and the intensities (0..1) of the twelve ABAW action units. A similarity transform (head
pose) maps them to pixels; the frame is drawn at twice its size and box-filtered down, which
anti-aliases the edges. What each AU moves, in the spirit of FACS:

=====  =======================  ===========================================
AU1    inner brow raiser        inner ends of the brows go up
AU2    outer brow raiser        outer ends of the brows go up
AU4    brow lowerer             brows go down, together, thicker
AU6    cheek raiser             rosy cheeks rise, eyes narrow from below
AU7    lid tightener            eyes narrow
AU10   upper lip raiser         upper lip rises, nasolabial folds darken
AU12   lip corner puller        corners go up and out
AU15   lip corner depressor     corners go down
AU23   lip tightener            lips get thin
AU24   lip pressor              mouth gets narrow, lips pressed
AU25   lips part                the mouth opens a little
AU26   jaw drop                 the mouth opens wide and the chin drops
=====  =======================  ===========================================

Valence bends the mouth (corners up for positive), arousal opens the eyes and the mouth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

AU_INDEX = {
    n: i
    for i, n in enumerate(
        ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
    )
}


@dataclass
class Identity:
    """What stays fixed for one subject: colours and face proportions."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    lips: tuple[int, int, int]
    background: tuple[int, int, int]
    face_w: float
    face_h: float
    eye_gap: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> Identity:
        tone = rng.uniform(0, 1)
        skin = np.array([255, 224, 196]) * (1 - tone) + np.array([105, 70, 50]) * tone
        skin = skin * rng.uniform(0.92, 1.05, 3)
        hair = rng.choice(
            [[30, 20, 15], [80, 50, 25], [150, 110, 60], [60, 60, 60], [200, 170, 110]]
        )
        lips = skin * np.array([0.8, 0.55, 0.55])
        bg = rng.uniform(40, 210, 3)
        return cls(
            tuple(int(c) for c in np.clip(skin, 0, 255)),
            tuple(int(c) for c in hair),
            tuple(int(c) for c in np.clip(lips, 0, 255)),
            tuple(int(c) for c in bg),
            face_w=float(rng.uniform(0.55, 0.66)),
            face_h=float(rng.uniform(0.74, 0.84)),
            eye_gap=float(rng.uniform(0.24, 0.30)),
        )


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def _curve(p0, p1, p2, n: int = 12) -> np.ndarray:
    """Quadratic Bezier from p0 to p2 with control p1: (n, 2)."""
    s = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, float) for p in (p0, p1, p2))
    return (1 - s) ** 2 * p0 + 2 * (1 - s) * s * p1 + s**2 * p2


def _mix(a, b, w: float) -> tuple[int, int, int]:
    w = float(np.clip(w, 0, 1))
    return tuple(int(x * (1 - w) + y * w) for x, y in zip(a, b, strict=True))


def render_face(
    ident: Identity,
    valence: float,
    arousal: float,
    au: np.ndarray,
    pose: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0),
    smirk: float = 0.0,
    size: int = 112,
) -> Image.Image:
    """Draw one frame. ``au`` (12,) intensities in [0, 1]; ``pose`` = (dx, dy, angle rad, scale)
    with dx, dy in face units; ``smirk`` lifts one lip corner (the 'Other' expression)."""
    s = 2 * size  # drawn at twice the size, then box-filtered down
    dx, dy, ang, scale = pose
    half = s * 0.5 * 1.0 * scale
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    centre = np.array([s / 2 + dx * s / 2, s / 2 + dy * s / 2 - 0.02 * s])

    def px(pts: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(p) for p in (np.asarray(pts) @ rot.T * half + centre)]

    a01 = (arousal + 1) / 2
    u = {k: float(au[i]) for k, i in AU_INDEX.items()}
    img = Image.new("RGB", (s, s), ident.background)
    d = ImageDraw.Draw(img)

    jaw = 0.06 * u["AU26"]
    d.polygon(px(_ellipse(0, -0.12, ident.face_w * 1.08, ident.face_h * 0.95)), fill=ident.hair)
    d.polygon(
        px(_ellipse(0, 0.05 + jaw / 2, ident.face_w, ident.face_h + jaw / 2)), fill=ident.skin
    )

    # cheeks (AU6): rosy patches that rise with the cheek
    rosy = _mix(ident.skin, (220, 90, 90), 0.55 * u["AU6"])
    for side in (-1, 1):
        d.polygon(px(_ellipse(side * 0.30, 0.20 - 0.07 * u["AU6"], 0.13, 0.08)), fill=rosy)

    # eyes: arousal opens them, AU7 and AU6 narrow them
    eye_h = 0.06 * (0.3 + 1.1 * a01) * (1 - 0.5 * u["AU7"]) * (1 - 0.3 * u["AU6"])
    eye_h = max(eye_h, 0.008)
    for side in (-1, 1):
        ex, ey = side * ident.eye_gap, -0.12
        d.polygon(px(_ellipse(ex, ey, 0.11, eye_h)), fill=(245, 245, 240))
        iris = min(0.05, eye_h)
        d.polygon(px(_ellipse(ex, ey, iris, iris, 16)), fill=(40, 30, 25))

    # brows: AU1 inner up, AU2 outer up, AU4 down and together
    brow_col = _mix(ident.hair, (0, 0, 0), 0.3 + 0.4 * u["AU4"])
    thick = 0.03 + 0.02 * u["AU4"]
    for side in (-1, 1):
        inner = np.array(
            [side * (0.09 - 0.04 * u["AU4"]), -0.28 - 0.10 * u["AU1"] + 0.07 * u["AU4"]]
        )
        outer = np.array([side * 0.38, -0.27 - 0.11 * u["AU2"] + 0.03 * u["AU4"]])
        mid = (inner + outer) / 2 + np.array([0, -0.04])
        top = _curve(inner, mid, outer, 8)
        d.polygon(px(np.concatenate([top, top[::-1] + [0, thick]])), fill=brow_col)

    # nose, and the nasolabial folds that AU10 deepens
    shade = _mix(ident.skin, (0, 0, 0), 0.35)
    d.polygon(px([[0, -0.05], [-0.07, 0.20], [0.07, 0.20]]), fill=_mix(ident.skin, (0, 0, 0), 0.12))
    d.line(px([[-0.05, 0.20], [0.05, 0.20]]), fill=shade, width=max(1, s // 90))
    fold = _mix(ident.skin, (0, 0, 0), 0.55 * u["AU10"])
    for side in (-1, 1):
        d.line(px([[side * 0.09, 0.18], [side * 0.24, 0.42]]), fill=fold, width=max(1, s // 80))

    # mouth: valence and AU12/AU15 bend the corners, AU23/24 thin and narrow, AU25/26 open
    my = 0.45 + jaw
    w = 0.20 * (1 + 0.3 * u["AU12"] - 0.25 * u["AU24"] - 0.1 * u["AU23"])
    lift = 0.12 * valence + 0.07 * u["AU12"] - 0.08 * u["AU15"]
    lip = 0.035 * (1 - 0.6 * u["AU23"]) * (1 - 0.4 * u["AU24"]) + 0.008
    gap = 0.004 + 0.05 * u["AU25"] + 0.10 * u["AU26"] + 0.04 * a01
    raise_upper = 0.04 * u["AU10"]
    left = np.array([-w, my - lift - 0.05 * smirk])
    right = np.array([w, my - lift + 0.04 * smirk])
    upper_in = _curve(left, [0, my - raise_upper + lift * 0.6 - gap / 2], right)
    lower_in = _curve(left, [0, my + lift * 0.6 + gap / 2], right)
    upper_out = _curve(left, [0, my - raise_upper - 2 * lip + lift * 0.6 - gap / 2], right)
    lower_out = _curve(left, [0, my + 2 * lip + lift * 0.6 + gap / 2], right)
    d.polygon(px(np.concatenate([upper_out, lower_out[::-1]])), fill=ident.lips)
    d.polygon(px(np.concatenate([upper_in, lower_in[::-1]])), fill=(60, 20, 25))
    return img.reduce(2)
