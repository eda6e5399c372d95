import numpy as np
import pytest

from datamodules.annotations import AnnotationError, read_task_files
from datamodules.tasks import get_task

VA, EXPR, AU = get_task("va"), get_task("expr"), get_task("au")


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


@pytest.mark.parametrize(
    "spec, text, line, words",
    [
        (VA, "valence,arousl\n0.1,0.2\n", 1, "header"),
        (EXPR, "Neutral,Anger\n0\n", 1, "header"),
        (VA, "valence,arousal\n0.1,0.2\n1.5,0.2\n", 3, "outside [-1, 1]"),
        (VA, "valence,arousal\n0.1,0.2\n0.1,0.2\n-3,0.1\n", 4, "outside [-1, 1]"),
        (VA, "valence,arousal\n0.1\n", 2, "expected 2 value"),
        (VA, "valence,arousal\n0.1,0.2,0.3\n0.1,0.2,0.3\n", 2, "expected 2 value"),
        (VA, "valence,arousal\n0.1,0.2\nabc,0.2\n", 3, "not a number"),
        (EXPR, EXPR.header + "\n0\n8\n", 3, "0..7"),
        (EXPR, EXPR.header + "\n0\n2.5\n", 3, "0..7"),
        (
            AU,
            AU.header + "\n" + ",".join(["0"] * 12) + "\n" + ",".join(["2"] + ["0"] * 11) + "\n",
            3,
            "0, 1 or -1",
        ),
    ],
)
def test_errors_name_file_and_line(tmp_path, spec, text, line, words):
    good = _write(
        tmp_path,
        "good.txt",
        spec.header
        + "\n"
        + ("0.5,0.5" if spec is VA else "1" if spec is EXPR else ",".join(["1"] * 12))
        + "\n",
    )
    bad = _write(tmp_path, "bad.txt", text)
    with pytest.raises(AnnotationError) as e:
        read_task_files([good, bad], spec)
    assert f"bad.txt:{line}:" in str(e.value)
    assert words in str(e.value)
    assert e.value.line == line and e.value.path == bad


def test_crlf_spaces_blank_lines_and_unannotated(tmp_path):
    a = _write(
        tmp_path, "a.txt", b"valence,arousal\r\n0.5, -0.25\r\n-5,-5\r\n\r\n0.1,0.9\r\n\r\n\r\n"
    )
    b = _write(tmp_path, "b.txt", "valence, arousal\n0.3,-5\n1,-1\n")
    lab = read_task_files([a, b], VA)
    # a: 4 data lines (an interior blank line is an unannotated frame; trailing ones are no lines)
    assert lab.lengths.tolist() == [4, 2]
    assert lab.valid.tolist() == [True, False, False, True, False, True]
    assert lab.blank.tolist() == [False, False, True, False, False, False]
    np.testing.assert_allclose(lab.values[0], [0.5, -0.25])
    np.testing.assert_allclose(lab.values[3], [0.1, 0.9])
    np.testing.assert_allclose(lab.values[5], [1, -1])


def test_expr_and_au_unannotated(tmp_path):
    e = _write(tmp_path, "e.txt", EXPR.header + "\n3\n-1\n7\n")
    lab = read_task_files([e], EXPR)
    assert lab.valid.tolist() == [True, False, True]
    assert lab.values[:, 0].tolist() == [3, -1, 7]
    rows = [",".join(["1"] * 12), ",".join(["0"] * 11 + ["-1"]), ",".join(["0"] * 12)]
    u = _write(tmp_path, "u.txt", AU.header + "\n" + "\n".join(rows) + "\n")
    lab = read_task_files([u], AU)
    assert lab.valid.tolist() == [True, False, True]


def test_empty_file_has_no_lines(tmp_path):
    e = _write(tmp_path, "e.txt", "valence,arousal\n\n")
    f = _write(tmp_path, "f.txt", "valence,arousal\n0.1,0.1\n")
    lab = read_task_files([e, f], VA)
    assert lab.lengths.tolist() == [0, 1]


def _line(spec, value):
    return ",".join([value] * spec.values_per_line)


_MISSING = [
    *((v, "not a finite number") for v in ("nan", "NaN", "-nan", "inf", "-inf")),
    # pandas reads these as missing ('none' in lower case it never did)
    *((v, "not a number") for v in ("N/A", "NA", "null", "NULL", "None", "#N/A", "<NA>")),
]


@pytest.mark.parametrize(
    "spec, value, words",
    [
        *(pytest.param(s, v, w, id=f"{s.name}:{v}") for s in (VA, EXPR, AU) for v, w in _MISSING),
        # a line of commas is no blank line (an EXPR line has no comma: empty is blank there)
        *(pytest.param(s, "", "not a number", id=f"{s.name}:commas") for s in (VA, AU)),
    ],
)
def test_missing_value_spellings_are_errors_not_blank_lines(tmp_path, spec, value, words):
    good = _line(spec, "1")
    text = "\n".join([spec.header, good, "  ", _line(spec, value), good]) + "\n"
    ok = _write(tmp_path, "ok.txt", "\n".join([spec.header, good]) + "\n")
    bad = _write(tmp_path, "bad.txt", text)
    with pytest.raises(AnnotationError) as e:
        read_task_files([ok, bad], spec)
    assert f"bad.txt:4: {words} in " in str(e.value)  # line 3, spaces only, is a blank line
    assert e.value.line == 4 and e.value.path == bad
