"""Result tables as files beside a run's artifacts: rows as CSV and as a markdown table."""

from __future__ import annotations

from pathlib import Path


def write_table(rows: list[dict], directory: Path, stem: str) -> list[Path]:
    """rows as <stem>.csv and <stem>.md (a markdown table) in directory."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    directory.mkdir(parents=True, exist_ok=True)
    csv, md = directory / f"{stem}.csv", directory / f"{stem}.md"
    frame.to_csv(csv, index=False)
    md.write_text(markdown(rows))
    return [csv, md]


def markdown(rows: list[dict]) -> str:
    """A markdown table (floats to 4 digits) with the first row's keys as header."""
    if not rows:
        return "(no rows)\n"
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell(row.get(k, "")) for k in rows[0]) + " |" for row in rows]
    return "\n".join(lines) + "\n"
