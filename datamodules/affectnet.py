"""AffectNet's still faces, read from any of the three ways it is distributed, as ``Stills``.

``read_stills(root, split)`` finds the layout under ``root`` (``split`` is "train" or "val"):

a. file lists: ``training.csv`` / ``validation.csv`` at the root or under
   ``Manually_Annotated_file_lists/``, one row per image with its face box; images under
   ``Manually_Annotated_Images/`` (or the root). Parsed by pandas in one call (400k rows in
   seconds), checked vectorised; the first bad row is then named by its line.
b. per-image .npy: ``{train_set,val_set}/images/N.jpg`` with ``annotations/N_exp.npy``,
   ``N_val.npy`` and ``N_aro.npy`` (a number or a numeric string each). Faces already cropped.
c. class folders: ``{train,val}/<class>/*.jpg``, a class named as AffectNet names it (any case)
   or by its index 0..7. Faces already cropped; no valence/arousal.

Labels become ABAW's (``CLASSES``): an expression in ABAW's EXPR classes or -1, valence/arousal
in [-1, 1] or NaN (AffectNet writes -2 for "no VA label"). Bad input is an ``AnnotationError``
naming the file and the line (an .npy file or a folder is named alone), never a skipped row.

The dataset and ``AffectNetDataModule`` on top of this live in ``datamodules/stills.py``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.annotations import AnnotationError
from datamodules.tasks import EXPR_NAMES

# AffectNet's class index -> (its name, the ABAW EXPR class it counts as (None: no expression
# label), the folder names that mean it in the class-folder layout besides its index)
CLASSES = (
    ("Neutral", "Neutral", ("neutral",)),
    ("Happy", "Happiness", ("happy", "happiness")),
    ("Sad", "Sadness", ("sad", "sadness")),
    ("Surprise", "Surprise", ("surprise", "surprised")),
    ("Fear", "Fear", ("fear", "fearful")),
    ("Disgust", "Disgust", ("disgust", "disgusted")),
    ("Anger", "Anger", ("anger", "angry")),
    ("Contempt", "Other", ("contempt",)),
    ("None", None, ()),
    ("Uncertain", None, ()),
    ("No-Face", None, ()),
)
TO_EXPR = np.array([-1 if e is None else EXPR_NAMES.index(e) for _, e, _ in CLASSES], np.int8)
FOLDER_CLASS = {
    alias: k for k, (_, e, names) in enumerate(CLASSES) if e for alias in (str(k), *names)
}
NO_VA = -2.0  # AffectNet's "no valence/arousal label"

SPLITS = ("train", "val")
FILE_LISTS = {"train": "training.csv", "val": "validation.csv"}
LISTS_DIR, IMAGES_DIR = "Manually_Annotated_file_lists", "Manually_Annotated_Images"
HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"  # noqa: E501
COLUMNS = tuple(HEADER.split(","))
NPY_SPLITS = {"train": "train_set", "val": "val_set"}
NPY_FILES = {"expression": "exp", "valence": "val", "arousal": "aro"}  # column -> N_<x>.npy
FOLDER_SPLITS = {"train": ("train",), "val": ("val", "validation", "valid", "test")}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUTS = (  # what read_stills looks for, per split
    "file lists: <root>/[Manually_Annotated_file_lists/]{csv}, images under "
    "<root>/[Manually_Annotated_Images/]",
    "per-image .npy: <root>/{npy}/images/N.jpg with annotations/N_exp.npy, N_val.npy, N_aro.npy",
    "class folders: <root>/{folders}/<class>/*.jpg, <class> neutral, happy, sad, surprise, "
    "fear, disgust, anger, contempt or 0..7",
)


class StillsError(AnnotationError):
    """An ``AnnotationError`` whose line may be 0: the file (an .npy) or folder as a whole."""

    def __init__(self, path: Path | str, line: int, msg: str):
        super().__init__(path, line, msg)
        if not line:
            self.args = (f"{path}: {msg}",)


@dataclass
class Stills:
    """One split's images and their ABAW labels. Per image (N rows):

    ``path`` (N,) str; ``box`` (N, 4) int32 face box x, y, w, h in pixels (-1: the image is the
    face); ``expr`` (N,) int8 ABAW EXPR class (-1: no label); ``va`` (N, 2) float32 valence,
    arousal (NaN: no label); ``affectnet`` (N,) int8 the class as AffectNet gave it; where the
    row came from: ``sources[source[i]]`` (a file or folder) and ``line[i]`` (0: none).
    """

    root: str
    split: str
    layout: str
    path: np.ndarray
    box: np.ndarray
    expr: np.ndarray
    va: np.ndarray
    affectnet: np.ndarray
    sources: tuple[str, ...]
    source: np.ndarray
    line: np.ndarray

    def __len__(self) -> int:
        return len(self.path)

    def where(self, i: int) -> str:
        """Where row ``i`` came from: ``file:line``, or the file or folder."""
        src, line = self.sources[self.source[i]], int(self.line[i])
        return f"{src}:{line}" if line else src

    def labelled(self, tasks: tuple[str, ...] | list[str] = ("va", "expr")) -> np.ndarray:
        """(N,) bool: the image carries a label for at least one of ``tasks``."""
        has = {"va": ~np.isnan(self.va).any(axis=1), "expr": self.expr >= 0}
        return np.logical_or.reduce([has[t] for t in tasks])

    def summary(self) -> dict:
        """Counts: images, per ABAW EXPR class, VA-labelled, and unlabelled for both tasks."""
        counts = np.bincount(self.expr[self.expr >= 0], minlength=len(EXPR_NAMES))
        return {
            "images": len(self),
            "expr": dict(zip(EXPR_NAMES, counts.tolist(), strict=True)),
            "no_expr": int((self.expr < 0).sum()),
            "va": int((~np.isnan(self.va).any(axis=1)).sum()),
            "unlabelled": int((~self.labelled()).sum()),
        }


def read_stills(root: str | Path, split: str) -> Stills:
    """The ``split`` ("train" or "val") of the AffectNet-layout folder ``root`` (see above)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    layout, read = _find_layout(root, split)
    path, box, affectnet, va, sources, source, line = read()
    va = np.asarray(va, np.float64).reshape(-1, 2)
    n = len(path)
    return Stills(
        str(root),
        split,
        layout,
        np.asarray(path, dtype=str),
        np.asarray(box, np.int32).reshape(n, 4),
        TO_EXPR[np.asarray(affectnet, np.int64)],
        np.where(va == NO_VA, np.nan, va).astype(np.float32),
        np.asarray(affectnet, np.int8),
        tuple(sources),
        np.asarray(source, np.int32).reshape(n),
        np.asarray(line, np.int32).reshape(n),
    )


def _find_layout(root: Path, split: str) -> tuple[str, Callable[[], tuple]]:
    """(layout name, its reader) of the first layout whose files are there for ``split``."""
    for csv_path in (root / FILE_LISTS[split], root / LISTS_DIR / FILE_LISTS[split]):
        if csv_path.is_file():
            images = root / IMAGES_DIR if (root / IMAGES_DIR).is_dir() else root
            return "file lists", partial(_read_file_list, csv_path, images)
    if (root / NPY_SPLITS[split] / "annotations").is_dir():
        return "per-image .npy", partial(_read_npy, root / NPY_SPLITS[split])
    for name in FOLDER_SPLITS[split]:
        if (root / name).is_dir():
            return "class folders", partial(_read_folders, root / name)
    names = dict(csv=FILE_LISTS[split], npy=NPY_SPLITS[split], folders=FOLDER_SPLITS[split][0])
    raise FileNotFoundError(
        f"no AffectNet {split} split under {root}: expected one of these layouts: "
        + "; ".join(f"({'abc'[i]}) {t.format(**names)}" for i, t in enumerate(LAYOUTS))
        + (" (or validation/, valid/, test/)" if split == "val" else "")
    )


# Each reader returns, per image: paths, face boxes (N, 4), AffectNet classes (N,), valence and
# arousal (N, 2) as written (-2: none), and where each came from: the distinct files or folders,
# the index of each row's among them (N,) and its line (N,) (0: no line).
Check = tuple[np.ndarray, str, Callable[[int], str]]  # bad rows, column, reason(row)


def _first_problem(checks: list[Check]) -> tuple[int, str, str] | None:
    """(row, column, reason) of the earliest row failing a check (on that row, the first check
    listed), or None."""
    firsts = [(int(np.argmax(bad)), k) for k, (bad, _, _) in enumerate(checks) if bad.any()]
    if not firsts:
        return None
    row, k = min(firsts)
    return row, checks[k][1], checks[k][2](row)


def _label_checks(cls: np.ndarray, va: np.ndarray) -> list[Check]:
    """Checks of numbers read as expression (N,) and valence/arousal (N, 2)."""
    bad_cls = ~((cls >= 0) & (cls < len(CLASSES)) & (cls == np.round(cls)))
    out = [(bad_cls, "expression", lambda i: f"expression {cls[i]:g} is not an integer 0..10")]
    for j, col in enumerate(("valence", "arousal")):
        bad = ~(((va[:, j] >= -1) & (va[:, j] <= 1)) | (va[:, j] == NO_VA))
        msg = f"{col} {{:g}} outside [-1, 1] (and not -2, AffectNet's 'no label')"
        out.append((bad, col, lambda i, j=j, m=msg: m.format(va[i, j])))
    return out


# -- (a) file lists --------------------------------------------------------------------------------
def _read_file_list(csv_path: Path, images: Path) -> tuple:
    raw = csv_path.read_bytes()
    header, _, _ = raw.partition(b"\n")
    names = [c.strip() for c in header.decode("utf-8", "replace").lstrip("\ufeff").split(",")]
    if [c.lower() for c in names] != [c.lower() for c in COLUMNS]:
        raise AnnotationError(csv_path, 1, f"header {','.join(names)!r}, expected {HEADER!r}")
    # pandas skips lines of white space: number the others, the header being line 1
    lines = np.array([k for k, t in enumerate(raw.split(b"\n")[1:], start=2) if t.strip()], int)
    try:
        kw = dict(header=None, names=COLUMNS, skiprows=1, dtype=str, keep_default_na=False)
        df = pd.read_csv(io.BytesIO(raw), **kw)
        if len(df) != len(lines):
            raise ValueError("rows and lines disagree")  # a quoted line break: count exactly
    except (ValueError, pd.errors.ParserError):  # a row with too many fields, or the above
        df, lines = _parse_slow(csv_path, raw)

    numeric = [c for c in COLUMNS if c not in ("subDirectory_filePath", "facial_landmarks")]
    num = {c: pd.to_numeric(df[c].str.strip(), errors="coerce").to_numpy(float) for c in numeric}
    rel = df["subDirectory_filePath"].str.strip().str.lstrip("/")
    box = np.stack([num[c] for c in COLUMNS[1:5]], axis=1)
    cls, va = num["expression"], np.stack([num["valence"], num["arousal"]], axis=1)

    checks = [(rel.eq("").to_numpy(), "subDirectory_filePath", lambda i: "no image path")]
    checks += [
        (~np.isfinite(num[c]), c, lambda i, c=c: f"{c} {df[c].iat[i]!r} is not a number")
        for c in numeric
    ]
    checks += _label_checks(cls, va)
    small = (box[:, 2] <= 0) | (box[:, 3] <= 0)
    checks += [(small, "face_width", lambda i: f"face box of size {box[i, 2]:g} x {box[i, 3]:g}")]
    gone = _missing(images, rel)
    checks += [(gone, "subDirectory_filePath", lambda i: f"no image {images / rel.iat[i]}")]
    if problem := _first_problem(checks):
        row, _, reason = problem
        fields = next(csv.reader([raw.split(b"\n")[lines[row] - 1].decode("utf-8", "replace")]))
        if len(fields) != len(COLUMNS):  # a short row: pandas filled it with empty fields
            reason = f"expected {len(COLUMNS)} fields, got {len(fields)}"
        raise AnnotationError(csv_path, int(lines[row]), reason)
    paths = (str(images) + "/" + rel).to_numpy(str)
    return paths, np.round(box), cls, va, [str(csv_path)], np.zeros(len(df)), lines


def _parse_slow(csv_path: Path, raw: bytes) -> tuple[pd.DataFrame, np.ndarray]:
    """Row by row with the csv module: the exact line of each row; a row with the wrong number
    of fields is an error naming its line."""
    reader = csv.reader(io.StringIO(raw.decode("utf-8", "replace"), newline=""))
    next(reader)
    rows, lines = [], []
    for fields in reader:
        if not "".join(fields).strip() and len(fields) <= 1:
            continue  # a blank line, as pandas skips it
        if len(fields) != len(COLUMNS):
            reason = f"expected {len(COLUMNS)} fields, got {len(fields)}"
            raise AnnotationError(csv_path, reader.line_num, reason)
        rows.append(fields)
        lines.append(reader.line_num)
    return pd.DataFrame(rows, columns=list(COLUMNS), dtype=str), np.array(lines, np.int64)


def _missing(images: Path, rel: pd.Series) -> np.ndarray:
    """(N,) bool: the image is not on disk. One directory listing per sub-folder, not a stat
    per image (AffectNet's 400k images sit in about a thousand folders)."""
    parts = rel.str.rpartition("/")
    listed: dict[str, set[str]] = {}
    for sub in parts[0].unique():
        folder = images / sub
        listed[sub] = set(os.listdir(folder)) if folder.is_dir() else set()
    return np.array(
        [name not in listed[sub] for sub, name in zip(parts[0], parts[2], strict=True)], bool
    )


# -- (b) per-image .npy ----------------------------------------------------------------------------
def _read_npy(base: Path) -> tuple:
    ann = base / "annotations"
    files = _image_files(base / "images")
    values = np.empty((len(files), 3))
    for i, f in enumerate(files):
        for j, suffix in enumerate(NPY_FILES.values()):
            values[i, j] = _npy_number(ann / f"{f.stem}_{suffix}.npy")

    def npy(col: str, row: int) -> Path:
        return ann / f"{files[row].stem}_{NPY_FILES[col]}.npy"

    if problem := _first_problem(_label_checks(values[:, 0], values[:, 1:])):
        row, col, reason = problem
        raise StillsError(npy(col, row), 0, reason)
    n = len(files)
    sources = [str(npy("expression", i)) for i in range(n)]
    return files, np.full((n, 4), -1), values[:, 0], values[:, 1:], sources, np.arange(n), [0] * n


def _npy_number(path: Path) -> float:
    """The one number an annotation .npy holds (a number or a numeric string)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise StillsError(path, 0, "missing: each image needs an _exp, _val, _aro .npy") from None
    except (OSError, ValueError, EOFError) as e:
        raise StillsError(path, 0, f"cannot be read as a .npy array ({e})") from None
    if arr.size != 1:
        raise StillsError(path, 0, f"holds {arr.size} values, expected one")
    value = arr.reshape(()).item()
    value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = np.nan
    if not np.isfinite(number):
        raise StillsError(path, 0, f"holds {value!r}, not a number")
    return number


def _image_files(folder: Path) -> list[Path]:
    """The images of a folder, in numeric order of their names where they are numbers."""
    files = [f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda f: (0, int(f.stem), "") if f.stem.isdigit() else (1, 0, f.name))


# -- (c) class folders -----------------------------------------------------------------------------
def _read_folders(base: Path) -> tuple:
    paths, classes, source, sources = [], [], [], []
    for folder in sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
        cls = FOLDER_CLASS.get(folder.name.lower())
        if cls is None:
            names = ", ".join(n for n in FOLDER_CLASS if not n.isdigit())
            raise StillsError(
                folder, 0, f"unknown class folder {folder.name!r}: expected one of {names} or 0..7"
            )
        files = _image_files(folder)
        paths += files
        classes += [cls] * len(files)
        source += [len(sources)] * len(files)
        sources.append(str(folder))
    n = len(paths)
    return paths, np.full((n, 4), -1), classes, np.full((n, 2), NO_VA), sources, source, [0] * n
