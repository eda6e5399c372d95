"""Camera-ready LaTeX tables: booktabs rules, numbers aligned on the decimal point by siunitx
``S`` columns (each column's ``table-format`` read from its own cells: sign, digits, the
``± std`` uncertainty), the best cell in bold, column groups with ``\\cmidrule`` under each, and
a table that fits its page: ``table*`` (both columns of a two-column paper) when it is wide, and
shrunk to the line width by LaTeX itself only where it would still overflow.

The output needs ``\\usepackage{booktabs,siunitx,graphicx}`` (said in its first line). Pandas'
``Styler.to_latex`` cannot do the column rules, the braced headers of ``S`` columns and the
merged header row together, so the tabular is written here; cells come as text from the caller.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

PREAMBLE = r"\usepackage{booktabs,siunitx,graphicx}"
# A two-column paper's column is 230-250 pt, its page 470-520 pt. A table estimated wider than a
# column goes across both (table*); wider than the page, its groups are stacked (tables.py).
# Up to 15 % more is let through: LaTeX shrinks such a table a little, still easily read.
COLUMN_PT = 240.0 * 1.15
PAGE_PT = 490.0 * 1.15
_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"\ensuremath{\pm}",
    "†": r"\textsuperscript{\dag}",
    "≥": r"\ensuremath{\geq}",
}
PLACEHOLDER = "--"  # a cell with no value (a setting the row's head does not have)
_NUMBER = re.compile(
    r"^(?P<sign>[-+]?)(?P<int>\d+)(?:\.(?P<dec>\d+))?(?: ± (?P<unc>[\d.]+))?(?P<mark> †)?$"
)
# a mark after a number (a row not distinguishable from the best): set in no width, so the
# numbers of its column stay aligned on the point
MARK = r"{\rlap{\textsuperscript{\dag}}}"


def escape(text: object) -> str:
    """``text`` with LaTeX's special characters escaped (``mobilenetv4_conv`` would not compile)."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def significant(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits in fixed point, never in exponent form:
    0.000123456 -> ``0.000123``, 2.5391 -> ``2.54``, 1234.5 -> ``1230``; nan -> ``""``."""
    if value is None or not math.isfinite(value):
        return ""
    if value == 0:
        return "0"
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    rounded = round(value, decimals)
    return f"{rounded:.{max(decimals, 0)}f}"


def fixed(value: float, decimals: int = 3) -> str:
    """``value`` with ``decimals`` decimals; a value that rounds to zero has no minus sign
    (``-2.7e-05`` -> ``0.000``); nan -> ``""``."""
    if value is None or not math.isfinite(value):
        return ""
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def table_format(cells: Sequence[str]) -> str | None:
    """siunitx's ``table-format`` that holds every number of a column (``-1.3(2)``: a sign, one
    integer digit, three decimals, two digits of uncertainty), or None if a cell is no number
    (blanks and the placeholder ``--`` aside) or none is."""
    sign, ints, decs, unc, numbers = False, 1, 0, 0, 0
    for cell in cells:
        if cell in ("", PLACEHOLDER):
            continue
        numbers += 1
        m = _NUMBER.match(cell)
        if m is None:
            return None
        sign |= m["sign"] == "-"
        ints = max(ints, len(m["int"]))
        decs = max(decs, len(m["dec"] or ""))
        if m["unc"]:  # 0.008 -> 8 and 0.120 -> 120: the digits siunitx keeps of it
            unc = max(unc, len(m["unc"].replace(".", "").lstrip("0") or "0"))
    if not numbers:
        return None
    return ("-" if sign else "") + f"{ints}.{decs}" + (f"({unc})" if unc else "")


def width_pt(header: Sequence[str], rows: Sequence[Sequence[str]]) -> float:
    """The tabular's width in pt estimated from its longest cells: 5.5 pt a character at 10 pt
    and 2 x 4 pt of padding a column (within 5 % of what pdflatex set for the suite's tables)."""
    columns = [[h, *(r[j] for r in rows)] for j, h in enumerate(header)]
    return sum(5.5 * max(len(c) for c in col) + 8.0 for col in columns)


def tabular_latex(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    bold: Sequence[Sequence[bool]] | None = None,
    groups: Sequence[tuple[str, int]] | None = None,
    blocks: Sequence[tuple[str, int]] | None = None,
    caption: str = "",
    label: str = "",
) -> str:
    """A ``table`` (or ``table*``) float holding a booktabs tabular.

    ``header``: one name per column (the first names the row labels); ``rows``: cells as plain
    text (``0.645 ± 0.008``; ``""`` or ``--`` for none); a column whose cells are all numbers
    becomes an ``S`` column. ``bold`` marks cells to set in bold; ``groups``: (name, span) over
    the columns after the first, drawn as a header row above ``header``, a rule under each;
    ``blocks``: (name, rows) over the rows, each block under a title row of its own (the layout
    for many groups: stacked, they fit a column where side by side they would not).
    """
    ncols = len(header)
    columns = [[r[j] for r in rows] for j in range(ncols)]
    formats = [table_format(col) for col in columns]
    specs = [f"S[table-format={f}]" if f else "l" for f in formats]
    numeric = [s.startswith("S") for s in specs]

    def head(text: str, j: int) -> str:  # S columns would read a header as a number: braced
        return f"{{{escape(text)}}}" if numeric[j] else escape(text)

    def cell(text: str, j: int, strong: bool) -> str:
        if not numeric[j]:
            body = escape(text)
        elif _NUMBER.match(text):
            body = text.replace(" ± ", r" \pm ").replace(" †", MARK)
        else:  # a blank or the placeholder, braced: an S column would parse it as a number
            body = f"{{{escape(text)}}}"
        return r"\bfseries " + body if strong and text else body

    lines = [r"\toprule"]
    if groups:
        parts, rules, start = [""], [], 2
        for name, span in groups:
            parts.append(rf"\multicolumn{{{span}}}{{c}}{{{escape(name)}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines += [" & ".join(parts) + r" \\", " ".join(rules)]
    lines += [" & ".join(head(h, j) for j, h in enumerate(header)) + r" \\", r"\midrule"]
    titles, first = {}, 0  # the row each block starts at -> its name
    for name, n in blocks or ():
        titles[first] = name
        first += n
    for i, r in enumerate(rows):
        if i in titles:
            if i:
                lines.append(r"\midrule")
            lines.append(rf"\multicolumn{{{ncols}}}{{l}}{{\itshape {escape(titles[i])}}} \\")
        strong = bold[i] if bold is not None else [False] * ncols
        lines.append(" & ".join(cell(c, j, strong[j]) for j, c in enumerate(r)) + r" \\")
    lines.append(r"\bottomrule")

    env = "table*" if width_pt(header, rows) > COLUMN_PT else "table"
    out = [
        f"% needs {PREAMBLE}",
        rf"\begin{{{env}}}[t]",
        r"\centering",
        r"\sisetup{detect-weight, mode=text, separate-uncertainty, table-align-uncertainty}",
        r"\setlength{\tabcolsep}{4pt}",
    ]
    if caption:
        out.append(rf"\caption{{{escape(caption)}}}")
    if label:
        out.append(rf"\label{{{label}}}")
    # set the tabular in a box; shrink it to the line only if it is wider (LaTeX measures it)
    out.append(r"\sbox0{\begin{tabular}{" + "".join(specs) + "}")
    out += lines
    out.append(r"\end{tabular}}%")
    out.append(r"\ifdim\wd0>\linewidth\resizebox{\linewidth}{!}{\usebox0}\else\usebox0\fi")
    out.append(rf"\end{{{env}}}")
    return "\n".join(out) + "\n"
