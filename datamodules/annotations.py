"""Read ABAW annotation files: the files of one task and split in a few vectorised parses.

A file is a header line, then data line k (1-based) labelling frame k, i.e. image ``{k:05d}.jpg``.
The files of a split are read as bytes, checked and cleaned (CRLF, trailing blank lines), joined
and parsed by pandas' C reader in one call, which is what makes three million lines take seconds.
Anything the fast path finds wrong is located by re-reading that one file line by line, so every
error names the file and the line.

Only an empty line (spaces allowed) is a blank, unannotated frame: text that pandas would read as
missing (``nan``, ``N/A``, ``null``, ``None``, ...) and non-finite numbers (``inf``) are errors,
as a typo would be, because a silently unannotated frame is a silently wrong result.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.tasks import Task


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and the line."""

    def __init__(self, path: Path | str, line: int, msg: str):
        super().__init__(f"{path}:{line}: {msg}")
        self.path, self.line = Path(path), line


@dataclass
class TaskLabels:
    """The parsed files of one task and split, concatenated in file order.

    ``values`` (N, values_per_line) holds each data line as written, in the task's dtype (a blank
    line holds the unannotated value);
    ``valid`` (N,) says which lines are annotated; ``lengths`` (F,) counts the data lines of each
    file, so file i owns rows ``offsets[i]:offsets[i + 1]``.
    """

    files: list[Path]
    lengths: np.ndarray
    values: np.ndarray
    valid: np.ndarray
    blank: np.ndarray  # (N,) bool: a blank line inside the file (counted as unannotated)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)])


def _check_header(path: Path, header: bytes, spec: Task) -> None:
    got = [c.strip().lower() for c in header.decode("utf-8", "replace").strip().split(",")]
    if got != [c.lower() for c in spec.columns]:
        raise AnnotationError(
            path,
            1,
            f"header {header.decode('utf-8', 'replace').strip()!r}, expected {spec.header!r}",
        )


def _split_file(path: Path, spec: Task) -> bytes:
    """The file's data lines, '\\n'-separated, without the header and trailing blank lines."""
    text = path.read_bytes().replace(b"\r", b"")
    header, _, body = text.partition(b"\n")
    _check_header(path, header.lstrip(b"\xef\xbb\xbf"), spec)  # tolerate a UTF-8 BOM
    return body.rstrip(b" \t\n")


def _line_problem(fields: list[str], spec: Task) -> str | None:
    """Why one data line is invalid (None if it is fine). The slow, exact path."""
    if fields == [""]:
        return None  # a blank line: unannotated
    if len(fields) != spec.values_per_line:
        return f"expected {spec.values_per_line} value(s) per line, got {len(fields)}"
    try:
        vals = [float(f) for f in fields]
    except ValueError:
        return f"not a number in {','.join(fields)!r}"
    if not np.isfinite(vals).all():  # float() takes 'nan' and 'inf'; neither is a label
        return f"not a finite number in {','.join(fields)!r}"
    return _values_problem(np.asarray([vals], dtype=np.float32), spec)


def _values_problem(v: np.ndarray, spec: Task) -> str | None:
    bad = _bad_rows(v, spec)
    if not bad.any():
        return None
    row = v[np.flatnonzero(bad)[0]]
    return spec.bad_values_message(",".join(f"{x:g}" for x in row))


def _bad_rows(v: np.ndarray, spec: Task) -> np.ndarray:
    """(N, C) values -> (N,) bool: rows holding a value the task does not allow (the table of
    the reference, ``Task.values_ok``)."""
    blank = np.isnan(v).all(axis=1)
    partial = np.isnan(v).any(axis=1) & ~blank
    return partial | (~spec.values_ok(v).all(axis=1) & ~blank)


def _locate(path: Path, spec: Task, reason: str) -> AnnotationError:
    """Re-read one file line by line and return the error for its first bad line."""
    lines = _split_file(path, spec).decode("utf-8", "replace").split("\n")
    for k, line in enumerate(lines, start=1):
        problem = _line_problem([f.strip() for f in line.split(",")], spec)
        if problem:
            return AnnotationError(path, k + 1, problem)  # +1: the header is line 1
    return AnnotationError(path, 1, reason)


def _parse_chunk(files: list[Path], spec: Task) -> tuple[np.ndarray, np.ndarray]:
    """One pandas call over the joined data lines of ``files``: lengths (F,), values (N, C) in
    the task's dtype (blank lines set to the unannotated value) and the blank-line mask (N,)."""
    bodies = [_split_file(f, spec) for f in files]
    lengths = np.array([b.count(b"\n") + 1 if b else 0 for b in bodies], dtype=np.int64)
    ncol = spec.values_per_line
    if lengths.sum() == 0:
        return lengths, np.empty((0, ncol), spec.dtype), np.empty(0, bool)
    buf = b"\n".join(b for b in bodies if b) + b"\n"
    del bodies
    try:
        frame = pd.read_csv(
            io.BytesIO(buf),
            header=None,
            names=list(range(ncol)),
            dtype=np.float32,
            skipinitialspace=True,
            skip_blank_lines=False,
            # only an empty field is missing: 'nan', 'N/A', 'null' ... fail the parse (see above)
            keep_default_na=False,
            na_values=[""],
            engine="c",
        )
        # Lines with too many values turn into an index instead of raising: catch that here.
        if not isinstance(frame.index, pd.RangeIndex) or len(frame) != lengths.sum():
            raise ValueError("lines with a wrong number of values")
        values = frame.to_numpy(np.float32, copy=True)
    except (ValueError, pd.errors.ParserError) as e:
        # The fast path cannot say where: find the first file with a bad line.
        for f in files:
            err = _locate(f, spec, str(e))
            if err.line > 1:
                raise err from None
        raise AnnotationError(files[0], 1, f"could not parse: {e}") from None
    if len(values) and (bad := _bad_rows(values, spec)).any():
        row = int(np.flatnonzero(bad)[0])
        i = int(np.searchsorted(np.cumsum(lengths), row, side="right"))
        raise _locate(files[i], spec, "bad value")
    blank = np.isnan(values).all(axis=1)
    if blank.any() and (row := _first_filled_blank(buf, blank)) is not None:
        i = int(np.searchsorted(np.cumsum(lengths), row, side="right"))
        raise _locate(files[i], spec, "a line of empty values")
    values[blank] = spec.unannotated
    return lengths, values.astype(spec.dtype), blank


def _first_filled_blank(buf: bytes, blank: np.ndarray) -> int | None:
    """The first row that pandas read as all-missing but whose line is not empty (e.g. ``,``),
    or None. Row r of the parse is line r of ``buf``; only runs when some row is all-missing."""
    ends = np.flatnonzero(np.frombuffer(buf, np.uint8) == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1])
    for row in np.flatnonzero(blank).tolist():
        if buf[starts[row] : ends[row]].strip(b" \t"):
            return row
    return None


def read_task_files(files: list[Path], spec: Task, chunk_bytes: int = 16 << 20) -> TaskLabels:
    """Parse every file of one task and split, validating every value.

    Files are parsed in groups of about ``chunk_bytes`` (one pandas call each), which keeps the
    parser's own memory bounded on the full Aff-Wild2 while the calls stay few."""
    groups, size = [[]], 0
    for f in files:
        if size > chunk_bytes:
            groups.append([])
            size = 0
        groups[-1].append(f)
        size += f.stat().st_size
    parts = [_parse_chunk(g, spec) for g in groups]
    lengths, values, blank = (np.concatenate([p[i] for p in parts]) for i in range(3))
    valid = ~blank & ~(values == spec.unannotated).any(axis=1)
    return TaskLabels(list(files), lengths, values, valid, blank)
