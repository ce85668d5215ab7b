"""A Grid as Markdown, LaTeX (booktabs) and CSV text.

Markdown and CSV keep the config's own keys and values (what a script or a grep finds); LaTeX is
for the paper: words for keys and values (src/report/labels.py), one column per row key, a
two-level header (the first column key over the others, with \\multicolumn and \\cmidrule), and
a table that fits the page (scaled down only when it is wider; on its side when very wide).
"""

from __future__ import annotations

import csv
import io

from src.report.labels import key_label, metric_label, value_label
from src.report.table import MISSING, Grid

LATEX_SPECIAL = {
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
    "±": r"$\pm$",
    "×": r"$\times$",
    "—": "---",
    "–": "--",
}
SIDEWAYS_COLUMNS = 10  # more data columns than this: a sidewaystable (package rotating)
SEP = " / "


def corner(grid: Grid) -> str:
    """Top-left header: 'dataset \\ strategy'."""
    return f"{SEP.join(grid.layout.rows)} \\ {SEP.join(grid.layout.columns)}"


def caption(
    grid: Grid, title: str = "", notes: dict | None = None, labels: dict | None = None
) -> str:
    """What a reader needs to read the cells: metric and unit, over how many seeds, what (n=k),
    bold and the dash mean, and every setting that differs between cells without being a row
    or column (`notes`: differ -> {param: values}, split_by -> [params made rows])."""
    layout, notes = grid.layout, notes or {}
    seeds = grid.most_seeds
    over = "one seed" if seeds == 1 else f"mean ± sample standard deviation over {seeds} seeds"
    parts = [f"{metric_label(layout.metric, layout.scale, labels)}, {over}"]
    if any(cell.n < seeds for cell in grid.cells.values()):
        parts.append("(n=k): a cell with only k seeds")
    if grid.best:
        parts.append("bold: the best of its column")
    if len(grid.cells) < len(grid.row_labels) * len(grid.column_labels):
        parts.append("—: no run")
    text = "; ".join(parts) + "."
    if notes.get("split_by"):
        names = ", ".join(key_label(k, labels) for k in notes["split_by"])
        text += f" Rows also split by {names}, which differed among runs of one cell."
    if notes.get("differ"):
        described = [
            f"{key_label(k, labels)} ({', '.join(v[:6])}{', …' if len(v) > 6 else ''})"
            for k, v in notes["differ"].items()
        ]
        text += f" Cells also differ in: {'; '.join(described)}."
    return f"{title.rstrip('.')}. {text}" if title else text


def markdown(
    grid: Grid, title: str = "", notes: dict | None = None, labels: dict | None = None
) -> str:
    def cell(row: str, col: str) -> str:
        text = grid.text(row, col)
        return f"**{text}**" if (row, col) in grid.best else text

    header = [corner(grid).replace("\\", "\\\\"), *grid.column_labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in grid.row_labels:
        lines.append("| " + " | ".join([row, *(cell(row, c) for c in grid.column_labels)]) + " |")
    return f"{caption(grid, title, notes, labels)}\n\n" + "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Text as LaTeX source; ± and × become math so pdflatex needs no extra package."""
    return "".join(LATEX_SPECIAL.get(char, char) for char in text)


def latex_cell(grid: Grid, row: str, col: str) -> str:
    text = grid.text(row, col)
    if text == MISSING:
        return "---"  # the em dash, in any font encoding
    text = latex_escape(text)
    return rf"\textbf{{{text}}}" if (row, col) in grid.best else text


def header_lines(grid: Grid, labels: dict | None) -> list[str]:
    """Two header rows: the first column key's values (or the key's name, with one column key)
    spanning their columns, each underlined by a \\cmidrule; then the remaining column values
    under them, after the row keys' names."""
    layout, columns = grid.layout, grid.column_labels
    n_rows = len(layout.rows)
    split = [col.split(SEP, 1) if len(layout.columns) > 1 else ["", col] for col in columns]
    top_key = layout.columns[0]
    groups: list[tuple[str, int]] = []  # (top label, span), in column order
    for top, _ in split:
        if groups and groups[-1][0] == top:
            groups[-1] = (top, groups[-1][1] + 1)
        else:
            groups.append((top, 1))
    if len(layout.columns) == 1:
        groups = [(key_label(top_key, labels), len(columns))]
    else:
        groups = [(value_label(top_key, top, labels), span) for top, span in groups]
    cells, rules, start = [""] * n_rows, [], n_rows + 1
    for text, span in groups:
        cells.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(text)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    sub_keys = layout.columns[1:] or layout.columns
    below = [latex_escape(key_label(k, labels)) for k in layout.rows]
    below += [
        latex_escape(
            SEP.join(
                value_label(k, v, labels) for k, v in zip(sub_keys, rest.split(SEP), strict=False)
            )
        )
        for _, rest in split
    ]
    return [" & ".join(cells) + r" \\", " ".join(rules), " & ".join(below) + r" \\"]


def body_lines(grid: Grid, labels: dict | None) -> list[str]:
    """One line per row label; row keys in their own columns, a value repeated from the line
    above left blank (booktabs style)."""
    layout, lines, previous = grid.layout, [], [None] * len(grid.layout.rows)
    for row in grid.row_labels:
        values = row.split(SEP) if len(layout.rows) > 1 else [row]
        shown = []
        for index, (key, value) in enumerate(zip(layout.rows, values, strict=False)):
            same = values[: index + 1] == previous[: index + 1]
            shown.append("" if same else latex_escape(value_label(key, value, labels)))
        previous = values
        cells = [*shown, *(latex_cell(grid, row, col) for col in grid.column_labels)]
        lines.append(" & ".join(cells) + r" \\")
    return lines


def latex(
    grid: Grid,
    title: str = "",
    label: str = "tab:report",
    notes: dict | None = None,
    labels: dict | None = None,
) -> str:
    """A table environment for \\input; needs booktabs and graphicx (and rotating when it is
    a sidewaystable) in the preamble."""
    columns = grid.column_labels
    environment = "sidewaystable" if len(columns) > SIDEWAYS_COLUMNS else "table"
    spec = "l" * len(grid.layout.rows) + "r" * len(columns)
    lines = [
        r"% Needs \usepackage{booktabs,graphicx}"
        + (r" and \usepackage{rotating}." if environment != "table" else "."),
        rf"\begin{{{environment}}}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(caption(grid, title, notes, labels))}}}",
        rf"\label{{{label}}}",
        *([r"\small", r"\setlength{\tabcolsep}{4pt}"] if len(columns) > 4 else []),  # wide
        # Scaled to the line's width only when wider than it; never enlarged.
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        *header_lines(grid, labels),
        r"\midrule",
        *body_lines(grid, labels),
        r"\bottomrule",
        r"\end{tabular}}",
        rf"\end{{{environment}}}",
    ]
    return "\n".join(lines) + "\n"


def latex_document(table: str) -> str:
    """A document that compiles as-is around the table (pdflatex, with booktabs)."""
    return (
        "\n".join(
            [
                r"\documentclass{article}",
                r"\usepackage[utf8]{inputenc}",
                r"\usepackage{booktabs,graphicx,rotating}",
                r"\begin{document}",
                table.rstrip("\n"),
                r"\end{document}",
            ]
        )
        + "\n"
    )


def csv_text(grid: Grid) -> str:
    """Long form, one line per cell with numbers unrounded: what a plotting script wants."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "column", "mean", "std", "n", "best"])
    for row in grid.row_labels:
        for col in grid.column_labels:
            cell = grid.cells.get((row, col))
            if cell is None:
                writer.writerow([row, col, "", "", 0, False])
                continue
            std = "" if cell.std != cell.std else repr(cell.std)
            writer.writerow([row, col, repr(cell.mean), std, cell.n, (row, col) in grid.best])
    return buffer.getvalue()
