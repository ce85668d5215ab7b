"""A Grid as Markdown, LaTeX (booktabs) and CSV text."""

from __future__ import annotations

import csv
import io

from src.report.table import MISSING, Grid

LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "×": r"$\times$", "—": "---",
}  # fmt: skip


def corner(grid: Grid) -> str:
    """Top-left header: 'dataset \\ strategy'."""
    return f"{' / '.join(grid.layout.rows)} \\ {' / '.join(grid.layout.columns)}"


def caption(grid: Grid, title: str = "") -> str:
    layout = grid.layout
    scale = f" ×{layout.scale:g}" if layout.scale != 1 else ""
    what = f"{layout.metric}{scale}, mean ± sample std over {layout.seed}s; n = {layout.seed}s where fewer"
    return f"{title}: {what}" if title else what


def markdown(grid: Grid, title: str = "") -> str:
    def cell(row: str, col: str) -> str:
        text = grid.text(row, col)
        return f"**{text}**" if (row, col) in grid.best else text

    header = [corner(grid).replace("\\", "\\\\"), *grid.column_labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in grid.row_labels:
        lines.append("| " + " | ".join([row, *(cell(row, c) for c in grid.column_labels)]) + " |")
    return f"{caption(grid, title)}\n\n" + "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Text as LaTeX source; ± and × become math so pdflatex needs no extra package."""
    return "".join(LATEX_SPECIAL.get(char, char) for char in text)


def latex_cell(grid: Grid, row: str, col: str) -> str:
    text = grid.text(row, col)
    if text == MISSING:
        return "---"  # the em dash, in any font encoding
    text = latex_escape(text)
    return rf"\textbf{{{text}}}" if (row, col) in grid.best else text


def latex(grid: Grid, title: str = "", label: str = "tab:report") -> str:
    """A table environment for \\input; needs \\usepackage{booktabs} in the preamble."""
    columns = grid.column_labels
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(caption(grid, title))}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{l{'r' * len(columns)}}}",
        r"\toprule",
        " & ".join([latex_escape(corner(grid)), *map(latex_escape, columns)]) + r" \\",
        r"\midrule",
    ]
    for row in grid.row_labels:
        cells = [latex_escape(row), *(latex_cell(grid, row, col) for col in columns)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def latex_document(table: str) -> str:
    """A document that compiles as-is around the table (pdflatex, with booktabs)."""
    return "\n".join([
        r"\documentclass{article}", r"\usepackage[utf8]{inputenc}", r"\usepackage{booktabs}",
        r"\begin{document}", table.rstrip("\n"), r"\end{document}",
    ]) + "\n"  # fmt: skip


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
